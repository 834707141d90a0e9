//! The per-request context every phase reads and writes.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::config::Config;
use crate::error::SluiceError;
use crate::events::{Provider, RequestFacts, ResponseFacts};
use crate::llm::ResponseInspector;
use crate::route::Route;
use crate::sse::SseFramer;

/// How the response body is being read.
#[derive(Debug)]
pub enum BodyMode {
    /// Not inspected (non-2xx, other endpoints): bytes pass as they come.
    Passthrough,
    /// An SSE stream: events are framed, read and forwarded whole.
    Sse(SseFramer),
    /// A JSON body: chunks pass unchanged while a reference to each is kept for reading at the
    /// end (a refcount, not a copy), up to the inspection cap.
    Json {
        /// Chunks seen so far.
        chunks: Vec<Bytes>,
        /// Their total size.
        len: usize,
        /// Set once the body outgrew the cap; it is then forwarded unread.
        overflowed: bool,
    },
}

/// Per-request state, created by `new_ctx` and dropped when the request ends.
#[derive(Debug)]
pub struct RequestCtx {
    /// When the request arrived.
    pub started: Instant,
    /// The config snapshot this request uses from start to end.
    pub config: Option<Arc<Config>>,
    /// Provider whose error shape the client expects.
    pub error_shape: Provider,
    /// The route, once known.
    pub route: Option<Route>,
    /// Request body chunks held until the body is complete (inspected APIs).
    pub request_chunks: Vec<Bytes>,
    /// Request body bytes seen.
    pub request_len: usize,
    /// What goes upstream for a body read whole and inspected in `request_filter`, before
    /// the upstream was connected (`body_first.rs`).
    pub prepared_body: Option<Bytes>,
    /// What the request said.
    pub request_facts: RequestFacts,
    /// Response reader, for inspected 2xx responses.
    pub inspector: Option<ResponseInspector>,
    /// How the response body is handled.
    pub body_mode: BodyMode,
    /// What the response said.
    pub response_facts: ResponseFacts,
    /// Status sent downstream.
    pub status: u16,
    /// Response body bytes the upstream sent.
    pub response_bytes: u64,
    /// Room reserved in spend limits, settled when the request ends.
    pub spend_holds: Vec<crate::spend::Hold>,
    /// The optimisation rule that sent the request to another model, and the model asked for.
    pub optimised: Option<(String, String)>,
    /// Tokens of the tool results re-encoded as TOON: before and after.
    pub toon_tokens: Option<(u64, u64)>,
    /// This process as a holder of spend-limit leases, when the request holds room in one.
    pub spend_holder: Option<std::sync::Arc<str>>,
    /// Time to the first response byte from the upstream, in microseconds.
    pub ttfb_us: Option<u64>,
    /// True once the response header went downstream.
    pub response_started: bool,
    /// True once Sluice ended the stream itself (terminal error event sent).
    pub stream_closed_by_sluice: bool,
    /// An error Sluice raised in a filter, rendered by `fail_to_proxy`.
    pub error: Option<SluiceError>,
    /// Bytes that close a stream Sluice is ending itself (good events + terminal event),
    /// written by `fail_to_proxy`.
    pub closing_bytes: Option<Bytes>,
    /// Whether the conversation's context is trusted (after the request's tool results).
    pub trusted: bool,
    /// Why the request says the context starts untrusted, if it does.
    pub started_untrusted: Option<&'static str>,
    /// Where the taint began.
    pub taint_boundary: Option<String>,
    /// The caller's agent id (`X-Sluice-Agent-Id`).
    pub agent: Option<String>,
    /// `X-Sluice-Session-Id`: the conversation this request belongs to (shared with the MCP
    /// gateway's calls).
    pub conversation: Option<String>,
    /// Every policy decision made for this request.
    pub decisions: Vec<crate::guard::Decision>,
    /// Tool-call holding state for streams.
    pub gate: super::gate::CallGate,
    /// True when Sluice refused the response's tool calls.
    pub refused: bool,
    /// The upstream's Content-Length, kept for a JSON body that cannot be rewritten.
    pub json_fixed_length: Option<usize>,
    /// The upstream socket, corked until the prepared body is written (`cork.rs`).
    pub upstream_cork: Option<crate::cork::UpstreamCork>,
    /// Approvals granted for `require_approval` calls.
    pub approvals: Arc<crate::approvals::ApprovalStore>,
    /// The client's `X-Request-Id`.
    pub request_id: Option<String>,
    /// The virtual key's id, once checked (the key's own, shared).
    pub key_id: Option<Arc<str>>,
    /// The request body, kept when the profile captures content.
    pub captured_request: Option<Bytes>,
    /// The response as sent to the client, while the profile captures content: chunks and
    /// their total length.
    pub capture: Option<(Vec<Bytes>, usize)>,
    /// Where the conversation's values came from (only when a policy judges provenance).
    pub provenance: Option<Arc<sluice_policies::provenance::ProvenanceIndex>>,
    /// Nanoseconds spent in Sluice's own filters.
    pub sluice_ns: u64,
    /// Set once the record went to the sink: what the access line prints.
    pub access: Option<super::logging::AccessSummary>,
    /// This request's span, while tracing is on (boxed: the context stays small when off).
    pub span: Option<crate::trace::LiveSpan>,
    /// Counts this request as running until the context drops (graceful shutdown).
    pub in_flight: Option<crate::drain::InFlightGuard>,
    /// Holds off the connection's header deadline while this request runs.
    pub connection: Option<crate::header_deadline::RequestOnConnection>,
    /// The upstream connection this request took, counted in use until the context drops.
    pub upstream_in_use: Option<crate::upstream_pool::InUse>,
    /// Memory held for this request against the budget until its response starts.
    pub memory_reservation: Option<crate::overload::Reservation>,
}

