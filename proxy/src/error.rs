//! Errors Sluice itself raises, and the one place they become HTTP responses.
//!
//! Each variant maps to a status and a stable machine-readable code in one exhaustive
//! `match`, so a new variant does not compile until it has both. The body is rendered in the
//! caller's provider shape by [`crate::llm::render_error`]. Messages never contain keys,
//! tokens or prompt content.

use std::time::Duration;

/// Everything that makes Sluice answer a request itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SluiceError {
    /// No profile of that name.
    #[error(
        "no profile named '{0}' is configured on this Sluice; check the profile segment of the base URL"
    )]
    UnknownProfile(String),
    /// The path names no provider Sluice fronts.
    #[error("unknown provider path '{0}': use /v1/openai, /v1/anthropic or /v1/gemini")]
    UnknownProvider(String),
    /// The profile has no upstream for this provider.
    #[error("profile '{profile}' has no {provider} upstream configured")]
    ProviderNotConfigured {
        /// Profile name.
        profile: String,
        /// Provider name.
        provider: &'static str,
    },
    /// An API key was sent in the query string, where proxies and logs keep it.
    #[error("API keys in the query string ('{0}') are refused: send the key in a header instead")]
    KeyInQuery(String),
    /// Too many request headers or too many header bytes.
    #[error(
        "request headers too large: {count} headers / {bytes} bytes (limits {max_count} / {max_bytes})"
    )]
    HeadersTooLarge {
        /// Header count seen.
        count: usize,
        /// Header bytes seen.
        bytes: usize,
        /// Configured count limit.
        max_count: usize,
        /// Configured byte limit.
        max_bytes: usize,
    },
    /// The request body is larger than the configured cap.
    #[error(
        "request body exceeds the {limit}-byte limit of this Sluice (limits.max_request_body_bytes)"
    )]
    BodyTooLarge {
        /// Configured cap.
        limit: usize,
    },
    /// The proxy is over its memory budget: new requests wait until streams finish.
    #[error(
        "this Sluice proxy is at its memory budget ({in_use_mib} MiB in use, budget \
         {budget_mib} MiB, limits.memory_budget_bytes); retry shortly or on another replica"
    )]
    Overloaded {
        /// Memory in use (the counted heap, else resident), MiB.
        in_use_mib: u64,
        /// The budget, MiB.
        budget_mib: u64,
    },
    /// The request body arrives slower than the configured minimum rate (slow POST).
    #[error(
        "request body arrived slower than {min_rate} bytes/s after {grace_secs} s \
         (limits.min_request_body_bytes_per_sec); send the body at full speed"
    )]
    BodyTooSlow {
        /// Configured minimum, bytes per second.
        min_rate: u64,
        /// Seconds allowed before the minimum applies.
        grace_secs: u64,
    },
    /// A request header Sluice refuses: names with `_` (ambiguous with `-` behind other
    /// proxies) and repeated or conflicting framing headers (request smuggling).
    #[error("request header refused: {0}")]
    BadHeader(String),
    /// The request body of an inspected API is not the JSON the API expects.
    #[error("request body is not valid JSON for this API: {0}")]
    MalformedRequest(String),
    /// The upstream could not be reached.
    #[error("could not connect to the {provider} upstream: {detail}")]
    UpstreamConnect {
        /// Provider name.
        provider: &'static str,
        /// What failed, without secrets.
        detail: String,
    },
    /// The upstream stopped sending for longer than the idle cutoff.
    #[error("the {provider} upstream sent nothing for {}s (limits.upstream_idle_timeout_ms)", .after.as_secs())]
    UpstreamIdle {
        /// Provider name.
        provider: &'static str,
        /// The configured cutoff.
        after: Duration,
    },
    /// A write of the request to the upstream waited past the write timeout, and the
    /// upstream then sent no complete response.
    #[error(
        "the {provider} upstream did not take the request within {}s \
         (limits.upstream_write_timeout_ms) and sent no complete response",
        .after.as_secs()
    )]
    UpstreamWriteStalled {
        /// Provider name.
        provider: &'static str,
        /// The configured write timeout.
        after: Duration,
    },
    /// The client stopped reading the response: a write waited past the write timeout
    /// (or ran below the minimum send rate). Only logged: the client is dropped.
    #[error(
        "the client took no response bytes for {}s (limits.client_write_timeout_ms, \
         limits.min_response_bytes_per_sec); the connection was dropped",
        .after.as_secs()
    )]
    ClientTooSlow {
        /// The configured write timeout.
        after: Duration,
    },
    /// The upstream failed after the response began.
    #[error("the {provider} upstream failed mid-response: {detail}")]
    UpstreamBroken {
        /// Provider name.
        provider: &'static str,
        /// What failed.
        detail: String,
    },
    /// The upstream's stream broke Sluice's framing limits or encoding.
    #[error("the {provider} upstream sent an invalid stream: {detail}")]
    UpstreamProtocol {
        /// Provider name.
        provider: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The profile needs a Sluice virtual key and the request carried none.
    #[error("profile '{0}' needs a Sluice virtual key: send it where your SDK sends its API key")]
    VirtualKeyRequired(String),
    /// The virtual key is unknown, revoked, or its secret does not match.
    #[error("the Sluice virtual key is not valid (unknown or revoked)")]
    VirtualKeyInvalid,
    /// The virtual key has expired.
    #[error("the Sluice virtual key has expired; ask an admin for a new one")]
    VirtualKeyExpired,
    /// The key belongs to another profile than the URL names.
    #[error(
        "this Sluice virtual key belongs to profile '{key_profile}', not '{url_profile}'; use the base URL of profile '{key_profile}'"
    )]
    VirtualKeyWrongProfile {
        /// The key's profile.
        key_profile: String,
        /// The profile the URL names.
        url_profile: String,
    },
    /// Too many failed key attempts from this address.
    #[error("too many failed key attempts from this address; retry after {0} s")]
    TooManyFailedAuth(u64),
    /// A virtual key was used but the profile holds no provider key to send upstream.
    #[error("profile '{profile}' holds no {provider} credential; an admin must attach one")]
    NoProviderCredential {
        /// Profile name.
        profile: String,
        /// Provider name.
        provider: &'static str,
    },
    /// A spend or token limit of Sluice's (not the provider's) would be passed.
    #[error(
        "Sluice spend limit '{limit}' reached: {used} used of {max} in its current window (a limit set by your Sluice admins, not the provider's); it resets at {resets_at}"
    )]
    SpendLimitExceeded {
        /// The limit's name.
        limit: String,
        /// Used and reserved, formatted.
        used: String,
        /// The cap, formatted.
        max: String,
        /// When room frees up (RFC 3339, UTC).
        resets_at: String,
        /// Seconds until then (`Retry-After`).
        resets_in_secs: u64,
    },
    /// Behind a control plane, this proxy holds no current share (lease) of a spend limit:
    /// it cannot tell whether the limit has room, and limits fail closed.
    #[error(
        "Sluice cannot check spend limit '{limit}' right now: this proxy has not been able to \
         confirm its share with the Sluice control plane; retry shortly (a limit set by your \
         Sluice admins, not the provider's)"
    )]
    LimitStateUnknown {
        /// The limit's name.
        limit: String,
    },
    /// This proxy's share of a spend limit is used while the limit still has room held by
    /// other replicas: the share grows at the next renewal.
    #[error(
        "Sluice spend limit '{limit}': this replica's share is in use and is being renewed; \
         retry in a second (a limit set by your Sluice admins, not the provider's)"
    )]
    LimitRebalancing {
        /// The limit's name.
        limit: String,
    },
    /// A rate limit of Sluice's (not the provider's) would be passed.
    #[error(
        "Sluice rate limit '{limit}' reached ({what}; a limit set by your Sluice admins, not the provider's); retry after {retry_after_secs} s"
    )]
    RateLimitExceeded {
        /// The limit's name.
        limit: String,
        /// The rate, formatted.
        what: String,
        /// Seconds until there is room (`Retry-After`).
        retry_after_secs: u64,
    },
    /// No configuration has been loaded yet.
    #[error("Sluice has no valid configuration loaded yet")]
    NotReady,
    /// A fault inside Sluice.
    #[error("internal error in Sluice; the request was not forwarded")]
    Internal,
}

