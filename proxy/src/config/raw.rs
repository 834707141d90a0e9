//! The raw stage: the file as written, unknown fields refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The file as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Proxy listener (overridden by `SLUICE_PROXY_LISTEN`).
    pub listen: Option<String>,
    /// Admin listener (`/healthz`, `/readyz`, recent requests); off when absent.
    pub admin_listen: Option<String>,
    /// Worker threads for the proxy.
    pub threads: Option<usize>,
    /// Limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, RawProfile>,
    /// Tool-invocation and tool-result policies (see docs/policies.md).
    #[serde(default)]
    pub policies: sluice_policies::PolicySet,
    /// The dual-LLM quarantine for `sanitize` results; off when absent.
    pub quarantine: Option<RawQuarantine>,
    /// Sluice virtual keys (salted digests), as the control plane publishes them.
    #[serde(default)]
    pub virtual_keys: Vec<RawVirtualKey>,
    /// Approved calls (`apr_…` ids) and when each approval ends.
    #[serde(default)]
    pub approvals: Vec<RawApproval>,
    /// Token prices per (provider, model), for each request's cost; they replace the
    /// providers' list prices Sluice ships with, model by model.
    #[serde(default)]
    pub prices: Vec<RawPrice>,
    /// Whether the providers' list prices (`proxy/src/list_prices.rs`) price the models
    /// `prices` does not (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_prices: Option<bool>,
    /// Spend and token limits (`[[spend_limits]]`), enforced with reservations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spend_limits: Vec<crate::spend::RawSpendLimit>,
    /// Requests and tokens per minute (`[[rate_limits]]`), local token buckets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<crate::rate::RawRateLimit>,
    /// Optimisation rules (`[[optimisation_rules]]`), tried in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optimisation_rules: Vec<crate::optimise::RawOptimisationRule>,
    /// MCP servers the gateway fronts, by name (see docs/mcp.md).
    #[serde(default)]
    pub mcp_servers: BTreeMap<String, super::mcp::RawMcpServer>,
    /// Browser origins allowed to call the MCP endpoint besides loopback ones
    /// (`https://app.example.com`); any other `Origin` gets 403 (DNS-rebinding defence).
    #[serde(default)]
    pub mcp_allowed_origins: Vec<String>,
}

/// One model's prices, in US dollars per million tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// `openai`, `anthropic` or `gemini`.
    pub provider: String,
    /// The model id; a provider's dated variant (`gpt-4o-mini-2024-07-18`) matches it too.
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

/// One virtual key: its id, profile, salt and digest. The key itself is never stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVirtualKey {
    /// The key's public id (16 hex digits, also inside the key).
    pub id: String,
    /// The profile it serves.
    pub profile: String,
    /// Salt, hex.
    pub salt: String,
    /// SHA-256(salt, 0, secret), hex.
    pub digest: String,
    /// Expiry in ms since the epoch, if any.
    pub expires_at_ms: Option<i64>,
}

/// A sealed credential: the id it is bound to, the nonce and the ciphertext (hex).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSealedKey {
    /// The credential's id (authenticated with the ciphertext).
    pub credential_id: String,
    /// Nonce, hex.
    pub nonce: String,
    /// Ciphertext and tag, hex.
    pub ciphertext: String,
}

/// One approval of an exact call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApproval {
    /// The call's approval id (`apr_…`), as the refusal named it.
    pub id: String,
    /// When the approval ends, in ms since the epoch.
    pub expires_at_ms: i64,
}

/// The quarantine as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuarantine {
    /// Profile whose OpenAI(-compatible) upstream serves both models (default `default`).
    pub profile: Option<String>,
    /// The model both roles use.
    pub model: String,
    /// Questions at most (default 3, at most 10).
    pub max_rounds: Option<u32>,
    /// Deadline for one result's whole exchange, in ms (default 15000).
    pub timeout_ms: Option<u64>,
}

