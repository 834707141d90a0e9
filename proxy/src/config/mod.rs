//! Configuration in two stages: raw serde structs (`deny_unknown_fields`) as read from a TOML
//! file, then [`Config`], the checked model every request reads. The control plane will feed
//! the same model.

mod mcp;
mod raw;
mod upstream;

pub use mcp::{McpEra, McpServer, McpTransport, RawMcpServer};

pub use raw::{
    RawApproval, RawConfig, RawLimits, RawPrice, RawProfile, RawQuarantine, RawSealedKey,
    RawUpstream, RawVirtualKey,
};
use upstream::compile_upstream;
pub use upstream::{Secret, Upstream, WireHeaders};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::events::Provider;

/// Names a profile may not take: they are the providers' own path segments, so a URL could
/// not tell them apart from a path under the default profile.
pub const RESERVED_PROFILE_NAMES: &[&str] = &[
    "v1",
    "v1beta",
    "v1alpha",
    "v2",
    "chat",
    "completions",
    "responses",
    "models",
    "messages",
    "embeddings",
    "files",
    "batches",
    "uploads",
    "images",
    "audio",
    "moderations",
    "assistants",
    "threads",
    "vector_stores",
    "fine_tuning",
    "realtime",
    "conversations",
    "containers",
    "evals",
    "openai",
    "deployments",
    "cachedContents",
    "tunedModels",
    "operations",
    "upload",
];

/// A configuration problem, reported whole; the previous configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not match the schema.
    #[error("config is not valid: {0}")]
    Parse(String),
    /// A value is out of range or inconsistent.
    #[error("config is not valid: {0}")]
    Invalid(String),
}

// ---------------------------------------------------------------- checked model

/// Limits, all with documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Request body cap in bytes (413). Default 32 MiB.
    pub max_request_body_bytes: usize,
    /// Header bytes cap (431). Default 64 KiB.
    pub max_header_bytes: usize,
    /// Header count cap (431). Default 100.
    pub max_header_count: usize,
    /// Client read deadline between reads. Default 10 s.
    pub client_read_timeout: Duration,
    /// Whole first request header of a connection (slowloris). Default 10 s.
    pub client_header_timeout: Duration,
    /// From a response to the next request header on a kept-alive connection. Default 60 s.
    pub client_keepalive_timeout: Duration,
    /// Longest one write to the client may wait (a client that stopped reading; upstream
    /// reads pause meanwhile), then the connection is dropped. Default 60 s.
    pub client_write_timeout: Duration,
    /// Slowest a client may take the response, bytes/s (0: off); HTTP/1.1 only. Each write
    /// then has `max(len, rate) / rate` seconds, at least 1 s, instead of the timeout above.
    /// Default 0.
    pub min_response_bytes_per_sec: u64,
    /// Resident memory past which new requests get 503 (0: none). Default: 90% of the
    /// cgroup's `memory.max` when set, else none.
    pub memory_budget_bytes: u64,
    /// Slowest request body accepted after the grace below, bytes/s (0: off). Default 1000.
    pub min_request_body_bytes_per_sec: u64,
    /// Time a request body has before the minimum rate applies. Default 10 s.
    pub request_body_rate_grace: Duration,
    /// Upstream connect timeout. Default 10 s.
    pub upstream_connect_timeout: Duration,
    /// Upstream silence cutoff. Default 300 s; there is no total cap on a producing stream.
    pub upstream_idle_timeout: Duration,
    /// Longest one write to the upstream may wait (the request head, a piece of the body,
    /// or the whole body when Sluice held it for inspection) before Sluice stops sending
    /// the body and reads only the answer. Default 30 s.
    pub upstream_write_timeout: Duration,
    /// Cap on one SSE event. Default 1 MiB.
    pub max_sse_event_bytes: usize,
    /// Cap on a non-streaming response kept for inspection. Default 32 MiB.
    pub max_inspected_response_bytes: usize,
    /// Idle upstream connections kept. Default 1024.
    pub upstream_pool_size: usize,
    /// How long an approval lasts. Default 1 h.
    pub approval_ttl: Duration,
    /// Failed virtual-key attempts allowed per client address per minute. Default 20.
    pub max_failed_auth_per_minute: u32,
    /// MCP sessions kept at once. Default 10,000.
    pub mcp_max_sessions: usize,
    /// Keep-alive comments on an idle MCP server stream. Default 15 s.
    pub mcp_keepalive_interval: Duration,
    /// How long a server's question to a stateless client waits for the client's retry
    /// before the request is cancelled (MRTR). Default 5 min.
    pub mcp_input_timeout: Duration,
    /// An idle MCP session ends after this. Default 1 h.
    pub mcp_session_idle_timeout: Duration,
    /// Tool results larger than this stay JSON. Default 1 MiB.
    pub toon_max_result_bytes: usize,
    /// Memory for remembered TOON conversions (read at start). Default 32 MiB.
    pub toon_cache_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 32 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_header_count: 100,
            client_read_timeout: Duration::from_secs(10),
            client_header_timeout: Duration::from_secs(10),
            client_keepalive_timeout: Duration::from_secs(60),
            client_write_timeout: Duration::from_secs(60),
            min_response_bytes_per_sec: 0,
            min_request_body_bytes_per_sec: 1000,
            memory_budget_bytes: crate::overload::default_budget(),
            request_body_rate_grace: Duration::from_secs(10),
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_idle_timeout: Duration::from_secs(300),
            upstream_write_timeout: Duration::from_secs(30),
            max_sse_event_bytes: 1024 * 1024,
            max_inspected_response_bytes: 32 * 1024 * 1024,
            upstream_pool_size: 1024,
            approval_ttl: Duration::from_secs(3600),
            max_failed_auth_per_minute: 20,
            mcp_max_sessions: 10_000,
            mcp_keepalive_interval: Duration::from_secs(15),
            mcp_input_timeout: Duration::from_secs(300),
            mcp_session_idle_timeout: Duration::from_secs(3600),
            toon_max_result_bytes: 1024 * 1024,
            toon_cache_bytes: 32 * 1024 * 1024,
        }
    }
}

