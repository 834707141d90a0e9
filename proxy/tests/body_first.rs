//! Small request bodies are read whole before Sluice connects upstream
//! (`proxy/src/phases/body_first.rs`): a slow POST holds no upstream connection, and a
//! client that waits for `100 Continue` gets it from Sluice.
//!
//! The upstream is a plain listener: once Sluice has connected, the kernel has queued the
//! connection, so a non-blocking `accept` that finds none shows Sluice has not connected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIGHT_BODY_RATE: &str = "[limits]\nrequest_body_rate_grace_ms = 400\n\
                               min_request_body_bytes_per_sec = 1000\n";

const COMPLETION: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

fn upstream_listener() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn connected_upstream(l: &std::net::TcpListener) -> bool {
    match l.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

fn profile(port: u16, extra: &str) -> String {
    format!("{extra}[profiles.small.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n")
}

/// Reads one response (head and whole body) from a connection that stays open.
async fn read_one(s: &mut TcpStream, got: &mut Vec<u8>) -> RawResponse {
    let mut buf = [0u8; 4096];
    loop {
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            let r = parse_response(got);
            if r.complete {
                got.clear();
                return r;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no response within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Serves chat completions on one upstream connection: returns each request's head and body
/// as Sluice sent them.
fn serve_completions(mut up: std::net::TcpStream, requests: usize) -> Vec<String> {
    up.set_nonblocking(false).unwrap();
    up.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut seen = Vec::new();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.len() < requests {
        while let Some(end) = whole_request_len(&pending) {
            let one: Vec<u8> = pending.drain(..end).collect();
            seen.push(String::from_utf8_lossy(&one).into_owned());
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{COMPLETION}",
                COMPLETION.len()
            );
            up.write_all(resp.as_bytes()).unwrap();
        }
        if seen.len() == requests {
            break;
        }
        let n = up.read(&mut buf).unwrap();
        assert!(n > 0, "Sluice closed the upstream connection");
        pending.extend_from_slice(&buf[..n]);
    }
    seen
}

#[test]
fn a_client_waiting_for_100_continue_gets_it_from_sluice_before_any_upstream_connection() {
    let (upstream, port) = upstream_listener();
    let h = Harness::start(&profile(port, ""));
    let body = chat_body(false, false).to_string();
    let head = format!(
        "POST /v1/openai/small/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         expect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut client = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("no 100 Continue: the client would wait for it before sending its body")
                .unwrap();
            assert!(n > 0, "closed before 100 Continue");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        s
    });
    // Sluice is waiting for the body: it has not connected upstream.
    assert!(
        !connected_upstream(&upstream),
        "Sluice connected upstream before the body arrived"
    );
    let served = std::thread::spawn(move || {
        upstream.set_nonblocking(false).unwrap();
        let (up, _) = upstream.accept().unwrap();
        serve_completions(up, 2)
    });
    let (first, second) = h.rt.block_on(async {
        client.write_all(body.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let first = read_one(&mut client, &mut got).await;
        // The same connection takes a second request: the early 100 did not mark it to close.
        let again = format!(
            "POST /v1/openai/small/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        client.write_all(again.as_bytes()).await.unwrap();
        let second = read_one(&mut client, &mut got).await;
        (first, second)
    });
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["choices"][0]["message"]["content"], "hi");
    assert_ne!(first.header("connection"), Some("close"));
    assert_eq!(second.status, 200, "{}", second.text());
    let seen = served.join().unwrap();
    let upstream_head = seen[0].to_ascii_lowercase();
    assert!(
        !upstream_head.contains("\r\nexpect:"),
        "the upstream was asked to continue a body Sluice already holds: {upstream_head}"
    );
    assert!(upstream_head.contains("email alice"), "{upstream_head}");
}

#[test]
fn a_slow_small_body_is_refused_at_the_minimum_rate_without_an_upstream_connection() {
    let (upstream, port) = upstream_listener();
    let h = Harness::start(&profile(port, TIGHT_BODY_RATE));
    let r = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        s.write_all(b"POST /v1/openai/small/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n\r\n")
            .await
            .unwrap();
        // 500 B/s, below the 1,000 B/s minimum.
        parse_response(&trickle_body_until_answered(&mut s).await)
    });
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "sluice_body_too_slow");
    assert!(
        !connected_upstream(&upstream),
        "a slow POST held an upstream connection"
    );
}

