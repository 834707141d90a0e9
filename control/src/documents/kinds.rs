//! The document kinds: each brings its schema, its name and its own checks.

use super::*;

pub(super) fn bounded(what: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.is_empty() || s.chars().count() > max {
        return Err(ApiError::Unprocessable(format!(
            "{what} must be 1-{max} characters"
        )));
    }
    Ok(())
}

pub(super) async fn team_exists(
    state: &AppState,
    p: &Principal,
    team: Option<&str>,
) -> Result<(), ApiError> {
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
    /// JSON tool results are re-encoded as TOON where that takes fewer tokens (default false).
    #[serde(default)]
    pub toon_tool_results: bool,
    /// Policy defaults for this profile.
    pub policy_defaults: Option<sluice_policies::Defaults>,
    /// OpenAI (or compatible) upstream; absent: not served.
    pub openai: Option<UpstreamSettings>,
    /// Anthropic upstream; absent: not served.
    pub anthropic: Option<UpstreamSettings>,
    /// Gemini upstream; absent: not served.
    pub gemini: Option<UpstreamSettings>,
    /// Names of the MCP servers its MCP endpoint (`/v1/mcp/<name>`) aggregates, in order.
    #[serde(default)]
    pub mcp_servers: Vec<String>,
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
    /// The last 60 seconds (rolling).
    Minute,
    /// The last hour (rolling).
    Hour,
    /// The last 24 hours (rolling).
    #[serde(rename = "rolling_24h")]
    Rolling24h,
    /// The last 7 days (rolling).
    #[serde(rename = "rolling_7d")]
    Rolling7d,
    /// The last 30 days (rolling).
    #[serde(rename = "rolling_30d")]
    Rolling30d,
    /// The calendar day in `time_zone`.
    Day,
    /// The calendar week (from Monday) in `time_zone`.
    Week,
    /// The calendar month in `time_zone`.
    Month,
}

impl LimitWindow {
    /// The name proxies read.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitWindow::Minute => "minute",
            LimitWindow::Hour => "hour",
            LimitWindow::Rolling24h => "rolling_24h",
            LimitWindow::Rolling7d => "rolling_7d",
            LimitWindow::Rolling30d => "rolling_30d",
            LimitWindow::Day => "day",
            LimitWindow::Week => "week",
            LimitWindow::Month => "month",
        }
    }
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
    /// IANA time zone of calendar windows (default UTC), e.g. `Europe/Berlin`.
    pub time_zone: Option<String>,
    /// Only requests for this model (exact, or a prefix ending in `*`).
    pub model: Option<String>,
    /// When a proxy has no current share of the limit from the control plane (cut off for
    /// longer than a lease lives): `false` (default) refuses the limit's requests with 503,
    /// `true` lets the proxy enforce the cap on its own count.
    #[serde(default)]
    pub fail_open: bool,
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
        if let Some(m) = &self.model {
            bounded("model", m, 200)?;
        }
        sluice_policies::limits::Window::parse(self.window.as_str(), self.time_zone.as_deref())
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
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

/// A rate limit: requests and tokens per minute for a profile or a virtual key, enforced
/// by each proxy with token buckets.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    /// Unique name.
    pub name: String,
    /// `profile` or `virtual_key`.
    pub scope: LimitScope,
    /// The profile or virtual key id.
    pub target: String,
    /// Requests a minute.
    pub requests_per_minute: Option<u32>,
    /// Tokens (input + output) a minute.
    pub tokens_per_minute: Option<u32>,
}

impl DocKind for RateLimitBody {
    const KIND: &'static str = "rate_limits";
    const PREFIX: &'static str = "rl";
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
        bounded("target", &self.target, 128)?;
        if !matches!(self.scope, LimitScope::Profile | LimitScope::VirtualKey) {
            return Err(ApiError::Unprocessable(
                "rate limits apply to a profile or a virtual_key".into(),
            ));
        }
        match (self.requests_per_minute, self.tokens_per_minute) {
            (None, None) => Err(ApiError::Unprocessable(
                "set requests_per_minute, tokens_per_minute or both".into(),
            )),
            (Some(0), _) | (_, Some(0)) => Err(ApiError::Unprocessable(
                "a rate of 0 would refuse everything".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// An optimisation rule: route some requests to a cheaper model.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimisationRuleBody {
    /// Unique name.
    pub name: String,
    /// The profile (id) whose requests it applies to; with neither this nor `team`, every
    /// profile of the organisation.
    pub profile: Option<String>,
    /// The team (id) whose profiles' requests it applies to.
    #[serde(default)]
    pub team: Option<String>,
    /// The provider whose requests it rewrites: `openai` or `anthropic`.
    pub provider: String,
    /// Only requests for this model (exact, or a prefix ending in `*`).
    #[serde(default)]
    pub model: Option<String>,
    /// Order among the rules of its level (lower first; then oldest first). A profile's
    /// rules are tried before its team's, and those before the organisation's.
    #[serde(default)]
    pub priority: i32,
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
        if self.provider == "gemini"
            && let Some(problem) =
                sluice_proxy::optimise::gemini_problem(self.has_tools, &self.use_model)
        {
            return Err(ApiError::Unprocessable(problem.into()));
        }
        if self.profile.is_some() && self.team.is_some() {
            return Err(ApiError::Unprocessable(
                "set profile or team, not both (neither: the whole organisation)".into(),
            ));
        }
        if let Some(m) = &self.model {
            bounded("model", m, 200)?;
        }
        bounded("use_model", &self.use_model, 200)
    }
}
