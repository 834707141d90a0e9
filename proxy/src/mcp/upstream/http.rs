//! Streamable HTTP to a server, either era, over Pingora's connector (the same TLS,
//! pooling and timeouts as the LLM traffic).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::protocols::http::client::HttpSession;
use serde_json::Value;
use tokio::sync::{Mutex, mpsc};

use super::{Connection, Established, Retry, STATELESS_VERSION, UpstreamError};
use crate::config::{Limits, McpEra, Upstream};
use crate::mcp::{LEGACY_VERSIONS, jsonrpc};
use crate::sse::{Framed, SseFramer, parse_event};

mod request;
mod standing;

/// Largest message read from a server.
const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

pub(super) struct HttpConn {
    up: Arc<Upstream>,
    connector: Connector,
    state: Mutex<Option<Established>>,
    generation: AtomicU64,
    /// The generation whose session was reported gone, so the next `establish` replaces it.
    stale: AtomicU64,
    counted: Option<Arc<crate::upstream_pool::UpstreamConnections>>,
}

/// A response being read.
struct Response {
    session: HttpSession,
    status: u16,
    sse: bool,
    session_id: Option<String>,
    /// Counts the connection in use until the response is read.
    _in_use: Option<crate::upstream_pool::InUse>,
}

impl HttpConn {
    pub(super) fn new(
        up: Arc<Upstream>,
        counted: Option<Arc<crate::upstream_pool::UpstreamConnections>>,
    ) -> Self {
        Self {
            counted,
            up,
            connector: Connector::new(None),
            state: Mutex::new(None),
            generation: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        }
    }

    pub(super) fn reset(&self, generation: u64) {
        self.stale.fetch_max(generation, Ordering::Relaxed);
    }

    fn limits() -> Limits {
        Limits {
            upstream_idle_timeout: Duration::from_secs(300),
            // The whole request is written before the answer is read (no R38 wait to
            // cut short), and this timeout covers the whole write, not one piece of it.
            upstream_write_timeout: Duration::from_secs(300),
            ..Limits::default()
        }
    }

