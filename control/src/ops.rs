//! Approvals, snapshots and proxies.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::auth::Principal;
use crate::documents::{Page, Paging, page};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::{new_id, now_ms};

/// An approval of one exact tool call.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Approval {
    /// Id.
    pub id: String,
    /// The call's approval id (`apr_…`), as the refusal named it.
    pub call_id: String,
    /// Why it was approved.
    pub note: String,
    /// The member who approved it.
    pub created_by: String,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
    /// When the approval ends.
    pub expires_at_ms: i64,
}

/// A new approval.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApproval {
    /// The approval id from the refusal (`apr_` + 32 hex digits).
    pub call_id: String,
    /// Why.
    #[serde(default)]
    pub note: String,
    /// How long it lasts, seconds (default 3600, at most 30 days).
    pub ttl_secs: Option<u32>,
}

fn approval_of(r: &sqlx::any::AnyRow) -> Result<Approval, sqlx::Error> {
    Ok(Approval {
        id: r.try_get("id")?,
        call_id: r.try_get("call_id")?,
        note: r.try_get("note")?,
        created_by: r.try_get("created_by")?,
        created_at_ms: r.try_get("created_at")?,
        expires_at_ms: r.try_get("expires_at")?,
    })
}

/// `GET /approvals`: the approvals still in force.
pub async fn list_approvals(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<Approval>>, ApiError> {
    paging.checked()?;
    let rows = sqlx::query(
        "SELECT id, call_id, note, created_by, created_at, expires_at FROM approvals \
         WHERE org_id = $1 AND expires_at > $2 ORDER BY created_at, id",
    )
    .bind(&p.org_id)
    .bind(now_ms())
    .fetch_all(&state.db.pool)
    .await?;
    let items = rows
        .iter()
        .map(approval_of)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(page(items, &paging)?))
}

/// `POST /approvals`
pub async fn post_approval(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<NewApproval>,
) -> Result<(StatusCode, Json<Approval>), ApiError> {
    let valid = body
        .call_id
        .strip_prefix("apr_")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid {
        return Err(ApiError::Unprocessable(
            "call_id must be the approval id a refusal names (apr_ and 32 hex digits)".into(),
        ));
    }
    if body.note.chars().count() > 1000 {
        return Err(ApiError::Unprocessable(
            "note is at most 1000 characters".into(),
        ));
    }
    let ttl = body.ttl_secs.unwrap_or(3600);
    if !(1..=30 * 86_400).contains(&ttl) {
        return Err(ApiError::Unprocessable(
            "ttl_secs must be between 1 and 2592000".into(),
        ));
    }
    let id = new_id("appr");
    let now = now_ms();
    let expires = now + i64::from(ttl) * 1000;
    sqlx::query(
        "INSERT INTO approvals (id, org_id, call_id, note, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&p.org_id)
    .bind(&body.call_id)
    .bind(&body.note)
    .bind(&p.member_id)
    .bind(now)
    .bind(expires)
    .execute(&state.db.pool)
    .await?;
    state.publish().await?;
    Ok((
        StatusCode::CREATED,
        Json(Approval {
            id,
            call_id: body.call_id,
            note: body.note,
            created_by: p.member_id,
            created_at_ms: now,
            expires_at_ms: expires,
        }),
    ))
}

/// `DELETE /approvals/{id}`: withdraws an approval.
pub async fn delete_approval(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let done = sqlx::query("DELETE FROM approvals WHERE id = $1 AND org_id = $2")
        .bind(&id)
        .bind(&p.org_id)
        .execute(&state.db.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("approval"));
    }
    state.publish().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A snapshot as published (the proxy's raw configuration under `config`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct SnapshotView {
    /// Version.
    pub version: u64,
    /// SHA-256 of the config's canonical JSON.
    pub hash: String,
    /// Compiled, ms since the epoch.
    pub created_at_ms: i64,
    /// The configuration (see docs/configuration.md; keys as digests, credentials decrypted
    /// for the proxy).
    pub config: serde_json::Value,
}

fn snapshot_response(body: bytes::Bytes) -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// `GET /snapshots/latest`
pub async fn latest(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.hub.latest() {
        Some(p) => Ok(snapshot_response(p.body.clone())),
        None => Err(ApiError::not_found("snapshot")),
    }
}

/// `?after&timeout_ms&proxy_id`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    /// The version the proxy has (0: none).
    pub after: Option<u64>,
    /// How long to wait for a newer one, ms (default 0: answer at once; at most 60000).
    pub timeout_ms: Option<u32>,
    /// The proxy's id, recorded for `GET /proxies`.
    pub proxy_id: Option<String>,
}

/// `GET /snapshots/watch`: the first version after `after`, as soon as it exists; 204 when
/// none appeared within the timeout.
pub async fn watch(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<WatchQuery>,
) -> Result<Response, ApiError> {
    let timeout = q.timeout_ms.unwrap_or(0);
    if timeout > 60_000 {
        return Err(ApiError::BadRequest("timeout_ms is at most 60000".into()));
    }
    let after = q.after.unwrap_or(0);
    if let Some(id) = q
        .proxy_id
        .as_deref()
        .filter(|i| !i.is_empty() && i.len() <= 128)
    {
        let v = i64::try_from(after).unwrap_or(i64::MAX);
        let upd = sqlx::query(
            "UPDATE proxies SET last_seen = $1, snapshot_version = $2 WHERE proxy_id = $3",
        )
        .bind(now_ms())
        .bind(v)
        .bind(id)
        .execute(&state.db.pool)
        .await?;
        if upd.rows_affected() == 0 {
            sqlx::query("INSERT INTO proxies (proxy_id, last_seen, acked_seq, snapshot_version) VALUES ($1, $2, 0, $3) ON CONFLICT (proxy_id) DO NOTHING")
                .bind(id)
                .bind(now_ms())
                .bind(v)
                .execute(&state.db.pool)
                .await?;
        }
    }
    match state
        .hub
        .wait_after(after, Duration::from_millis(u64::from(timeout)))
        .await
    {
        Some(p) => Ok(snapshot_response(p.body.clone())),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// A proxy the control plane has heard from.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProxyStatus {
    /// Its stable id.
    pub proxy_id: String,
    /// Last contact, ms since the epoch.
    pub last_seen_ms: i64,
    /// Highest usage sequence stored.
    pub acked_seq: i64,
    /// The snapshot version it last reported having.
    pub snapshot_version: i64,
}

/// `GET /proxies`
pub async fn proxies(
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<ProxyStatus>>, ApiError> {
    paging.checked()?;
    let rows = sqlx::query(
        "SELECT proxy_id, last_seen, acked_seq, snapshot_version FROM proxies ORDER BY proxy_id",
    )
    .fetch_all(&state.db.pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(ProxyStatus {
                proxy_id: r.try_get("proxy_id")?,
                last_seen_ms: r.try_get("last_seen")?,
                acked_seq: r.try_get("acked_seq")?,
                snapshot_version: r.try_get("snapshot_version")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Json(page(items, &paging)?))
}
