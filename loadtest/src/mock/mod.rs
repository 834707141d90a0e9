//! Mock OpenAI, Anthropic and Gemini upstreams, written from the providers' public API
//! references (request/response objects and streaming event sequences), not from Sluice's
//! code. One server answers all three, at the paths the real APIs use:
//!
//! - OpenAI: `POST /v1/chat/completions`, `POST /v1/responses`, `GET /v1/models`
//! - Anthropic: `POST /v1/messages`
//! - Gemini: `POST /{v1,v1beta}/models/{model}:generateContent` and `:streamGenerateContent`
//!
//! Behaviour is scripted per request with `x-mock-*` headers (see [`script::Knobs`]). A
//! request with `x-mock-record: <tag>` is kept (the newest 256), for `GET /mock/received`.

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod script;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use futures_util::StreamExt;
use script::{Fault, Knobs};

/// Start-up defaults for every request.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Delay before the response header, ms.
    pub latency_ms: u64,
    /// Delay between stream chunks, ms.
    pub chunk_delay_ms: u64,
    /// Words per content delta.
    pub tokens_per_chunk: usize,
    /// Words in a text answer.
    pub words: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            chunk_delay_ms: 0,
            tokens_per_chunk: 1,
            words: 12,
        }
    }
}

/// What the mock served; tests compare it with what Sluice recorded.
#[derive(Debug, Default)]
pub struct MockStats {
    /// Requests answered (any status).
    pub requests: AtomicU64,
    /// Output tokens billed in usage blocks.
    pub output_tokens: AtomicU64,
    /// Streams whose client went away before the stream finished.
    pub aborted_streams: AtomicU64,
    /// Woken whenever a stream is aborted.
    pub aborted_notify: tokio::sync::Notify,
    /// `(X-Request-Id, output tokens)` of each successful answer that carried an id; at most
    /// a million are kept.
    pub served: std::sync::Mutex<Vec<(String, u64)>>,
    /// `(x-mock-record tag, path, body)` of requests that asked to be recorded, so a test can
    /// see what reached the provider; the newest 256 are kept.
    pub received: std::sync::Mutex<std::collections::VecDeque<(String, String, String)>>,
}

/// Shared state.
#[derive(Debug, Clone)]
pub struct MockState {
    /// Defaults.
    pub config: Arc<MockConfig>,
    /// Counters.
    pub stats: Arc<MockStats>,
}

/// A response a provider module rendered.
pub enum Rendered {
    /// A complete JSON body.
    Json(StatusCode, String),
    /// An SSE stream: events (each ending in its blank line), and the in-stream error event
    /// this provider uses.
    Sse {
        /// The events.
        events: Vec<String>,
        /// The provider's mid-stream error event.
        error_event: String,
    },
}

/// The router serving all three providers.
pub fn router(state: MockState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/responses", post(openai::responses))
        .route("/v1/models", get(openai::models))
        .route("/v1/messages", post(anthropic::messages))
        .route("/{version}/models/{model_call}", post(gemini::generate))
        .route("/mock/stats", get(stats))
        .route("/mock/served", get(served))
        .route("/mock/received", get(received))
        .layer(axum::middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

/// Keeps the body of a request carrying `x-mock-record: <tag>` (others pass untouched).
async fn record(
    State(s): State<MockState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(tag) = req
        .headers()
        .get("x-mock-record")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return Response::builder()
            .status(StatusCode::PAYLOAD_TOO_LARGE)
            .body(Body::empty())
            .unwrap_or_default();
    };
    {
        let mut list = match s.stats.received.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if list.len() == 256 {
            list.pop_front();
        }
        list.push_back((
            tag,
            parts.uri.path().to_owned(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn received(State(s): State<MockState>) -> axum::Json<serde_json::Value> {
    let list = match s.stats.received.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let items: Vec<serde_json::Value> = list
        .iter()
        .map(|(t, p, b)| serde_json::json!({"tag": t, "path": p, "body": b}))
        .collect();
    axum::Json(serde_json::json!({ "received": items }))
}

async fn served(State(s): State<MockState>) -> axum::Json<serde_json::Value> {
    let list = match s.stats.served.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    axum::Json(serde_json::json!({ "served": list }))
}

async fn stats(State(s): State<MockState>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "requests": s.stats.requests.load(Ordering::Relaxed),
        "output_tokens": s.stats.output_tokens.load(Ordering::Relaxed),
        "aborted_streams": s.stats.aborted_streams.load(Ordering::Relaxed),
    }))
}

/// A running mock.
pub struct RunningMock {
    /// Its address.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<MockStats>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningMock {
    /// Base URL for OpenAI clients (`…/v1`).
    pub fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    /// Base URL for Anthropic and Gemini clients.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Stops serving.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// A listening socket for a mock that takes connections in bursts. tokio's `bind` listens
/// with a backlog of 1,024: a proxy opening a thousand upstream connections at once
/// overflowed it while the mock was busy, and the kernel reset connections whose SYN
/// cookies then failed (the upgrade test's streams got 502s before any upgrade).
pub fn listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // The kernel caps it at net.core.somaxconn.
    socket.listen(65_535)
}

/// Serves the mock on `listener` in the current runtime.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: MockConfig,
) -> std::io::Result<RunningMock> {
    let addr = listener.local_addr()?;
    let stats = Arc::new(MockStats::default());
    let state = MockState {
        config: Arc::new(config),
        stats: stats.clone(),
    };
    let app = router(state);
    let task = tokio::spawn(async move {
        let listener = NoDelay(listener);
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "mock provider stopped");
        }
    });
    Ok(RunningMock { addr, stats, task })
}