    /// Opens a request and reads its header; a pooled connection that turns out dead is
    /// replaced once.
    async fn open(
        &self,
        conn: &Connection,
        method: &str,
        headers: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<Response, UpstreamError> {
        let addr = crate::phases::upstream::resolve(&self.up)
            .await
            .map_err(|e| conn.unreachable(e.to_string()))?;
        let peer = crate::phases::upstream::peer(&self.up, addr, &Self::limits());
        let path = if self.up.path_prefix.is_empty() {
            "/".to_owned()
        } else if self.up.query.is_empty() {
            self.up.path_prefix.to_string()
        } else {
            format!("{}?{}", self.up.path_prefix, self.up.query)
        };
        let authority = self.up.authority();
        let length = body.as_ref().map(|b| b.len().to_string());
        let bearer = self
            .up
            .api_key
            .as_ref()
            .map(|k| format!("Bearer {}", k.expose()));
        let mut head = request::Head {
            method,
            path: &path,
            headers: Vec::with_capacity(5 + self.up.headers.len() + headers.len()),
        };
        head.headers.push(("host", &authority));
        head.headers
            .push(("accept", "application/json, text/event-stream"));
        if let Some(len) = &length {
            head.headers.push(("content-type", "application/json"));
            head.headers.push(("content-length", len));
        }
        if let Some(b) = &bearer {
            head.headers.push(("authorization", b));
        }
        for (k, v) in self.up.headers.iter() {
            head.headers.push((k, v));
        }
        for (k, v) in headers {
            head.headers.push((k, v));
        }
        for attempt in 0..2 {
            // Boxed: Pingora's connector future (with its TLS handshake) is kilobytes.
            let (session, reused) = Box::pin(self.connector.get_http_session(peer.as_ref()))
                .await
                .map_err(|e| conn.unreachable(format!("{:?}", e.etype())))?;
            let in_use = self
                .counted
                .as_ref()
                .map(|c| c.taken(crate::upstream_pool::UpstreamKind::Mcp, reused));
            let sent = match session {
                HttpSession::H1(h1) => {
                    let wire = head.to_h1(body.as_ref()).map_err(|e| conn.protocol(e))?;
                    request::send_h1(h1, &wire, peer.as_ref())
                        .await
                        .map(HttpSession::H1)
                }
                // HTTP/2: boxed, as this future is large and most MCP servers speak HTTP/1.1.
                mut other => {
                    let req = head.to_h2().map_err(|e| conn.protocol(e))?;
                    Box::pin(async {
                        other.write_request_header(Box::new(req)).await?;
                        if let Some(b) = body.clone() {
                            other.write_request_body(b, true).await?;
                        }
                        other.finish_request_body().await?;
                        other.read_response_header().await?;
                        Ok(other)
                    })
                    .await
                }
            };
            let session = match sent {
                Ok(s) => s,
                Err(e) => {
                    if reused && attempt == 0 {
                        continue;
                    }
                    return Err(conn.unreachable(format!("{:?}", e.etype())));
                }
            };
            let h = session.response_header();
            let status = h.map_or(0, |r| r.status.as_u16());
            let header = |name: &str| {
                h.and_then(|r| r.headers.get(name))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let sse = header("content-type").is_some_and(|c| c.starts_with("text/event-stream"));
            let session_id = header("mcp-session-id");
            return Ok(Response {
                session,
                status,
                sse,
                session_id,
                _in_use: in_use,
            });
        }
        Err(conn.unreachable("the connection failed twice"))
    }

    /// Reads a JSON body whole (bounded); releases the connection for reuse.
    async fn read_json(&self, conn: &Connection, mut r: Response) -> Result<Value, UpstreamError> {
        let mut buf = BytesMut::new();
        while let Some(chunk) = r
            .session
            .read_response_body()
            .await
            .map_err(|e| conn.unreachable(format!("{:?}", e.etype())))?
        {
            if buf.len() + chunk.len() > MAX_MESSAGE_BYTES {
                return Err(conn.protocol("a message is larger than 32 MiB"));
            }
            buf.extend_from_slice(&chunk);
        }
        let addr = crate::phases::upstream::resolve(&self.up).await.ok();
        if let Some(addr) = addr {
            let peer = crate::phases::upstream::peer(&self.up, addr, &Self::limits());
            self.connector
                .release_http_session(r.session, peer.as_ref(), None)
                .await;
        }
        serde_json::from_slice(&buf).map_err(|_| conn.protocol("the body is not JSON"))
    }

    /// Reads an SSE body until the message answering `id`; every other message goes to
    /// `events` (or is unsolicited).
    async fn read_stream(
        &self,
        conn: &Connection,
        mut r: Response,
        id: Option<&Value>,
        events: Option<&mpsc::Sender<Value>>,
    ) -> Result<Option<Value>, UpstreamError> {
        let mut framer = SseFramer::new(MAX_MESSAGE_BYTES);
        let mut framed = Framed::default();
        loop {
            let chunk = r
                .session
                .read_response_body()
                .await
                .map_err(|e| conn.unreachable(format!("{:?}", e.etype())))?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            framed.events.clear();
            framer
                .push(&chunk, &mut framed)
                .map_err(|e| conn.protocol(e.to_string()))?;
            for ev in &framed.events {
                let f = parse_event(ev).map_err(|e| conn.protocol(e.to_string()))?;
                if !f.has_data || f.data.trim().is_empty() {
                    continue;
                }
                let Ok(msg) = serde_json::from_str::<Value>(&f.data) else {
                    return Err(conn.protocol("an SSE event is not JSON"));
                };
                let is_answer =
                    id.is_some_and(|id| msg.get("id") == Some(id) && msg.get("method").is_none());
                if is_answer {
                    return Ok(Some(msg));
                }
                match events {
                    Some(tx) => {
                        let _ = tx.send(msg).await;
                    }
                    None => conn.unsolicited(msg),
                }
            }
        }
    }

    fn session_headers(est: &Established, msg: &Value) -> Vec<(&'static str, String)> {
        let mut h = vec![("mcp-protocol-version", est.version.clone())];
        // The gateway's span, for servers that read trace context from HTTP headers.
        if let Some(tp) = crate::mcp::jsonrpc::at(msg, &["params", "_meta", "traceparent"])
            .and_then(Value::as_str)
        {
            h.push(("traceparent", header_safe(tp)));
        }
        if let Some(s) = &est.session_id {
            h.push(("mcp-session-id", s.clone()));
        }
        if est.stateless {
            let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
            if !method.is_empty() {
                h.push(("mcp-method", header_safe(method)));
            }
            let name = match method {
                "tools/call" | "prompts/get" => crate::mcp::jsonrpc::at(msg, &["params", "name"]),
                "resources/read" => crate::mcp::jsonrpc::at(msg, &["params", "uri"]),
                _ => None,
            };
            if let Some(n) = name.and_then(Value::as_str) {
                h.push(("mcp-name", header_safe(n)));
            }
        }
        h
    }

    pub(super) async fn exchange(
        &self,
        conn: &Connection,
        est: &Established,
        msg: Value,
        events: Option<mpsc::Sender<Value>>,
    ) -> Result<Value, Retry> {
        let headers = Self::session_headers(est, &msg);
        let id = msg.get("id").cloned();
        let body = crate::mcp::jsonrpc::to_bytes(&msg);
        let r = self
            .open(conn, "POST", &headers, Some(body))
            .await
            .map_err(Retry::Failed)?;
        if r.status == 404 && est.session_id.is_some() {
            return Err(Retry::SessionGone);
        }
        if r.sse {
            // Boxed: most answers are JSON, and this future is large.
            return match Box::pin(self.read_stream(conn, r, id.as_ref(), events.as_ref())).await {
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => Err(Retry::Failed(
                    conn.protocol("the stream ended before the answer"),
                )),
                Err(e) => Err(Retry::Failed(e)),
            };
        }
        let status = r.status;
        match self.read_json(conn, r).await {
            Ok(v) if v.get("result").is_some() || v.get("error").is_some() => Ok(v),
            Ok(_) | Err(_) => Err(Retry::Failed(
                conn.protocol(format!("HTTP {status} without a JSON-RPC answer")),
            )),
        }
    }

    /// Posts a notification or a response (202 expected); failures are logged, not raised.
    pub(super) async fn post_one_way(&self, conn: &Connection, est: &Established, msg: Value) {
        let headers = Self::session_headers(est, &msg);
        match self
            .open(conn, "POST", &headers, Some(Bytes::from(msg.to_string())))
            .await
        {
            Ok(r) if (200..300).contains(&r.status) => {
                let _ = self.read_json(conn, r).await;
            }
            Ok(r) => tracing::warn!(
                server = %conn.server.name,
                status = r.status,
                "the MCP server refused a notification"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot send a notification to an MCP server"),
        }
    }

    pub(super) async fn establish(
        &self,
        conn: &Arc<Connection>,
    ) -> Result<Established, UpstreamError> {
        let mut state = self.state.lock().await;
        if let Some(est) = state.as_ref()
            && est.generation > self.stale.load(Ordering::Relaxed)
        {
            return Ok(est.clone());
        }
        // Boxed: a new session's handshake is a large future, and every request awaits
        // this function (almost always answered above).
        Box::pin(async {
            let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
            let era = conn.server.era;
            let mut stateless = None;
            if matches!(era, McpEra::Auto | McpEra::Stateless) {
                match self.discover(conn, generation).await {
                    // A server that speaks both eras gets a legacy session under `auto`: only
                    // a session carries the server's own requests (sampling, elicitation, roots)
                    // that the gateway relays to its clients.
                    Ok((est, offers_legacy)) if era == McpEra::Auto && offers_legacy => {
                        stateless = Some(est);
                    }
                    Ok((est, _)) => {
                        *state = Some(est.clone());
                        self.subscribe(conn.clone(), est.clone());
                        return Ok(est);
                    }
                    Err(e) if era == McpEra::Stateless => return Err(e),
                    Err(e) => {
                        tracing::debug!(error = %e, "server/discover failed; trying initialize")
                    }
                }
            }
            let est = match (self.initialize(conn, generation).await, stateless) {
                (Ok(est), _) => est,
                (Err(e), Some(est)) => {
                    tracing::debug!(error = %e, "initialize failed; using the stateless era");
                    *state = Some(est.clone());
                    self.subscribe(conn.clone(), est.clone());
                    return Ok(est);
                }
                (Err(e), None) => return Err(e),
            };
            *state = Some(est.clone());
            if est.session_id.is_some() {
                self.listen(conn.clone(), est.clone());
            }
            conn.resubscribe(&est);
            Ok(est)
        })
        .await
    }

    async fn discover(
        &self,
        conn: &Connection,
        generation: u64,
    ) -> Result<(Established, bool), UpstreamError> {
        let probe = Established {
            version: STATELESS_VERSION.into(),
            stateless: true,
            capabilities: Value::Null,
            session_id: None,
            generation,
        };
        let msg = jsonrpc::request(
            Value::String("sluice-discover".into()),
            "server/discover",
            super::with_meta(None, &probe),
        );
        let answer = match self.exchange(conn, &probe, msg, None).await {
            Ok(a) => a,
            Err(Retry::Failed(e)) => return Err(e),
            Err(Retry::SessionGone) => return Err(conn.protocol("server/discover: 404")),
        };
        let (version, capabilities) = super::read_handshake(conn, &answer, true)?;
        let offers_legacy = answer
            .pointer("/result/supportedVersions")
            .and_then(Value::as_array)
            .is_some_and(|v| {
                v.iter()
                    .any(|v| v.as_str().is_some_and(|v| LEGACY_VERSIONS.contains(&v)))
            });
        Ok((
            Established {
                version,
                capabilities,
                ..probe
            },
            offers_legacy,
        ))
    }

    async fn initialize(
        &self,
        conn: &Connection,
        generation: u64,
    ) -> Result<Established, UpstreamError> {
        let msg = jsonrpc::request(
            Value::String("sluice-init".into()),
            "initialize",
            Some(super::initialize_params()),
        );
        let r = self
            .open(conn, "POST", &[], Some(Bytes::from(msg.to_string())))
            .await?;
        let session_id = r.session_id.clone();
        let answer = if r.sse {
            self.read_stream(conn, r, msg.get("id"), None)
                .await?
                .ok_or_else(|| conn.protocol("initialize: the stream ended before the answer"))?
        } else {
            self.read_json(conn, r).await?
        };
        let (version, capabilities) = super::read_handshake(conn, &answer, false)?;
        let est = Established {
            version,
            stateless: false,
            capabilities,
            session_id,
            generation,
        };
        self.post_one_way(
            conn,
            &est,
            jsonrpc::notification("notifications/initialized", None),
        )
        .await;
        Ok(est)
    }
}

/// A header value as the 2026-07-28 transport writes it: as is when it is visible ASCII,
/// else `=?base64?…?=`.
fn header_safe(v: &str) -> String {
    if v.bytes().all(|b| (0x20..0x7f).contains(&b)) && v.trim() == v {
        return v.to_owned();
    }
    format!("=?base64?{}?=", base64(v.as_bytes()))
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(char::from(T[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_values_outside_ascii_are_base64() {
        assert_eq!(super::header_safe("get_weather"), "get_weather");
        assert_eq!(super::header_safe("café"), "=?base64?Y2Fmw6k=?=");
        assert_eq!(super::base64(b"ab"), "YWI=");
    }
}
