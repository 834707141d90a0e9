//! The MCP gateway's records: one row per `initialize`, `tools/list`, `tools/call` (and
//! every other method) in `mcp_calls`, searched by admins within their organisation and
//! teams like the LLM call logs.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_proxy::journal::{McpUsage, UsageRecord};
use sqlx::Row;

use crate::auth::Principal;
use crate::documents::Page;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::AppState;
use crate::store::Engine;
use crate::usage::{Arg, bind_all, i, page_bounds, scope_to_profiles, visible_profiles};
use crate::usage_llm::multi_row_insert;

const MCP_COLUMNS: [&str; 16] = [
    "proxy_id",
    "seq",
    "request_id",
    "ts",
    "server",
    "method",
    "tool",
    "status",
    "duration_us",
    "decisions",
    "profile",
    "org_id",
    "key_id",
    "session_id",
    "arguments",
    "result",
];

/// Inserts MCP records (distinct sequences, as many as `llm_calls` takes per statement) in one
/// statement, each once per (proxy, sequence); returns the rows written.
pub(crate) async fn insert<'r>(
    engine: Engine,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    proxy_id: &'r str,
    rows: &[(&'r UsageRecord, &'r McpUsage)],
    profile_orgs: &'r HashMap<String, String>,
) -> Result<u64, sqlx::Error> {
    let sql = multi_row_insert(engine, "mcp_calls", &MCP_COLUMNS, rows.len(), false);
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (r, m) in rows {
        q = q
            .bind(proxy_id)
            .bind(i(r.seq))
            .bind(r.request_id.as_deref().unwrap_or(""))
            .bind(r.ts_ms)
            .bind(&m.server)
            .bind(&m.method)
            .bind(m.tool.as_deref())
            .bind(&m.status)
            .bind(i(r.duration_us))
            .bind(r.decisions.to_string())
            .bind(&r.profile)
            .bind(profile_orgs.get(&r.profile).map(String::as_str))
            .bind(r.key_id.as_deref())
            .bind(m.session.as_deref())
            .bind(r.request_body.as_deref())
            .bind(r.response_body.as_deref());
    }
    Ok(q.execute(&mut **tx).await?.rows_affected())
}

/// One logged MCP call.
#[derive(Debug, Serialize, JsonSchema)]
pub struct McpCall {
    /// The proxy that served it.
    pub proxy_id: String,
    /// Its journal sequence there.
    pub seq: i64,
    /// When it ended, ms since the epoch.
    pub ts_ms: i64,
    /// The profile whose endpoint served it.
    pub profile: String,
    /// The virtual key's id, when one was used.
    pub key_id: Option<String>,
    /// The client's MCP session (legacy era) or conversation id (stateless era), as the
    /// first 128 bits of its SHA-256 in hex: calls group by session, the id stays secret.
    pub session_id: Option<String>,
    /// Server (empty when the gateway answered itself, e.g. `initialize`).
    pub server: String,
    /// JSON-RPC method.
    pub method: String,
    /// Tool (its name at the server), for `tools/call`.
    pub tool: Option<String>,
    /// `ok`, `error` (the server or the gateway failed) or `refused` (a policy).
    pub status: String,
    /// Wall time, µs.
    pub duration_us: i64,
    /// Policy decisions: the call's, then its result's.
    pub decisions: serde_json::Value,
    /// The arguments, only where the profile captures content.
    pub arguments: Option<String>,
    /// The result, only where the profile captures content.
    pub result: Option<String>,
}

/// Filters for the MCP call logs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpFilter {
    /// Items per page, 1-500 (default 50).
    pub limit: Option<u32>,
    /// Items to skip.
    pub offset: Option<u32>,
    /// Only this server.
    pub server: Option<String>,
    /// Only this profile.
    pub profile: Option<String>,
    /// Only this JSON-RPC method.
    pub method: Option<String>,
    /// Only this tool.
    pub tool: Option<String>,
    /// Only this outcome (`ok`, `error`, `refused`).
    pub status: Option<String>,
    /// Only this virtual key id.
    pub key_id: Option<String>,
    /// Only this session or conversation (its digest, as listed).
    pub session_id: Option<String>,
    /// From this time, ms since the epoch.
    pub since_ms: Option<i64>,
    /// Before this time, ms since the epoch.
    pub until_ms: Option<i64>,
}

/// `GET /logs/mcp`
pub async fn mcp_logs(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(f): ApiQuery<McpFilter>,
) -> Result<Json<Page<McpCall>>, ApiError> {
    let (limit, offset) = page_bounds(f.limit, f.offset)?;
    let mut conds = vec!["(org_id = $1 OR org_id IS NULL)".to_owned()];
    let mut args = vec![Arg::Text(p.org_id.clone())];
    let texts = [
        ("server", &f.server),
        ("profile", &f.profile),
        ("method", &f.method),
        ("tool", &f.tool),
        ("status", &f.status),
        ("key_id", &f.key_id),
        ("session_id", &f.session_id),
    ];
    for (column, value) in texts {
        if let Some(v) = value {
            args.push(Arg::Text(v.clone()));
            conds.push(format!("{column} = ${}", args.len()));
        }
    }
    for (cond, value) in [("ts >=", f.since_ms), ("ts <", f.until_ms)] {
        if let Some(v) = value {
            args.push(Arg::Int(v));
            conds.push(format!("{cond} ${}", args.len()));
        }
    }
    scope_to_profiles(visible_profiles(&state, &p).await?, &mut conds, &mut args);
    // Audited: only fixed column names, $n placeholders and the numbers limit and offset
    // are formatted into the text; values are bound.
    let sql = format!(
        "SELECT proxy_id, seq, ts, profile, key_id, session_id, server, method, tool, status, duration_us, \
         decisions, arguments, result FROM mcp_calls WHERE {} \
         ORDER BY ts DESC, proxy_id, seq DESC LIMIT {} OFFSET {offset}",
        conds.join(" AND "),
        limit + 1
    );
    let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
        .fetch_all(&state.db.pool)
        .await?;
    let more = rows.len() > limit as usize;
    let mut items = Vec::with_capacity(rows.len());
    for r in rows.iter().take(limit as usize) {
        let decisions: String = r.try_get("decisions")?;
        items.push(McpCall {
            proxy_id: r.try_get("proxy_id")?,
            seq: r.try_get("seq")?,
            ts_ms: r.try_get("ts")?,
            profile: r.try_get("profile")?,
            key_id: r.try_get("key_id")?,
            session_id: r.try_get("session_id")?,
            server: r.try_get("server")?,
            method: r.try_get("method")?,
            tool: r.try_get("tool")?,
            status: r.try_get("status")?,
            duration_us: r.try_get("duration_us")?,
            decisions: serde_json::from_str(&decisions).unwrap_or_default(),
            arguments: r.try_get("arguments")?,
            result: r.try_get("result")?,
        });
    }
    Ok(Json(Page {
        items,
        next_offset: more.then_some(offset + limit),
    }))
}