/// A checked profile: the upstream for each provider it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Its name.
    pub name: Arc<str>,
    /// `profile:<name>`: the source of its tools as policies select them (made once, not
    /// per tool call).
    pub tool_source: Arc<str>,
    /// Upstreams by provider.
    pub upstreams: NameMap<Provider, Arc<Upstream>>,
    /// Owning team, for policy conditions.
    pub team: Option<Arc<str>>,
    /// Owning organisation's id, for organisation spend limits.
    pub organisation: Option<Arc<str>>,
    /// Labels, for policy conditions.
    pub labels: Arc<[(String, String)]>,
    /// Conversations start untrusted.
    pub starts_untrusted: bool,
    /// Policy defaults for this profile, when it overrides the policy set's.
    pub policy_defaults: Option<sluice_policies::Defaults>,
    /// Requests need one of this profile's virtual keys.
    pub require_virtual_key: bool,
    /// Usage records carry request and response bodies.
    pub capture_content: bool,
    /// JSON tool results are re-encoded as TOON where that takes fewer tokens.
    pub toon_tool_results: bool,
    /// The MCP servers its endpoint aggregates, in order.
    pub mcp_servers: Arc<[Arc<str>]>,
}

/// A map the snapshot fills from its own names (profiles, providers, key ids, MCP servers)
/// and a request only looks up in. No request inserts into it, so it needs no defence
/// against keys chosen to collide, and a faster hash than the standard SipHash does.
pub type NameMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// The checked configuration every request reads from one snapshot.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy listener.
    pub listen: String,
    /// Admin listener.
    pub admin_listen: Option<String>,
    /// Worker threads.
    pub threads: usize,
    /// Limits.
    pub limits: Limits,
    /// Profiles by name.
    pub profiles: NameMap<Arc<str>, Arc<Profile>>,
    /// The compiled policies of this snapshot.
    pub policies: Arc<sluice_policies::CompiledPolicies>,
    /// The dual-LLM quarantine, if configured.
    pub quarantine: Option<crate::quarantine::QuarantineConfig>,
    /// Virtual keys by id.
    pub virtual_keys: NameMap<Arc<str>, crate::keys::VirtualKey>,
    /// Approved call ids and when each approval ends (ms since the epoch).
    pub approvals: HashMap<String, i64>,
    /// Token prices.
    pub prices: crate::cost::PriceTable,
    /// Spend and token limits.
    pub spend_limits: Arc<[crate::spend::SpendLimit]>,
    /// Rate limits.
    pub rate_limits: Arc<[crate::rate::RateLimit]>,
    /// Optimisation rules, in the order they are tried.
    pub optimisation_rules: Arc<[crate::optimise::OptimisationRule]>,
    /// MCP servers by name.
    pub mcp_servers: NameMap<Arc<str>, Arc<McpServer>>,
    /// Browser origins allowed on the MCP endpoint besides loopback ones.
    pub mcp_allowed_origins: Arc<[String]>,
}