#[test]
fn a_body_longer_than_the_read_first_size_still_goes_through_whole() {
    let (upstream, port) = upstream_listener();
    let h = Harness::start(&profile(port, ""));
    // 100 KiB of message: past what is read before connecting.
    let text = "x".repeat(100 * 1024);
    let body = serde_json::json!({"model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}]})
    .to_string();
    let served = std::thread::spawn(move || {
        upstream.set_nonblocking(false).unwrap();
        let (up, _) = upstream.accept().unwrap();
        serve_completions(up, 1)
    });
    let r = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        let req = format!(
            "POST /v1/openai/small/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        read_one(&mut s, &mut Vec::new()).await
    });
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = served.join().unwrap();
    let (chunked, _) = request_framing(seen[0].as_bytes());
    assert!(
        chunked,
        "a body longer than the read-first size goes chunked"
    );
    let got = request_body(seen[0].as_bytes());
    assert_eq!(
        got.len(),
        body.len(),
        "the upstream got a body of another length"
    );
}

#[test]
fn a_request_refused_by_its_limits_takes_no_upstream_connection() {
    let (upstream, port) = upstream_listener();
    let limits = "[[rate_limits]]\nid = \"rl_tokens\"\nname = \"small tokens\"\nscope = \"profile\"\n\
                  target = \"small\"\ntokens_per_minute = 100\n\n";
    let h = Harness::start(&profile(port, limits));
    // 1,500 tokens asked for against 100 a minute: refused once read.
    let body = serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 1500,
        "messages": [{"role": "user", "content": "hello"}]});
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/openai/small/chat/completions",
        &[],
        &body,
    ));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "sluice_rate_limit_exceeded");
    assert!(
        !connected_upstream(&upstream),
        "a refused request took an upstream connection"
    );
}

/// Sends `body` as a chat completion through Sluice; returns the request as the upstream
/// got it.
fn sent_upstream(body: &serde_json::Value) -> String {
    let (upstream, port) = upstream_listener();
    let h = Harness::start(&profile(port, ""));
    let served = std::thread::spawn(move || {
        upstream.set_nonblocking(false).unwrap();
        let (up, _) = upstream.accept().unwrap();
        serve_completions(up, 1)
    });
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/openai/small/chat/completions",
        &[],
        body,
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    served.join().unwrap().remove(0)
}

/// Every `Content-Length` value of a request's head.
fn content_lengths(request: &str) -> Vec<String> {
    let head = request
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == "content-length")
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

#[test]
fn a_body_read_first_goes_upstream_with_the_length_of_what_sluice_sends() {
    // A streamed chat: Sluice asks the upstream for usage (`stream_options`), so the body
    // it sends is longer than the client's.
    let seen = sent_upstream(&chat_body(true, false));
    let (chunked, _) = request_framing(seen.as_bytes());
    let sent = request_body(seen.as_bytes());
    assert!(!chunked, "a body Sluice holds whole went chunked: {seen}");
    assert_eq!(content_lengths(&seen), [sent.len().to_string()], "{seen}");
    let sent: serde_json::Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
}

#[test]
fn a_body_sent_as_the_client_sent_it_goes_with_one_length_header() {
    // Not streamed: Sluice sends the client's bytes unchanged, under the client's length.
    let body = chat_body(false, false);
    let seen = sent_upstream(&body);
    let sent = request_body(seen.as_bytes());
    assert_eq!(sent, body.to_string().as_bytes(), "{seen}");
    assert_eq!(content_lengths(&seen), [sent.len().to_string()], "{seen}");
}
