//! Usage and audit: the proxies' journals arrive here in batches and are inserted once per
//! (proxy id, sequence); admins search them as call logs and sum them.

use std::collections::HashSet;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_proxy::journal::UsageRecord;
use sqlx::Row;

use crate::auth::Principal;
use crate::documents::Page;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;
use crate::store::{new_id, now_ms};
use crate::usage_llm::{LLM_ROWS_PER_INSERT, insert_llm_calls};

/// A batch from one proxy's journal.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    /// The proxy's stable id.
    pub proxy_id: String,
    /// Records in sequence order.
    pub records: Vec<UsageRecord>,
}

/// The acknowledgement: the proxy may trim its journal up to `acked_seq`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UsageAck {
    /// Highest sequence now stored.
    pub acked_seq: u64,
    /// Rows inserted by this batch (a resent batch inserts 0).
    pub inserted: u64,
}

pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `POST /usage/batches`
pub async fn ingest(
    State(state): State<AppState>,
    ApiJson(batch): ApiJson<UsageBatch>,
) -> Result<Json<UsageAck>, ApiError> {
    if batch.proxy_id.is_empty() || batch.proxy_id.len() > 128 {
        return Err(ApiError::Unprocessable(
            "proxy_id must be 1-128 characters".into(),
        ));
    }
    if batch.records.len() > 10_000 {
        return Err(ApiError::Unprocessable(
            "at most 10000 records per batch".into(),
        ));
    }
    let mut profile_orgs = std::collections::HashMap::new();
    for r in sqlx::query("SELECT name, org_id FROM documents WHERE kind = 'profiles'")
        .fetch_all(&state.db.pool)
        .await?
    {
        profile_orgs.insert(
            r.try_get::<String, _>("name")?,
            r.try_get::<String, _>("org_id")?,
        );
    }
    let windows = if batch.records.iter().any(|r| !r.limits.is_empty()) {
        crate::leases::windows(&state).await?
    } else {
        Default::default()
    };
    let mut acked = 0u64;
    for r in &batch.records {
        if r.seq == 0 || r.seq > i64::MAX as u64 {
            return Err(ApiError::Unprocessable(
                "record sequences start at 1".into(),
            ));
        }
        acked = acked.max(r.seq);
    }
    // A resent batch, or a record twice in one batch, inserts once: the first copy wins.
    let (mut seen_llm, mut seen_mcp) = (HashSet::new(), HashSet::new());
    let (mut llm, mut mcp) = (Vec::new(), Vec::new());
    for r in &batch.records {
        match &r.mcp {
            None if seen_llm.insert(r.seq) => llm.push(r),
            Some(m) if seen_mcp.insert(r.seq) => mcp.push((r, m)),
            _ => {}
        }
    }
    let mut tx = state.db.pool.begin().await?;
    let mut inserted = 0u64;
    for rows in mcp.chunks(LLM_ROWS_PER_INSERT) {
        let engine = state.db.engine;
        inserted +=
            crate::usage_mcp::insert(engine, &mut tx, &batch.proxy_id, rows, &profile_orgs).await?;
    }
    // Tools seen in traffic join the catalogue as discovered: once per name and batch (the
    // insert is idempotent, so a resent batch adds nothing).
    let mut discovered = std::collections::BTreeSet::new();
    let mut spend = crate::leases::Tally::default();
    for rows in llm.chunks(LLM_ROWS_PER_INSERT) {
        // Only records counted against limits need to know which of them were new.
        let limited = rows.iter().any(|r| !r.limits.is_empty());
        let (new, new_seqs) = insert_llm_calls(
            state.db.engine,
            &mut tx,
            &batch.proxy_id,
            rows,
            &profile_orgs,
            limited,
        )
        .await?;
        inserted += new;
        for r in rows
            .iter()
            .filter(|r| !r.limits.is_empty() && new_seqs.contains(&r.seq))
        {
            spend.add(&windows, &batch.proxy_id, r);
        }
        for r in rows {
            if let Some(org) = profile_orgs.get(&r.profile) {
                for name in &r.tool_calls {
                    discovered.insert((org, r.profile.as_str(), name.as_str()));
                }
            }
        }
    }
    spend.write(&mut tx).await?;
    for (org, profile, name) in discovered {
        let body = serde_json::json!({"source": format!("profile:{profile}"),
            "name": name, "origin": "discovered"});
        sqlx::query(
            "INSERT INTO documents (kind, id, org_id, team_id, name, body, created_at, updated_at) \
             VALUES ('tools', $1, $2, NULL, $3, $4, $5, $5) ON CONFLICT (kind, name) DO NOTHING",
        )
        .bind(new_id("tool"))
        .bind(org)
        .bind(format!("profile:{profile}/{name}"))
        .bind(body.to_string())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    }
    // One statement, so batches racing in from a proxy's first moments cannot collide.
    sqlx::query(
        "INSERT INTO proxies (proxy_id, last_seen, acked_seq, snapshot_version) VALUES ($1, $2, $3, 0) \
         ON CONFLICT (proxy_id) DO UPDATE SET last_seen = excluded.last_seen, acked_seq = \
         CASE WHEN proxies.acked_seq > excluded.acked_seq THEN proxies.acked_seq ELSE excluded.acked_seq END",
    )
    .bind(&batch.proxy_id)
    .bind(now_ms())
    .bind(i(acked))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    state.metrics.usage_batches.inc();
    state.metrics.usage_records.inc_by(inserted);
    Ok(Json(UsageAck {
        acked_seq: acked,
        inserted,
    }))
}

