//! Connections to the MCP servers the gateway fronts: one per server per proxy, shared by
//! every client session and multiplexed with ids of our own. A connection establishes its
//! session lazily (`server/discover` for the stateless era, `initialize` for the legacy
//! one), and re-establishes it transparently when the server expired it (HTTP 404) or its
//! process restarted, retrying the request once.

mod http;
mod stdio;
mod subscriptions;

pub use subscriptions::ResourceHold;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::jsonrpc;
use crate::config::{McpServer, McpTransport};

/// The newest legacy revision the gateway speaks upstream.
pub const LEGACY_VERSION: &str = "2025-11-25";
/// The stateless revision.
pub const STATELESS_VERSION: &str = "2026-07-28";

/// Why a request to a server failed (no answer; an answer with a JSON-RPC error is not this).
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// Could not connect, or the process could not start.
    #[error("MCP server '{server}' is unreachable: {detail}")]
    Unreachable {
        /// The server.
        server: Arc<str>,
        /// What failed.
        detail: String,
    },
    /// The server answered something that is not MCP.
    #[error("MCP server '{server}' answered badly: {detail}")]
    Protocol {
        /// The server.
        server: Arc<str>,
        /// What was wrong.
        detail: String,
    },
    /// No answer in time.
    #[error("MCP server '{server}' did not answer within {secs} s")]
    Timeout {
        /// The server.
        server: Arc<str>,
        /// The deadline.
        secs: u64,
    },
}

/// What a session handshake learned.
#[derive(Debug, Clone)]
pub struct Established {
    /// The negotiated protocol version.
    pub version: String,
    /// True for the stateless era.
    pub stateless: bool,
    /// The server's capabilities.
    pub capabilities: Value,
    /// `Mcp-Session-Id`, when the server minted one.
    pub session_id: Option<String>,
    /// Counts handshakes, so a request can tell whether the session it used was replaced.
    pub generation: u64,
}

