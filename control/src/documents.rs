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

async fn load<K: DocKind>(state: &AppState, p: &Principal, id: &str) -> Result<Doc<K>, ApiError> {
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

fn check_team_write<K: DocKind>(p: &Principal, body: &K) -> Result<(), ApiError> {
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

// ---------------------------------------------------------------- kinds

fn bounded(what: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.is_empty() || s.chars().count() > max {
        return Err(ApiError::Unprocessable(format!(
            "{what} must be 1-{max} characters"
        )));
    }
    Ok(())
}

async fn team_exists(state: &AppState, p: &Principal, team: Option<&str>) -> Result<(), ApiError> {
    let Some(team) = team else { return Ok(()) };
    let n = sqlx::query("SELECT COUNT(*) AS n FROM teams WHERE id = $1 AND org_id = $2")
        .bind(team)
        .bind(&p.org_id)
        .fetch_one(&state.db.pool)
        .await?
        .try_get::<i64, _>("n")?;
    if n == 0 {
        return Err(ApiError::Unprocessable(format!(
            "team '{team}' does not exist"
        )));
    }
    Ok(())
}

/// One provider's upstream in a profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// `false` turns the provider off for the profile.
    pub enabled: Option<bool>,
    /// Base URL (default: the provider's public API, or `SLUICE_<PROVIDER>_BASE_URL` of the proxy).
    pub base_url: Option<String>,
    /// The provider credential (`cred_…`) injected upstream.
    pub credential_id: Option<String>,
    /// Header that carries the credential (default per provider; `api-key` for Azure).
    pub auth_header: Option<String>,
    /// Extra headers sent upstream.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra query parameters (e.g. Azure's `api-version`).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Speak HTTP/2 upstream.
    pub http2: Option<bool>,
}

fn default_true() -> bool {
    true
}

/// A profile: the providers it serves, who owns it, and how it treats keys and content.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    /// Name, as it appears in URLs (`/v1/openai/<name>/…`).
    pub name: String,
    /// Owning team (`team_…`); members see only their teams' profiles.
    pub team_id: Option<String>,
    /// Labels (`context.labels.<key>` in policy conditions).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Conversations start untrusted.
    #[serde(default)]
    pub starts_untrusted: bool,
    /// Requests need one of this profile's virtual keys (default true).
    #[serde(default = "default_true")]
    pub require_virtual_key: bool,
    /// Usage records carry request and response bodies (default false).
    #[serde(default)]
    pub capture_content: bool,
    /// Policy defaults for this profile.
    pub policy_defaults: Option<sluice_policies::Defaults>,
    /// OpenAI (or compatible) upstream; absent: not served.
    pub openai: Option<UpstreamSettings>,
    /// Anthropic upstream; absent: not served.
    pub anthropic: Option<UpstreamSettings>,
    /// Gemini upstream; absent: not served.
    pub gemini: Option<UpstreamSettings>,
}

