//! Roles, members and admin API keys: who may do what, and with which key.

use super::*;

// ---------------------------------------------------------------- roles

/// A role: a set of permissions.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Role {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `resource:read` / `resource:write` permissions.
    pub permissions: Vec<String>,
    /// Sees every team's profiles and MCP servers.
    pub all_teams: bool,
    /// `admin`, `member` and `proxy` are built in and cannot be deleted.
    pub builtin: bool,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
}

/// A new custom role. It can only grant what its creator holds.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRole {
    /// Unique within the organisation.
    pub name: String,
    /// Permissions, e.g. `["profiles:read", "virtual_keys:write"]`.
    pub permissions: Vec<String>,
    /// Sees every team (only if the creator does).
    #[serde(default)]
    pub all_teams: bool,
}

fn role_of(r: &sqlx::any::AnyRow) -> Result<Role, sqlx::Error> {
    let perms: String = r.try_get("permissions")?;
    Ok(Role {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        permissions: parse_permissions(&perms)
            .iter()
            .map(ToString::to_string)
            .collect(),
        all_teams: r.try_get::<i64, _>("all_teams")? != 0,
        builtin: r.try_get::<i64, _>("builtin")? != 0,
        created_at_ms: r.try_get("created_at")?,
    })
}

/// Refuses to hand out more than the caller holds.
fn within_caller(p: &Principal, perms: &BTreeSet<Perm>, all_teams: bool) -> Result<(), ApiError> {
    if let Some(extra) = perms.iter().find(|x| !p.can(**x)) {
        return Err(ApiError::Forbidden(format!(
            "you cannot grant {extra}: your role does not hold it"
        )));
    }
    if all_teams && !p.all_teams {
        return Err(ApiError::Forbidden(
            "you cannot grant all_teams: your role does not hold it".into(),
        ));
    }
    Ok(())
}

/// `GET /roles`
pub async fn list_roles(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<Role>>, ApiError> {
    list_in_org(&state, &p.org_id, "SELECT id, name, permissions, all_teams, builtin, created_at FROM roles WHERE org_id = $1 ORDER BY created_at, id", role_of, &paging).await
}

/// `GET /roles/{id}`
pub async fn get_role(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Role>, ApiError> {
    let row = sqlx::query(
        "SELECT id, name, permissions, all_teams, builtin, created_at FROM roles WHERE id = $1 AND org_id = $2",
    )
    .bind(&id)
    .bind(&p.org_id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("role"))?;
    Ok(Json(role_of(&row)?))
}

/// `POST /roles`
pub async fn post_role(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<NewRole>,
) -> Result<(StatusCode, Json<Role>), ApiError> {
    name_ok("name", &body.name)?;
    let mut perms = BTreeSet::new();
    for s in &body.permissions {
        perms.insert(s.parse::<Perm>().map_err(ApiError::Unprocessable)?);
    }
    within_caller(&p, &perms, body.all_teams)?;
    let id = new_id("role");
    let now = now_ms();
    let list: Vec<String> = perms.iter().map(ToString::to_string).collect();
    sqlx::query(
        "INSERT INTO roles (id, org_id, name, permissions, all_teams, builtin, created_at) VALUES ($1, $2, $3, $4, $5, 0, $6)",
    )
    .bind(&id)
    .bind(&p.org_id)
    .bind(&body.name)
    .bind(serde_json::to_string(&list).unwrap_or_default())
    .bind(i64::from(body.all_teams))
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Role {
            id,
            name: body.name,
            permissions: list,
            all_teams: body.all_teams,
            builtin: false,
            created_at_ms: now,
        }),
    ))
}

/// `DELETE /roles/{id}`
pub async fn delete_role(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let role = get_role(
        State(state.clone()),
        Extension(p.clone()),
        ApiPath(id.clone()),
    )
    .await?;
    if role.builtin {
        return Err(ApiError::Conflict(
            "built-in roles cannot be deleted".into(),
        ));
    }
    let used = sqlx::query("SELECT COUNT(*) AS n FROM members WHERE role_id = $1")
        .bind(&id)
        .fetch_one(&state.db.pool)
        .await?
        .try_get::<i64, _>("n")?;
    if used > 0 {
        return Err(ApiError::Conflict(format!("{used} members have this role")));
    }
    sqlx::query("DELETE FROM roles WHERE id = $1 AND org_id = $2")
        .bind(&id)
        .bind(&p.org_id)
        .execute(&state.db.pool)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- members

/// A member of the organisation.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Member {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Email (unique within the organisation).
    pub email: String,
    /// Role id.
    pub role_id: String,
    /// Team ids.
    pub team_ids: Vec<String>,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
}

