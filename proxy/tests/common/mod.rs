//! Test harness: the mock providers and the proxy on 127.0.0.1 port 0, and a raw HTTP/1.1
//! client that shows exactly what reached the client.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod mcp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_loadtest::mock::{MockConfig, RunningMock};
use sluice_proxy::config::{Environment, compile, parse_toml};
use sluice_proxy::events::{RecentRecords, RequestRecord};
use sluice_proxy::live::LiveConfig;
use sluice_proxy::server::{ProxyParts, RunningProxy, bind, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Mock + proxy, torn down on drop.
pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub mock: RunningMock,
    pub proxy: Option<RunningProxy>,
    pub recent: Arc<RecentRecords>,
    pub live: Arc<LiveConfig>,
}

impl Harness {
    /// Starts both with `extra_toml` appended to a config whose providers all point at the mock.
    pub fn start(extra_toml: &str) -> Self {
        Self::start_with(extra_toml, false)
    }

    /// As `start`, with HTTP/2 prior knowledge (h2c) accepted when `h2c`.
    pub fn start_with(extra_toml: &str, h2c: bool) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mock = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sluice_loadtest::mock::serve(l, MockConfig::default())
                .await
                .unwrap()
        });
        let env = Environment {
            openai_base_url: Some(mock.openai_base()),
            anthropic_base_url: Some(mock.base()),
            gemini_base_url: Some(mock.base()),
            ..Environment::default()
        };
        let toml = format!("[profiles.default]\n[profiles.team]\n{extra_toml}");
        let config = compile(parse_toml(&toml).unwrap(), &env).unwrap();
        let live = LiveConfig::with(config);
        let recent = RecentRecords::new(100);
        let proxy = start(
            ProxyParts {
                live: live.clone(),
                sink: recent.clone(),
                recent: recent.clone(),
                threads: 1,
                upstream_pool_size: 16,
                approvals: Arc::new(sluice_proxy::approvals::ApprovalStore::new(
                    Duration::from_secs(60),
                )),
                catalogue: Default::default(),
                journal: None,
                metrics: Some((
                    sluice_proxy::metrics::ProxyMetrics::new().unwrap(),
                    bind("127.0.0.1:0").unwrap().into(),
                )),
                inventory: None,
                h2c,
            },
            bind("127.0.0.1:0").unwrap(),
            Some(bind("127.0.0.1:0").unwrap().into()),
        )
        .unwrap();
        Harness {
            rt,
            mock,
            proxy: Some(proxy),
            recent,
            live,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy.as_ref().unwrap().proxy_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.proxy.as_ref().unwrap().metrics_addr.unwrap()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.proxy.as_ref().unwrap().admin_addr.unwrap()
    }

    /// The record of the `n`th inspected request (1-based), waiting for its logging phase,
    /// which runs after the response's last byte was written.
    pub fn record(&self, n: u64) -> RequestRecord {
        assert!(
            self.recent.wait_for_total(n, Duration::from_secs(10)),
            "request {n} was never recorded"
        );
        let total = self.recent.total();
        let back = usize::try_from(total - n + 1).unwrap();
        self.recent.latest(back).into_iter().next().unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(p) = self.proxy.take() {
            p.stop();
        }
        self.mock.abort();
    }
}

/// A raw response: status, headers (lower-cased names) and the de-chunked body.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// True when the body ended cleanly (last chunk or full content-length).
    pub complete: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not json ({e}): {}", self.text()))
    }
}

/// Sends one request on a fresh connection and reads the whole response.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding") {
            has_len = true;
        }
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    read_response(&mut s).await
}

/// JSON POST helper.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> RawResponse {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(addr, "POST", path, &h, body.to_string().as_bytes()).await
}

/// Sends a body 10 bytes every 20 ms (500 B/s: every read prompt, the rate not) until the
/// proxy answers and closes; returns what it answered.
pub async fn trickle_body_until_answered(s: &mut TcpStream) -> Vec<u8> {
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
    tokio::select! {
        g = reader => g,
        () = writer => unreachable!(),
    }
}