/// Provider base URLs that apply to every profile that does not set its own.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `SLUICE_OPENAI_BASE_URL`.
    pub openai_base_url: Option<String>,
    /// `SLUICE_ANTHROPIC_BASE_URL`.
    pub anthropic_base_url: Option<String>,
    /// `SLUICE_GEMINI_BASE_URL`.
    pub gemini_base_url: Option<String>,
    /// `SLUICE_PROXY_LISTEN`.
    pub proxy_listen: Option<String>,
    /// `SLUICE_ADMIN_LISTEN`.
    pub admin_listen: Option<String>,
    /// `SLUICE_MASTER_KEY`: opens credentials the control plane sealed.
    pub master_key: Option<crate::keys::MasterKey>,
}

impl Environment {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            openai_base_url: var("SLUICE_OPENAI_BASE_URL"),
            anthropic_base_url: var("SLUICE_ANTHROPIC_BASE_URL"),
            gemini_base_url: var("SLUICE_GEMINI_BASE_URL"),
            proxy_listen: var("SLUICE_PROXY_LISTEN"),
            admin_listen: var("SLUICE_ADMIN_LISTEN"),
            master_key: var("SLUICE_MASTER_KEY")
                .and_then(|k| crate::keys::MasterKey::from_hex(&k).ok())
                .and_then(|k| match var("SLUICE_MASTER_KEY_PREVIOUS") {
                    Some(old) => k.with_previous(&old).ok(),
                    None => Some(k),
                }),
        }
    }

    fn base_url(&self, p: Provider) -> String {
        let (env, default) = match p {
            Provider::Openai => (&self.openai_base_url, "https://api.openai.com/v1"),
            Provider::Anthropic => (&self.anthropic_base_url, "https://api.anthropic.com"),
            Provider::Gemini => (
                &self.gemini_base_url,
                "https://generativelanguage.googleapis.com",
            ),
        };
        env.clone().unwrap_or_else(|| default.to_owned())
    }
}

/// Parses TOML text into the raw stage.
pub fn parse_toml(text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
}

/// Reads, parses and checks a config file.
pub fn load_file(path: &std::path::Path, env: &Environment) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    compile(parse_toml(&text)?, env)
}

