//! Upstreams with bad manners (docs/hardening.md): R38, an upstream that answers a stream
//! before it has read the request body (and one that never reads it); R39, small events
//! must not wait for Nagle on Sluice's sockets; a refused call in a body Sluice cannot
//! rewrite, and a call in a body or an event Sluice cannot read, is not forwarded.
//!
//! An upstream that answers first and drains the body afterwards gets every stream whole
//! at once. One that never reads the body gets it whole after the upstream write timeout:
//! Pingora's upstream task writes a request body chunk inside its `select!` arm and reads
//! no response while that write is blocked; when the write times out it stops sending the
//! body and reads the answer. Before the write timeout had its own (short) limit, such
//! streams waited for the 300-second idle cutoff, and clients gave up on them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const EVENTS: usize = 40;
/// The upstream write timeout the R38 tests configure (the default is 30 s). A stream held
/// back until the idle cutoff (300 s) would miss the clients' 20-second deadline.
const WRITE_TIMEOUT_MS: u64 = 1000;

/// An upstream connection read through a buffer: what one read returns past a request's
/// end (the next request's head, written as soon as the pooled connection was reused) is
/// kept for the next request, as a real server does.
struct UpstreamConn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl UpstreamConn {
    /// Reads until `needle` is buffered; returns the bytes up to and including it (the rest
    /// stays buffered), or `None` at a close.
    async fn read_through(&mut self, needle: &[u8]) -> Option<Vec<u8>> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut searched = 0;
        loop {
            if let Some(at) = self.buf[searched..]
                .windows(needle.len())
                .position(|w| w == needle)
            {
                let end = searched + at + needle.len();
                return Some(self.buf.drain(..end).collect());
            }
            searched = self.buf.len().saturating_sub(needle.len() - 1);
            match self.s.read(&mut chunk).await {
                Ok(n) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads a request's header only; the body is left where it is. False at a close.
    async fn read_head(&mut self) -> bool {
        self.read_through(b"\r\n\r\n").await.is_some()
    }

    /// Reads the rest of a chunked request body, up to its last chunk. The body is JSON
    /// text, which never holds a bare line break, so the last chunk cannot be mistaken.
    async fn drain_body(&mut self) -> bool {
        self.read_through(b"\r\n0\r\n\r\n").await.is_some()
    }
}

/// Sends one request and reads its response up to the last chunk (not to the close: a
/// client has the whole response then), within 20 s.
async fn one_stream(addr: std::net::SocketAddr, body: &str) -> (RawResponse, std::time::Duration) {
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/openai/early/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let read = async {
        while !got.ends_with(b"\r\n0\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), read).await;
    let r = if got.is_empty() {
        RawResponse {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            complete: false,
        }
    } else {
        parse_response(&got)
    };
    (r, started.elapsed())
}

/// A whole chat-completions stream: EVENTS content events, the finish, `[DONE]`.
async fn write_stream(s: &mut TcpStream) {
    s.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    for i in 0..=EVENTS {
        let delta = if i < EVENTS {
            format!(r#"{{"content":"w{i} "}}"#)
        } else {
            "{}".into()
        };
        let finish = if i < EVENTS { "null" } else { r#""stop""# };
        let event = format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        );
        s.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
            .await
            .unwrap();
    }
    let done = "data: [DONE]\n\n";
    s.write_all(format!("{:x}\r\n{done}\r\n0\r\n\r\n", done.len()).as_bytes())
        .await
        .unwrap();
}

/// A request body well past the socket buffers between Sluice and the upstream.
fn large_body() -> String {
    let filler = "lorem ipsum dolor sit amet ".repeat(8 * 1024 * 1024 / 27);
    serde_json::json!({
        "model": "m", "stream": true,
        "messages": [{"role": "user", "content": filler}]
    })
    .to_string()
}

fn streams_arrive_whole(drains: bool) {
    let (up_rt, upstream, port) = serving_upstream();
    let h = Harness::start(&format!(
        "[limits]\nupstream_write_timeout_ms = {WRITE_TIMEOUT_MS}\n\
         [profiles.early.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    ));
    const CLIENTS: usize = 12;
    // Each connection: the header read, the whole stream written at once; then the body
    // drained and the next request served (an upstream that answers early), or the body
    // never read and the connection held open.
    // What each upstream connection is doing, for the failure message.
    let states = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = states.clone();
    let upstream_task = up_rt.spawn(async move {
        loop {
            let (s, _) = upstream.accept().await.unwrap();
            let mut c = UpstreamConn { s, buf: Vec::new() };
            let states = seen.clone();
            let me = {
                let mut st = states.lock().unwrap();
                st.push("accepted".into());
                st.len() - 1
            };
            let set = move |what: String| states.lock().unwrap()[me] = what;
            tokio::spawn(async move {
                let mut served = 0;
                while c.read_head().await {
                    set(format!("request {}: head read, writing", served + 1));
                    write_stream(&mut c.s).await;
                    if !drains {
                        std::future::pending::<()>().await;
                    }
                    set(format!("request {}: stream written, draining", served + 1));
                    if !c.drain_body().await {
                        set(format!("closed while draining request {}", served + 1));
                        return;
                    }
                    served += 1;
                    set(format!("{served} served, waiting for a head"));
                }
                set(format!("{served} served, closed"));
            });
        }
    });
    let body = large_body();
    let responses = h.rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let (addr, body) = (h.addr(), body.clone());
            clients.push(tokio::spawn(async move { one_stream(addr, &body).await }));
        }
        let mut out = Vec::new();
        for c in clients {
            out.push(c.await.unwrap());
        }
        out
    });
    let mut whole = 0;
    let mut slowest = std::time::Duration::ZERO;
    for (r, took) in &responses {
        let text = r.text();
        let events = text.matches("\"chat.completion.chunk\"").count();
        slowest = slowest.max(*took);
        if r.status == 200
            && r.complete
            && events == EVENTS + 1
            && text.ends_with("data: [DONE]\n\n")
        {
            whole += 1;
        } else {
            eprintln!(
                "cut: status {} complete {} events {events} after {took:?}: …{}",
                r.status,
                r.complete,
                &text[text.len().saturating_sub(120)..]
            );
        }
    }
    upstream_task.abort();
    eprintln!("{whole}/{CLIENTS} streams whole (drains: {drains}), slowest {slowest:?}");
    if whole < CLIENTS {
        // What the proxy itself recorded, to tell a stuck request from a lost response.
        for r in h.recent.latest(CLIENTS) {
            eprintln!(
                "recorded: status {} in {} µs, ttfb {:?} µs, finish {:?}",
                r.status, r.duration_us, r.ttfb_us, r.response.finish_reason
            );
        }
        eprintln!("records: {} of {CLIENTS}", h.recent.total());
        eprintln!("upstream connections: {:?}", states.lock().unwrap());
    }
    assert_eq!(
        whole, CLIENTS,
        "streams delivered whole (drains body: {drains})"
    );
}

#[test]
fn r38_an_upstream_that_answers_before_reading_the_body_streams_whole() {
    streams_arrive_whole(true);
}

#[test]
fn r38_an_upstream_that_never_reads_the_body_still_streams_whole() {
    streams_arrive_whole(false);
}

#[test]
fn an_upstream_that_takes_no_body_and_never_answers_gets_504_after_the_write_timeout() {
    let (up_rt, upstream, port) = serving_upstream();
    let h = Harness::start(&format!(
        "[limits]\nupstream_write_timeout_ms = 300\nupstream_idle_timeout_ms = 600\n\
         [profiles.early.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    ));
    // Reads the request's header, then neither reads the body nor answers.
    let upstream_side = up_rt.spawn(async move {
        let (s, _) = upstream.accept().await.unwrap();
        let mut c = UpstreamConn { s, buf: Vec::new() };
        assert!(c.read_head().await);
        std::future::pending::<()>().await;
    });
    let body = large_body();
    let got = h.rt.block_on(async {
        let s = TcpStream::connect(h.addr()).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let head = format!(
            "POST /v1/openai/early/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        // The upload goes on beside the read: Sluice stops taking it once it gives up.
        let upload = tokio::spawn(async move {
            let _ = wr.write_all(head.as_bytes()).await;
            let _ = wr.write_all(body.as_bytes()).await;
            wr
        });
        let mut got = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            rd.read_to_end(&mut got),
        )
        .await;
        upload.abort();
        got
    });
    upstream_side.abort();
    let r = parse_response(&got);
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&got));
    assert_eq!(r.header("x-sluice-error"), Some("upstream_write_stalled"));
    assert!(
        r.text().contains("limits.upstream_write_timeout_ms"),
        "{}",
        r.text()
    );
}

/// `TCP_NODELAY` on each of Sluice's TCP sockets whose addresses match `wanted`.
fn nodelay_of(wanted: impl Fn(u16, u16) -> bool) -> Vec<bool> {
    sockets_of(wanted)
        .iter()
        .map(|s| s.nodelay().unwrap())
        .collect()
}

#[test]
fn r39_sluice_sets_tcp_nodelay_on_its_client_and_upstream_sockets() {
    let (up_rt, upstream, port) = raw_upstream();
    let h = Harness::start(&format!(
        "[profiles.small.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    ));
    // A stream held open: one event, then the upstream waits for the test.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let upstream_side = std::thread::spawn(move || {
        up_rt.block_on(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            read_upstream_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let event = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n";
            s.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
                .await
                .unwrap();
            let _ = released.await;
        });
    });
    let proxy_port = h.addr().port();
    let client = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr()).await.unwrap();
        let body = chat_body(true, false).to_string();
        let req = format!(
            "POST /v1/openai/small/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // The first event has passed through: both of Sluice's sockets exist.
        read_until(&mut s, "\"hi\"").await;
        s
    });
    let client_port = client.local_addr().unwrap().port();
    // Sluice's accepted client socket, and its connection to the upstream.
    let downstream = nodelay_of(|local, peer| local == proxy_port && peer == client_port);
    let upstream_conn = nodelay_of(|local, peer| peer == port && local != port);
    // The test's own client socket never asked for TCP_NODELAY: the check can say no.
    let own = nodelay_of(|local, peer| local == client_port && peer == proxy_port);
    let _ = release.send(());
    drop(client);
    upstream_side.join().unwrap();
    assert_eq!(own, vec![false], "the check reads the option");
    assert_eq!(downstream, vec![true], "Sluice's client-side socket");
    assert_eq!(upstream_conn, vec![true], "Sluice's upstream socket");
}

/// One chat completion through the proxy from an upstream that answers `body` (with its
/// Content-Length) in an untrusted context, where a `send_email` call is refused.
fn answered_with(body: Vec<u8>) -> (RawResponse, bool) {
    answered_as("application/json", body)
}

/// [`answered_with`], the upstream's answer of `content_type` (a stream is asked for when
/// it is `text/event-stream`).
fn answered_as(content_type: &str, body: Vec<u8>) -> (RawResponse, bool) {
    let stream = content_type == "text/event-stream";
    let (up_rt, upstream, port) = raw_upstream();
    let h = Harness::start(&format!(
        "[profiles.small.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    ));
    let upstream_side = answer_once(up_rt, upstream, content_type, body);
    let r = h.rt.block_on(post_json(
        h.addr(),
        "/v1/openai/small/chat/completions",
        &[("x-sluice-context-untrusted", "true")],
        &chat_body(stream, true),
    ));
    let refused = h.record(1).refused;
    upstream_side.join().unwrap();
    (r, refused)
}

/// The call was not forwarded unjudged, and the client is told why.
fn assert_unjudged_call_withheld(text: &str) {
    assert!(
        !text.contains("attacker@evil.example"),
        "the unjudged call leaked: {text}"
    );
    assert!(
        text.contains("could not be read to judge them"),
        "the client is told why: {text}"
    );
}

const CALL: &str = r#""choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"send_email","arguments":"{\"to\":\"attacker@evil.example\"}"}}]},"finish_reason":"tool_calls"}]"#;

/// A refused `send_email` call with a byte that is not UTF-8 in a field Sluice does not
/// read: the call is read, but the body cannot be rewritten as a refusal. It must not reach
/// the client as it came.
#[test]
fn a_refused_call_in_a_body_that_cannot_be_rewritten_is_not_forwarded() {
    let mut body = br#"{"id":"c","object":"chat.completion","created":1,"model":"m","system_fingerprint":"fp_"#.to_vec();
    body.push(0xff);
    body.extend_from_slice(format!("\",{CALL}}}").as_bytes());
    let (r, refused) = answered_with(body);
    let text = r.text();
    assert!(
        !text.contains("attacker@evil.example"),
        "the refused call leaked: {text}"
    );
    assert!(
        !text.contains("tool_calls"),
        "the refused call leaked: {text}"
    );
    assert!(
        text.contains("could not be rewritten as a refusal"),
        "the client is told why: {text}"
    );
    assert!(refused);
}

/// A member of a type Sluice's reader does not take (a number for `model`) makes the body
/// unreadable to it, while a client's reader takes the call: it must not go out unjudged.
/// The same body without a call still goes through; odd token counts (negative, `null`,
/// strings) are read as absent, and a call beside them is judged as usual.
#[test]
fn a_call_in_a_body_sluice_cannot_read_is_not_forwarded_unjudged() {
    let (r, _) = answered_with(format!(r#"{{"id":"c","model":5,{CALL}}}"#).into_bytes());
    let text = r.text();
    assert_unjudged_call_withheld(&text);
    let plain = r#"{"id":"c","model":5,"choices":[{"index":0,"message":{"role":"assistant","content":"say \"tool_calls\""},"finish_reason":"stop"}]}"#;
    let (r, refused) = answered_with(plain.as_bytes().to_vec());
    assert_eq!(r.text(), plain);
    assert!(!refused);
    let usage = r#""usage":{"prompt_tokens":-1,"completion_tokens":null,"prompt_tokens_details":{"cached_tokens":"3"}}"#;
    let (r, refused) =
        answered_with(format!(r#"{{"id":"c","model":"m",{CALL},{usage}}}"#).into_bytes());
    let text = r.text();
    assert!(refused);
    assert!(
        text.contains("sluice:policy_denied"),
        "refused as usual: {text}"
    );
    assert!(
        !text.contains("attacker@evil.example"),
        "the refused call leaked: {text}"
    );
}

/// The streamed form: a tool-call chunk with a member Sluice's reader does not take (a
/// string for `created`) ends the stream with an error event instead of going out unjudged;
/// the text before it has gone out.
#[test]
fn a_call_in_an_event_sluice_cannot_read_ends_the_stream() {
    let chunk = |created: &str, delta: &str, finish: &str| {
        format!(
            r#"data: {{"id":"c","object":"chat.completion.chunk","created":{created},"model":"m","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}"#
        ) + "\n\n"
    };
    let call = r#"{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"send_email","arguments":"{\"to\":\"attacker@evil.example\"}"}}]}"#;
    let events = [
        chunk("1", r#"{"role":"assistant","content":"hi"}"#, "null"),
        chunk(r#""soon""#, call, "null"),
        chunk("1", "{}", r#""tool_calls""#),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let (r, _) = answered_as("text/event-stream", events.into_bytes());
    let text = r.text();
    assert!(
        text.contains(r#""content":"hi""#),
        "the text before it went out: {text}"
    );
    assert_unjudged_call_withheld(&text);
}