impl DocKind for ProfileBody {
    const KIND: &'static str = "profiles";
    const PREFIX: &'static str = "prof";
    const TEAM_SCOPED: bool = true;
    fn name(&self) -> String {
        self.name.clone()
    }
    fn team(&self) -> Option<&str> {
        self.team_id.as_deref()
    }
    async fn check(
        &self,
        state: &AppState,
        p: &Principal,
        _id: Option<&str>,
    ) -> Result<(), ApiError> {
        sluice_proxy::config::check_profile_name(&self.name)
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
        team_exists(state, p, self.team_id.as_deref()).await?;
        for (k, v) in &self.labels {
            bounded("a label key", k, 64)?;
            if v.chars().count() > 256 {
                return Err(ApiError::Unprocessable(
                    "label values are at most 256 characters".into(),
                ));
            }
        }
        if let Some(d) = &self.policy_defaults {
            sluice_policies::check_defaults(d)
                .map_err(|e| ApiError::Unprocessable(format!("policy_defaults: {e}")))?;
        }
        for (provider, up) in [
            ("openai", &self.openai),
            ("anthropic", &self.anthropic),
            ("gemini", &self.gemini),
        ] {
            let Some(up) = up else { continue };
            if let Some(b) = &up.base_url
                && !(b.starts_with("http://") || b.starts_with("https://"))
            {
                return Err(ApiError::Unprocessable(format!(
                    "{provider}.base_url must start with http:// or https://"
                )));
            }
            for (k, v) in &up.headers {
                if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || http::HeaderValue::from_str(v).is_err()
                {
                    return Err(ApiError::Unprocessable(format!(
                        "{provider}.headers: invalid header '{k}'"
                    )));
                }
            }
            if let Some(h) = &up.auth_header
                && http::HeaderName::from_bytes(h.as_bytes()).is_err()
            {
                return Err(ApiError::Unprocessable(format!(
                    "{provider}.auth_header is not a header name"
                )));
            }
            if let Some(c) = &up.credential_id {
                let row =
                    sqlx::query("SELECT provider FROM credentials WHERE id = $1 AND org_id = $2")
                        .bind(c)
                        .bind(&p.org_id)
                        .fetch_optional(&state.db.pool)
                        .await?
                        .ok_or_else(|| {
                            ApiError::Unprocessable(format!(
                                "{provider}.credential_id '{c}' does not exist"
                            ))
                        })?;
                let cred_provider: String = row.try_get("provider")?;
                if cred_provider != provider {
                    return Err(ApiError::Unprocessable(format!(
                        "{provider}.credential_id is a {cred_provider} credential"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Checks the whole policy set with `replacing` (by id) swapped for the new policy.
async fn check_policy_set(
    state: &AppState,
    new_invocation: Option<(&sluice_policies::InvocationPolicy, Option<&str>)>,
    new_result: Option<(&sluice_policies::ResultPolicy, Option<&str>)>,
) -> Result<(), ApiError> {
    let mut set = sluice_policies::PolicySet::default();
    for (id, pol) in all_of::<sluice_policies::InvocationPolicy>(&state.db).await? {
        if new_invocation.is_some_and(|(_, r)| r == Some(id.as_str())) {
            continue;
        }
        set.invocation.push(pol);
    }
    for (id, pol) in all_of::<sluice_policies::ResultPolicy>(&state.db).await? {
        if new_result.is_some_and(|(_, r)| r == Some(id.as_str())) {
            continue;
        }
        set.result.push(pol);
    }
    if let Some((p, _)) = new_invocation {
        set.invocation.push(p.clone());
    }
    if let Some((p, _)) = new_result {
        set.result.push(p.clone());
    }
    sluice_policies::CompiledPolicies::compile(&set, 0)
        .map(|_| ())
        .map_err(|e| ApiError::Unprocessable(format!("the policy does not compile: {e}")))
}

impl DocKind for sluice_policies::InvocationPolicy {
    const KIND: &'static str = "invocation_policies";
    const PREFIX: &'static str = "ipol";
    const NAME_IS_ID: bool = true;
    fn name(&self) -> String {
        self.id.clone()
    }
    async fn check(
        &self,
        state: &AppState,
        _p: &Principal,
        id: Option<&str>,
    ) -> Result<(), ApiError> {
        bounded("id", &self.id, 128)?;
        check_policy_set(state, Some((self, id)), None).await
    }
}

impl DocKind for sluice_policies::ResultPolicy {
    const KIND: &'static str = "result_policies";
    const PREFIX: &'static str = "rpol";
    const NAME_IS_ID: bool = true;
    fn name(&self) -> String {
        self.id.clone()
    }
    async fn check(
        &self,
        state: &AppState,
        _p: &Principal,
        id: Option<&str>,
    ) -> Result<(), ApiError> {
        bounded("id", &self.id, 128)?;
        check_policy_set(state, None, Some((self, id))).await
    }
}

/// A tool Sluice knows: declared by an admin or discovered in traffic.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolBody {
    /// `profile:<name>` (LLM tools) or `mcp:<server>`.
    pub source: String,
    /// The tool's name.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// `declared` (by an admin) or `discovered` (seen in a request).
    #[serde(default = "declared")]
    pub origin: ToolOrigin,
}

fn declared() -> ToolOrigin {
    ToolOrigin::Declared
}

/// Where a tool entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolOrigin {
    /// Written by an admin.
    Declared,
    /// Seen in traffic by a proxy.
    Discovered,
}

impl DocKind for ToolBody {
    const KIND: &'static str = "tools";
    const PREFIX: &'static str = "tool";
    fn name(&self) -> String {
        format!("{}/{}", self.source, self.name)
    }
    async fn check(
        &self,
        _s: &AppState,
        _p: &Principal,
        _id: Option<&str>,
    ) -> Result<(), ApiError> {
        bounded("source", &self.source, 200)?;
        bounded("name", &self.name, 128)?;
        if !(self.source.starts_with("profile:") || self.source.starts_with("mcp:")) {
            return Err(ApiError::Unprocessable(
                "source must be profile:<name> or mcp:<server>".into(),
            ));
        }
        Ok(())
    }
}

fn non_negative(what: &str, v: Option<f64>) -> Result<(), ApiError> {
    match v {
        Some(x) if !(x.is_finite() && x >= 0.0) => Err(ApiError::Unprocessable(format!(
            "{what} must be a non-negative number"
        ))),
        _ => Ok(()),
    }
}

/// A model's token prices, in US dollars per million tokens.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceBody {
    /// `openai`, `anthropic` or `gemini`.
    pub provider: String,
    /// The model id as the provider reports it.
    pub model: String,
    /// Input tokens.
    pub input_per_mtok_usd: f64,
    /// Output tokens.
    pub output_per_mtok_usd: f64,
    /// Prompt-cache reads (default: the input price).
    pub cache_read_per_mtok_usd: Option<f64>,
    /// Prompt-cache writes (default: the input price).
    pub cache_write_per_mtok_usd: Option<f64>,
}

fn check_provider(p: &str) -> Result<(), ApiError> {
    if !matches!(p, "openai" | "anthropic" | "gemini") {
        return Err(ApiError::Unprocessable(
            "provider must be openai, anthropic or gemini".into(),
        ));
    }
    Ok(())
}

impl DocKind for PriceBody {
    const KIND: &'static str = "prices";
    const PREFIX: &'static str = "price";
    fn name(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }
    async fn check(
        &self,
        _s: &AppState,
        _p: &Principal,
        _id: Option<&str>,
    ) -> Result<(), ApiError> {
        check_provider(&self.provider)?;
        bounded("model", &self.model, 200)?;
        for (what, v) in [
            ("input_per_mtok_usd", Some(self.input_per_mtok_usd)),
            ("output_per_mtok_usd", Some(self.output_per_mtok_usd)),
            ("cache_read_per_mtok_usd", self.cache_read_per_mtok_usd),
            ("cache_write_per_mtok_usd", self.cache_write_per_mtok_usd),
        ] {
            non_negative(what, v)?;
            if v.is_some_and(|x| x > 1_000_000.0) {
                return Err(ApiError::Unprocessable(format!(
                    "{what} is at most 1000000 dollars per million tokens"
                )));
            }
        }
        Ok(())
    }
}

/// What a usage limit applies to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// The whole organisation.
    Organisation,
    /// One team.
    Team,
    /// One profile.
    Profile,
    /// One virtual key.
    VirtualKey,
}

/// The window a usage limit counts over.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitWindow {
    /// A minute.
    Minute,
    /// An hour.
    Hour,
    /// A day (UTC).
    Day,
    /// A calendar month (UTC).
    Month,
}

/// A usage limit: spend or tokens per window for a scope.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitBody {
    /// Unique name.
    pub name: String,
    /// What it applies to.
    pub scope: LimitScope,
    /// The team, profile or key id (absent for `organisation`).
    pub target: Option<String>,
    /// The window.
    pub window: LimitWindow,
    /// Dollars per window.
    pub max_cost_usd: Option<f64>,
    /// Tokens (input + output) per window.
    pub max_tokens: Option<u32>,
}

impl DocKind for LimitBody {
    const KIND: &'static str = "limits";
    const PREFIX: &'static str = "lim";
    fn name(&self) -> String {
        self.name.clone()
    }
    async fn check(
        &self,
        _s: &AppState,
        _p: &Principal,
        _id: Option<&str>,
    ) -> Result<(), ApiError> {
        bounded("name", &self.name, 128)?;
        non_negative("max_cost_usd", self.max_cost_usd)?;
        if self.max_cost_usd.is_none() && self.max_tokens.is_none() {
            return Err(ApiError::Unprocessable(
                "set max_cost_usd, max_tokens or both".into(),
            ));
        }
        match (self.scope, &self.target) {
            (LimitScope::Organisation, None) => Ok(()),
            (LimitScope::Organisation, Some(_)) => Err(ApiError::Unprocessable(
                "an organisation limit has no target".into(),
            )),
            (_, Some(t)) => bounded("target", t, 128),
            (_, None) => Err(ApiError::Unprocessable(
                "this scope needs a target id".into(),
            )),
        }
    }
}

/// An optimisation rule: route some requests to a cheaper model.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimisationRuleBody {
    /// Unique name.
    pub name: String,
    /// The profile it applies to (absent: all).
    pub profile: Option<String>,
    /// The provider whose requests it rewrites.
    pub provider: String,
    /// Applies when the request has at most this many input tokens (estimated).
    pub max_input_tokens: Option<u32>,
    /// Applies only to requests without tools (`false`) or with (`true`).
    pub has_tools: Option<bool>,
    /// The model to use instead.
    pub use_model: String,
    /// Off without deleting.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl DocKind for OptimisationRuleBody {
    const KIND: &'static str = "optimisation_rules";
    const PREFIX: &'static str = "opt";
    fn name(&self) -> String {
        self.name.clone()
    }
    async fn check(
        &self,
        _s: &AppState,
        _p: &Principal,
        _id: Option<&str>,
    ) -> Result<(), ApiError> {
        bounded("name", &self.name, 128)?;
        check_provider(&self.provider)?;
        bounded("use_model", &self.use_model, 200)
    }
}

/// How an MCP server is reached.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum McpTransport {
    /// Streamable HTTP (2025-03-26 and later).
    StreamableHttp,
    /// HTTP+SSE (2024-11-05).
    Sse,
    /// A local process over stdio.
    Stdio,
}

