//! Provider credentials (encrypted at rest, never returned) and virtual keys (shown once,
//! stored as salted digests).

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::auth::Principal;
use crate::crypto::new_key;
use crate::documents::{DocKind, Page, Paging, ProfileBody, list_in_org, page};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::{new_id, now_ms};

/// A provider credential. The key itself is never returned.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Credential {
    /// Id (`cred_…`), referenced by profiles.
    pub id: String,
    /// Name.
    pub name: String,
    /// `openai`, `anthropic` or `gemini`.
    pub provider: String,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
}

/// A new provider credential.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCredential {
    /// Unique within the organisation.
    pub name: String,
    /// `openai`, `anthropic` or `gemini`.
    pub provider: String,
    /// The provider's API key; encrypted with `SLUICE_MASTER_KEY`, never returned.
    pub api_key: String,
}

impl std::fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredential")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

fn credential_of(r: &sqlx::any::AnyRow) -> Result<Credential, sqlx::Error> {
    Ok(Credential {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        provider: r.try_get("provider")?,
        created_at_ms: r.try_get("created_at")?,
    })
}

/// During a master-key rotation (`SLUICE_MASTER_KEY_PREVIOUS` set), re-seals under the
/// current key every credential the previous key sealed. Returns how many were re-sealed
/// and the ids of those neither key opens (they must be stored again). Each update is
/// conditional on the ciphertext it read, so a credential written meanwhile is left as is.
pub async fn reseal(state: &AppState) -> Result<(u64, Vec<String>), ApiError> {
    let mut resealed = 0u64;
    let mut unreadable = Vec::new();
    let rows = sqlx::query("SELECT id, nonce, ciphertext FROM credentials")
        .fetch_all(&state.db.pool)
        .await?;
    for row in rows {
        let id: String = row.try_get("id")?;
        let nonce: String = row.try_get("nonce")?;
        let ct: String = row.try_get("ciphertext")?;
        match state.master.open_with(&id, &nonce, &ct) {
            Ok((_, false)) => {}
            Ok((plain, true)) => {
                let (n, c) = state
                    .master
                    .seal(&id, &plain)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                let done = sqlx::query(
                    "UPDATE credentials SET nonce = $1, ciphertext = $2 WHERE id = $3 AND ciphertext = $4",
                )
                .bind(n)
                .bind(c)
                .bind(&id)
                .bind(&ct)
                .execute(&state.db.pool)
                .await?;
                resealed += done.rows_affected();
            }
            Err(_) => unreadable.push(id),
        }
    }
    Ok((resealed, unreadable))
}

/// `GET /credentials`
pub async fn list_credentials(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<Credential>>, ApiError> {
    list_in_org(&state, &p.org_id, "SELECT id, name, provider, created_at FROM credentials WHERE org_id = $1 ORDER BY created_at, id", credential_of, &paging).await
}

/// `GET /credentials/{id}`
pub async fn get_credential(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Credential>, ApiError> {
    let row = sqlx::query(
        "SELECT id, name, provider, created_at FROM credentials WHERE id = $1 AND org_id = $2",
    )
    .bind(&id)
    .bind(&p.org_id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("credential"))?;
    Ok(Json(credential_of(&row)?))
}

/// `POST /credentials`
pub async fn post_credential(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<NewCredential>,
) -> Result<(StatusCode, Json<Credential>), ApiError> {
    if body.name.trim().is_empty() || body.name.chars().count() > 128 {
        return Err(ApiError::Unprocessable(
            "name must be 1-128 characters".into(),
        ));
    }
    if !matches!(body.provider.as_str(), "openai" | "anthropic" | "gemini") {
        return Err(ApiError::Unprocessable(
            "provider must be openai, anthropic or gemini".into(),
        ));
    }
    if body.api_key.is_empty()
        || body.api_key.len() > 4096
        || http::HeaderValue::from_str(&body.api_key).is_err()
    {
        return Err(ApiError::Unprocessable(
            "api_key must be 1-4096 characters that can travel in an HTTP header".into(),
        ));
    }
    let id = new_id("cred");
    let (nonce, ct) = state
        .master
        .seal(&id, &body.api_key)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = now_ms();
    sqlx::query(
        "INSERT INTO credentials (id, org_id, name, provider, nonce, ciphertext, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&p.org_id)
    .bind(&body.name)
    .bind(&body.provider)
    .bind(nonce)
    .bind(ct)
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Credential {
            id,
            name: body.name,
            provider: body.provider,
            created_at_ms: now,
        }),
    ))
}

/// `DELETE /credentials/{id}`
pub async fn delete_credential(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let used =
        sqlx::query("SELECT COUNT(*) AS n FROM documents WHERE kind = 'profiles' AND body LIKE $1")
            .bind(format!("%\"{id}\"%"))
            .fetch_one(&state.db.pool)
            .await?
            .try_get::<i64, _>("n")?;
    if used > 0 {
        return Err(ApiError::Conflict(format!(
            "{used} profiles use this credential"
        )));
    }
    let done = sqlx::query("DELETE FROM credentials WHERE id = $1 AND org_id = $2")
        .bind(&id)
        .bind(&p.org_id)
        .execute(&state.db.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("credential"));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- virtual keys

/// A virtual key (never its secret).
#[derive(Debug, Serialize, JsonSchema)]
pub struct VirtualKey {
    /// Id (also inside the key).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// The profile it serves.
    pub profile_id: String,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
    /// Expiry, if any.
    pub expires_at_ms: Option<i64>,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

/// A virtual key as created: the only time the key is shown.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CreatedVirtualKey {
    /// The key (`sk-sluice-…`). Store it now: Sluice keeps only a salted digest.
    pub key: String,
    /// The key's record.
    #[serde(flatten)]
    pub record: VirtualKey,
}

/// A new virtual key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVirtualKey {
    /// What it is for.
    pub name: String,
    /// The profile (`prof_…`) it serves; it must be one of the caller's teams'.
    pub profile_id: String,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: Option<i64>,
}