impl RequestCtx {
    /// A fresh context.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            config: None,
            error_shape: Provider::Openai,
            route: None,
            request_chunks: Vec::new(),
            request_len: 0,
            prepared_body: None,
            request_facts: RequestFacts::default(),
            inspector: None,
            body_mode: BodyMode::Passthrough,
            response_facts: ResponseFacts::default(),
            status: 0,
            ttfb_us: None,
            response_started: false,
            stream_closed_by_sluice: false,
            error: None,
            closing_bytes: None,
            trusted: true,
            started_untrusted: None,
            taint_boundary: None,
            agent: None,
            decisions: Vec::new(),
            gate: super::gate::CallGate::default(),
            refused: false,
            json_fixed_length: None,
            upstream_cork: None,
            approvals: no_approvals(),
            request_id: None,
            key_id: None,
            captured_request: None,
            capture: None,
            access: None,
            span: None,
            in_flight: None,
            connection: None,
            upstream_in_use: None,
            memory_reservation: None,
            provenance: None,
            conversation: None,
            sluice_ns: 0,
            spend_holds: Vec::new(),
            spend_holder: None,
            optimised: None,
            toon_tokens: None,
            response_bytes: 0,
        }
    }

    /// The API of an inspected request.
    pub fn api(&self) -> Option<crate::events::Api> {
        self.route.as_ref().and_then(|r| r.api)
    }

    /// The routed provider's name for messages; "upstream" before a request is routed.
    pub fn provider_name(&self) -> &'static str {
        self.route
            .as_ref()
            .map_or("upstream", |r| r.provider.as_str())
    }
}

/// An empty store shared by contexts created without one (tests, tools).
fn no_approvals() -> Arc<crate::approvals::ApprovalStore> {
    static EMPTY: std::sync::OnceLock<Arc<crate::approvals::ApprovalStore>> =
        std::sync::OnceLock::new();
    EMPTY
        .get_or_init(|| Arc::new(crate::approvals::ApprovalStore::default()))
        .clone()
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
