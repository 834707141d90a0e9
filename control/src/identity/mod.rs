//! Organisations, teams, members, roles and admin API keys.

use std::collections::BTreeSet;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::auth::{
    Perm, Principal, all_permissions, member_permissions, parse_permissions, proxy_permissions,
};
use crate::crypto::{ADMIN_KEY_PREFIX, NewKey, new_key};
use crate::documents::{Page, Paging, list_in_org, page};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::{Db, new_id, now_ms};

fn name_ok(what: &str, s: &str) -> Result<(), ApiError> {
    if s.trim().is_empty() || s.chars().count() > 128 {
        return Err(ApiError::Unprocessable(format!(
            "{what} must be 1-128 characters"
        )));
    }
    Ok(())
}

/// The caller.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Me {
    /// Member id.
    pub member_id: String,
    /// Organisation id.
    pub org_id: String,
    /// Role name.
    pub role: String,
    /// Permissions the role grants.
    pub permissions: Vec<String>,
    /// Sees every team.
    pub all_teams: bool,
    /// Team ids.
    pub teams: Vec<String>,
}

/// `GET /me`
pub async fn me(Extension(p): Extension<Principal>) -> Json<Me> {
    Json(Me {
        member_id: p.member_id,
        org_id: p.org_id,
        role: p.role,
        permissions: p.permissions.iter().map(ToString::to_string).collect(),
        all_teams: p.all_teams,
        teams: p.teams,
    })
}

// ---------------------------------------------------------------- organisations

/// An organisation.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Organisation {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
}

/// A new organisation.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrganisation {
    /// Unique name.
    pub name: String,
}

/// Creates an organisation with its built-in roles; returns its id.
pub async fn create_org(db: &Db, name: &str) -> Result<String, ApiError> {
    let id = new_id("org");
    let now = now_ms();
    let mut tx = db.pool.begin().await?;
    sqlx::query("INSERT INTO organisations (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&id)
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    for (role, perms, all) in [
        ("admin", all_permissions(), true),
        ("member", member_permissions(), false),
        ("proxy", proxy_permissions(), true),
    ] {
        let list: Vec<String> = perms.iter().map(ToString::to_string).collect();
        sqlx::query(
            "INSERT INTO roles (id, org_id, name, permissions, all_teams, builtin, created_at) \
             VALUES ($1, $2, $3, $4, $5, 1, $6)",
        )
        .bind(new_id("role"))
        .bind(&id)
        .bind(role)
        .bind(serde_json::to_string(&list).unwrap_or_default())
        .bind(i64::from(all))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// `GET /organisations`
pub async fn list_orgs(
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<Organisation>>, ApiError> {
    paging.checked()?;
    let rows =
        sqlx::query("SELECT id, name, created_at FROM organisations ORDER BY created_at, id")
            .fetch_all(&state.db.pool)
            .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(Organisation {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                created_at_ms: r.try_get("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Json(page(items, &paging)?))
}

/// `POST /organisations`
pub async fn post_org(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewOrganisation>,
) -> Result<(StatusCode, Json<Organisation>), ApiError> {
    name_ok("name", &body.name)?;
    let id = create_org(&state.db, &body.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(Organisation {
            id,
            name: body.name,
            created_at_ms: now_ms(),
        }),
    ))
}

// ---------------------------------------------------------------- teams

/// A team.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Team {
    /// Id.
    pub id: String,
    /// Name (`context.team` in policy conditions).
    pub name: String,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
}

/// A new team.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTeam {
    /// Unique within the organisation.
    pub name: String,
}

fn team_of(r: &sqlx::any::AnyRow) -> Result<Team, sqlx::Error> {
    Ok(Team {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_at_ms: r.try_get("created_at")?,
    })
}

/// `GET /teams`
pub async fn list_teams(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<Team>>, ApiError> {
    list_in_org(
        &state,
        &p.org_id,
        "SELECT id, name, created_at FROM teams WHERE org_id = $1 ORDER BY created_at, id",
        team_of,
        &paging,
    )
    .await
}

/// `GET /teams/{id}`
pub async fn get_team(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Team>, ApiError> {
    let row = sqlx::query("SELECT id, name, created_at FROM teams WHERE id = $1 AND org_id = $2")
        .bind(&id)
        .bind(&p.org_id)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("team"))?;
    Ok(Json(team_of(&row)?))
}

/// `POST /teams`
pub async fn post_team(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<NewTeam>,
) -> Result<(StatusCode, Json<Team>), ApiError> {
    name_ok("name", &body.name)?;
    let id = new_id("team");
    let now = now_ms();
    sqlx::query("INSERT INTO teams (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&id)
        .bind(&p.org_id)
        .bind(&body.name)
        .bind(now)
        .execute(&state.db.pool)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Team {
            id,
            name: body.name,
            created_at_ms: now,
        }),
    ))
}

/// `DELETE /teams/{id}`
pub async fn delete_team(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let owned = sqlx::query("SELECT COUNT(*) AS n FROM documents WHERE team_id = $1")
        .bind(&id)
        .fetch_one(&state.db.pool)
        .await?
        .try_get::<i64, _>("n")?;
    if owned > 0 {
        return Err(ApiError::Conflict(format!(
            "the team owns {owned} profiles or MCP servers; move or delete them first"
        )));
    }
    let done = sqlx::query("DELETE FROM teams WHERE id = $1 AND org_id = $2")
        .bind(&id)
        .bind(&p.org_id)
        .execute(&state.db.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("team"));
    }
    state.publish().await?;
    Ok(StatusCode::NO_CONTENT)
}

mod access;
pub use access::*;
