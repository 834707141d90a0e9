//! The internal event interface: what the inspectors read from the traffic, in one shape for
//! every provider. The policy engine consumes these; here they are recorded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

/// Which wire format a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// OpenAI and every OpenAI-compatible upstream.
    Openai,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini generateContent.
    Gemini,
}

impl Provider {
    /// The name used in paths, config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
        }
    }

    /// How many providers there are: the length of a table with one slot per provider.
    pub const COUNT: usize = 3;

    /// Its slot in a table with one per provider (below [`Provider::COUNT`]).
    pub const fn slot(self) -> usize {
        match self {
            Provider::Openai => 0,
            Provider::Anthropic => 1,
            Provider::Gemini => 2,
        }
    }
}

/// The API an inspected request calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI `/chat/completions`.
    ChatCompletions,
    /// OpenAI `/responses`.
    Responses,
    /// Anthropic `/v1/messages`.
    Messages,
    /// Gemini `:generateContent` / `:streamGenerateContent`.
    GenerateContent,
}

impl Api {
    /// The name records carry, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Responses => "responses",
            Api::Messages => "messages",
            Api::GenerateContent => "generate_content",
        }
    }
}

/// Token usage as the provider reported it (or as the stream accumulated it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens (for Anthropic: `input_tokens`, which excludes cache reads and writes).
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Tokens read from the provider's prompt cache.
    pub cache_read_tokens: u64,
    /// Tokens written to the provider's prompt cache.
    pub cache_write_tokens: u64,
    /// Reasoning ("thinking") tokens, where reported separately.
    pub reasoning_tokens: u64,
}

/// A tool call the model made, assembled from its deltas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    /// The provider's call id (`call_…`, `toolu_…`; Gemini's may be empty).
    pub id: String,
    /// The tool's name as the model called it.
    pub name: String,
    /// The arguments as the raw JSON text the model produced (may be malformed).
    pub arguments: String,
    /// Position of the call in the response (index for OpenAI, content block for Anthropic).
    pub index: u32,
    /// Why the call could not be assembled cleanly (e.g. two calls sharing one index): such a
    /// call is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malformed: Option<String>,
}

/// A tool result the client sent back in the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolResult {
    /// The call id the result answers.
    pub call_id: String,
    /// The tool's name, when the request lets it be found.
    pub name: Option<String>,
    /// The size of the result content, in bytes (the content itself is not recorded).
    pub content_bytes: usize,
    /// Where the content's JSON value lies in the request body (start, end), so a policy
    /// can replace it without re-serialising the body.
    #[serde(skip)]
    pub span: Option<(usize, usize)>,
}

/// What the request inspector read from the request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestFacts {
    /// The requested model.
    pub model: Option<String>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Names of the tools the request declares.
    pub tools_declared: Vec<String>,
    /// Tool results carried in the conversation.
    pub tool_results: Vec<ToolResult>,
    /// Tool calls made by the assistant earlier in the conversation.
    pub prior_tool_calls: Vec<ToolCall>,
    /// True when Sluice turned on `stream_options.include_usage` for this request.
    pub usage_injected: bool,
    /// Where the latest user message's content lies in the body (for the quarantine).
    #[serde(skip)]
    pub last_user: Option<(usize, usize)>,
    /// Where the user's and the system's texts lie in the body (for provenance).
    #[serde(skip)]
    pub texts: Vec<(Speaker, (usize, usize))>,
}

/// Who wrote a text of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The user.
    User,
    /// The system prompt or developer instructions.
    System,
}

/// What the response inspector read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ResponseFacts {
    /// The model that answered.
    pub model: Option<String>,
    /// Usage, if the provider reported it.
    pub usage: Option<Usage>,
    /// The finish (stop) reason.
    pub finish_reason: Option<String>,
    /// Tool calls in the order they completed.
    pub tool_calls: Vec<ToolCall>,
    /// True when the stream reached the provider's terminal event.
    pub completed: bool,
    /// An error the upstream reported inside a 200 stream, or a stream fault.
    pub error: Option<String>,
}

