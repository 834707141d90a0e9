//! Spend and tokens summed by organisation, team, profile, virtual key, provider and model,
//! in time buckets: what finance asks of the usage the proxies shipped. Rows are the LLM
//! call logs (MCP calls carry no tokens); an admin sees their organisation's profiles, a
//! member their teams'.

use std::collections::{BTreeMap, HashMap};

use axum::Extension;
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::AppState;
use crate::usage::{LlmFilter, bind_all, where_clause};

/// `?group_by&bucket&since_ms&until_ms&profile&model&key_id`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatisticsQuery {
    /// Comma-separated: `organisation`, `team`, `profile`, `key`, `provider`, `model`
    /// (none: one total per bucket).
    pub group_by: Option<String>,
    /// `minute`, `hour`, `day` (UTC) or `none` (the default: one bucket for the range).
    pub bucket: Option<String>,
    /// From this time, ms since the epoch.
    pub since_ms: Option<i64>,
    /// Before this time, ms since the epoch.
    pub until_ms: Option<i64>,
    /// Only this profile.
    pub profile: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this virtual key id.
    pub key_id: Option<String>,
}

/// One group in one bucket.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StatisticsRow {
    /// The bucket's start, ms since the epoch (absent without buckets).
    pub bucket_start_ms: Option<i64>,
    /// The organisation, when grouped by it.
    pub organisation: Option<String>,
    /// The team (none: the organisation's own profiles), when grouped by it.
    pub team: Option<String>,
    /// The profile, when grouped by it.
    pub profile: Option<String>,
    /// The virtual key's id, when grouped by it.
    pub key_id: Option<String>,
    /// The provider, when grouped by it.
    pub provider: Option<String>,
    /// The model, when grouped by it.
    pub model: Option<String>,
    /// Requests.
    pub requests: i64,
    /// Input tokens (cache reads included).
    pub input_tokens: i64,
    /// Output tokens (reasoning included).
    pub output_tokens: i64,
    /// Prompt-cache reads.
    pub cache_read_tokens: i64,
    /// Prompt-cache writes.
    pub cache_write_tokens: i64,
    /// Reasoning tokens.
    pub reasoning_tokens: i64,
    /// Cost in millionths of a US dollar.
    pub cost_micros: i64,
    /// Requests whose tokens and cost Sluice estimated (no usage from the provider).
    pub estimated_requests: i64,
    /// Requests whose model had no price of its own.
    pub unpriced_requests: i64,
    /// Requests an optimisation rule sent to another model.
    pub optimised_requests: i64,
    /// What those saved: the requested models' cost less the cost of the models used
    /// (µ$; negative if a rule chose a dearer model).
    pub optimisation_savings_micros: i64,
    /// Requests whose tool results were re-encoded as TOON.
    pub toon_requests: i64,
    /// Tokens TOON took out of those requests' tool results.
    pub toon_tokens_saved: i64,
    /// Those tokens at the input price of the models used (µ$).
    pub toon_savings_micros: i64,
}

/// The sums.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Statistics {
    /// The groups the rows are split by.
    pub group_by: Vec<String>,
    /// The bucket width.
    pub bucket: String,
    /// By bucket, then by group.
    pub rows: Vec<StatisticsRow>,
}

const GROUPS: &[(&str, &str)] = &[
    ("organisation", "org_id"),
    ("team", "profile"),
    ("profile", "profile"),
    ("key", "key_id"),
    ("provider", "provider"),
    ("model", "model"),
];