/// A new member.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// Display name.
    pub name: String,
    /// Email.
    pub email: String,
    /// Role id; it may grant only what the caller holds.
    pub role_id: String,
    /// Team ids.
    #[serde(default)]
    pub team_ids: Vec<String>,
}

fn member_of(r: &sqlx::any::AnyRow) -> Result<Member, sqlx::Error> {
    let teams: String = r.try_get("teams")?;
    Ok(Member {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        email: r.try_get("email")?,
        role_id: r.try_get("role_id")?,
        team_ids: serde_json::from_str(&teams).unwrap_or_default(),
        created_at_ms: r.try_get("created_at")?,
    })
}

/// `GET /members`
pub async fn list_members(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<Member>>, ApiError> {
    list_in_org(&state, &p.org_id, "SELECT id, name, email, role_id, teams, created_at FROM members WHERE org_id = $1 ORDER BY created_at, id", member_of, &paging).await
}

async fn load_member(state: &AppState, p: &Principal, id: &str) -> Result<Member, ApiError> {
    let row = sqlx::query(
        "SELECT id, name, email, role_id, teams, created_at FROM members WHERE id = $1 AND org_id = $2",
    )
    .bind(id)
    .bind(&p.org_id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("member"))?;
    Ok(member_of(&row)?)
}

/// `GET /members/{id}`
pub async fn get_member(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Member>, ApiError> {
    Ok(Json(load_member(&state, &p, &id).await?))
}

async fn role_grants(
    state: &AppState,
    p: &Principal,
    role_id: &str,
) -> Result<(BTreeSet<Perm>, bool), ApiError> {
    let row = sqlx::query("SELECT permissions, all_teams FROM roles WHERE id = $1 AND org_id = $2")
        .bind(role_id)
        .bind(&p.org_id)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::Unprocessable(format!("role '{role_id}' does not exist")))?;
    let perms: String = row.try_get("permissions")?;
    Ok((
        parse_permissions(&perms),
        row.try_get::<i64, _>("all_teams")? != 0,
    ))
}

/// `POST /members`
pub async fn post_member(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<NewMember>,
) -> Result<(StatusCode, Json<Member>), ApiError> {
    name_ok("name", &body.name)?;
    if !body.email.contains('@') || body.email.chars().count() > 254 {
        return Err(ApiError::Unprocessable("email must be an address".into()));
    }
    let (perms, all_teams) = role_grants(&state, &p, &body.role_id).await?;
    within_caller(&p, &perms, all_teams)?;
    for t in &body.team_ids {
        let n = sqlx::query("SELECT COUNT(*) AS n FROM teams WHERE id = $1 AND org_id = $2")
            .bind(t)
            .bind(&p.org_id)
            .fetch_one(&state.db.pool)
            .await?
            .try_get::<i64, _>("n")?;
        if n == 0 {
            return Err(ApiError::Unprocessable(format!(
                "team '{t}' does not exist"
            )));
        }
    }
    let id = new_id("mem");
    let now = now_ms();
    sqlx::query(
        "INSERT INTO members (id, org_id, name, email, role_id, teams, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&p.org_id)
    .bind(&body.name)
    .bind(&body.email)
    .bind(&body.role_id)
    .bind(serde_json::to_string(&body.team_ids).unwrap_or_default())
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Member {
            id,
            name: body.name,
            email: body.email,
            role_id: body.role_id,
            team_ids: body.team_ids,
            created_at_ms: now,
        }),
    ))
}

