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

// As in the `sluice` binary: the memory budget reads the heap this wrapper counts.
#[global_allocator]
static GLOBAL: sluice_alloc::Counting<std::alloc::System> =
    sluice_alloc::Counting::new(std::alloc::System);

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
            let len: usize = content_length(&head);
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
fn a_stream_longer_than_both_deadlines_is_served_and_the_idle_clock_starts_at_its_end() {
    let h = Harness::start(TIGHT);
    h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        let body = chat_body(true, false).to_string();
        // 14 events 100 ms apart: longer than both deadlines (400 and 800 ms).
        let req = format!(
            "POST /v1/openai/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-mock-chunk-delay-ms: 100\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let sent = Instant::now();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // The last chunk of the chunked answer ends the response.
        while !got.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed mid-stream: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let took = sent.elapsed();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("data: [DONE]"), "{text}");
        assert!(took > Duration::from_millis(900), "the stream took {took:?}");
        // The keep-alive deadline counts from the end of the response, not from when the
        // connection's timer last fired while the stream ran.
        let ended = Instant::now();
        let (got, after) = until_closed(&mut s, ended).await;
        assert!(got.is_empty());
        assert!(
            after >= Duration::from_millis(700) && after < Duration::from_secs(3),
            "idle connection closed {after:?} after the stream, deadline 800 ms"
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
        let got = trickle_body_until_answered(&mut s).await;
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

#[test]
fn over_the_memory_budget_new_requests_get_503_and_running_streams_finish() {
    use sluice_proxy::config::{Environment, compile, parse_toml};
    let (up_rt, upstream, port) = raw_upstream();
    let profile = format!("[profiles.slow.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n");
    let h = Harness::start(&profile);
    let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
    // The upstream: a stream that sends one event, then waits for the test to finish it.
    let up = std::thread::spawn(move || {
        up_rt.block_on(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            read_upstream_request(&mut s).await;
            let event = |text: &str| {
                let data = format!(
                    "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
                );
                format!("{:x}\r\n{data}\r\n", data.len())
            };
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            s.write_all(format!("{head}{}", event("before")).as_bytes()).await.unwrap();
            tokio::task::spawn_blocking(move || finish_rx.recv().unwrap()).await.unwrap();
            let done = "data: [DONE]\n\n";
            let tail = format!("{}{:x}\r\n{done}\r\n0\r\n\r\n", event("after"), done.len());
            s.write_all(tail.as_bytes()).await.unwrap();
        });
    });
    h.rt.block_on(async {
        let mut stream = TcpStream::connect(h.addr()).await.unwrap();
        let body = chat_body(true, false).to_string();
        let req = format!(
            "POST /v1/openai/slow/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut got = read_until(&mut stream, "before").await;
        let mut buf = [0u8; 4096];

        let env = Environment {
            openai_base_url: Some(h.mock.openai_base()),
            anthropic_base_url: Some(h.mock.base()),
            gemini_base_url: Some(h.mock.base()),
            ..Environment::default()
        };
        let set_budget = |bytes: u64| {
            let toml = format!("[limits]\nmemory_budget_bytes = {bytes}\n[profiles.default]\n{profile}");
            h.live.store(compile(parse_toml(&toml).unwrap(), &env).unwrap());
        };
        let body = chat_body(false, false);
        let chat = || post_json(h.addr(), "/v1/openai/chat/completions", &[], &body);

        // The budget is the heap in use (not resident memory, which the allocator keeps
        // after a burst): memory taken puts the proxy over it while the stream runs, and
        // once given back the proxy serves again, the stream still running.
        let heap = sluice_alloc::heap_in_use().expect("the counting allocator is installed");
        set_budget(heap + (256 << 20));
        assert_eq!(chat().await.status, 200, "under the budget");
        let ballast: Vec<u8> = std::hint::black_box(vec![0u8; 1 << 30]);
        let r = chat().await;
        assert_eq!(r.status, 503, "1 GiB taken: {}", r.text());
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("MiB in use"), "{}", r.text());
        drop(ballast);
        assert_eq!(chat().await.status, 200, "the 1 GiB given back");

        // Now the proxy is over budget (1 MiB: any process is).
        set_budget(1 << 20);
        let r = chat().await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["error"]["code"], "sluice_overloaded");
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("memory budget"));
        let r = send(
            h.addr(),
            "POST",
            "/v1/mcp/default",
            &[("content-type", "application/json"), ("accept", "application/json, text/event-stream")],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        )
        .await;
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["jsonrpc"], "2.0", "a JSON-RPC error for MCP clients");
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("memory budget"), "{}", r.text());
        let r = send(h.addr(), "GET", "/healthz", &[], b"").await;
        assert_eq!(r.status, 200, "health answers regardless");

        // The stream that was running finishes whole.
        finish_tx.send(()).unwrap();
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("after") && text.contains("data: [DONE]"), "{text}");

        // Nothing runs now (the stream's connection closed after its request ended), yet
        // the process is still over its 1 MiB budget: memory kept by the allocator, which
        // refusing cannot give back. An idle proxy serves instead of refusing for ever.
        let r = post_json(h.addr(), "/v1/openai/chat/completions", &[], &chat_body(false, false)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    });
    up.join().unwrap();
}

