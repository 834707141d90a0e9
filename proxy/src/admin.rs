//! The admin listener: health, readiness and the most recent request records (metadata
//! only: no prompts, completions or keys). Bind it to a private address.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::events::RecentRecords;
use crate::live::LiveConfig;

/// Serves `/healthz`, `/readyz` and `/admin/v1/requests?limit=N`.
pub struct AdminApp {
    /// Live config, for readiness.
    pub live: Arc<LiveConfig>,
    /// Recent records.
    pub recent: Arc<RecentRecords>,
    /// Approvals for `require_approval` calls.
    pub approvals: Arc<crate::approvals::ApprovalStore>,
    /// Tools seen per profile.
    pub catalogue: Arc<crate::catalogue::ToolCatalogue>,
    /// The usage journal, if any.
    pub journal: Option<Arc<crate::journal::Journal>>,
    /// The MCP gateway, whose servers' tools `GET /admin/v1/mcp/tools` shows.
    pub mcp: Arc<crate::mcp::McpGateway>,
    /// Spend limits' ledgers, which `GET /admin/v1/spend` shows.
    pub spend: Arc<crate::spend::SpendBook>,
}

/// Serves `/metrics` (Prometheus text format) on its own listener.
pub struct MetricsApp {
    /// The metrics.
    pub metrics: Arc<crate::metrics::ProxyMetrics>,
    /// Live config, for the snapshot gauges.
    pub live: Arc<LiveConfig>,
    /// The usage journal, for its backlog.
    pub journal: Option<Arc<crate::journal::Journal>>,
    /// Spend limits' ledgers, for their gauges.
    pub spend: Option<Arc<crate::spend::SpendBook>>,
    /// Rate limits' buckets, for their shares.
    pub rates: Option<Arc<crate::rate::RateBook>>,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => reply(
                200,
                "text/plain; version=0.0.4",
                self.metrics.render(
                    &self.live,
                    self.journal.as_deref(),
                    self.spend.as_deref(),
                    self.rates.as_deref(),
                ),
            ),
            _ => reply(404, "text/plain", b"see /metrics\n".to_vec()),
        }
    }
}

fn is_approval_id(id: &str) -> bool {
    id.strip_prefix("apr_")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let uri = session.req_header().uri.clone();
        let method = session.req_header().method.clone();
        if let Some(id) = uri.path().strip_prefix("/admin/v1/approvals/") {
            if method != http::Method::POST {
                return reply(
                    405,
                    "application/json",
                    br#"{"error":{"type":"method_not_allowed","message":"use POST to approve"}}"#
                        .to_vec(),
                );
            }
            if !is_approval_id(id) {
                return reply(400, "application/json", br#"{"error":{"type":"invalid_request","message":"an approval id is apr_ followed by 32 hex digits, as the refusal says"}}"#.to_vec());
            }
            let secs = self.approvals.approve(id);
            let body = serde_json::json!({"id": id, "expires_in_secs": secs}).to_string();
            return reply(200, "application/json", body.into_bytes());
        }
        let param = |name: &str| {
            uri.query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
            })
        };
        match uri.path() {
            // `min_version` + `wait_ms` (at most 10 s): answers once that control-plane
            // snapshot (or a later one) is serving, so a caller can see a change take effect.
            "/admin/v1/snapshot" => {
                if let Some(v) = param("min_version") {
                    let wait = std::time::Duration::from_millis(
                        param("wait_ms").unwrap_or(2000).min(10_000),
                    );
                    self.live.wait_for_control_version(v, wait).await;
                }
                let body = serde_json::json!({"version": self.live.control_version()});
                reply(200, "application/json", body.to_string().into_bytes())
            }
            "/admin/v1/journal" => match &self.journal {
                Some(j) => {
                    let body = serde_json::json!({"proxy_id": j.proxy_id(), "last_seq": j.last_seq(),
                        "acked_seq": j.acked(), "failures": j.failures()});
                    reply(200, "application/json", body.to_string().into_bytes())
                }
                None => reply(
                    404,
                    "application/json",
                    br#"{"error":{"type":"not_found","message":"this proxy keeps no usage journal"}}"#
                        .to_vec(),
                ),
            },
            "/admin/v1/spend" => {
                let body = match self.live.current() {
                    Some(cfg) => self.spend.view(&cfg.spend_limits),
                    None => serde_json::json!({"limits": []}),
                };
                reply(200, "application/json", body.to_string().into_bytes())
            }
            "/admin/v1/mcp/tools" => {
                let body = self.mcp_tools().await;
                reply(200, "application/json", body.to_string().into_bytes())
            }
            "/admin/v1/tools" => reply(
                200,
                "application/json",
                self.catalogue.to_json().to_string().into_bytes(),
            ),
            "/admin/v1/approvals" => {
                let list: Vec<_> = self
                    .approvals
                    .list()
                    .into_iter()
                    .map(|(id, secs)| serde_json::json!({"id": id, "expires_in_secs": secs}))
                    .collect();
                reply(
                    200,
                    "application/json",
                    serde_json::json!({ "data": list }).to_string().into_bytes(),
                )
            }
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let (status, text) = self.spend.readiness(&self.live);
                reply(status, "text/plain", text.into_bytes())
            }
            "/admin/v1/requests" => {
                let limit = usize::try_from(param("limit").unwrap_or(50).min(1000)).unwrap_or(50);
                // `min_total` lets a caller wait (up to `wait_ms`, at most 10 s) until the
                // request it just made has been recorded: records are written after the
                // response's last byte, so a client can finish before its record exists.
                if let Some(min_total) = param("min_total") {
                    let wait = std::time::Duration::from_millis(
                        param("wait_ms").unwrap_or(2000).min(10_000),
                    );
                    let recent = self.recent.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || recent.wait_for_total(min_total, wait))
                            .await;
                }
                let records = self.recent.latest(limit);
                let total = self.recent.total();
                match serde_json::to_vec(&serde_json::json!({ "total": total, "data": records })) {
                    Ok(body) => reply(200, "application/json", body),
                    Err(_) => reply(
                        500,
                        "application/json",
                        br#"{"error":{"type":"internal","message":"serialisation failed"}}"#
                            .to_vec(),
                    ),
                }
            }
            _ => reply(
                404,
                "application/json",
                br#"{"error":{"type":"not_found","message":"no such admin route"}}"#.to_vec(),
            ),
        }
    }
}

impl AdminApp {
    /// Every configured MCP server's tools as this proxy sees them now: the exposed name,
    /// the definition's hash (what `tool_pins` approves), whether it is withheld and why,
    /// and instruction-like phrases in its description. Servers are asked when their list
    /// is not cached.
    async fn mcp_tools(&self) -> serde_json::Value {
        let Some(config) = self.live.current() else {
            return serde_json::json!({"data": []});
        };
        let mut servers: Vec<_> = config.mcp_servers.values().cloned().collect();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut data = Vec::new();
        for server in servers {
            match self.mcp.exposed_tools(&server).await {
                Ok(tools) => data.extend(tools.iter().map(|t| {
                    serde_json::json!({
                        "server": &*t.server, "name": t.name, "original": t.original,
                        "hash": t.hash,
                        "approved": server.tool_pins.is_some() && t.withheld.is_none(),
                        "withheld": t.withheld, "injection_flags": t.flags,
                        "description": t.definition.get("description"),
                    })
                })),
                Err(e) => {
                    data.push(serde_json::json!({"server": &*server.name, "error": e.to_string()}))
                }
            }
        }
        serde_json::json!({ "data": data })
    }
}
