//! Resources through the MCP gateway: subscriptions shared at the server by every client
//! and renewed on a new upstream session, and the memory an open server stream holds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::mcp::*;
use serde_json::json;

/// An MCP server stream can stay open for hours: the memory it was admitted with (a
/// reservation held until a response starts) is given back when the stream starts, or the
/// budget would fill with streams that hold nothing. The only test in this binary with a
/// budget, so the process-wide reservation total is this test's own.
#[test]
fn an_open_mcp_server_stream_holds_no_memory_reservation() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup("[limits]\nmcp_keepalive_interval_ms = 100\nmemory_budget_bytes = 1073741824\n");
    let l = Legacy::open(&s);
    let addr = s.h.addr();
    let sid = l.sid.clone();
    s.h.rt.block_on(async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /v1/mcp/tools HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-11-25\r\n\r\n"
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        wait_for(&mut c, &mut seen, b"id: 0").await;
        // The session's POSTs give theirs back when their contexts are dropped, just after
        // their answers went out: wait for the total to reach zero, the stream open.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while sluice_proxy::overload::reserved() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} bytes still reserved with only the stream open",
                sluice_proxy::overload::reserved()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Still open: keep-alives keep coming.
        let mut buf = [0u8; 256];
        let mut got = String::new();
        while !got.contains(": keep-alive") {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// Waits (up to 10 s) until the fixture has `n` sessions subscribed to `uri`: a subscription's
/// end reaches the server from a task of its own, after the client's answer.
fn until_subscribers(s: &Setup, uri: &str, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.fixture.fixture.subscribers(uri) != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} sessions subscribed to {uri} at the server, expected {n}",
            s.fixture.fixture.subscribers(uri)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Two clients subscribed to one resource share one subscription at the server: the first
/// to unsubscribe leaves the other's in place, the last ends it; a subscription held when
/// the server forgot the gateway's session is renewed on the new session.
#[test]
fn clients_share_a_resource_subscription_at_the_server_and_it_survives_a_new_session() {
    let s = setup("era = \"legacy\"");
    let uri = "test://watched-resource";
    let (a, b) = (Legacy::open(&s), Legacy::open(&s));
    for (c, id) in [(&a, 2), (&b, 2), (&b, 3)] {
        let r = answer(&c.post(&rpc(id, "resources/subscribe", json!({ "uri": uri }))));
        assert_eq!(r["result"], json!({}), "{r}");
    }
    assert_eq!(s.fixture.fixture.subscribers(uri), 1);
    let r = answer(&a.post(&rpc(4, "resources/unsubscribe", json!({ "uri": uri }))));
    assert_eq!(r["result"], json!({}), "{r}");
    // The server's subscription is b's too: a sum later, it is still there.
    let sum = b.call(5, "fx__add", json!({"a": 1, "b": 2}));
    assert_eq!(sum["result"]["structuredContent"]["sum"], 3.0, "{sum}");
    assert_eq!(
        s.fixture.fixture.subscribers(uri),
        1,
        "a's unsubscribe ended b's"
    );
    // The server forgets the gateway's session; the next request makes a new one, and the
    // subscription follows.
    expire_fixture_sessions(&s);
    until_subscribers(&s, uri, 0);
    let sum = b.call(6, "fx__add", json!({"a": 2, "b": 2}));
    assert_eq!(sum["result"]["structuredContent"]["sum"], 4.0, "{sum}");
    until_subscribers(&s, uri, 1);
    // The last holder lets go: the server hears of it.
    let r = answer(&b.post(&rpc(7, "resources/unsubscribe", json!({ "uri": uri }))));
    assert_eq!(r["result"], json!({}), "{r}");
    until_subscribers(&s, uri, 0);
}