#[test]
fn r19_a_client_that_reads_nothing_holds_up_its_upstream_not_memory() {
    let (up_rt, upstream, port) = raw_upstream();
    let h = Harness::start(&format!(
        "[profiles.firehose.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    ));
    let rss_before = sluice_proxy::overload::resident_bytes().unwrap();
    // The client sends its request, reads the response header, then reads nothing more.
    let client = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        let body = chat_body(true, false).to_string();
        let req = format!(
            "POST /v1/openai/firehose/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        s
    });
    // The upstream streams 200 MB of small events as fast as it is allowed to;
    // backpressure shows as a write that cannot complete.
    let (written, ended) = up_rt.block_on(endless_stream(
        upstream,
        200 << 20,
        Some(Duration::from_secs(1)),
    ));
    assert_eq!(ended, Ended::Stalled);
    let grown = sluice_proxy::overload::resident_bytes()
        .unwrap()
        .saturating_sub(rss_before);
    drop(client);
    assert!(
        written < BOUNDED,
        "the upstream wrote {} MiB to a client that reads nothing",
        written >> 20
    );
    assert!(
        grown < 64 << 20,
        "memory grew by {} MiB for one stalled client",
        grown >> 20
    );
    eprintln!(
        "stalled client: upstream held up after {} MiB (socket buffers), memory +{} MiB",
        written >> 20,
        grown >> 20
    );
}

#[test]
fn r28_the_clients_token_never_reaches_an_mcp_upstream() {
    let (up_rt, upstream, port) = raw_upstream();
    let h = Harness::start(&format!(
        "[profiles.tools]\nmcp_servers = [\"up\"]\n[mcp_servers.up]\nurl = \"http://127.0.0.1:{port}/mcp\"\n\
         era = \"stateless\"\nbearer_token = \"upstream-credential-7f3a\"\n"
    ));
    let addr = h.addr();
    // The client lists tools with its own bearer token; the gateway must ask the upstream.
    let client = h.rt.spawn(async move {
        let meta = r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"_meta":{meta}}}}}"#);
        send(
            addr,
            "POST",
            "/v1/mcp/tools",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
                ("authorization", "Bearer client-token-c4n4ry"),
                ("cookie", "session=client-cookie-c4n4ry"),
            ],
            body.as_bytes(),
        )
        .await
    });
    let seen = up_rt.block_on(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed before its request header");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).to_ascii_lowercase()
    });
    assert!(
        !seen.contains("c4n4ry"),
        "the client's credentials reached the upstream:\n{seen}"
    );
    assert!(
        seen.contains("authorization: bearer upstream-credential-7f3a"),
        "the server's own credential is sent:\n{seen}"
    );
    // The upstream went away without answering: the list comes back without its tools.
    let r = h.rt.block_on(client).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"]["tools"], serde_json::json!([]));
}

