//! The fixture over Streamable HTTP: `/mcp`, both eras.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::err;
use super::surface::{Fixture, FixtureSession};

#[derive(Clone)]
struct AppState {
    fixture: Arc<Fixture>,
    sessions: Arc<Mutex<HashMap<String, Arc<FixtureSession>>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

fn sessions(s: &AppState) -> std::sync::MutexGuard<'_, HashMap<String, Arc<FixtureSession>>> {
    match s.sessions.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn json_response(status: StatusCode, body: &Value, session: Option<&str>) -> Response {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(s) = session {
        b = b.header("mcp-session-id", s);
    }
    b.body(Body::from(body.to_string())).unwrap_or_default()
}

fn status_only(status: StatusCode) -> Response {
    Response::builder()
        .status(status)
        .body(Body::empty())
        .unwrap_or_default()
}

async fn post_mcp(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &err(Value::Null, -32700, "Parse error"),
            None,
        );
    };
    let method = msg
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let id = msg.get("id").cloned();
    let params = msg.get("params").cloned().unwrap_or_else(|| json!({}));
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let stateless = params
        .pointer("/_meta/io.modelcontextprotocol~1protocolVersion")
        .is_some();
    let session = if method == "initialize" {
        let n = s.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sid = format!("fixture-session-{n}");
        let sess = s.fixture.new_session();
        sessions(&s).insert(sid.clone(), sess.clone());
        Some((sid, sess))
    } else if stateless {
        if header("mcp-protocol-version").as_deref() != Some("2026-07-28")
            || header("mcp-method").as_deref() != Some(method.as_str())
        {
            return json_response(
                StatusCode::BAD_REQUEST,
                &err(
                    id.unwrap_or(Value::Null),
                    -32020,
                    "Mcp-Method or MCP-Protocol-Version missing or wrong",
                ),
                None,
            );
        }
        None
    } else {
        match header("mcp-session-id") {
            None => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &err(
                        id.unwrap_or(Value::Null),
                        -32600,
                        "Bad Request: Server not initialized",
                    ),
                    None,
                );
            }
            Some(sid) => match sessions(&s).get(&sid).cloned() {
                Some(sess) => Some((sid, sess)),
                None => {
                    return json_response(
                        StatusCode::NOT_FOUND,
                        &err(id.unwrap_or(Value::Null), -32001, "Session not found"),
                        None,
                    );
                }
            },
        }
    };
    if method.is_empty() {
        s.fixture.answer_from_client(&msg);
        return status_only(StatusCode::ACCEPTED);
    }
    let Some(id) = id else {
        return status_only(StatusCode::ACCEPTED);
    };
    let (sid, sess) = match session {
        Some((sid, sess)) => (Some(sid), sess),
        None => (None, s.fixture.new_session()),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Value>(64);
    let fixture = s.fixture.clone();
    let m = method.clone();
    let mut task =
        tokio::spawn(async move { fixture.handle(&sess, id, &m, &params, stateless, &tx).await });
    let initialize = method == "initialize";
    tokio::select! {
        biased;
        Some(first) = rx.recv() => {
            let stream = async_stream_of(first, rx, task);
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(stream))
                .unwrap_or_default()
        }
        answer = &mut task => {
            let answer = answer.unwrap_or_else(|_| err(Value::Null, -32603, "internal error"));
            json_response(StatusCode::OK, &answer, if initialize { sid.as_deref() } else { None })
        }
    }
}

/// The SSE body: the first message, the rest, then the answer.
fn async_stream_of(
    first: Value,
    rx: tokio::sync::mpsc::Receiver<Value>,
    task: tokio::task::JoinHandle<Value>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let event =
        |v: &Value| Ok::<_, std::io::Error>(Bytes::from(format!("event: message\ndata: {v}\n\n")));
    let head = futures_util::stream::iter([event(&first)]);
    let rest = tokio_stream_from(rx).map(move |v| event(&v));
    let tail = futures_util::stream::once(async move {
        let answer = task
            .await
            .unwrap_or_else(|_| err(Value::Null, -32603, "internal error"));
        Ok(Bytes::from(format!("event: message\ndata: {answer}\n\n")))
    });
    head.chain(rest).chain(tail)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Value>,
) -> impl futures_util::Stream<Item = Value> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn get_mcp(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let sid = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if sid.is_empty() {
        return status_only(StatusCode::METHOD_NOT_ALLOWED);
    }
    if !sessions(&s).contains_key(sid) {
        return status_only(StatusCode::NOT_FOUND);
    }
    let rx = s.fixture.changes.subscribe();
    // A stream opened after the change still hears of it.
    let catch_up = s.fixture.rug_pulled().then(|| {
        Ok::<_, std::io::Error>(Bytes::from(
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n",
        ))
    });
    let live = futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(v) => Some((
                Ok::<_, std::io::Error>(Bytes::from(format!("event: message\ndata: {v}\n\n"))),
                rx,
            )),
            Err(_) => None,
        }
    });
    let stream = futures_util::stream::iter(catch_up).chain(live);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

async fn delete_mcp(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let sid = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if sessions(&s).remove(sid).is_some() {
        status_only(StatusCode::OK)
    } else {
        status_only(StatusCode::NOT_FOUND)
    }
}

async fn rug_pull(State(s): State<AppState>) -> StatusCode {
    s.fixture.rug_pull();
    StatusCode::OK
}

async fn calls(State(s): State<AppState>) -> axum::Json<Value> {
    let calls = match s.fixture.calls.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    axum::Json(json!({ "calls": calls }))
}

async fn expire_sessions(State(s): State<AppState>) -> StatusCode {
    sessions(&s).clear();
    StatusCode::OK
}

/// A running fixture.
pub struct RunningFixture {
    /// Its address.
    pub addr: SocketAddr,
    /// Its state.
    pub fixture: Arc<Fixture>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningFixture {
    /// The MCP endpoint.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Serves the fixture on `listener` (`/mcp`; `/_fixture/rug-pull`, `/_fixture/calls`,
/// `/_fixture/expire-sessions`).
pub async fn serve(listener: tokio::net::TcpListener) -> anyhow::Result<RunningFixture> {
    let addr = listener.local_addr()?;
    let fixture = Fixture::new();
    let state = AppState {
        fixture: fixture.clone(),
        sessions: Arc::default(),
        next: Arc::default(),
    };
    let app = Router::new()
        .route("/mcp", post(post_mcp).get(get_mcp).delete(delete_mcp))
        .route("/_fixture/rug-pull", post(rug_pull))
        .route("/_fixture/calls", get(calls))
        .route("/_fixture/expire-sessions", post(expire_sessions))
        .with_state(state);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(RunningFixture {
        addr,
        fixture,
        task,
    })
}