fn vkey_of(r: &sqlx::any::AnyRow) -> Result<VirtualKey, sqlx::Error> {
    Ok(VirtualKey {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        profile_id: r.try_get("profile_id")?,
        created_at_ms: r.try_get("created_at")?,
        expires_at_ms: r.try_get("expires_at")?,
        revoked_at_ms: r.try_get("revoked_at")?,
    })
}

/// The profile, if the caller sees it.
async fn visible_profile(
    state: &AppState,
    p: &Principal,
    profile_id: &str,
) -> Result<bool, ApiError> {
    let row =
        sqlx::query("SELECT team_id FROM documents WHERE kind = $1 AND id = $2 AND org_id = $3")
            .bind(ProfileBody::KIND)
            .bind(profile_id)
            .bind(&p.org_id)
            .fetch_optional(&state.db.pool)
            .await?;
    Ok(match row {
        Some(r) => p.sees_team(r.try_get::<Option<String>, _>("team_id")?.as_deref()),
        None => false,
    })
}

/// Stores a virtual key (also used to seed `sluice dev`).
pub async fn store_virtual_key(
    state: &AppState,
    org_id: &str,
    profile_id: &str,
    name: &str,
    key: &crate::crypto::NewKey,
    expires: Option<i64>,
) -> Result<i64, ApiError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO virtual_keys (id, org_id, profile_id, name, salt, digest, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&key.id)
    .bind(org_id)
    .bind(profile_id)
    .bind(name)
    .bind(&key.salt)
    .bind(&key.digest)
    .bind(now)
    .bind(expires)
    .execute(&state.db.pool)
    .await?;
    state.publish().await?;
    Ok(now)
}

/// `GET /virtual-keys`
pub async fn list_virtual_keys(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Page<VirtualKey>>, ApiError> {
    paging.checked()?;
    let rows = sqlx::query(
        "SELECT v.id, v.name, v.profile_id, v.created_at, v.expires_at, v.revoked_at, d.team_id \
         FROM virtual_keys v LEFT JOIN documents d ON d.kind = 'profiles' AND d.id = v.profile_id \
         WHERE v.org_id = $1 ORDER BY v.created_at, v.id",
    )
    .bind(&p.org_id)
    .fetch_all(&state.db.pool)
    .await?;
    let mut items = Vec::new();
    for r in &rows {
        let team: Option<String> = r.try_get("team_id")?;
        if p.sees_team(team.as_deref()) {
            items.push(vkey_of(r)?);
        }
    }
    Ok(Json(page(items, &paging)?))
}

async fn load_vkey(state: &AppState, p: &Principal, id: &str) -> Result<VirtualKey, ApiError> {
    let row = sqlx::query(
        "SELECT id, name, profile_id, created_at, expires_at, revoked_at FROM virtual_keys WHERE id = $1 AND org_id = $2",
    )
    .bind(id)
    .bind(&p.org_id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("virtual key"))?;
    let k = vkey_of(&row)?;
    if !visible_profile(state, p, &k.profile_id).await? {
        return Err(ApiError::not_found("virtual key"));
    }
    Ok(k)
}

/// `GET /virtual-keys/{id}`
pub async fn get_virtual_key(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<VirtualKey>, ApiError> {
    Ok(Json(load_vkey(&state, &p, &id).await?))
}

/// `POST /virtual-keys`
pub async fn post_virtual_key(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<NewVirtualKey>,
) -> Result<(StatusCode, Json<CreatedVirtualKey>), ApiError> {
    if body.name.trim().is_empty() || body.name.chars().count() > 128 {
        return Err(ApiError::Unprocessable(
            "name must be 1-128 characters".into(),
        ));
    }
    if !visible_profile(&state, &p, &body.profile_id).await? {
        return Err(ApiError::Unprocessable(format!(
            "profile '{}' does not exist or is not one of your teams'",
            body.profile_id
        )));
    }
    if body.expires_at_ms.is_some_and(|e| e <= now_ms()) {
        return Err(ApiError::Unprocessable(
            "expires_at_ms is in the past".into(),
        ));
    }
    let key = new_key(sluice_proxy::keys::VIRTUAL_KEY_PREFIX);
    let now = store_virtual_key(
        &state,
        &p.org_id,
        &body.profile_id,
        &body.name,
        &key,
        body.expires_at_ms,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedVirtualKey {
            key: key.key,
            record: VirtualKey {
                id: key.id,
                name: body.name,
                profile_id: body.profile_id,
                created_at_ms: now,
                expires_at_ms: body.expires_at_ms,
                revoked_at_ms: None,
            },
        }),
    ))
}

/// `DELETE /virtual-keys/{id}`: revokes the key everywhere within one propagation.
pub async fn revoke_virtual_key(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let k = load_vkey(&state, &p, &id).await?;
    if k.revoked_at_ms.is_some() {
        return Err(ApiError::Conflict("the key is already revoked".into()));
    }
    sqlx::query("UPDATE virtual_keys SET revoked_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(&id)
        .execute(&state.db.pool)
        .await?;
    state.publish().await?;
    Ok(StatusCode::NO_CONTENT)
}