/// Limits as written; every field optional, defaults in [`Limits::default`]. Unset fields
/// are left out when a snapshot is written, so a proxy one release older (which refuses
/// fields it does not know) still takes snapshots from a newer control plane unless an
/// admin sets a limit it lacks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Request body cap in bytes (413).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<usize>,
    /// Header bytes cap (431).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    /// Header count cap (431).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_count: Option<usize>,
    /// Deadline for reading a request's headers and body from the client, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_read_timeout_ms: Option<u64>,
    /// Total time a new connection has to deliver its first request header, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_header_timeout_ms: Option<u64>,
    /// Total time a kept-alive connection has, after a response, to deliver the next
    /// request header; idle connections are closed then. In ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_keepalive_timeout_ms: Option<u64>,
    /// Longest one write to the client may wait before the connection is dropped, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_write_timeout_ms: Option<u64>,
    /// Slowest a client may take the response, in bytes per second (0: no minimum;
    /// HTTP/1.1 clients only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_response_bytes_per_sec: Option<u64>,
    /// Resident memory past which new requests get 503 (0: none). Default: 90% of the
    /// container's memory limit when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_budget_bytes: Option<u64>,
    /// Slowest request body accepted, in bytes per second (0: no minimum).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_request_body_bytes_per_sec: Option<u64>,
    /// How long a request body may take before the minimum rate applies, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body_rate_grace_ms: Option<u64>,
    /// Upstream connect timeout, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_connect_timeout_ms: Option<u64>,
    /// Longest silence from the upstream (before the first byte or between two chunks), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_idle_timeout_ms: Option<u64>,
    /// Longest one write to the upstream may wait before Sluice stops sending the request
    /// body and reads only the answer, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_write_timeout_ms: Option<u64>,
    /// Cap on one SSE event, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sse_event_bytes: Option<usize>,
    /// Cap on a non-streaming response body kept for inspection, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inspected_response_bytes: Option<usize>,
    /// Idle upstream connections kept per worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_pool_size: Option<usize>,
    /// How long an admin's approval of a `require_approval` call lasts, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_ttl_secs: Option<u64>,
    /// Failed virtual-key attempts allowed per client address per minute (then 429).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_failed_auth_per_minute: Option<u32>,
    /// MCP sessions kept at once (the oldest idle one is ended past it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_max_sessions: Option<usize>,
    /// How often an idle MCP server stream (GET) gets a keep-alive comment, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_keepalive_interval_ms: Option<u64>,
    /// How long a server's question to a stateless client waits for its retry, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_input_timeout_ms: Option<u64>,
    /// An MCP session unused this long is ended (the client then gets 404), in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_session_idle_timeout_secs: Option<u64>,
    /// Tool results larger than this stay JSON (TOON counts their tokens), in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toon_max_result_bytes: Option<usize>,
    /// Memory for remembered TOON conversions, in bytes (read at start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toon_cache_bytes: Option<usize>,
}

/// One profile as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// OpenAI (or OpenAI-compatible) upstream.
    pub openai: Option<RawUpstream>,
    /// Anthropic upstream.
    pub anthropic: Option<RawUpstream>,
    /// Gemini upstream.
    pub gemini: Option<RawUpstream>,
    /// The team that owns the profile (`context.team` in policy conditions).
    pub team: Option<String>,
    /// The organisation that owns it (the control plane sets it), for organisation limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation: Option<String>,
    /// Labels (`context.labels.<key>` in policy conditions).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Every conversation on this profile starts untrusted (result policies still apply).
    #[serde(default)]
    pub starts_untrusted: bool,
    /// This profile's policy defaults, replacing `policies.defaults` for it.
    pub policy_defaults: Option<sluice_policies::Defaults>,
    /// Requests must carry one of this profile's Sluice virtual keys (401 otherwise).
    #[serde(default)]
    pub require_virtual_key: bool,
    /// Usage records of this profile carry the request and response bodies.
    #[serde(default)]
    pub capture_content: bool,
    /// JSON tool results in its requests are re-encoded as TOON where that takes fewer tokens.
    #[serde(default)]
    pub toon_tool_results: bool,
    /// MCP servers this profile's endpoint (`/v1/mcp/<profile>`) aggregates, in order.
    #[serde(default)]
    pub mcp_servers: Vec<String>,
}

/// One upstream as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `false` disables this provider for the profile (404).
    pub enabled: Option<bool>,
    /// Base URL, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// Name of an environment variable holding a provider key to inject.
    pub api_key_env: Option<String>,
    /// A provider key to inject, written in the file (prefer `api_key_env`).
    pub api_key: Option<String>,
    /// A provider key sealed by the control plane (AES-256-GCM under `SLUICE_MASTER_KEY`),
    /// so snapshots and their caches never hold it in the clear.
    pub api_key_sealed: Option<RawSealedKey>,
    /// Header that carries the injected key (default per provider; `api-key` for Azure).
    pub auth_header: Option<String>,
    /// Extra headers sent upstream.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra query parameters added upstream (e.g. Azure's `api-version`).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Speak HTTP/2 to the upstream (ALPN over TLS, prior knowledge over plain HTTP).
    pub http2: Option<bool>,
}