/// Checks the raw stage and builds the model.
pub fn compile(raw: RawConfig, env: &Environment) -> Result<Config, ConfigError> {
    let d = Limits::default();
    let l = raw.limits;
    let limits = Limits {
        max_request_body_bytes: positive(
            l.max_request_body_bytes,
            d.max_request_body_bytes,
            "limits.max_request_body_bytes",
        )?,
        max_header_bytes: positive(
            l.max_header_bytes,
            d.max_header_bytes,
            "limits.max_header_bytes",
        )?,
        max_header_count: positive(
            l.max_header_count,
            d.max_header_count,
            "limits.max_header_count",
        )?,
        client_read_timeout: ms(
            l.client_read_timeout_ms,
            d.client_read_timeout,
            "limits.client_read_timeout_ms",
        )?,
        client_header_timeout: ms(
            l.client_header_timeout_ms,
            d.client_header_timeout,
            "limits.client_header_timeout_ms",
        )?,
        client_keepalive_timeout: ms(
            l.client_keepalive_timeout_ms,
            d.client_keepalive_timeout,
            "limits.client_keepalive_timeout_ms",
        )?,
        client_write_timeout: ms(
            l.client_write_timeout_ms,
            d.client_write_timeout,
            "limits.client_write_timeout_ms",
        )?,
        min_response_bytes_per_sec: l
            .min_response_bytes_per_sec
            .unwrap_or(d.min_response_bytes_per_sec),
        min_request_body_bytes_per_sec: l
            .min_request_body_bytes_per_sec
            .unwrap_or(d.min_request_body_bytes_per_sec),
        memory_budget_bytes: l.memory_budget_bytes.unwrap_or(d.memory_budget_bytes),
        request_body_rate_grace: ms(
            l.request_body_rate_grace_ms,
            d.request_body_rate_grace,
            "limits.request_body_rate_grace_ms",
        )?,
        upstream_connect_timeout: ms(
            l.upstream_connect_timeout_ms,
            d.upstream_connect_timeout,
            "limits.upstream_connect_timeout_ms",
        )?,
        upstream_idle_timeout: ms(
            l.upstream_idle_timeout_ms,
            d.upstream_idle_timeout,
            "limits.upstream_idle_timeout_ms",
        )?,
        upstream_write_timeout: ms(
            l.upstream_write_timeout_ms,
            d.upstream_write_timeout,
            "limits.upstream_write_timeout_ms",
        )?,
        max_sse_event_bytes: positive(
            l.max_sse_event_bytes,
            d.max_sse_event_bytes,
            "limits.max_sse_event_bytes",
        )?,
        max_inspected_response_bytes: positive(
            l.max_inspected_response_bytes,
            d.max_inspected_response_bytes,
            "limits.max_inspected_response_bytes",
        )?,
        upstream_pool_size: l.upstream_pool_size.unwrap_or(d.upstream_pool_size),
        approval_ttl: l
            .approval_ttl_secs
            .map_or(d.approval_ttl, Duration::from_secs),
        max_failed_auth_per_minute: l
            .max_failed_auth_per_minute
            .unwrap_or(d.max_failed_auth_per_minute),
        mcp_max_sessions: positive(
            l.mcp_max_sessions,
            d.mcp_max_sessions,
            "limits.mcp_max_sessions",
        )?,
        mcp_keepalive_interval: ms(
            l.mcp_keepalive_interval_ms,
            d.mcp_keepalive_interval,
            "limits.mcp_keepalive_interval_ms",
        )?,
        mcp_input_timeout: ms(
            l.mcp_input_timeout_ms,
            d.mcp_input_timeout,
            "limits.mcp_input_timeout_ms",
        )?,
        mcp_session_idle_timeout: match l.mcp_session_idle_timeout_secs {
            Some(0) => {
                return Err(ConfigError::Invalid(
                    "limits.mcp_session_idle_timeout_secs must be greater than 0".into(),
                ));
            }
            Some(s) => Duration::from_secs(s),
            None => d.mcp_session_idle_timeout,
        },
        toon_max_result_bytes: l.toon_max_result_bytes.unwrap_or(d.toon_max_result_bytes),
        toon_cache_bytes: l.toon_cache_bytes.unwrap_or(d.toon_cache_bytes),
    };
    let mcp_servers = mcp::compile_servers(raw.mcp_servers, env)?;
    let mut raw_profiles = raw.profiles;
    if raw_profiles.is_empty() {
        raw_profiles.insert("default".into(), RawProfile::default());
    }
    let mut profiles = NameMap::default();
    for (name, p) in raw_profiles {
        check_profile_name(&name)?;
        if let Some(d) = &p.policy_defaults {
            sluice_policies::check_defaults(d).map_err(|e| {
                ConfigError::Invalid(format!("profiles.{name}.policy_defaults: {e}"))
            })?;
        }
        let mut upstreams = NameMap::default();
        for (provider, up) in [
            (Provider::Openai, p.openai),
            (Provider::Anthropic, p.anthropic),
            (Provider::Gemini, p.gemini),
        ] {
            let up = up.unwrap_or_default();
            if up.enabled == Some(false) {
                continue;
            }
            let checked = compile_upstream(&name, provider, up, env)?;
            upstreams.insert(provider, Arc::new(checked));
        }
        let mut servers: Vec<Arc<str>> = Vec::with_capacity(p.mcp_servers.len());
        for s in &p.mcp_servers {
            let Some((k, _)) = mcp_servers.get_key_value(s.as_str()) else {
                return Err(ConfigError::Invalid(format!(
                    "profiles.{name}.mcp_servers names '{s}', which is not an MCP server"
                )));
            };
            if servers.contains(k) {
                return Err(ConfigError::Invalid(format!(
                    "profiles.{name}.mcp_servers names '{s}' twice"
                )));
            }
            servers.push(k.clone());
        }
        let name: Arc<str> = name.into();
        profiles.insert(
            name.clone(),
            Arc::new(Profile {
                tool_source: format!("profile:{name}").into(),
                name,
                upstreams,
                team: p.team.map(Into::into),
                organisation: p.organisation.map(Into::into),
                labels: p.labels.into_iter().collect::<Vec<_>>().into(),
                starts_untrusted: p.starts_untrusted,
                policy_defaults: p.policy_defaults,
                require_virtual_key: p.require_virtual_key,
                capture_content: p.capture_content,
                toon_tool_results: p.toon_tool_results,
                mcp_servers: servers.into(),
            }),
        );
    }
    let listen = env
        .proxy_listen
        .clone()
        .or(raw.listen)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    // Every compiled snapshot gets a new version: verdict caches key on it.
    static VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let version = VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let policies = sluice_policies::CompiledPolicies::compile(&raw.policies, version)
        .map_err(|e| ConfigError::Invalid(format!("policies: {e}")))?;
    let quarantine = match raw.quarantine {
        None => None,
        Some(q) => {
            let profile = q.profile.unwrap_or_else(|| "default".into());
            let serves_openai = profiles
                .get(profile.as_str())
                .is_some_and(|p: &Arc<Profile>| p.upstreams.contains_key(&Provider::Openai));
            if !serves_openai {
                return Err(ConfigError::Invalid(format!(
                    "quarantine.profile '{profile}' must be a profile with an OpenAI upstream"
                )));
            }
            if q.model.is_empty() {
                return Err(ConfigError::Invalid("quarantine.model is required".into()));
            }
            let max_rounds = q.max_rounds.unwrap_or(3);
            if !(1..=10).contains(&max_rounds) {
                return Err(ConfigError::Invalid(
                    "quarantine.max_rounds must be between 1 and 10".into(),
                ));
            }
            Some(crate::quarantine::QuarantineConfig {
                profile,
                model: q.model,
                max_rounds,
                timeout: ms(
                    q.timeout_ms,
                    Duration::from_secs(15),
                    "quarantine.timeout_ms",
                )?,
            })
        }
    };
    let threads = raw.threads.unwrap_or(1);
    if threads == 0 || threads > 256 {
        return Err(ConfigError::Invalid(
            "threads must be between 1 and 256".into(),
        ));
    }
    let mut virtual_keys = NameMap::default();
    for k in raw.virtual_keys {
        let Some((name, _)) = profiles.get_key_value(k.profile.as_str()) else {
            return Err(ConfigError::Invalid(format!(
                "virtual key {} names profile '{}', which does not exist",
                k.id, k.profile
            )));
        };
        let id: Arc<str> = k.id.into();
        virtual_keys.insert(
            id.clone(),
            crate::keys::VirtualKey {
                id,
                profile: name.clone(),
                salt: k.salt.into(),
                digest: k.digest.into(),
                expires_at_ms: k.expires_at_ms,
            },
        );
    }
    let approvals = raw
        .approvals
        .into_iter()
        .map(|a| (a.id, a.expires_at_ms))
        .collect();
    // The list prices first: a configured price of the same model replaces its entry.
    let mut all_prices = if raw.list_prices.unwrap_or(true) {
        crate::list_prices::raw()
    } else {
        Vec::new()
    };
    all_prices.extend(raw.prices.iter().cloned());
    let prices = crate::cost::PriceTable::compile(&all_prices).map_err(ConfigError::Invalid)?;
    let spend_limits = each(&raw.spend_limits, crate::spend::SpendLimit::compile)?;
    let rate_limits = each(&raw.rate_limits, crate::rate::RateLimit::compile)?;
    let optimisation_rules = each(
        &raw.optimisation_rules,
        crate::optimise::OptimisationRule::compile,
    )?;
    Ok(Config {
        prices,
        spend_limits,
        rate_limits,
        optimisation_rules,
        listen,
        admin_listen: env.admin_listen.clone().or(raw.admin_listen),
        threads,
        limits,
        profiles,
        policies: Arc::new(policies),
        quarantine,
        virtual_keys,
        approvals,
        mcp_servers,
        mcp_allowed_origins: raw.mcp_allowed_origins.into(),
    })
}

