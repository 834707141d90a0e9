//! The HTTP-edge cases of the adversarial list (docs/hardening.md): slowloris, slow POST,
//! idle keep-alive, request-smuggling headers. Each asserts what the client sees and that
//! the upstream never got the request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIGHT: &str = "[limits]\nclient_header_timeout_ms = 400\nclient_keepalive_timeout_ms = 800\n\
                     request_body_rate_grace_ms = 400\nmin_request_body_bytes_per_sec = 1000\n";

/// Reads until the peer closes; returns what arrived and when the close came.
async fn until_closed(s: &mut TcpStream, started: Instant) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return (got, started.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response with a Content-Length, leaving the connection open.
async fn one_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("a content-length")
                .trim()
                .parse()
                .unwrap();
            if got.len() >= end + 4 + len {
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed mid-response");
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn r02_slowloris_is_closed_at_the_total_header_deadline() {
    let h = Harness::start(TIGHT);
    let before = h.mock.stats.requests.load(Ordering::Relaxed);
    let (got, closed_after, bytes_sent) = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        let started = Instant::now();
        // One header byte every 50 ms: each read is quick, the header never ends.
        let head = b"POST /v1/openai/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: ";
        let mut sent = 0;
        let (mut rd, mut wr) = s.split();
        let writer = async {
            for b in head.iter().chain(std::iter::repeat(&b'a')) {
                if wr.write_all(&[*b]).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let reader = async {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return (got, started.elapsed()),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        let (got, after) = tokio::select! {
            r = reader => r,
            () = writer => unreachable!("the writer only stops when the connection is closed"),
        };
        (got, after, sent)
    });
    assert!(got.is_empty(), "no response to a header that never ended");
    assert!(
        closed_after >= Duration::from_millis(350) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?} ({bytes_sent} bytes in), deadline 400 ms"
    );
    assert_eq!(h.mock.stats.requests.load(Ordering::Relaxed), before);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_but_a_busy_one_is_served() {
    let h = Harness::start(TIGHT);
    h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        // Three requests back to back on one connection: all answered.
        for _ in 0..3 {
            let body = chat_body(false, false).to_string();
            let req = format!(
                "POST /v1/openai/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let r = one_response(&mut s).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        }
        // Then silence: closed at the keep-alive deadline, not held forever.
        let started = Instant::now();
        let (got, after) = until_closed(&mut s, started).await;
        assert!(got.is_empty());
        assert!(
            after >= Duration::from_millis(700) && after < Duration::from_secs(3),
            "idle connection closed after {after:?}, deadline 800 ms"
        );
    });
}

#[test]
fn r03_slow_post_is_refused_by_the_minimum_rate_not_an_idle_timer() {
    let h = Harness::start(TIGHT);
    let before = h.mock.stats.requests.load(Ordering::Relaxed);
    let (r, took) = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        let started = Instant::now();
        s.write_all(b"POST /v1/openai/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 33554432\r\n\r\n")
            .await
            .unwrap();
        // 10 bytes every 20 ms (500 B/s): every read is prompt, the rate is not.
        let (mut rd, mut wr) = s.split();
        let writer = async {
            while wr.write_all(b"{\"a\":\"xxx\"").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            std::future::pending::<()>().await;
        };
        let reader = async {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got
        };
        let got = tokio::select! {
            g = reader => g,
            () = writer => unreachable!(),
        };
        (parse_response(&got), started.elapsed())
    });
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "sluice_body_too_slow");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000 bytes/s")
    );
    assert!(took < Duration::from_secs(3), "refused after {took:?}");
    assert_eq!(h.mock.stats.requests.load(Ordering::Relaxed), before);
}

#[test]
fn r05_smuggling_shaped_headers_are_refused() {
    let h = Harness::start("");
    let before = h.mock.stats.requests.load(Ordering::Relaxed);
    let body = chat_body(false, false).to_string();
    let len = body.len();
    let cases = [
        (
            "underscore",
            format!("x_api_key: k\r\ncontent-length: {len}\r\n"),
        ),
        (
            "two lengths",
            format!("content-length: {len}\r\ncontent-length: {len}\r\n"),
        ),
        (
            "length and chunked",
            format!("content-length: {len}\r\ntransfer-encoding: chunked\r\n"),
        ),
        (
            "obsolete line folding",
            format!("x-folded: a\r\n b\r\ncontent-length: {len}\r\n"),
        ),
    ];
    for (name, headers) in cases {
        let r = h.rt.block_on(async {
            let mut s = TcpStream::connect(h.addr()).await.unwrap();
            let req = format!(
                "POST /v1/openai/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\n{headers}\r\n{body}"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            until_closed(&mut s, Instant::now()).await.0
        });
        let r = parse_response(&r);
        assert_eq!(r.status, 400, "{name}: {}", r.text());
    }
    assert_eq!(
        h.mock.stats.requests.load(Ordering::Relaxed),
        before,
        "none reached the upstream"
    );
}
