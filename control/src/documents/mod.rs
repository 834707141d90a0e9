//! Typed documents: profiles, tools, policies, prices, limits, optimisation rules and MCP
//! servers share one table and one set of generic handlers; each kind brings its schema,
//! its name and its own checks.

use std::collections::BTreeMap;
use std::future::Future;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::{Db, new_id, now_ms};

/// One kind of document.
pub trait DocKind: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// Its `kind` in the table and the prefix of its ids.
    const KIND: &'static str;
    /// Id prefix.
    const PREFIX: &'static str;
    /// Visible only to callers in its team (or who see all teams).
    const TEAM_SCOPED: bool = false;
    /// The document's own `id` field is its id (policies): it is not repeated.
    const NAME_IS_ID: bool = false;
    /// Its unique name.
    fn name(&self) -> String;
    /// Its owning team (id), for scoped kinds.
    fn team(&self) -> Option<&str> {
        None
    }
    /// Checks beyond the schema (references, compilation); `id` is set on replace.
    fn check<'a>(
        &'a self,
        state: &'a AppState,
        principal: &'a Principal,
        id: Option<&'a str>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send + 'a;
}

/// A stored document.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Doc<K> {
    /// Its id (for policies, the policy's own `id`, inside the document).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
    /// Last changed, ms since the epoch.
    pub updated_at_ms: i64,
    /// The document.
    #[serde(flatten)]
    pub body: K,
}

/// A page of results.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<u32>,
}

/// `?limit&offset`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    /// Items per page, 1-500 (default 50).
    pub limit: Option<u32>,
    /// Items to skip (default 0).
    pub offset: Option<u32>,
}

impl Paging {
    /// `(limit, offset)` checked.
    pub fn checked(&self) -> Result<(usize, usize), ApiError> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(ApiError::BadRequest(
                "limit must be between 1 and 500".into(),
            ));
        }
        Ok((limit as usize, self.offset.unwrap_or(0) as usize))
    }
}

/// Splits `items` into the requested page.
pub fn page<T>(items: Vec<T>, paging: &Paging) -> Result<Page<T>, ApiError> {
    let (limit, offset) = paging.checked()?;
    let total = items.len();
    let items: Vec<T> = items.into_iter().skip(offset).take(limit).collect();
    let next = offset + items.len();
    Ok(Page {
        next_offset: (next < total).then(|| u32::try_from(next).unwrap_or(u32::MAX)),
        items,
    })
}

/// One organisation's rows of `sql` (whose `$1` is the organisation id), mapped and paged:
/// the list routes of the identity and key resources.
pub async fn list_in_org<T>(
    state: &AppState,
    org_id: &str,
    sql: &'static str,
    map: fn(&sqlx::any::AnyRow) -> Result<T, sqlx::Error>,
    paging: &Paging,
) -> Result<Json<Page<T>>, ApiError> {
    paging.checked()?;
    let rows = sqlx::query(sql)
        .bind(org_id)
        .fetch_all(&state.db.pool)
        .await?;
    let items = rows.iter().map(map).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(page(items, paging)?))
}

/// Every document of a kind (all organisations), oldest first: for snapshots.
pub async fn all_of<K: DocKind>(db: &Db) -> Result<Vec<(String, K)>, ApiError> {
    let rows =
        sqlx::query("SELECT id, body FROM documents WHERE kind = $1 ORDER BY created_at, id")
            .bind(K::KIND)
            .fetch_all(&db.pool)
            .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let body: String = r.try_get("body")?;
        let parsed = serde_json::from_str(&body)
            .map_err(|e| ApiError::Internal(format!("stored {} is unreadable: {e}", K::KIND)))?;
        out.push((r.try_get("id")?, parsed));
    }
    Ok(out)
}

fn row_to_doc<K: DocKind>(r: &sqlx::any::AnyRow) -> Result<Doc<K>, ApiError> {
    let body: String = r.try_get("body")?;
    let id: String = r.try_get("id")?;
    Ok(Doc {
        id: (!K::NAME_IS_ID).then_some(id),
        created_at_ms: r.try_get("created_at")?,
        updated_at_ms: r.try_get("updated_at")?,
        body: serde_json::from_str(&body)
            .map_err(|e| ApiError::Internal(format!("stored {} is unreadable: {e}", K::KIND)))?,
    })
}

fn visible<K: DocKind>(p: &Principal, body: &K) -> bool {
    !K::TEAM_SCOPED || p.sees_team(body.team())
}

pub(crate) async fn load<K: DocKind>(
    state: &AppState,
    p: &Principal,
    id: &str,
) -> Result<Doc<K>, ApiError> {
    let row = sqlx::query(
        "SELECT id, body, created_at, updated_at FROM documents WHERE kind = $1 AND id = $2 AND org_id = $3",
    )
    .bind(K::KIND)
    .bind(id)
    .bind(&p.org_id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found(&K::KIND.replace('_', " ")))?;
    let doc = row_to_doc::<K>(&row)?;
    if !visible(p, &doc.body) {
        return Err(ApiError::not_found(&K::KIND.replace('_', " ")));
    }
    Ok(doc)
}