/// Filters for call logs and usage sums.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmFilter {
    /// Items per page, 1-500 (default 50; logs only).
    pub limit: Option<u32>,
    /// Items to skip (logs only).
    pub offset: Option<u32>,
    /// Only this profile.
    pub profile: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this virtual key id.
    pub key_id: Option<String>,
    /// Only this proxy.
    pub proxy_id: Option<String>,
    /// Only this status.
    pub status: Option<u16>,
    /// Only refused (true) or not refused (false) requests.
    pub refused: Option<bool>,
    /// From this time, ms since the epoch.
    pub since_ms: Option<i64>,
    /// Before this time, ms since the epoch.
    pub until_ms: Option<i64>,
}

pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

pub(crate) async fn visible_profiles(
    state: &AppState,
    p: &Principal,
) -> Result<Option<Vec<String>>, ApiError> {
    if p.all_teams {
        return Ok(None);
    }
    let mut out = Vec::new();
    for r in
        sqlx::query("SELECT name, team_id FROM documents WHERE kind = 'profiles' AND org_id = $1")
            .bind(&p.org_id)
            .fetch_all(&state.db.pool)
            .await?
    {
        if p.sees_team(r.try_get::<Option<String>, _>("team_id")?.as_deref()) {
            out.push(r.try_get("name")?);
        }
    }
    Ok(Some(out))
}

/// `WHERE …` and its arguments for a filter.
pub(crate) async fn where_clause(
    state: &AppState,
    p: &Principal,
    f: &LlmFilter,
) -> Result<(String, Vec<Arg>), ApiError> {
    let mut conds = Vec::new();
    let mut args = Vec::new();
    let mut push = |cond: &str, arg: Arg, conds: &mut Vec<String>| {
        args.push(arg);
        conds.push(cond.replace('?', &format!("${}", args.len())));
    };
    // Rows of this organisation's profiles (or rows whose profile is gone from every org).
    let names = visible_profiles(state, p).await?;
    push(
        "(org_id = ? OR org_id IS NULL)",
        Arg::Text(p.org_id.clone()),
        &mut conds,
    );
    if let Some(v) = &f.profile {
        push("profile = ?", Arg::Text(v.clone()), &mut conds);
    }
    if let Some(v) = &f.model {
        push("model = ?", Arg::Text(v.clone()), &mut conds);
    }
    if let Some(v) = &f.key_id {
        push("key_id = ?", Arg::Text(v.clone()), &mut conds);
    }
    if let Some(v) = &f.proxy_id {
        push("proxy_id = ?", Arg::Text(v.clone()), &mut conds);
    }
    if let Some(v) = f.status {
        push("status = ?", Arg::Int(i64::from(v)), &mut conds);
    }
    if let Some(v) = f.refused {
        push("refused = ?", Arg::Int(i64::from(v)), &mut conds);
    }
    if let Some(v) = f.since_ms {
        push("ts >= ?", Arg::Int(v), &mut conds);
    }
    if let Some(v) = f.until_ms {
        push("ts < ?", Arg::Int(v), &mut conds);
    }
    scope_to_profiles(names, &mut conds, &mut args);
    Ok((conds.join(" AND "), args))
}

/// Restricts a query to `names` (the admin's visible profiles; `None`: all of them).
pub(crate) fn scope_to_profiles(
    names: Option<Vec<String>>,
    conds: &mut Vec<String>,
    args: &mut Vec<Arg>,
) {
    let Some(names) = names else {
        return;
    };
    if names.is_empty() {
        conds.push("1 = 0".into());
        return;
    }
    let mut marks = Vec::new();
    for n in names {
        args.push(Arg::Text(n));
        marks.push(format!("${}", args.len()));
    }
    conds.push(format!("profile IN ({})", marks.join(", ")));
}

/// A page's `limit` (1-500, default 50) and `offset`.
pub(crate) fn page_bounds(limit: Option<u32>, offset: Option<u32>) -> Result<(u32, u32), ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    Ok((limit, offset.unwrap_or(0)))
}

pub(crate) fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    args: &[Arg],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s.clone()),
            Arg::Int(n) => q.bind(*n),
        };
    }
    q
}

