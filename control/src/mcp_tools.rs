//! The tools MCP servers offer, as proxies report them after each fetch of a server's
//! list, and an admin's one-call approval: the definitions' hashes become the server's
//! `tool_pins`, so a definition that changes later (a rug pull) is withheld by every
//! proxy until approved again.

use std::collections::{BTreeMap, HashMap};

use axum::Extension;
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::auth::Principal;
use crate::documents::{McpServerBody, check_team_write, load};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::store::now_ms;

/// A server's tool list as one proxy fetched it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryReport {
    /// The reporting proxy.
    pub proxy_id: String,
    /// The server's name.
    pub server: String,
    /// Its whole list.
    pub tools: Vec<ReportedTool>,
}

/// One tool as the server defines it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportedTool {
    /// Its name at the server.
    pub name: String,
    /// SHA-256 (hex) of its definition: what `tool_pins` holds.
    pub hash: String,
    /// The definition (name, description, input schema…).
    pub definition: serde_json::Value,
    /// Instruction-like phrases found in its description.
    #[serde(default)]
    pub injection_flags: Vec<String>,
}

/// What was recorded.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InventoryAck {
    /// Tools in the report.
    pub tools: usize,
}

/// `POST /mcp-inventory`
pub async fn report(
    State(state): State<AppState>,
    ApiJson(r): ApiJson<InventoryReport>,
) -> Result<Json<InventoryAck>, ApiError> {
    if r.proxy_id.is_empty() || r.proxy_id.len() > 128 {
        return Err(ApiError::Unprocessable(
            "proxy_id must be 1-128 characters".into(),
        ));
    }
    if r.tools.len() > 10_000 {
        return Err(ApiError::Unprocessable(
            "at most 10000 tools per server".into(),
        ));
    }
    for t in &r.tools {
        if t.name.is_empty() || t.name.len() > 256 {
            return Err(ApiError::Unprocessable(
                "a tool's name must be 1-256 characters".into(),
            ));
        }
        if t.hash.len() != 64 || !t.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::Unprocessable(format!(
                "the hash of tool {} must be a SHA-256 digest in hex (64 digits)",
                t.name
            )));
        }
    }
    let now = now_ms();
    let mut tx = state.db.pool.begin().await?;
    for t in &r.tools {
        sqlx::query(
            "INSERT INTO mcp_tool_reports (server, tool, hash, definition, injection_flags, proxy_id, \
             first_seen, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (server, tool, hash) DO UPDATE SET definition = excluded.definition, \
             injection_flags = excluded.injection_flags, proxy_id = excluded.proxy_id, \
             last_seen = excluded.last_seen",
        )
        .bind(&r.server)
        .bind(&t.name)
        .bind(t.hash.to_ascii_lowercase())
        .bind(t.definition.to_string())
        .bind(serde_json::to_string(&t.injection_flags).unwrap_or_default())
        .bind(&r.proxy_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    // An empty list is news too: every tool seen before is no longer offered.
    sqlx::query(
        "INSERT INTO mcp_tool_reports (server, tool, hash, definition, injection_flags, proxy_id, \
         first_seen, last_seen) VALUES ($1, '', '', 'null', '[]', $2, $3, $3) \
         ON CONFLICT (server, tool, hash) DO UPDATE SET proxy_id = excluded.proxy_id, \
         last_seen = excluded.last_seen",
    )
    .bind(&r.server)
    .bind(&r.proxy_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(InventoryAck {
        tools: r.tools.len(),
    }))
}

/// Where a tool stands against the server's approved definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolState {
    /// The server has no `tool_pins`: every tool it offers is exposed.
    Unpinned,
    /// The definition offered is the approved one.
    Approved,
    /// The definition changed since it was approved: withheld until approved again.
    Changed,
    /// Not among the approved tools: withheld until approved.
    Unapproved,
    /// Approved, but no proxy has reported it lately.
    NotOffered,
}

/// One tool of a server.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ServerTool {
    /// Its name at the server.
    pub name: String,
    /// Where it stands.
    pub state: ToolState,
    /// Whether the server offered it in its latest reported list.
    pub offered: bool,
    /// Hash of the definition last reported.
    pub hash: Option<String>,
    /// Hash an admin approved, if any.
    pub approved_hash: Option<String>,
    /// Its description, as last reported.
    pub description: Option<String>,
    /// Its definition, as last reported.
    pub definition: Option<serde_json::Value>,
    /// Instruction-like phrases in its description: read before approving.
    pub injection_flags: Vec<String>,
    /// When that definition was first reported, ms since the epoch.
    pub first_seen_ms: Option<i64>,
    /// When it was last reported.
    pub last_seen_ms: Option<i64>,
    /// The proxy that last reported it.
    pub proxy_id: Option<String>,
}

/// A server's tools.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ServerTools {
    /// The server's name.
    pub server: String,
    /// Whether the server has `tool_pins` (only approved definitions are exposed).
    pub pinned: bool,
    /// When a proxy last reported its list, ms since the epoch (none yet: no proxy has
    /// fetched it; a proxy fed by this control plane does after each snapshot).
    pub reported_at_ms: Option<i64>,
    /// Its tools by name.
    pub tools: Vec<ServerTool>,
}

struct Seen {
    hash: String,
    definition: serde_json::Value,
    flags: Vec<String>,
    first_seen: i64,
    last_seen: i64,
    proxy_id: String,
}

