//! Names of the request headers Sluice reads on every request. Looked up by `HeaderName`: a
//! `&str` is parsed into one (checked, lowercased, hashed) on every lookup.

use http::HeaderName;

/// Headers that carry a client's key (a provider key, or a Sluice virtual key), in every
/// provider's form: `Authorization` first, then the others SDKs use.
pub static CREDENTIALS: [HeaderName; 4] = [
    http::header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("api-key"),
];
/// `X-Sluice-Context-Untrusted: true`: the conversation starts untrusted.
pub static CONTEXT_UNTRUSTED: HeaderName = HeaderName::from_static("x-sluice-context-untrusted");
/// The calling agent's id.
pub static AGENT_ID: HeaderName = HeaderName::from_static("x-sluice-agent-id");
/// The client's conversation id (taint is tracked per conversation).
pub static SESSION_ID: HeaderName = HeaderName::from_static("x-sluice-session-id");
/// The client's request id, journaled.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C trace context.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// MCP: the session of the 2025 transport.
pub static MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// MCP: the protocol version.
pub static MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// MCP 2026-07-28: the method, repeated from the body.
pub static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// MCP 2026-07-28: the tool, prompt or resource, repeated from the body.
pub static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
/// SSE resumption.
pub static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