/// An MCP server Sluice fronts.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServerBody {
    /// Name (`mcp:<name>` in policies).
    pub name: String,
    /// Owning team (`team_…`).
    pub team_id: Option<String>,
    /// Transport.
    pub transport: McpTransport,
    /// URL for HTTP transports.
    pub url: Option<String>,
    /// Command and arguments for stdio.
    #[serde(default)]
    pub command: Vec<String>,
    /// Container image, when the control plane runs it on Kubernetes.
    pub image: Option<String>,
    /// What it offers.
    pub description: Option<String>,
}

impl DocKind for McpServerBody {
    const KIND: &'static str = "mcp_servers";
    const PREFIX: &'static str = "mcp";
    const TEAM_SCOPED: bool = true;
    fn name(&self) -> String {
        self.name.clone()
    }
    fn team(&self) -> Option<&str> {
        self.team_id.as_deref()
    }
    async fn check(
        &self,
        state: &AppState,
        p: &Principal,
        _id: Option<&str>,
    ) -> Result<(), ApiError> {
        sluice_proxy::config::check_profile_name(&self.name)
            .map_err(|e| ApiError::Unprocessable(e.to_string().replace("profile", "MCP server")))?;
        team_exists(state, p, self.team_id.as_deref()).await?;
        match self.transport {
            McpTransport::StreamableHttp | McpTransport::Sse => match &self.url {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(()),
                _ => Err(ApiError::Unprocessable(
                    "HTTP transports need an http(s) url".into(),
                )),
            },
            McpTransport::Stdio if self.command.is_empty() && self.image.is_none() => Err(
                ApiError::Unprocessable("stdio servers need a command or an image".into()),
            ),
            McpTransport::Stdio => Ok(()),
        }
    }
}