/// One inspected request, as recorded when it ends. No prompt or completion content.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// The profile that served it (the snapshot's name, shared).
    pub profile: Arc<str>,
    /// The provider wire format.
    pub provider: Provider,
    /// The API called.
    pub api: Option<Api>,
    /// The HTTP status sent to the client.
    pub status: u16,
    /// Facts from the request.
    pub request: RequestFacts,
    /// Facts from the response.
    pub response: ResponseFacts,
    /// Wall time from request start to end, in microseconds.
    pub duration_us: u64,
    /// Time to the first response byte, in microseconds.
    pub ttfb_us: Option<u64>,
    /// Whether the context was trusted when the response's tool calls were judged.
    pub trusted: bool,
    /// Where the context's taint began, if it is untrusted.
    pub taint_boundary: Option<String>,
    /// True when Sluice refused the response's tool calls.
    pub refused: bool,
    /// Every policy decision (results, then calls).
    pub decisions: Vec<crate::guard::Decision>,
    /// The client's `X-Request-Id`.
    pub request_id: Option<String>,
    /// The virtual key's id, when one was used (the key's own, shared).
    pub key_id: Option<Arc<str>>,
    /// Cost in millionths of a dollar, when the price is known.
    pub cost_micros: Option<i64>,
    /// Usage and cost are Sluice's estimate: the provider reported no usage.
    pub usage_estimated: bool,
    /// The model has no price of its own: the cost is the provider's default price
    /// (`model = "*"`), or none.
    pub price_missing: bool,
    /// Time spent in Sluice's own filters, µs.
    pub sluice_us: Option<u64>,
    /// The spend limits its cost was counted in (ids).
    pub limits: Vec<String>,
    /// What the model the client asked for would have cost, when an optimisation rule sent
    /// the request to another model.
    pub baseline_cost_micros: Option<i64>,
    /// The optimisation rule that changed the model, and the model asked for.
    pub optimisation: Option<(String, String)>,
    /// Tokens of the tool results TOON re-encoded: before (JSON) and after.
    pub toon_tokens: Option<(u64, u64)>,
    /// What the tokens TOON saved would have cost at the model's input price (µ$).
    pub toon_savings_micros: Option<i64>,
    /// The proxy process (lease holder) that counted it.
    #[serde(skip)]
    pub spend_holder: Option<std::sync::Arc<str>>,
    /// The request body, when the profile captures content.
    #[serde(skip)]
    pub captured_request: Option<bytes::Bytes>,
    /// The response body, when the profile captures content.
    #[serde(skip)]
    pub captured_response: Option<bytes::Bytes>,
}

/// One MCP request the gateway handled (`initialize`, `tools/list`, `tools/call`, …).
#[derive(Debug, Clone, Serialize)]
pub struct McpRecord {
    /// The profile whose endpoint served it.
    pub profile: String,
    /// The server it went to (empty when the gateway answered itself).
    pub server: String,
    /// The JSON-RPC method.
    pub method: String,
    /// The tool (its name at the server), for `tools/call`.
    pub tool: Option<String>,
    /// `ok`, `error` (the server or the gateway failed) or `refused` (a policy).
    pub status: &'static str,
    /// Wall time, µs.
    pub duration_us: u64,
    /// Policy decisions (the call, then its result).
    pub decisions: Vec<crate::guard::Decision>,
    /// The virtual key's id, when one was used.
    pub key_id: Option<String>,
    /// The client's session (legacy) or conversation id.
    pub session: Option<String>,
    /// The arguments, only where the profile captures content.
    #[serde(skip)]
    pub arguments: Option<String>,
    /// The result, only where the profile captures content.
    #[serde(skip)]
    pub result: Option<String>,
}

/// Where finished records go. The control plane's usage journal implements this.
pub trait EventSink: Send + Sync {
    /// Called once per inspected request, at the end, off the byte path. Shared: a sink
    /// that keeps the record keeps the `Arc` (a record with its decisions and tool calls is
    /// a few thousand instructions to clone), the others only read it.
    fn record(&self, record: &Arc<RequestRecord>);
    /// Called once per MCP request the gateway handled.
    fn record_mcp(&self, _record: &McpRecord) {}
}