/// `DELETE /members/{id}`: removes the member and revokes their admin keys.
pub async fn delete_member(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let m = load_member(&state, &p, &id).await?;
    if m.id == p.member_id {
        return Err(ApiError::Conflict("you cannot delete yourself".into()));
    }
    let (perms, all) = role_grants(&state, &p, &m.role_id).await?;
    within_caller(&p, &perms, all)?;
    let mut tx = state.db.pool.begin().await?;
    sqlx::query(
        "UPDATE admin_keys SET revoked_at = $1 WHERE member_id = $2 AND revoked_at IS NULL",
    )
    .bind(now_ms())
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM members WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- admin keys

/// An admin API key (never its secret).
#[derive(Debug, Serialize, JsonSchema)]
pub struct AdminKey {
    /// Id (also inside the key).
    pub id: String,
    /// The member it acts as.
    pub member_id: String,
    /// What it is for.
    pub name: String,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
    /// Expiry, if any.
    pub expires_at_ms: Option<i64>,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

/// A key as created: the only time the secret is shown.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CreatedAdminKey {
    /// The key. Store it now: Sluice keeps only a salted digest.
    pub key: String,
    /// The key's record.
    #[serde(flatten)]
    pub record: AdminKey,
}

/// A new admin key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAdminKey {
    /// The member it acts as (default: the caller).
    pub member_id: Option<String>,
    /// What it is for.
    pub name: String,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: Option<i64>,
}

/// Stores a key for `member_id`.
pub async fn store_admin_key(
    db: &Db,
    org_id: &str,
    member_id: &str,
    name: &str,
    key: &NewKey,
    expires: Option<i64>,
) -> Result<i64, ApiError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO admin_keys (id, org_id, member_id, name, salt, digest, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&key.id)
    .bind(org_id)
    .bind(member_id)
    .bind(name)
    .bind(&key.salt)
    .bind(&key.digest)
    .bind(now)
    .bind(expires)
    .execute(&db.pool)
    .await?;
    Ok(now)
}

fn admin_key_of(r: &sqlx::any::AnyRow) -> Result<AdminKey, sqlx::Error> {
    Ok(AdminKey {
        id: r.try_get("id")?,
        member_id: r.try_get("member_id")?,
        name: r.try_get("name")?,
        created_at_ms: r.try_get("created_at")?,
        expires_at_ms: r.try_get("expires_at")?,
        revoked_at_ms: r.try_get("revoked_at")?,
    })
}

/// `GET /admin-keys`
pub async fn list_admin_keys(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<AdminKey>>, ApiError> {
    list_in_org(&state, &p.org_id, "SELECT id, member_id, name, created_at, expires_at, revoked_at FROM admin_keys WHERE org_id = $1 ORDER BY created_at, id", admin_key_of, &paging).await
}

/// `POST /admin-keys`
pub async fn post_admin_key(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<NewAdminKey>,
) -> Result<(StatusCode, Json<CreatedAdminKey>), ApiError> {
    name_ok("name", &body.name)?;
    let member_id = body
        .member_id
        .clone()
        .unwrap_or_else(|| p.member_id.clone());
    let m = load_member(&state, &p, &member_id).await?;
    let (perms, all) = role_grants(&state, &p, &m.role_id).await?;
    within_caller(&p, &perms, all)?;
    if body.expires_at_ms.is_some_and(|e| e <= now_ms()) {
        return Err(ApiError::Unprocessable(
            "expires_at_ms is in the past".into(),
        ));
    }
    let key = new_key(ADMIN_KEY_PREFIX);
    let now = store_admin_key(
        &state.db,
        &p.org_id,
        &member_id,
        &body.name,
        &key,
        body.expires_at_ms,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedAdminKey {
            key: key.key,
            record: AdminKey {
                id: key.id,
                member_id,
                name: body.name,
                created_at_ms: now,
                expires_at_ms: body.expires_at_ms,
                revoked_at_ms: None,
            },
        }),
    ))
}

/// `DELETE /admin-keys/{id}`: revokes the key (it stays listed).
pub async fn revoke_admin_key(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if id == p.key_id {
        return Err(ApiError::Conflict(
            "you cannot revoke the key you are using; revoke it with another admin key".into(),
        ));
    }
    let done = sqlx::query("UPDATE admin_keys SET revoked_at = $1 WHERE id = $2 AND org_id = $3 AND revoked_at IS NULL")
        .bind(now_ms())
        .bind(&id)
        .bind(&p.org_id)
        .execute(&state.db.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("active admin key"));
    }
    Ok(StatusCode::NO_CONTENT)
}