/// `GET /usage/statistics`
pub async fn statistics(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<StatisticsQuery>,
) -> Result<Json<Statistics>, ApiError> {
    let bucket = q.bucket.clone().unwrap_or_else(|| "none".into());
    let width: Option<i64> = match bucket.as_str() {
        "none" => None,
        "minute" => Some(60_000),
        "hour" => Some(3_600_000),
        "day" => Some(86_400_000),
        other => {
            return Err(ApiError::BadRequest(format!(
                "bucket must be minute, hour, day or none, not {other:?}"
            )));
        }
    };
    let mut group_by = Vec::new();
    for g in q
        .group_by
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
    {
        if g.is_empty() {
            continue;
        }
        if !GROUPS.iter().any(|(name, _)| *name == g) {
            return Err(ApiError::BadRequest(format!(
                "group_by takes organisation, team, profile, key, provider and model, not {g:?}"
            )));
        }
        if !group_by.iter().any(|x: &String| x == g) {
            group_by.push(g.to_owned());
        }
    }
    let filter = LlmFilter {
        profile: q.profile.clone(),
        model: q.model.clone(),
        key_id: q.key_id.clone(),
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        ..LlmFilter::default()
    };
    let (cond, args) = where_clause(&state, &p, &filter).await?;
    // Columns come from the fixed table above; the bucket width is a number.
    let mut columns: Vec<&str> = GROUPS
        .iter()
        .filter(|(name, _)| group_by.iter().any(|g| g == name))
        .map(|(_, col)| *col)
        .collect();
    columns.dedup();
    let bucket_expr = width.map_or_else(|| "0".to_owned(), |w| format!("(ts / {w}) * {w}"));
    let mut select = vec![format!("{bucket_expr} AS bucket")];
    select.extend(columns.iter().map(|c| (*c).to_owned()));
    let mut group = vec!["bucket".to_owned()];
    group.extend(columns.iter().map(|c| (*c).to_owned()));
    let sql = format!(
        "SELECT {}, COUNT(*) AS n, \
         CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS i, \
         CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS o, \
         CAST(COALESCE(SUM(cache_read_tokens), 0) AS BIGINT) AS cr, \
         CAST(COALESCE(SUM(cache_write_tokens), 0) AS BIGINT) AS cw, \
         CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT) AS r, \
         CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS c, \
         CAST(COALESCE(SUM(usage_estimated), 0) AS BIGINT) AS est, \
         CAST(COALESCE(SUM(price_missing), 0) AS BIGINT) AS unp, \
         CAST(COALESCE(SUM(CASE WHEN optimisation_rule IS NULL THEN 0 ELSE 1 END), 0) AS BIGINT) AS opt, \
         CAST(COALESCE(SUM(CASE WHEN baseline_cost_micros IS NULL OR cost_micros IS NULL THEN 0 \
              ELSE baseline_cost_micros - cost_micros END), 0) AS BIGINT) AS sav, \
         CAST(COALESCE(SUM(CASE WHEN toon_tokens_before IS NULL THEN 0 ELSE 1 END), 0) AS BIGINT) AS tn, \
         CAST(COALESCE(SUM(toon_tokens_before - toon_tokens_after), 0) AS BIGINT) AS tt, \
         CAST(COALESCE(SUM(toon_savings_micros), 0) AS BIGINT) AS ts \
         FROM llm_calls WHERE {cond} GROUP BY {} ORDER BY {}",
        select.join(", "),
        group.join(", "),
        group.join(", ")
    );
    let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
        .fetch_all(&state.db.pool)
        .await?;
    let teams = if group_by.iter().any(|g| g == "team") {
        profile_teams(&state).await?
    } else {
        HashMap::new()
    };
    let wants = |g: &str| group_by.iter().any(|x| x == g);
    // Team is a property of the profile: rows of one team's profiles are summed here.
    type Key = (
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let mut sums: BTreeMap<Key, [i64; 14]> = BTreeMap::new();
    for r in rows {
        let text = |col: &str| -> Result<Option<String>, sqlx::Error> { r.try_get(col) };
        let profile: Option<String> = if columns.contains(&"profile") {
            text("profile")?
        } else {
            None
        };
        let key: Key = (
            width.map(|_| r.try_get::<i64, _>("bucket")).transpose()?,
            if wants("organisation") {
                text("org_id")?
            } else {
                None
            },
            if wants("team") {
                profile
                    .as_ref()
                    .and_then(|p| teams.get(p).cloned().flatten())
            } else {
                None
            },
            if wants("profile") {
                profile.clone()
            } else {
                None
            },
            if wants("key") { text("key_id")? } else { None },
            if wants("provider") {
                text("provider")?
            } else {
                None
            },
            if wants("model") { text("model")? } else { None },
        );
        let e = sums.entry(key).or_insert([0; 14]);
        for (slot, col) in e.iter_mut().zip([
            "n", "i", "o", "cr", "cw", "r", "c", "est", "unp", "opt", "sav", "tn", "tt", "ts",
        ]) {
            *slot += r.try_get::<i64, _>(col)?;
        }
    }
    let rows = sums
        .into_iter()
        .map(|(k, v)| StatisticsRow {
            bucket_start_ms: k.0,
            organisation: k.1,
            team: k.2,
            profile: k.3,
            key_id: k.4,
            provider: k.5,
            model: k.6,
            requests: v[0],
            input_tokens: v[1],
            output_tokens: v[2],
            cache_read_tokens: v[3],
            cache_write_tokens: v[4],
            reasoning_tokens: v[5],
            cost_micros: v[6],
            estimated_requests: v[7],
            unpriced_requests: v[8],
            optimised_requests: v[9],
            optimisation_savings_micros: v[10],
            toon_requests: v[11],
            toon_tokens_saved: v[12],
            toon_savings_micros: v[13],
        })
        .collect();
    Ok(Json(Statistics {
        group_by,
        bucket,
        rows,
    }))
}

/// Each profile's team id (none for the organisation's own profiles).
async fn profile_teams(state: &AppState) -> Result<HashMap<String, Option<String>>, ApiError> {
    let mut out = HashMap::new();
    for r in sqlx::query("SELECT name, team_id FROM documents WHERE kind = 'profiles'")
        .fetch_all(&state.db.pool)
        .await?
    {
        out.insert(r.try_get("name")?, r.try_get("team_id")?);
    }
    Ok(out)
}