/// A listener that sets TCP_NODELAY on each connection: SSE events must not wait for Nagle.
struct NoDelay(tokio::net::TcpListener);

impl axum::serve::Listener for NoDelay {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((s, a)) => {
                    let _ = s.set_nodelay(true);
                    return (s, a);
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }
    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Turns a rendered answer into the HTTP response, applying latency, chunking and faults.
pub async fn respond(
    state: &MockState,
    knobs: Knobs,
    rendered: Rendered,
    output_tokens: u64,
) -> Response {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    if knobs.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
    }
    let ok = match &rendered {
        Rendered::Json(status, _) => status.is_success(),
        Rendered::Sse { .. } => true,
    };
    if ok && let Some(id) = &knobs.request_id {
        let mut served = match state.stats.served.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if served.len() < 1_000_000 {
            served.push((id.clone(), output_tokens));
        }
    }
    match rendered {
        Rendered::Json(status, body) => {
            if status.is_success() {
                state
                    .stats
                    .output_tokens
                    .fetch_add(output_tokens, Ordering::Relaxed);
            }
            let mut b = Response::builder()
                .status(status)
                .header("content-type", "application/json");
            if status == StatusCode::TOO_MANY_REQUESTS {
                b = b.header("retry-after", "2");
            }
            b.body(Body::from(body))
                .unwrap_or_else(|_| Response::new(Body::empty()))
        }
        Rendered::Sse {
            events,
            error_event,
        } => {
            state
                .stats
                .output_tokens
                .fetch_add(output_tokens, Ordering::Relaxed);
            sse_response(state, knobs, events, error_event)
        }
    }
}

enum Piece {
    Data(Bytes),
    Reset,
    Stall,
}

fn sse_response(
    state: &MockState,
    knobs: Knobs,
    mut events: Vec<String>,
    error_event: String,
) -> Response {
    let mut tail = None;
    match knobs.fault {
        Fault::DisconnectAfter(n) => {
            events.truncate(n);
            tail = Some(Piece::Reset);
        }
        Fault::EndAfter(n) => events.truncate(n),
        Fault::ErrorEventAfter(n) => {
            events.truncate(n);
            events.push(error_event);
        }
        Fault::StallAfter(n) => {
            events.truncate(n);
            tail = Some(Piece::Stall);
        }
        Fault::HugeEventAfter(n, size) => {
            events.truncate(n);
            let mut huge = String::with_capacity(size + 8);
            huge.push_str("data: ");
            huge.extend(std::iter::repeat_n('x', size));
            events.push(huge);
            tail = Some(Piece::Stall);
        }
        Fault::None | Fault::Status(_) => {}
    }
    let mut pieces: Vec<Piece> = if knobs.chunk_bytes > 0 {
        let all: Vec<u8> = events.concat().into_bytes();
        all.chunks(knobs.chunk_bytes)
            .map(|c| Piece::Data(Bytes::copy_from_slice(c)))
            .collect()
    } else {
        events
            .into_iter()
            .map(|e| Piece::Data(Bytes::from(e)))
            .collect()
    };
    if let Some(t) = tail {
        pieces.push(t);
    }
    let guard = AbortGuard {
        stats: state.stats.clone(),
        finished: false,
    };
    let delay = Duration::from_millis(knobs.chunk_delay_ms);
    let stream = futures_util::stream::unfold(
        (pieces.into_iter(), guard, true),
        move |(mut it, mut guard, first)| async move {
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match it.next() {
                Some(Piece::Data(b)) => Some((Ok::<Bytes, std::io::Error>(b), (it, guard, false))),
                Some(Piece::Reset) => {
                    guard.complete();
                    Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "mock disconnect",
                        )),
                        (it, guard, false),
                    ))
                }
                Some(Piece::Stall) => {
                    // Silent until the client goes away; the guard then counts an abort.
                    std::future::pending::<()>().await;
                    None
                }
                None => {
                    guard.complete();
                    None
                }
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream.boxed()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Counts a stream dropped before it finished: the client (or Sluice) went away.
struct AbortGuard {
    stats: Arc<MockStats>,
    finished: bool,
}

impl AbortGuard {
    fn complete(&mut self) {
        self.finished = true;
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.stats.aborted_streams.fetch_add(1, Ordering::Relaxed);
            self.stats.aborted_notify.notify_waiters();
        }
    }
}

/// The checks every handler makes first: the body must be JSON (else 400), and an injected
/// status fault answers at once. `error_json(status, message)` renders the provider's error
/// body; `bad_json` is the provider's own wording for an unparseable body.
pub async fn preflight(
    state: &MockState,
    knobs: Knobs,
    body: &Bytes,
    error_json: fn(u16, &str) -> String,
    bad_json: &str,
) -> Result<(Knobs, serde_json::Value), Response> {
    let Ok(req) = serde_json::from_slice(body) else {
        let r = Rendered::Json(StatusCode::BAD_REQUEST, error_json(400, bad_json));
        return Err(respond(state, knobs, r, 0).await);
    };
    if let Fault::Status(s) = knobs.fault {
        let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err(respond(
            state,
            knobs,
            Rendered::Json(status, error_json(s, "mock fault")),
            0,
        )
        .await);
    }
    Ok((knobs, req))
}

/// Unix seconds now, or the `x-mock-created` header's value (for byte-exact comparisons).
pub fn now(headers: &HeaderMap) -> u64 {
    headers
        .get("x-mock-created")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
}

/// Knobs from the request headers.
pub fn knobs(state: &MockState, headers: &HeaderMap) -> Knobs {
    Knobs::from_headers(headers, &state.config)
}