/// The error class a provider's SDK understands, chosen per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400-class input problem.
    InvalidRequest,
    /// 404.
    NotFound,
    /// 401.
    Unauthenticated,
    /// 403.
    PermissionDenied,
    /// 429.
    RateLimited,
    /// 402: a Sluice spend limit.
    PaymentRequired,
    /// 413.
    TooLarge,
    /// 431.
    HeadersTooLarge,
    /// 502/504: upstream trouble.
    Upstream,
    /// 503: not ready.
    Unavailable,
    /// 500.
    Internal,
}

impl SluiceError {
    /// Status, stable code (sent as `x-sluice-error` and in the body) and kind.
    pub fn classify(&self) -> (u16, &'static str, ErrorKind) {
        match self {
            SluiceError::UnknownProfile(_) => (404, "unknown_profile", ErrorKind::NotFound),
            SluiceError::UnknownProvider(_) => (404, "unknown_provider", ErrorKind::NotFound),
            SluiceError::ProviderNotConfigured { .. } => {
                (404, "provider_not_configured", ErrorKind::NotFound)
            }
            SluiceError::KeyInQuery(_) => (400, "key_in_query", ErrorKind::InvalidRequest),
            SluiceError::HeadersTooLarge { .. } => {
                (431, "headers_too_large", ErrorKind::HeadersTooLarge)
            }
            SluiceError::BodyTooLarge { .. } => (413, "body_too_large", ErrorKind::TooLarge),
            SluiceError::BodyTooSlow { .. } => (408, "body_too_slow", ErrorKind::InvalidRequest),
            SluiceError::ClientTooSlow { .. } => {
                (408, "client_too_slow", ErrorKind::InvalidRequest)
            }
            SluiceError::BadHeader(_) => (400, "bad_header", ErrorKind::InvalidRequest),
            SluiceError::MalformedRequest(_) => {
                (400, "malformed_request", ErrorKind::InvalidRequest)
            }
            SluiceError::UpstreamConnect { .. } => (502, "upstream_connect", ErrorKind::Upstream),
            SluiceError::UpstreamIdle { .. } => (504, "upstream_idle", ErrorKind::Upstream),
            SluiceError::UpstreamWriteStalled { .. } => {
                (504, "upstream_write_stalled", ErrorKind::Upstream)
            }
            SluiceError::UpstreamBroken { .. } => (502, "upstream_broken", ErrorKind::Upstream),
            SluiceError::UpstreamProtocol { .. } => (502, "upstream_protocol", ErrorKind::Upstream),
            SluiceError::VirtualKeyRequired(_) => {
                (401, "virtual_key_required", ErrorKind::Unauthenticated)
            }
            SluiceError::VirtualKeyInvalid => {
                (401, "virtual_key_invalid", ErrorKind::Unauthenticated)
            }
            SluiceError::VirtualKeyExpired => {
                (401, "virtual_key_expired", ErrorKind::Unauthenticated)
            }
            SluiceError::VirtualKeyWrongProfile { .. } => (
                403,
                "virtual_key_wrong_profile",
                ErrorKind::PermissionDenied,
            ),
            SluiceError::TooManyFailedAuth(_) => {
                (429, "too_many_failed_auth", ErrorKind::RateLimited)
            }
            SluiceError::NoProviderCredential { .. } => {
                (503, "no_provider_credential", ErrorKind::Unavailable)
            }
            SluiceError::SpendLimitExceeded { .. } => {
                (402, "spend_limit_exceeded", ErrorKind::PaymentRequired)
            }
            SluiceError::RateLimitExceeded { .. } => {
                (429, "rate_limit_exceeded", ErrorKind::RateLimited)
            }
            SluiceError::LimitRebalancing { .. } => {
                (429, "spend_limit_rebalancing", ErrorKind::RateLimited)
            }
            SluiceError::LimitStateUnknown { .. } => {
                (503, "spend_limit_unknown", ErrorKind::Unavailable)
            }
            SluiceError::NotReady => (503, "not_ready", ErrorKind::Unavailable),
            SluiceError::Overloaded { .. } => (503, "overloaded", ErrorKind::Unavailable),
            SluiceError::Internal => (500, "internal", ErrorKind::Internal),
        }
    }
}