/// 409 when another document of the kind has this name.
async fn name_free<K: DocKind>(
    state: &AppState,
    body: &K,
    except: Option<&str>,
) -> Result<(), ApiError> {
    let n = sqlx::query(
        "SELECT COUNT(*) AS n FROM documents WHERE kind = $1 AND name = $2 AND id <> $3",
    )
    .bind(K::KIND)
    .bind(body.name())
    .bind(except.unwrap_or(""))
    .fetch_one(&state.db.pool)
    .await?
    .try_get::<i64, _>("n")?;
    if n > 0 {
        return Err(ApiError::Conflict(format!(
            "{} '{}' already exists",
            K::KIND.trim_end_matches('s').replace('_', " "),
            body.name()
        )));
    }
    Ok(())
}

pub(crate) fn check_team_write<K: DocKind>(p: &Principal, body: &K) -> Result<(), ApiError> {
    if K::TEAM_SCOPED && !p.sees_team(body.team()) {
        return Err(ApiError::Forbidden(
            "you can only manage resources of your own teams".into(),
        ));
    }
    Ok(())
}

/// `GET /{kind}`
pub async fn list<K: DocKind>(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<Doc<K>>>, ApiError> {
    paging.checked()?;
    let rows = sqlx::query(
        "SELECT id, body, created_at, updated_at FROM documents WHERE kind = $1 AND org_id = $2 \
         ORDER BY created_at, id",
    )
    .bind(K::KIND)
    .bind(&p.org_id)
    .fetch_all(&state.db.pool)
    .await?;
    let mut docs = Vec::with_capacity(rows.len());
    for r in &rows {
        let d = row_to_doc::<K>(r)?;
        if visible(&p, &d.body) {
            docs.push(d);
        }
    }
    Ok(Json(page(docs, &paging)?))
}

/// `GET /{kind}/{id}`
pub async fn get<K: DocKind>(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Doc<K>>, ApiError> {
    Ok(Json(load::<K>(&state, &p, &id).await?))
}

/// `POST /{kind}`
pub async fn create<K: DocKind>(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<K>,
) -> Result<(StatusCode, Json<Doc<K>>), ApiError> {
    check_team_write(&p, &body)?;
    name_free(&state, &body, None).await?;
    body.check(&state, &p, None).await?;
    let id = if K::NAME_IS_ID {
        body.name()
    } else {
        new_id(K::PREFIX)
    };
    let now = now_ms();
    let text = serde_json::to_string(&body).map_err(|e| ApiError::Internal(e.to_string()))?;
    sqlx::query(
        "INSERT INTO documents (kind, id, org_id, team_id, name, body, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(K::KIND)
    .bind(&id)
    .bind(&p.org_id)
    .bind(body.team().map(str::to_owned))
    .bind(body.name())
    .bind(&text)
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    state.publish().await?;
    Ok((
        StatusCode::CREATED,
        Json(Doc {
            id: (!K::NAME_IS_ID).then_some(id),
            created_at_ms: now,
            updated_at_ms: now,
            body,
        }),
    ))
}

/// `PUT /{kind}/{id}`
pub async fn replace<K: DocKind>(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<K>,
) -> Result<Json<Doc<K>>, ApiError> {
    let old = load::<K>(&state, &p, &id).await?;
    check_team_write(&p, &old.body)?;
    check_team_write(&p, &body)?;
    if K::NAME_IS_ID && body.name() != id {
        return Err(ApiError::Unprocessable(format!(
            "the id cannot change (it is '{id}'); create a new one and delete this"
        )));
    }
    name_free(&state, &body, Some(&id)).await?;
    body.check(&state, &p, Some(&id)).await?;
    let now = now_ms();
    let text = serde_json::to_string(&body).map_err(|e| ApiError::Internal(e.to_string()))?;
    sqlx::query(
        "UPDATE documents SET team_id = $1, name = $2, body = $3, updated_at = $4 \
         WHERE kind = $5 AND id = $6 AND org_id = $7",
    )
    .bind(body.team().map(str::to_owned))
    .bind(body.name())
    .bind(&text)
    .bind(now)
    .bind(K::KIND)
    .bind(&id)
    .bind(&p.org_id)
    .execute(&state.db.pool)
    .await?;
    state.publish().await?;
    Ok(Json(Doc {
        id: (!K::NAME_IS_ID).then_some(id),
        created_at_ms: old.created_at_ms,
        updated_at_ms: now,
        body,
    }))
}

/// `DELETE /{kind}/{id}`
pub async fn delete<K: DocKind>(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let old = load::<K>(&state, &p, &id).await?;
    check_team_write(&p, &old.body)?;
    if K::KIND == ProfileBody::KIND {
        let used = sqlx::query(
            "SELECT COUNT(*) AS n FROM virtual_keys WHERE profile_id = $1 AND revoked_at IS NULL",
        )
        .bind(&id)
        .fetch_one(&state.db.pool)
        .await?
        .try_get::<i64, _>("n")?;
        if used > 0 {
            return Err(ApiError::Conflict(format!(
                "the profile has {used} active virtual keys; revoke them first"
            )));
        }
    }
    sqlx::query("DELETE FROM documents WHERE kind = $1 AND id = $2 AND org_id = $3")
        .bind(K::KIND)
        .bind(&id)
        .bind(&p.org_id)
        .execute(&state.db.pool)
        .await?;
    state.publish().await?;
    Ok(StatusCode::NO_CONTENT)
}

mod kinds;
mod mcp_server;
pub use kinds::*;
pub use mcp_server::*;