async fn latest(
    state: &AppState,
    server: &str,
) -> Result<(Option<i64>, BTreeMap<String, Seen>), ApiError> {
    let rows = sqlx::query(
        "SELECT tool, hash, definition, injection_flags, proxy_id, first_seen, last_seen \
         FROM mcp_tool_reports WHERE server = $1 ORDER BY last_seen, hash",
    )
    .bind(server)
    .fetch_all(&state.db.pool)
    .await?;
    let mut reported_at = None;
    let mut tools = BTreeMap::new();
    for r in rows {
        let tool: String = r.try_get("tool")?;
        let last_seen: i64 = r.try_get("last_seen")?;
        reported_at = reported_at.max(Some(last_seen));
        if tool.is_empty() {
            continue;
        }
        let definition: String = r.try_get("definition")?;
        let flags: String = r.try_get("injection_flags")?;
        // Ordered by time: the last row of a tool is its latest definition.
        tools.insert(
            tool,
            Seen {
                hash: r.try_get("hash")?,
                definition: serde_json::from_str(&definition).unwrap_or_default(),
                flags: serde_json::from_str(&flags).unwrap_or_default(),
                first_seen: r.try_get("first_seen")?,
                last_seen,
                proxy_id: r.try_get("proxy_id")?,
            },
        );
    }
    Ok((reported_at, tools))
}

fn view(
    name: &str,
    body: &McpServerBody,
    reported_at: Option<i64>,
    seen: BTreeMap<String, Seen>,
) -> ServerTools {
    let pins = body.tool_pins.clone().unwrap_or_default();
    let mut tools: Vec<ServerTool> = Vec::new();
    let mut pinned_left: HashMap<&String, &String> = pins.iter().collect();
    for (tool, s) in seen {
        let approved = pins.get(&tool).cloned();
        pinned_left.remove(&tool);
        let offered = Some(s.last_seen) == reported_at;
        if !offered && approved.is_none() {
            // Gone from the server and never approved: history, not a tool.
            continue;
        }
        let state = match (&body.tool_pins, &approved) {
            (None, _) => ToolState::Unpinned,
            (Some(_), Some(_)) if !offered => ToolState::NotOffered,
            (Some(_), Some(h)) if h.eq_ignore_ascii_case(&s.hash) => ToolState::Approved,
            (Some(_), Some(_)) => ToolState::Changed,
            (Some(_), None) => ToolState::Unapproved,
        };
        tools.push(ServerTool {
            name: tool,
            state,
            offered,
            description: s
                .definition
                .get("description")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
            definition: Some(s.definition),
            hash: Some(s.hash),
            approved_hash: approved,
            injection_flags: s.flags,
            first_seen_ms: Some(s.first_seen),
            last_seen_ms: Some(s.last_seen),
            proxy_id: Some(s.proxy_id),
        });
    }
    for (tool, hash) in pinned_left {
        tools.push(ServerTool {
            name: tool.clone(),
            state: ToolState::NotOffered,
            offered: false,
            hash: None,
            approved_hash: Some(hash.clone()),
            description: None,
            definition: None,
            injection_flags: Vec::new(),
            first_seen_ms: None,
            last_seen_ms: None,
            proxy_id: None,
        });
    }
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    ServerTools {
        server: name.to_owned(),
        pinned: body.tool_pins.is_some(),
        reported_at_ms: reported_at,
        tools,
    }
}

/// `GET /mcp-servers/{id}/tools`
pub async fn list(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ServerTools>, ApiError> {
    let doc = load::<McpServerBody>(&state, &p, &id).await?;
    let (at, seen) = latest(&state, &doc.body.name).await?;
    Ok(Json(view(&doc.body.name, &doc.body, at, seen)))
}

/// Which tools to approve.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// Approve these tools' current definitions (added to those already approved).
    /// Absent: approve exactly what the server offers now (tools it no longer offers lose
    /// their approval).
    pub tools: Option<Vec<String>>,
}

/// `POST /mcp-servers/{id}/tools/approve`
pub async fn approve(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ApproveBody>,
) -> Result<Json<ServerTools>, ApiError> {
    let doc = load::<McpServerBody>(&state, &p, &id).await?;
    check_team_write(&p, &doc.body)?;
    let (at, seen) = latest(&state, &doc.body.name).await?;
    if at.is_none() {
        return Err(ApiError::Conflict(format!(
            "no proxy has reported the tools of {} yet: a proxy fed by this control plane lists \
             them after each snapshot, so check that one is running and can reach the server",
            doc.body.name
        )));
    }
    let mut pins = match &body.tools {
        Some(_) => doc.body.tool_pins.clone().unwrap_or_default(),
        None => BTreeMap::new(),
    };
    match &body.tools {
        Some(names) => {
            for name in names {
                let Some(s) = seen.get(name).filter(|s| Some(s.last_seen) == at) else {
                    return Err(ApiError::Unprocessable(format!(
                        "{} does not offer a tool named {name}",
                        doc.body.name
                    )));
                };
                pins.insert(name.clone(), s.hash.clone());
            }
        }
        None => {
            for (name, s) in &seen {
                if Some(s.last_seen) == at {
                    pins.insert(name.clone(), s.hash.clone());
                }
            }
        }
    }
    let mut updated = doc.body.clone();
    updated.tool_pins = Some(pins);
    let text = serde_json::to_string(&updated).map_err(|e| ApiError::Internal(e.to_string()))?;
    sqlx::query("UPDATE documents SET body = $1, updated_at = $2 WHERE kind = 'mcp_servers' AND id = $3 AND org_id = $4")
        .bind(&text)
        .bind(now_ms())
        .bind(&id)
        .bind(&p.org_id)
        .execute(&state.db.pool)
        .await?;
    state.publish().await?;
    Ok(Json(view(&updated.name, &updated, at, seen)))
}