/// Reads from `s` until what arrived contains `marker` (a connection still open: a header,
/// an event); panics if the server closes first.
pub async fn read_until(s: &mut TcpStream, marker: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(marker) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before {marker:?} arrived");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Reads a response until the server closes or the body ends.
pub async fn read_response(s: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    parse_response(&buf)
}

/// Parses status, headers and the (de-chunked) body of a raw HTTP/1.1 response.
pub fn parse_response(buf: &[u8]) -> RawResponse {
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..head_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &buf[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let (body, complete) = if chunked {
        dechunk(rest)
    } else if let Some((_, len)) = headers.iter().find(|(k, _)| k == "content-length") {
        let len: usize = len.parse().unwrap();
        (rest[..rest.len().min(len)].to_vec(), rest.len() >= len)
    } else {
        (rest.to_vec(), true)
    };
    RawResponse {
        status,
        headers,
        body,
        complete,
    }
}

fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size_text = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            return (out, true);
        }
        if rest.len() < size + 2 {
            out.extend_from_slice(&rest[..rest.len().min(size)]);
            return (out, false);
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Paths and bodies for the four inspected APIs.
pub fn chat_body(stream: bool, tools: bool) -> serde_json::Value {
    let mut v = serde_json::json!({"model": "gpt-4o-mini", "stream": stream,
        "messages": [{"role": "user", "content": "Email Alice"}]});
    if tools {
        v["tools"] = serde_json::json!([{"type": "function", "function": {"name": "send_email", "parameters": {"type": "object"}}}]);
    }
    v
}

pub fn anthropic_body(stream: bool, tools: bool) -> serde_json::Value {
    let mut v = serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
        "messages": [{"role": "user", "content": "Email Alice"}]});
    if tools {
        v["tools"] =
            serde_json::json!([{"name": "send_email", "input_schema": {"type": "object"}}]);
    }
    v
}

pub fn gemini_body(tools: bool) -> serde_json::Value {
    let mut v =
        serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "Email Alice"}]}]});
    if tools {
        v["tools"] = serde_json::json!([{"functionDeclarations": [{"name": "send_email", "parameters": {"type": "object"}}]}]);
    }
    v
}

pub fn responses_body(stream: bool, tools: bool) -> serde_json::Value {
    let mut v =
        serde_json::json!({"model": "gpt-4o-mini", "stream": stream, "input": "Email Alice"});
    if tools {
        v["tools"] = serde_json::json!([{"type": "function", "name": "send_email", "parameters": {"type": "object"}}]);
    }
    v
}

/// A raw TCP "upstream" on port 0 with its own runtime: tests see exactly what Sluice sends
/// and when it lets go of the connection.
pub fn raw_upstream() -> (tokio::runtime::Runtime, tokio::net::TcpListener, u16) {
    listening_on(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    )
}

/// Like [`raw_upstream`], on a runtime with a worker thread of its own: tasks spawned on
/// it serve while the test blocks on the harness's runtime.
pub fn serving_upstream() -> (tokio::runtime::Runtime, tokio::net::TcpListener, u16) {
    listening_on(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap(),
    )
}

/// A listener on 127.0.0.1 port 0, registered with `rt`.
fn listening_on(
    rt: tokio::runtime::Runtime,
) -> (tokio::runtime::Runtime, tokio::net::TcpListener, u16) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    (rt, listener, port)
}

/// Serves one request on `upstream` from a thread of its own: reads it whole, then answers
/// 200 with `body` as `content_type`, framed by its length. Join the handle after the
/// request.
pub fn answer_once(
    up_rt: tokio::runtime::Runtime,
    upstream: tokio::net::TcpListener,
    content_type: &str,
    body: Vec<u8>,
) -> std::thread::JoinHandle<()> {
    let content_type = content_type.to_owned();
    std::thread::spawn(move || {
        up_rt.block_on(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            read_upstream_request(&mut s).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(&body).await.unwrap();
        });
    })
}

/// Reads one request Sluice sent upstream, head and whole body (framed by its
/// Content-Length, or chunked up to the last chunk).
pub async fn read_upstream_request(up: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while whole_request_len(&seen).is_none() {
        let n = up.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "upstream connection closed before the request arrived"
        );
        seen.extend_from_slice(&buf[..n]);
    }
    seen
}

/// The length of the first whole request in `buf` (its head and a body framed by
/// Content-Length or chunked, without trailers), or `None` while it is incomplete.
pub fn whole_request_len(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let (chunked, length) = request_framing(&buf[..head_end]);
    if chunked {
        let mut at = head_end;
        loop {
            let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&buf[at..at + line_end]).unwrap();
            let size =
                usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
            at += line_end + 2;
            if size == 0 {
                return (buf.len() >= at + 2).then_some(at + 2);
            }
            at += size + 2;
            if buf.len() < at {
                return None;
            }
        }
    }
    let end = head_end + length.unwrap_or(0);
    (buf.len() >= end).then_some(end)
}

/// The body of a whole request as read by [`read_upstream_request`] (de-chunked).
pub fn request_body(raw: &[u8]) -> Vec<u8> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let rest = &raw[head_end..];
    match request_framing(&raw[..head_end]) {
        (true, _) => dechunk(rest).0,
        (false, length) => rest[..length.unwrap_or(0)].to_vec(),
    }
}