/// Checks each raw item; the first one refused names itself in the error.
fn each<R, T>(raw: &[R], check: fn(&R) -> Result<T, String>) -> Result<Arc<[T]>, ConfigError> {
    raw.iter()
        .map(check)
        .collect::<Result<Vec<_>, _>>()
        .map(Into::into)
        .map_err(ConfigError::Invalid)
}

fn positive(v: Option<usize>, default: usize, name: &str) -> Result<usize, ConfigError> {
    match v {
        Some(0) => Err(ConfigError::Invalid(format!(
            "{name} must be greater than 0"
        ))),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

fn ms(v: Option<u64>, default: Duration, name: &str) -> Result<Duration, ConfigError> {
    match v {
        Some(0) => Err(ConfigError::Invalid(format!(
            "{name} must be greater than 0"
        ))),
        Some(v) => Ok(Duration::from_millis(v)),
        None => Ok(default),
    }
}

/// Profile names: 1-64 letters, digits, `-` or `_`, and never a provider path segment.
pub fn check_profile_name(name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(ConfigError::Invalid(format!(
            "profile name '{name}' must be 1-64 characters of letters, digits, '-' or '_'"
        )));
    }
    if RESERVED_PROFILE_NAMES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(ConfigError::Invalid(format!(
            "profile name '{name}' is reserved: it is a provider path segment"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