#[test]
fn r18_aborts_and_a_429_storm_leak_no_descriptors_and_wedge_no_pool() {
    let h = Harness::start("");
    let addr = h.addr();
    let ok = h.rt.block_on(post_json(
        addr,
        "/v1/openai/chat/completions",
        &[],
        &chat_body(false, false),
    ));
    assert_eq!(ok.status, 200);
    let before = open_fds();
    // 1,500 requests, 50 at a time: a fifth are streams the client drops mid-way, a fifth
    // get 429 from the provider, the rest complete.
    let outcomes = h.rt.block_on(async move {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(50));
        let mut tasks = Vec::new();
        for i in 0..1500u32 {
            let permit = gate.clone().acquire_owned().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                match i % 5 {
                    0 => {
                        let mut s = TcpStream::connect(addr).await.unwrap();
                        let body = chat_body(true, false).to_string();
                        let req = format!(
                            "POST /v1/openai/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-mock-chunk-delay-ms: 5\r\nx-mock-words: 200\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        s.write_all(req.as_bytes()).await.unwrap();
                        let mut buf = [0u8; 512];
                        let n = s.read(&mut buf).await.unwrap();
                        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
                        (0u16, true) // dropped mid-stream
                    }
                    1 => {
                        let r = post_json(addr, "/v1/openai/chat/completions", &[("x-mock-fault", "status:429")], &chat_body(false, false)).await;
                        (r.status, r.status == 429)
                    }
                    _ => {
                        let r = post_json(addr, "/v1/openai/chat/completions", &[], &chat_body(false, false)).await;
                        (r.status, r.status == 200)
                    }
                }
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let wrong: Vec<_> = outcomes.iter().filter(|(_, fine)| !fine).collect();
    assert!(
        wrong.is_empty(),
        "{} unexpected outcomes, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );
    // The pool still works, sequentially.
    for _ in 0..20 {
        let r = h.rt.block_on(post_json(
            addr,
            "/v1/openai/chat/completions",
            &[],
            &chat_body(false, false),
        ));
        assert_eq!(r.status, 200);
    }
    // A leak of the 300 aborted streams would show as hundreds of descriptors; idle pooled
    // upstream connections (16 at most here) and closes in progress are allowed for.
    let grown = open_fds().saturating_sub(before);
    assert!(
        grown < 64,
        "{grown} more descriptors after 1,500 requests with 300 aborts"
    );
}

/// Past this, a proxy that never stopped reading its upstream has buffered without bound.
const ENDLESS_CAP: u64 = 1 << 30;
/// Kernel socket buffers on loopback (both sides of both hops) stay well under this.
const BOUNDED: u64 = 64 << 20;

#[test]
fn a_client_that_stops_reading_pauses_the_upstream_and_is_dropped_at_the_write_timeout() {
    let (up_rt, upstream, port) = serving_upstream();
    let profile = format!(
        "[limits]\nclient_write_timeout_ms = 1000\n\
         [profiles.slow.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    );
    let h = Harness::start(&profile);
    let upstream = up_rt.spawn(endless_stream(upstream, ENDLESS_CAP, None));
    let mut client = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        let body = chat_body(true, false).to_string();
        let req = format!(
            "POST /v1/openai/slow/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // The response has begun; from here on the client reads nothing.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
        let honest = post_json(h.addr(), "/v1/openai/chat/completions", &[], &chat_body(false, false)).await;
        assert_eq!(honest.status, 200, "an honest client beside the stalled one");
        s
    });
    // The upstream's writes stall once the buffers between are full, then fail when the
    // proxy drops the client at its write timeout and lets go of the upstream.
    assert_upstream_released(&up_rt, upstream, "a client that read none");
    // The client's connection is closed (after whatever was in flight).
    let (_, _) = h.rt.block_on(until_closed(&mut client, Instant::now()));
    // The honest client's record is the first, the stalled stream's the second.
    let record = h.record(2);
    assert_eq!(record.status, 200);
    assert!(!record.response.completed);
    // And after.
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/openai/chat/completions",
        &[],
        &chat_body(false, false),
    ));
    assert_eq!(r.status, 200);
}