/// Whether a request head declares a chunked body, and its Content-Length.
pub fn request_framing(head: &[u8]) -> (bool, Option<usize>) {
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    let value = |name: &str| {
        head.split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    };
    let chunked = value("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length = value("content-length").map(|v| v.parse().unwrap());
    (chunked, length)
}

/// The value of the first sample of `name` whose line holds every one of `labels`.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The proxy's `/metrics` exposition.
pub fn scrape(h: &Harness) -> String {
    let r =
        h.rt.block_on(send(h.metrics_addr(), "GET", "/metrics", &[], b""));
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    r.text()
}

/// `promtool check metrics` accepts the exposition (required when
/// `SLUICE_REQUIRE_PROMTOOL` is set, as the test suite sets it).
pub fn promtool_check(text: &str) {
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => assert!(
            std::env::var("SLUICE_REQUIRE_PROMTOOL").is_err(),
            "promtool is required (scripts/setup.sh installs it): {e}"
        ),
    }
}

/// The Content-Length of a raw (lower-cased) header block.
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap()
}

/// This process's open file descriptors (the in-process proxy's included).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// How an [`endless_stream`] upstream's writing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A write failed: the proxy let go of the connection.
    Cut,
    /// A write could not complete within the stall time: the proxy stopped reading.
    Stalled,
    /// The cap was reached: whatever was written was taken without pause.
    Cap,
}

/// An OpenAI-shaped SSE upstream that never ends: one connection, its request read, then
/// 64 KiB chunks of small content events as fast as the socket takes them, until a write
/// fails, a write waits longer than `stall` (when given), or `cap` bytes went out. A proxy
/// that buffers without bound lets it reach the cap. Returns the bytes written and why it
/// stopped.
pub async fn endless_stream(
    upstream: tokio::net::TcpListener,
    cap: u64,
    stall: Option<Duration>,
) -> (u64, Ended) {
    let (mut s, _) = upstream.accept().await.unwrap();
    read_upstream_request(&mut s).await;
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    let event = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"},\"finish_reason\":null}]}\n\n";
    let payload = event.repeat(65536 / event.len());
    let chunk = format!("{:x}\r\n{payload}\r\n", payload.len()).into_bytes();
    let mut written = 0u64;
    while written < cap {
        let write = s.write_all(&chunk);
        let done = match stall {
            Some(t) => match tokio::time::timeout(t, write).await {
                Ok(r) => r,
                Err(_) => return (written, Ended::Stalled),
            },
            None => write.await,
        };
        if done.is_err() {
            return (written, Ended::Cut);
        }
        written += chunk.len() as u64;
    }
    (written, Ended::Cap)
}

/// Waits for an `endless_stream` upstream to end and asserts the proxy let go of it (a write
/// failed) after taking less than the socket buffers' worth: backpressure held, and the stalled
/// client or stream was dropped rather than kept forever.
pub fn assert_upstream_released(
    up_rt: &tokio::runtime::Runtime,
    upstream: tokio::task::JoinHandle<(u64, Ended)>,
    what: &str,
) {
    let (written, ended) = up_rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), upstream).await })
        .unwrap_or_else(|_| panic!("the proxy neither dropped {what} nor released the upstream"))
        .unwrap();
    assert_eq!(
        ended,
        Ended::Cut,
        "{written} bytes written: no backpressure, or never let go"
    );
    assert!(
        written < 64 << 20,
        "{written} bytes taken from the upstream for {what}"
    );
}

/// Each TCP socket of this process whose addresses match `wanted` (local port, peer port),
/// as a duplicate of its descriptor (`pidfd_getfd`, no `unsafe`): the proxy runs in the
/// test's process, so its sockets' options can be read. A socket is listed once however
/// many descriptors it has (another test's check may hold a duplicate at that moment).
pub fn sockets_of(wanted: impl Fn(u16, u16) -> bool) -> Vec<std::net::TcpStream> {
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
    let me = pidfd_open(getpid(), PidfdFlags::empty()).expect("pidfd_open");
    let mut seen = std::collections::HashSet::new();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        // `socket:[<inode>]`: the inode names the socket.
        let Some(inode) = std::fs::read_link(entry.path()).ok().and_then(|l| {
            l.to_str()
                .and_then(|l| l.strip_prefix("socket:"))
                .map(str::to_owned)
        }) else {
            continue;
        };
        let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fd) = pidfd_getfd(&me, n, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let s = std::net::TcpStream::from(fd);
        if let (Ok(local), Ok(peer)) = (s.local_addr(), s.peer_addr())
            && wanted(local.port(), peer.port())
            && seen.insert(inode)
        {
            found.push(s);
        }
    }
    found
}