/// One logged LLM call.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LlmCall {
    /// The proxy that served it.
    pub proxy_id: String,
    /// Its journal sequence there.
    pub seq: i64,
    /// The client's `X-Request-Id`, or empty.
    pub request_id: String,
    /// When it ended, ms since the epoch.
    pub ts_ms: i64,
    /// Profile.
    pub profile: String,
    /// Virtual key id.
    pub key_id: Option<String>,
    /// Provider.
    pub provider: String,
    /// API.
    pub api: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Status.
    pub status: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost, millionths of a dollar.
    pub cost_micros: Option<i64>,
    /// Tokens and cost are Sluice's estimate (the provider reported no usage).
    pub usage_estimated: bool,
    /// The model has no price of its own: costed at the provider's default price (a
    /// `/prices` entry with model `*`), or not at all.
    pub price_missing: bool,
    /// The model the client asked for, when an optimisation rule sent it to `model`.
    pub requested_model: Option<String>,
    /// The optimisation rule that did.
    pub optimisation_rule: Option<String>,
    /// What the requested model would have cost; the saving is this less `cost_micros`.
    pub baseline_cost_micros: Option<i64>,
    /// Tokens of the tool results re-encoded as TOON, as JSON.
    pub toon_tokens_before: Option<i64>,
    /// The same results' tokens as TOON.
    pub toon_tokens_after: Option<i64>,
    /// The saved tokens at the model's input price (µ$).
    pub toon_savings_micros: Option<i64>,
    /// Wall time, µs.
    pub duration_us: i64,
    /// Sluice refused the response's tool calls.
    pub refused: bool,
    /// Tools the response called.
    pub tool_calls: Vec<String>,
    /// Policy decisions.
    pub decisions: serde_json::Value,
    /// Request body (content capture only).
    pub request_body: Option<String>,
    /// Response body (content capture only).
    pub response_body: Option<String>,
}

/// `GET /logs/llm`
pub async fn llm_logs(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(f): ApiQuery<LlmFilter>,
) -> Result<Json<Page<LlmCall>>, ApiError> {
    let (limit, offset) = page_bounds(f.limit, f.offset)?;
    let (cond, args) = where_clause(&state, &p, &f).await?;
    // Audited: `cond` holds only fixed fragments and $n placeholders; values are bound.
    let sql = format!(
        "SELECT proxy_id, seq, request_id, ts, profile, key_id, provider, api, model, status, input_tokens, \
         output_tokens, cost_micros, usage_estimated, price_missing, requested_model, optimisation_rule, \
         baseline_cost_micros, toon_tokens_before, toon_tokens_after, toon_savings_micros, \
         duration_us, refused, tool_calls, decisions, request_body, \
         response_body \
         FROM llm_calls WHERE {cond} ORDER BY ts DESC, proxy_id, seq DESC LIMIT {} OFFSET {offset}",
        limit + 1
    );
    let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
        .fetch_all(&state.db.pool)
        .await?;
    let more = rows.len() > limit as usize;
    let mut items = Vec::with_capacity(rows.len());
    for r in rows.iter().take(limit as usize) {
        let tools: String = r.try_get("tool_calls")?;
        let decisions: String = r.try_get("decisions")?;
        items.push(LlmCall {
            proxy_id: r.try_get("proxy_id")?,
            seq: r.try_get("seq")?,
            request_id: r.try_get("request_id")?,
            ts_ms: r.try_get("ts")?,
            profile: r.try_get("profile")?,
            key_id: r.try_get("key_id")?,
            provider: r.try_get("provider")?,
            api: r.try_get("api")?,
            model: r.try_get("model")?,
            status: r.try_get("status")?,
            input_tokens: r.try_get("input_tokens")?,
            output_tokens: r.try_get("output_tokens")?,
            cost_micros: r.try_get("cost_micros")?,
            usage_estimated: r.try_get::<i64, _>("usage_estimated")? != 0,
            price_missing: r.try_get::<i64, _>("price_missing")? != 0,
            requested_model: r.try_get("requested_model")?,
            optimisation_rule: r.try_get("optimisation_rule")?,
            baseline_cost_micros: r.try_get("baseline_cost_micros")?,
            toon_tokens_before: r.try_get("toon_tokens_before")?,
            toon_tokens_after: r.try_get("toon_tokens_after")?,
            toon_savings_micros: r.try_get("toon_savings_micros")?,
            duration_us: r.try_get("duration_us")?,
            refused: r.try_get::<i64, _>("refused")? != 0,
            tool_calls: serde_json::from_str(&tools).unwrap_or_default(),
            decisions: serde_json::from_str(&decisions).unwrap_or_default(),
            request_body: r.try_get("request_body")?,
            response_body: r.try_get("response_body")?,
        });
    }
    Ok(Json(Page {
        items,
        next_offset: more.then_some(offset + limit),
    }))
}

/// Sums over the matching calls.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UsageSummary {
    /// Requests.
    pub requests: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost, millionths of a dollar (known prices only).
    pub cost_micros: i64,
}

/// `GET /usage/summary`
pub async fn summary(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(f): ApiQuery<LlmFilter>,
) -> Result<Json<UsageSummary>, ApiError> {
    let (cond, args) = where_clause(&state, &p, &f).await?;
    let sql = format!(
        "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS i, \
         CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS o, \
         CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS c FROM llm_calls WHERE {cond}"
    );
    let r = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
        .fetch_one(&state.db.pool)
        .await?;
    Ok(Json(UsageSummary {
        requests: r.try_get("n")?,
        input_tokens: r.try_get("i")?,
        output_tokens: r.try_get("o")?,
        cost_micros: r.try_get("c")?,
    }))
}