/// The capabilities the gateway declares to servers: it relays sampling, elicitation and
/// roots requests to its clients.
pub fn client_capabilities() -> Value {
    json!({"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {"listChanged": true}})
}

/// Who the gateway says it is.
pub fn client_info() -> Value {
    json!({"name": "sluice", "version": env!("CARGO_PKG_VERSION")})
}

/// An answer: the server's response message (with its `result` or `error`).
pub type Answer = Value;

/// One MCP server's connection.
pub struct Connection {
    /// The server as configured.
    pub server: Arc<McpServer>,
    kind: Kind,
    next_id: AtomicU64,
    /// Notifications and requests the server sent outside any request (list changes,
    /// resource updates).
    pub unsolicited: broadcast::Sender<Value>,
    subscriptions: subscriptions::Subscriptions,
}

#[allow(clippy::large_enum_variant, reason = "one per server, never moved")]
enum Kind {
    Http(http::HttpConn),
    Stdio(stdio::StdioConn),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection({})", self.server.name)
    }
}

impl Connection {
    /// A connection to `server`; nothing is sent until the first request.
    pub fn new(
        server: Arc<McpServer>,
        counted: Option<Arc<crate::upstream_pool::UpstreamConnections>>,
    ) -> Arc<Self> {
        let (unsolicited, _) = broadcast::channel(256);
        let kind = match &server.transport {
            McpTransport::Http(up) => Kind::Http(http::HttpConn::new(up.clone(), counted)),
            McpTransport::Stdio { command, env } => {
                Kind::Stdio(stdio::StdioConn::new(command.clone(), env.clone()))
            }
        };
        Arc::new(Self {
            server,
            kind,
            next_id: AtomicU64::new(1),
            unsolicited,
            subscriptions: subscriptions::Subscriptions::default(),
        })
    }

    /// A request id of ours, unique on this connection.
    pub fn new_id(&self) -> Value {
        Value::String(format!(
            "sluice-{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Sends a request; `events` receives the notifications and server requests the server
    /// sends about it before its answer. The answer's id is ours; the caller re-ids it.
    pub async fn request(
        self: &Arc<Self>,
        method: &str,
        params: Option<Value>,
        events: Option<mpsc::Sender<Value>>,
    ) -> Result<Answer, UpstreamError> {
        self.request_as(self.new_id(), method, params, events).await
    }

    /// [`Connection::request`] with an id chosen by the caller (to cancel it later).
    pub async fn request_as(
        self: &Arc<Self>,
        id: Value,
        method: &str,
        params: Option<Value>,
        events: Option<mpsc::Sender<Value>>,
    ) -> Result<Answer, UpstreamError> {
        let deadline = self.server.timeout;
        let fut = async {
            for attempt in 0..2 {
                let est = self.establish().await?;
                let id = id.clone();
                let mut params = with_meta(params.clone(), &est);
                tag_progress(&mut params, &id);
                let msg = jsonrpc::request(id.clone(), method, params);
                // Boxed: awaited in place, each exchange's future (kilobytes) would be held
                // twice in this one, and this one is copied whole into its box by the caller.
                let sent = match &self.kind {
                    Kind::Http(h) => Box::pin(h.exchange(self, &est, msg, events.clone())).await,
                    Kind::Stdio(s) => Box::pin(s.exchange(self, &est, msg, events.clone())).await,
                };
                match sent {
                    Err(Retry::SessionGone) if attempt == 0 => {
                        self.reset(est.generation);
                        continue;
                    }
                    Err(Retry::SessionGone) => {
                        return Err(UpstreamError::Protocol {
                            server: self.server.name.clone(),
                            detail: "the server ended the new session at once".into(),
                        });
                    }
                    Err(Retry::Failed(e)) => return Err(e),
                    Ok(answer) => return Ok(answer),
                }
            }
            Err(UpstreamError::Protocol {
                server: self.server.name.clone(),
                detail: "no answer".into(),
            })
        };
        match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                server: self.server.name.clone(),
                secs: deadline.as_secs(),
            }),
        }
    }

    /// Sends a notification (cancellation, roots changes).
    pub async fn notify(self: &Arc<Self>, method: &str, params: Option<Value>) {
        let Ok(est) = self.establish().await else {
            return;
        };
        let msg = jsonrpc::notification(method, with_meta(params, &est));
        match &self.kind {
            Kind::Http(h) => h.post_one_way(self, &est, msg).await,
            Kind::Stdio(s) => s.send(msg).await,
        }
    }

    /// Sends the client's answer to a request the server made (sampling, elicitation).
    pub async fn respond(self: &Arc<Self>, answer: Value) {
        let Ok(est) = self.establish().await else {
            return;
        };
        match &self.kind {
            Kind::Http(h) => h.post_one_way(self, &est, answer).await,
            Kind::Stdio(s) => s.send(answer).await,
        }
    }

    /// The current session, established now if there is none.
    pub async fn establish(self: &Arc<Self>) -> Result<Established, UpstreamError> {
        match &self.kind {
            Kind::Http(h) => h.establish(self).await,
            Kind::Stdio(s) => s.establish(self).await,
        }
    }

    fn reset(&self, generation: u64) {
        match &self.kind {
            Kind::Http(h) => h.reset(generation),
            Kind::Stdio(s) => s.reset(generation),
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> UpstreamError {
        UpstreamError::Protocol {
            server: self.server.name.clone(),
            detail: detail.into(),
        }
    }

    fn unreachable(&self, detail: impl Into<String>) -> UpstreamError {
        UpstreamError::Unreachable {
            server: self.server.name.clone(),
            detail: detail.into(),
        }
    }

    /// A message that arrived outside any request.
    fn unsolicited(&self, msg: Value) {
        // The acknowledgement of the gateway's own listen request is the gateway's.
        if msg.get("method").and_then(Value::as_str)
            == Some("notifications/subscriptions/acknowledged")
        {
            self.acknowledged(&msg);
            return;
        }
        let _ = self.unsolicited.send(msg);
    }
}

/// Why an exchange did not produce an answer.
enum Retry {
    /// The server no longer knows our session: establish a new one and retry once.
    SessionGone,
    /// Give up.
    Failed(UpstreamError),
}

/// The gateway's own `subscriptions/listen` request to a stateless server.
fn listen_request(est: &Established, filter: &Value, id: String) -> Value {
    jsonrpc::request(
        Value::String(id),
        "subscriptions/listen",
        with_meta(Some(json!({ "notifications": filter })), est),
    )
}

/// Adds the stateless era's per-request `_meta` (version, capabilities, client).
fn with_meta(params: Option<Value>, est: &Established) -> Option<Value> {
    if !est.stateless {
        // A stateless client's per-request `_meta` is ours to state, not a legacy
        // session's: the server would take the request for a stateless one.
        let mut params = params;
        if let Some(Value::Object(m)) = params.as_mut().and_then(|p| p.get_mut("_meta")) {
            m.retain(|k, _| !k.starts_with("io.modelcontextprotocol/"));
            if m.is_empty()
                && let Some(Value::Object(p)) = params.as_mut()
            {
                p.remove("_meta");
            }
        }
        return params;
    }
    let mut p = match params {
        Some(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let meta = p
        .entry("_meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Value::Object(m) = meta {
        m.insert(
            "io.modelcontextprotocol/protocolVersion".into(),
            Value::String(est.version.clone()),
        );
        m.insert(
            "io.modelcontextprotocol/clientCapabilities".into(),
            client_capabilities(),
        );
        m.insert("io.modelcontextprotocol/clientInfo".into(), client_info());
    }
    Some(Value::Object(p))
}

/// Replaces a client's progress token with one naming our request id, unique across all
/// the clients sharing this connection; the gateway restores the client's token.
fn tag_progress(params: &mut Option<Value>, id: &Value) {
    if let Some(tok) = params
        .as_mut()
        .and_then(|p| p.get_mut("_meta"))
        .and_then(|m| m.get_mut("progressToken"))
    {
        *tok = Value::String(format!("sluice-p-{}", id.as_str().unwrap_or("")));
    }
}

/// The params of the legacy handshake.
fn initialize_params() -> Value {
    json!({
        "protocolVersion": LEGACY_VERSION,
        "capabilities": client_capabilities(),
        "clientInfo": client_info(),
    })
}

/// Reads an `initialize` or `server/discover` answer.
fn read_handshake(
    conn: &Connection,
    answer: &Value,
    stateless: bool,
) -> Result<(String, Value), UpstreamError> {
    if let Some(e) = answer.get("error") {
        return Err(conn.protocol(format!(
            "the handshake was refused: {}",
            e.get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
        )));
    }
    let r = answer
        .get("result")
        .ok_or_else(|| conn.protocol("the handshake answer has no result"))?;
    let version = if stateless {
        let supported = r
            .get("supportedVersions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !supported.iter().any(|v| v == STATELESS_VERSION) {
            return Err(conn.protocol("server/discover lists no version Sluice speaks"));
        }
        STATELESS_VERSION.to_owned()
    } else {
        r.get("protocolVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| conn.protocol("initialize answered no protocolVersion"))?
            .to_owned()
    };
    let caps = r.get("capabilities").cloned().unwrap_or_else(|| json!({}));
    Ok((version, caps))
}