/// How many records the admin API keeps by default (`SLUICE_ADMIN_RECENT_RECORDS`).
///
/// Not 1,000, as before: a record owns a few dozen small allocations, freed when it leaves
/// the ring. A thousand tool-using records outgrow the core's cache, so every one of those
/// frees, and every allocation that reuses the freed memory, missed it: 8–10 µs per
/// request on the tools turn (docs/benchmarks.md). A hundred stay in cache.
pub const DEFAULT_RECENT_RECORDS: usize = 100;

/// The admin API's ring size from `SLUICE_ADMIN_RECENT_RECORDS` (read through `get`):
/// 0–100,000, [`DEFAULT_RECENT_RECORDS`] when unset, 0 keeping none.
pub fn recent_records_capacity(get: impl Fn(&str) -> Option<String>) -> Result<usize, String> {
    crate::env_number::bounded(
        "SLUICE_ADMIN_RECENT_RECORDS",
        DEFAULT_RECENT_RECORDS,
        100_000,
        "records",
        get,
    )
}

/// Keeps the last `capacity` records in memory, for the admin API and tests.
#[derive(Debug)]
pub struct RecentRecords {
    capacity: usize,
    inner: Mutex<Ring>,
    grew: Condvar,
}

#[derive(Debug, Default)]
struct Ring {
    records: VecDeque<Arc<RequestRecord>>,
    total: u64,
}

impl RecentRecords {
    /// A ring of at most `capacity` records.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            inner: Mutex::new(Ring::default()),
            grew: Condvar::new(),
        })
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Ring> {
        self.inner.lock()
    }

    /// The newest `limit` records, newest last.
    pub fn latest(&self, limit: usize) -> Vec<RequestRecord> {
        let guard = self.lock();
        let skip = guard.records.len().saturating_sub(limit);
        guard
            .records
            .iter()
            .skip(skip)
            .map(|r| RequestRecord::clone(r))
            .collect()
    }

    /// How many records were ever recorded.
    pub fn total(&self) -> u64 {
        self.lock().total
    }

    /// Blocks until at least `total` records were ever recorded, or `timeout` passes;
    /// returns whether the count was reached.
    pub fn wait_for_total(&self, total: u64, timeout: Duration) -> bool {
        let mut guard = self.lock();
        self.grew
            .wait_while_for(&mut guard, |r| r.total < total, timeout);
        guard.total >= total
    }
}

impl EventSink for RecentRecords {
    fn record(&self, record: &Arc<RequestRecord>) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = self.lock();
        if guard.records.len() == self.capacity {
            guard.records.pop_front();
        }
        guard.records.push_back(Arc::clone(record));
        guard.total += 1;
        drop(guard);
        // parking_lot's, not std's: std's `notify_all` makes a futex call on every record
        // whether or not anyone waits (one system call per request); this one returns at
        // once when no admin call is waiting.
        self.grew.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::{Api, Provider};

    #[test]
    fn the_recent_records_ring_holds_100_unless_set_and_bounded() {
        let env = |v: Option<&'static str>| move |_: &str| v.map(str::to_owned);
        assert_eq!(super::recent_records_capacity(env(None)), Ok(100));
        assert_eq!(super::recent_records_capacity(env(Some("0"))), Ok(0));
        assert_eq!(
            super::recent_records_capacity(env(Some(" 5000 "))),
            Ok(5000)
        );
        assert_eq!(
            super::recent_records_capacity(env(Some("100000"))),
            Ok(100_000)
        );
        for bad in ["-1", "many", "100001"] {
            let e = super::recent_records_capacity(env(Some(bad))).unwrap_err();
            assert!(e.contains("SLUICE_ADMIN_RECENT_RECORDS"), "{e}");
        }
    }

    #[test]
    fn each_provider_has_a_slot_of_its_own_below_the_count() {
        let slots = [Provider::Openai, Provider::Anthropic, Provider::Gemini].map(Provider::slot);
        assert_eq!(slots, [0, 1, 2]);
        assert_eq!(Provider::COUNT, slots.len());
    }

    #[test]
    fn an_api_name_is_its_serialised_name() {
        for api in [
            Api::ChatCompletions,
            Api::Responses,
            Api::Messages,
            Api::GenerateContent,
        ] {
            assert_eq!(
                serde_json::to_value(api).unwrap_or_default(),
                serde_json::Value::from(api.as_str())
            );
        }
    }
}
