//! Draining (SIGTERM, and the old process of an upgrade): once the listeners stop
//! accepting, connections already accepted are still served until the drain ends.
//!
//! Pingora's proxy drops every connection waiting for a request header as soon as its
//! service shuts down; a connection accepted a moment before the listeners closed, whose
//! request was still on the wire, got a close instead of a response (1 request in ~2,000
//! in the upgrade test). Sluice keeps such connections until the drain ends and answers
//! their request with `connection: close`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one whole response from a connection that stays open.
async fn read_one(s: &mut TcpStream) -> RawResponse {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if memchr::memmem::find(&got, b"\r\n\r\n").is_some() {
            let r = parse_response(&got);
            if r.complete {
                return r;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("no response within 20 s")
            .unwrap();
        if n == 0 {
            panic!(
                "the proxy closed the connection after {} bytes: {:?}",
                got.len(),
                String::from_utf8_lossy(&got)
            );
        }
        got.extend_from_slice(&buf[..n]);
    }
}

fn keep_alive_request() -> Vec<u8> {
    let body = chat_body(false, false).to_string();
    format!(
        "POST /v1/openai/chat/completions HTTP/1.1\r\nhost: sluice\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn a_connection_accepted_before_the_drain_is_still_served() {
    // An upstream that holds one response until released: a request in flight keeps the
    // drain going while the test sends its next request.
    let (up_rt, upstream, port) = serving_upstream();
    let mut h = Harness::start(&format!(
        "[profiles.held.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    ));
    let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    up_rt.spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        read_upstream_request(&mut s).await;
        let _ = arrived_tx.send(());
        let _ = release_rx.await;
        let body = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"held"},"finish_reason":"stop"}]}"#;
        s.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let _ = s.read(&mut [0u8; 1]).await;
    });
    let addr = h.addr();

    // The held request, and a keep-alive connection that has been served once and is idle.
    let held = h.rt.spawn(async move {
        post_json(
            addr,
            "/v1/openai/held/chat/completions",
            &[],
            &chat_body(false, false),
        )
        .await
    });
    let mut idle = h.rt.block_on(async {
        arrived_rx.await.unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&keep_alive_request()).await.unwrap();
        let first = read_one(&mut s).await;
        assert_eq!(first.status, 200, "{}", first.text());
        assert_ne!(first.header("connection"), Some("close"));
        s
    });

    // The drain starts: wait until the listener refuses new connections.
    let proxy = h.proxy.take().unwrap();
    let drained = std::thread::spawn(move || proxy.drain(Duration::from_secs(30)));
    h.rt.block_on(async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    });

    // The idle connection's next request is answered, and the connection then closed.
    let second = h.rt.block_on(async {
        idle.write_all(&keep_alive_request()).await.unwrap();
        read_one(&mut idle).await
    });
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.header("connection"), Some("close"));
    let closed =
        h.rt.block_on(async { idle.read(&mut [0u8; 64]).await.unwrap() });
    assert_eq!(closed, 0, "the connection closes after its response");

    release_tx.send(()).unwrap();
    let held = h.rt.block_on(held).unwrap();
    assert_eq!(held.status, 200, "{}", held.text());
    drained.join().unwrap();
}
