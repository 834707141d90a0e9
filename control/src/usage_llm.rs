//! Shipped LLM records into `llm_calls`, many rows per statement: once per (proxy id,
//! sequence), the new rows' sequences returned when the caller must know them. The
//! statement's text is shared with `mcp_calls`.

use sluice_proxy::journal::UsageRecord;
use sqlx::Row;

use crate::error::ApiError;
use crate::store::Engine;
use crate::usage::i;

/// Rows per multi-row `INSERT` into `llm_calls` (and `mcp_calls`): 64 × 33 binds stays far below SQLite's
/// (32,766) and PostgreSQL's (65,535) limits. A statement per record cost 17.2 µs of
/// control-plane CPU per record (a hand-off to sqlx's SQLite thread and back each); 64 per
/// statement, 5.9 µs (`scripts/bench_ingest.py`, docs/benchmarks.md).
pub(crate) const LLM_ROWS_PER_INSERT: usize = 64;

const LLM_COLUMNS: [&str; 33] = [
    "proxy_id",
    "seq",
    "request_id",
    "ts",
    "profile",
    "key_id",
    "provider",
    "api",
    "model",
    "status",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_micros",
    "duration_us",
    "ttfb_us",
    "refused",
    "trusted",
    "tool_calls",
    "decisions",
    "request_body",
    "response_body",
    "org_id",
    "usage_estimated",
    "price_missing",
    "requested_model",
    "optimisation_rule",
    "baseline_cost_micros",
    "toon_tokens_before",
    "toon_tokens_after",
    "toon_savings_micros",
];

/// An `INSERT` of `rows` rows of `columns` into `table`, once per (proxy id, sequence), each
/// new row returning its `seq` if `returning`. SQLite gets anonymous `?` parameters: it
/// looks a numbered one's name up in a list, once per bind, which made 2,112 of them cost
/// 70 µs of CPU per record.
pub(crate) fn multi_row_insert(
    engine: Engine,
    table: &str,
    columns: &[&str],
    rows: usize,
    returning: bool,
) -> String {
    use std::fmt::Write;
    let n = columns.len();
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..n {
            let sep = if col == 0 { "" } else { ", " };
            let _ = match engine {
                Engine::Sqlite => write!(sql, "{sep}?"),
                Engine::Postgres => write!(sql, "{sep}${}", row * n + col + 1),
            };
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (proxy_id, seq) DO NOTHING");
    if returning {
        sql.push_str(" RETURNING seq");
    }
    sql
}

/// Inserts `rows` (distinct sequences) in one statement; returns how many were new and,
/// if `returning`, their sequences (rows come back through the database driver one by one,
/// a cost only records counted against limits pay). Binds borrow: captured bodies are not
/// copied.
pub(crate) async fn insert_llm_calls<'r>(
    engine: Engine,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    proxy_id: &'r str,
    rows: &[&'r UsageRecord],
    profile_orgs: &'r std::collections::HashMap<String, String>,
    returning: bool,
) -> Result<(u64, std::collections::HashSet<u64>), ApiError> {
    let sql = multi_row_insert(engine, "llm_calls", &LLM_COLUMNS, rows.len(), returning);
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for r in rows {
        q = q
            .bind(proxy_id)
            .bind(i(r.seq))
            .bind(r.request_id.as_deref().unwrap_or(""))
            .bind(r.ts_ms)
            .bind(&r.profile)
            .bind(r.key_id.as_deref())
            .bind(&r.provider)
            .bind(r.api.as_deref())
            .bind(r.model.as_deref())
            .bind(i64::from(r.status))
            .bind(i(r.input_tokens))
            .bind(i(r.output_tokens))
            .bind(i(r.cache_read_tokens))
            .bind(i(r.cache_write_tokens))
            .bind(i(r.reasoning_tokens))
            .bind(r.cost_micros)
            .bind(i(r.duration_us))
            .bind(r.ttfb_us.map(i))
            .bind(i64::from(r.refused))
            .bind(i64::from(r.trusted))
            .bind(serde_json::to_string(&r.tool_calls).unwrap_or_default())
            .bind(r.decisions.to_string())
            .bind(r.request_body.as_deref())
            .bind(r.response_body.as_deref())
            .bind(profile_orgs.get(&r.profile).map(String::as_str))
            .bind(i64::from(r.usage_estimated))
            .bind(i64::from(r.price_missing))
            .bind(r.requested_model.as_deref())
            .bind(r.optimisation_rule.as_deref())
            .bind(r.baseline_cost_micros)
            .bind(r.toon_tokens_before)
            .bind(r.toon_tokens_after)
            .bind(r.toon_savings_micros);
    }
    let mut new = std::collections::HashSet::new();
    if !returning {
        return Ok((q.execute(&mut **tx).await?.rows_affected(), new));
    }
    for row in q.fetch_all(&mut **tx).await? {
        new.insert(u64::try_from(row.try_get::<i64, _>("seq")?).unwrap_or(0));
    }
    Ok((new.len() as u64, new))
}
