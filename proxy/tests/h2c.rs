//! HTTP/2 with prior knowledge (h2c, `SLUICE_H2C=1`): many streams over one client
//! connection, HTTP/1.1 clients still served on the same listener, and the connection
//! deadlines kept (a preface that never ends, an idle connection) without cutting a stream
//! that outlives them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Harness, chat_body, open_fds, post_json};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIGHT: &str = "[limits]\nclient_header_timeout_ms = 400\nclient_keepalive_timeout_ms = 800\n";

async fn h2_client(
    addr: std::net::SocketAddr,
) -> (
    http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

async fn chat(
    send: &mut http2::SendRequest<Full<Bytes>>,
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = hyper::Request::post(format!("http://{addr}/v1/openai/chat/completions"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(chat_body(true, false).to_string())))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn http2_streams_share_one_connection_and_http1_clients_are_still_served() {
    let h = Harness::start_with("", true);
    let addr = h.addr();
    h.rt.block_on(async {
        let (send, conn) = h2_client(addr).await;
        let streams: Vec<_> = (0..4)
            .map(|_| {
                let mut send = send.clone();
                tokio::spawn(async move { chat(&mut send, addr, &[]).await })
            })
            .collect();
        for s in streams {
            let (status, body) = s.await.unwrap();
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("chat.completion.chunk"), "{body}");
            assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        }
        assert!(
            !conn.is_finished(),
            "the connection stays open for more streams"
        );
        let r = post_json(
            addr,
            "/v1/openai/chat/completions",
            &[],
            &chat_body(false, false),
        )
        .await;
        assert_eq!(r.status, 200);
    });
    // Every request went through the proxy's phases: five records.
    assert_eq!(h.record(5).status, 200);
}

#[test]
fn a_stream_longer_than_the_header_deadlines_is_not_cut() {
    let h = Harness::start_with(TIGHT, true);
    let addr = h.addr();
    let (status, body, took) = h.rt.block_on(async {
        let (mut send, _conn) = h2_client(addr).await;
        let started = Instant::now();
        // 14 events 100 ms apart: longer than both deadlines (400 and 800 ms).
        let (status, body) = chat(&mut send, addr, &[("x-mock-chunk-delay-ms", "100")]).await;
        (status, body, started.elapsed())
    });
    assert_eq!(status, 200);
    assert!(
        took > Duration::from_millis(900),
        "the stream took {took:?}"
    );
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
}

#[test]
fn an_http2_preface_that_never_ends_is_closed_at_the_header_deadline() {
    let h = Harness::start_with(TIGHT, true);
    let closed_after = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        let started = Instant::now();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    });
    assert!(
        closed_after >= Duration::from_millis(350) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}, deadline 400 ms"
    );
}

#[test]
fn an_idle_http2_connection_is_closed_at_the_keep_alive_deadline() {
    let h = Harness::start_with(TIGHT, true);
    let addr = h.addr();
    let lived = h.rt.block_on(async {
        let (mut send, conn) = h2_client(addr).await;
        let (status, _) = chat(&mut send, addr, &[]).await;
        assert_eq!(status, 200);
        let idle_from = Instant::now();
        // The server ends the connection (GOAWAY, then close): the client's driver returns.
        tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("the idle connection was never closed")
            .unwrap()
            .ok();
        idle_from.elapsed()
    });
    assert!(
        lived >= Duration::from_millis(700) && lived < Duration::from_secs(5),
        "closed after {lived:?} idle, deadline 800 ms"
    );
}

#[test]
fn without_h2c_an_http2_client_is_refused() {
    let h = Harness::start("");
    h.rt.block_on(async {
        let s = TcpStream::connect(h.addr()).await.unwrap();
        let (mut send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
        let _conn = tokio::spawn(conn);
        let req = hyper::Request::post(format!("http://{}/v1/openai/models", h.addr()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert!(send.send_request(req).await.is_err());
    });
}

#[test]
fn r06_http2_streams_are_capped_per_connection_and_a_reset_flood_leaves_others_served() {
    let h = Harness::start_with("", true);
    let addr = h.addr();
    let before = open_fds();
    let upstream_before = h
        .mock
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    let (limit, sent, during) = h.rt.block_on(async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        // One whole request first: the server's settings have arrived by its answer.
        let req = http::Request::get(format!("http://{addr}/v1/openai/models"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(req, true).unwrap();
        let _ = response.await.unwrap();
        let limit = client.current_max_send_streams();
        // Rapid reset: each request cancelled as soon as its header is out.
        let mut sent = 0u32;
        for _ in 0..10_000 {
            client = match client.clone().ready().await {
                Ok(c) => c,
                Err(_) => break,
            };
            let req = http::Request::post(format!("http://{addr}/v1/openai/chat/completions"))
                .header("content-type", "application/json")
                .body(())
                .unwrap();
            match client.send_request(req, false) {
                Ok((_response, mut body)) => {
                    body.send_reset(h2::Reason::CANCEL);
                    sent += 1;
                }
                Err(_) => break,
            }
        }
        // Meanwhile another client is served.
        let during = post_json(
            addr,
            "/v1/openai/chat/completions",
            &[],
            &chat_body(false, false),
        )
        .await;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        (limit, sent, during.status)
    });
    assert_eq!(limit, 100, "the concurrent streams a connection may open");
    // The flooding connection is ended by the server long before the 10,000th reset.
    assert!(sent < 10_000, "{sent} resets were taken");
    assert_eq!(during, 200);
    let upstream = h
        .mock
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Relaxed)
        - upstream_before;
    assert!(
        upstream <= u64::from(sent),
        "{upstream} upstream requests for {sent} streams"
    );
    let r = h.rt.block_on(post_json(
        addr,
        "/v1/openai/chat/completions",
        &[],
        &chat_body(false, false),
    ));
    assert_eq!(r.status, 200);
    let grown = open_fds().saturating_sub(before);
    assert!(grown < 64, "{grown} more descriptors after the flood");
}

#[test]
fn r06_a_stream_whose_window_stays_zero_pauses_the_upstream_and_is_reset_at_the_write_timeout() {
    let (up_rt, upstream, port) = common::serving_upstream();
    let profile = format!(
        "[limits]\nclient_write_timeout_ms = 1000\n\
         [profiles.slow.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    );
    let h = Harness::start_with(&profile, true);
    let addr = h.addr();
    let upstream = up_rt.spawn(common::endless_stream(upstream, 1 << 30, None));
    let (mut body, conn) = h.rt.block_on(async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        // Every stream's window starts at 0 and is never opened: no DATA may be sent.
        let (client, conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::post(format!("http://{addr}/v1/openai/slow/chat/completions"))
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(req, false).unwrap();
        send.send_data(Bytes::from(chat_body(true, false).to_string()), true)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        // Another connection is served meanwhile.
        let other = post_json(
            addr,
            "/v1/openai/chat/completions",
            &[],
            &chat_body(false, false),
        )
        .await;
        assert_eq!(other.status, 200);
        (response.into_body(), conn)
    });
    common::assert_upstream_released(&up_rt, upstream, "a stream that could take none");
    h.rt.block_on(async {
        // The stream ends in an error, not with the upstream's bytes.
        let end = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .expect("the stalled stream was never ended");
        assert!(
            !matches!(end, Some(Ok(_))),
            "data arrived through a zero window"
        );
        conn.abort();
    });
    let record = h.record(2);
    assert!(!record.response.completed);
}
