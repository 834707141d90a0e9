//! The client's connection outlives every response Sluice reframes: a refused tool call
//! rewritten into a longer body, an allowed one whose length Sluice could not promise, an
//! SSE stream whose upstream sent a Content-Length. Each must go out framed (chunked), so
//! the next request on the same connection is answered; a body delimited by the
//! connection's close would cost the client a new TCP handshake per request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const POLICIES: &str = r#"
[[policies.invocation]]
id = "email-not-when-untrusted"
tool = { source = "profile:default", name = "send_email" }
action = "block_when_untrusted"
"#;

/// An upstream that answers every request on every connection with a short chat SSE
/// stream that carries a Content-Length (allowed for a body of known length).
async fn sse_with_length(listener: tokio::net::TcpListener) {
    let stream = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hi\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n"
    );
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            loop {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while whole_request_len(&seen).is_none() {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
                    stream.len()
                );
                if s.write_all(head.as_bytes()).await.is_err()
                    || s.write_all(stream.as_bytes()).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

/// Sends one request on `s`, left open, and reads exactly its response by its framing.
/// A response with no framing is read to the connection's close.
async fn exchange(
    s: &mut TcpStream,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> RawResponse {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let r = parse_response(&buf);
            let framed =
                r.header("transfer-encoding").is_some() || r.header("content-length").is_some();
            // A chunked body ends with "0\r\n\r\n": wait for all of it, so that nothing of
            // this response is left to be read as the start of the next.
            let ended = r.header("transfer-encoding").is_none() || buf.ends_with(b"0\r\n\r\n");
            if framed && r.complete && ended {
                return r;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("a response within 20 s")
            .unwrap();
        if n == 0 {
            assert!(
                !buf.is_empty(),
                "the connection closed before a response to {path}"
            );
            return parse_response(&buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn assert_framed(case: &str, r: &RawResponse) {
    assert_eq!(r.status, 200, "{case}: {}", r.text());
    assert!(
        r.header("transfer-encoding") == Some("chunked") || r.header("content-length").is_some(),
        "{case}: the body is delimited by the connection's close: {:?}",
        r.headers
    );
    assert_ne!(r.header("connection"), Some("close"), "{case}");
}

#[test]
fn reframed_responses_leave_the_clients_connection_open_for_the_next_request() {
    let (up_rt, upstream, port) = serving_upstream();
    up_rt.spawn(sse_with_length(upstream));
    let h = Harness::start(&format!(
        "{POLICIES}\n[profiles.lengthy.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    ));
    h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        let tools = chat_body(false, true).to_string();
        let chat = "/v1/openai/chat/completions";

        let r = exchange(
            &mut s,
            chat,
            &[
                ("x-mock-tools", "send_email"),
                ("x-sluice-context-untrusted", "true"),
            ],
            &tools,
        )
        .await;
        assert_framed("refused", &r);
        assert!(r.text().contains("sluice:policy_denied"), "{}", r.text());

        let r = exchange(&mut s, chat, &[("x-mock-tools", "send_email")], &tools).await;
        assert_framed("allowed under a conditional policy", &r);
        let v = r.json();
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "send_email"
        );

        let sse = chat_body(true, false).to_string();
        let r = exchange(&mut s, "/v1/openai/lengthy/chat/completions", &[], &sse).await;
        assert_framed("SSE that came with a length", &r);
        assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());

        let r = exchange(&mut s, chat, &[], &chat_body(false, false).to_string()).await;
        assert_framed("plain", &r);
    });
}
