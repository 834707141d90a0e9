//! One module per wire format: parse the request, read usage and tool calls from bodies and
//! SSE events, and render Sluice's own errors in the shape the provider's SDK parses.

pub mod anthropic;
pub mod gemini;
mod jstr;
pub mod openai;
mod splice;
mod tokens;

pub(crate) use splice::agrees_with_tree;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::SluiceError;
use crate::events::{Api, Provider, RequestFacts, ResponseFacts};
use crate::sse::EventFields;

/// What the request inspector decided to send upstream.
#[derive(Debug)]
pub struct InspectedRequest {
    /// What was read.
    pub facts: RequestFacts,
    /// A replacement body, when Sluice had to change the request (e.g. to turn on usage).
    pub rewritten: Option<Bytes>,
}

/// Reads an inspected API's request body. Malformed JSON is refused with a clear message.
pub fn inspect_request(api: Api, body: &[u8]) -> Result<InspectedRequest, SluiceError> {
    match api {
        Api::ChatCompletions => openai::inspect_chat_request(body),
        Api::Responses => openai::inspect_responses_request(body),
        Api::Messages => anthropic::inspect_request(body),
        Api::GenerateContent => gemini::inspect_request(body),
    }
}

/// What an event means for forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventVerdict {
    /// Forward the event's bytes unchanged.
    Forward,
    /// Drop the event: it exists only because Sluice asked for it (injected usage).
    Drop,
    /// Part of a tool call; `name` is set on the event that names a new call.
    ToolCall {
        /// The new call's name.
        name: Option<String>,
    },
    /// The event that closes a batch of tool calls (finish reason, stop reason).
    BatchEnd,
    /// An event that is a whole batch of complete calls by itself (Gemini).
    WholeBatch,
    /// An event whose data could not be read: forwarded as is, unless it names tool calls
    /// or comes while calls are held (then the stream is ended: they cannot be judged).
    Unreadable,
}

/// Per-response state of a provider's stream reader.
#[derive(Debug)]
pub enum ResponseInspector {
    /// OpenAI chat completions.
    Chat(openai::ChatStream),
    /// OpenAI Responses.
    Responses(openai::ResponsesStream),
    /// Anthropic Messages.
    Messages(anthropic::MessagesStream),
    /// Gemini generateContent.
    Gemini(gemini::GeminiStream),
}

impl ResponseInspector {
    /// A fresh reader for `api`. `drop_usage_chunk` hides the usage-only chunk that exists only
    /// because Sluice turned `include_usage` on.
    pub fn new(api: Api, drop_usage_chunk: bool) -> Self {
        match api {
            Api::ChatCompletions => Self::Chat(openai::ChatStream::new(drop_usage_chunk)),
            Api::Responses => Self::Responses(openai::ResponsesStream::default()),
            Api::Messages => Self::Messages(anthropic::MessagesStream::default()),
            Api::GenerateContent => Self::Gemini(gemini::GeminiStream::default()),
        }
    }

    /// Reads one SSE event.
    pub fn on_event(&mut self, ev: &EventFields<'_>, facts: &mut ResponseFacts) -> EventVerdict {
        match self {
            Self::Chat(s) => s.on_event(ev, facts),
            Self::Responses(s) => s.on_event(ev, facts),
            Self::Messages(s) => s.on_event(ev, facts),
            Self::Gemini(s) => s.on_event(ev, facts),
        }
    }

    /// Reads a whole (non-streaming) JSON response body; false when it cannot be read.
    pub fn on_json(&mut self, body: &[u8], facts: &mut ResponseFacts) -> bool {
        match self {
            Self::Chat(_) => openai::read_chat_json(body, facts),
            Self::Responses(_) => openai::read_responses_json(body, facts),
            Self::Messages(_) => anthropic::read_json(body, facts),
            Self::Gemini(_) => gemini::read_json(body, facts),
        }
    }

    /// The events that replace a refused batch (and the event that closed it), so the
    /// client's SDK sees an ordinary assistant message with `text`.
    pub fn refusal_events(&self, text: &str, facts: &ResponseFacts, closing: &[u8]) -> Bytes {
        let out = match self {
            Self::Chat(s) => s.refusal_events(text, facts),
            Self::Messages(s) => s.refusal_events(text, facts),
            Self::Gemini(_) => gemini::refusal_event(closing, text),
            Self::Responses(s) => s.refusal_events(text, closing),
        };
        Bytes::from(out)
    }

    /// Called at end of stream: completes calls still being assembled.
    pub fn finish(&mut self, facts: &mut ResponseFacts) {
        match self {
            Self::Chat(s) => s.finish(facts),
            Self::Responses(_) | Self::Messages(_) | Self::Gemini(_) => {}
        }
    }
}

/// Rewrites a non-streaming response so the refused calls become an assistant message.
/// Usual shapes are edited in place (`splice`); anything else goes through a parsed tree.
/// `None` when the body cannot be read as JSON at all.
pub fn refuse_json(api: Api, body: &[u8], text: &str) -> Option<Bytes> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|b| splice::refuse(api, b, text))
        .map(Bytes::from)
        .or_else(|| refuse_json_tree(api, body, text))
}

/// Whether a body its reader could not read may still call tools: it is JSON (a client's
/// reader takes it) and names the API's tool calls as a key. Such a body must not go out
/// unjudged.
pub fn may_call_tools(api: Api, body: &[u8]) -> bool {
    names_tool_calls(api, body) && parse_json::<serde::de::IgnoredAny>(body).is_ok()
}

/// Whether `data` names the API's tool calls as a key (unescaped: a text that quotes the
/// name does not count).
pub fn names_tool_calls(api: Api, data: &[u8]) -> bool {
    static CHAT: Needle = Needle::new("\"tool_calls\"");
    static RESPONSES: Needle = Needle::new("\"function_call\"");
    static MESSAGES: Needle = Needle::new("\"tool_use\"");
    static GEMINI: Needle = Needle::new("\"functionCall\"");
    let needle = match api {
        Api::ChatCompletions => &CHAT,
        Api::Responses => &RESPONSES,
        Api::Messages => &MESSAGES,
        Api::GenerateContent => &GEMINI,
    };
    needle.find_bytes(data).is_some()
}

/// The refusal through a `serde_json::Value`: for any shape, and the reference the edits
/// are tested against.
fn refuse_json_tree(api: Api, body: &[u8], text: &str) -> Option<Bytes> {
    let mut v: serde_json::Value = parse_json(body).ok()?;
    match api {
        Api::ChatCompletions => openai::refuse_chat(&mut v, text),
        Api::Responses => openai::refuse_response(&mut v, text),
        Api::Messages => anthropic::refuse(&mut v, text),
        Api::GenerateContent => gemini::refuse(&mut v, text),
    }
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// Renders a Sluice error as a complete HTTP body in the provider's error shape.
pub fn render_error(provider: Provider, err: &SluiceError) -> (u16, &'static str, Bytes) {
    let (status, code, kind) = err.classify();
    let message = err.to_string();
    let body = match provider {
        Provider::Openai => openai::error_body(&message, code, kind),
        Provider::Anthropic => anthropic::error_body(&message, kind),
        Provider::Gemini => gemini::error_body(status, &message, kind),
    };
    (status, code, Bytes::from(body))
}

/// Renders a Sluice error as a terminal SSE event that the provider's SDK raises as an error.
pub fn stream_error_event(api: Api, err: &SluiceError) -> Bytes {
    let (status, code, kind) = err.classify();
    let message = err.to_string();
    let event = match api {
        Api::ChatCompletions => format!("data: {}\n\n", openai::error_body(&message, code, kind)),
        Api::Responses => openai::responses_error_event(&message, code),
        Api::Messages => format!(
            "event: error\ndata: {}\n\n",
            anthropic::error_body(&message, kind)
        ),
        Api::GenerateContent => {
            format!("data: {}\n\n", gemini::error_body(status, &message, kind))
        }
    };
    Bytes::from(event)
}

/// A substring searcher built once (building one per event costs more than the search).
pub(crate) struct Needle {
    text: &'static str,
    finder: std::sync::OnceLock<memchr::memmem::Finder<'static>>,
}

impl Needle {
    /// A needle for `text`.
    pub(crate) const fn new(text: &'static str) -> Self {
        Self {
            text,
            finder: std::sync::OnceLock::new(),
        }
    }

    fn find(&self, data: &str) -> Option<usize> {
        self.find_bytes(data.as_bytes())
    }

    fn find_bytes(&self, data: &[u8]) -> Option<usize> {
        self.finder
            .get_or_init(|| memchr::memmem::Finder::new(self.text))
            .find(data)
    }
}

/// True when `data` contains `needle` (a cheap pre-check before parsing an event).
pub(crate) fn contains(data: &str, needle: &Needle) -> bool {
    needle.find(data).is_some()
}

/// Several needles found in one pass (one searcher for all, built once): the keys that
/// make a streamed chunk worth parsing. Four `Needle`s cost four passes over every chunk.
/// The searcher is SIMD (Teddy: x86_64 with SSSE3, or aarch64); where it cannot be built,
/// `every_match` answers false and every chunk is parsed: slower, never less checked.
pub(crate) struct Needles {
    texts: &'static [&'static str],
    searcher: std::sync::OnceLock<Option<aho_corasick::packed::Searcher>>,
}

impl Needles {
    /// Needles for `texts`; a match names its needle by its index in `texts`.
    pub(crate) const fn new(texts: &'static [&'static str]) -> Self {
        Self {
            texts,
            searcher: std::sync::OnceLock::new(),
        }
    }

    /// True when `ok(needle, rest)` holds for every needle found in `data`, `rest` being the
    /// text after it (true when none is found). False when the searcher could not be built,
    /// so that callers skipping work on `true` never skip it unchecked.
    pub(crate) fn every_match(&self, data: &str, mut ok: impl FnMut(usize, &str) -> bool) -> bool {
        let searcher = self
            .searcher
            .get_or_init(|| aho_corasick::packed::Searcher::new(self.texts.iter()));
        let Some(searcher) = searcher else {
            return false;
        };
        searcher.find_iter(data).all(|m| {
            ok(
                m.pattern().as_usize(),
                data.get(m.end()..).unwrap_or_default(),
            )
        })
    }
}

/// True when `rest`, the text after a JSON key, gives the key the value `null`.
pub(crate) fn null_follows(rest: &str) -> bool {
    rest.trim_start_matches([' ', '\t', '\n', '\r', ':'])
        .starts_with("null")
}

/// JSON-escapes a string (for the small bodies Sluice writes itself).
pub(crate) fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

pub(crate) use jstr::JStr;

/// Any JSON value, kept raw (not parsed beyond its extent).
pub(crate) type Raw<'a> = &'a RawValue;

/// An object of which only the `name` is read (declared tools, in every provider's shape).
#[derive(Debug, Deserialize)]
pub(crate) struct Named<'a> {
    #[serde(borrow, default)]
    pub(crate) name: Option<JStr<'a>>,
}

/// The names of declared tools.
pub(crate) fn names(items: Vec<Named<'_>>) -> Vec<String> {
    items
        .into_iter()
        .filter_map(|t| t.name.map(JStr::into_owned))
        .collect()
}

/// An optional borrowed string, owned (empty when absent).
pub(crate) fn owned(s: Option<JStr<'_>>) -> String {
    s.map(JStr::into_owned).unwrap_or_default()
}

/// Content that may be a string or an array of parts: only its size is needed.
#[derive(Debug, Deserialize)]
pub(crate) struct RawContent<'a>(#[serde(borrow)] pub Raw<'a>);

impl RawContent<'_> {
    pub(crate) fn len(&self) -> usize {
        self.0.get().len()
    }

    /// The value's byte range inside `body`, which it was borrowed from.
    pub(crate) fn span(&self, body: &[u8]) -> Option<(usize, usize)> {
        let start = (self.0.get().as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
        let end = start + self.0.get().len();
        (end <= body.len()).then_some((start, end))
    }
}

/// Serde's message for a malformed body, trimmed so no content is echoed.
/// Parses a JSON body, checking its UTF-8 once for the whole body. serde_json's byte-slice
/// reader checks each string it reads on its own (about 100 instructions a string under
/// callgrind: 10,000 per request for a tool conversation); its `str` reader trusts the
/// check already made. A body that is not UTF-8 goes to the byte-slice reader, whose
/// error says where the bad byte is.
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    }
}

pub(crate) fn malformed(e: &serde_json::Error) -> SluiceError {
    SluiceError::MalformedRequest(format!(
        "{} at line {} column {}",
        match e.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected field type",
            serde_json::error::Category::Eof => "unexpected end of body",
        },
        e.line(),
        e.column()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    static TOOL_CALLS: Needle = Needle::new("\"tool_calls\"");
    static KEYS: Needles = Needles::new(&["\"usage\"", "\"finish_reason\""]);

    /// What `every_match` answers for a chunk whose finish reason may be null.
    fn only_null_finish(data: &str) -> bool {
        KEYS.every_match(data, |needle, rest| needle == 1 && null_follows(rest))
    }

    #[test]
    fn the_parse_skip_check_sees_finish_reasons_however_spaced() {
        assert!(only_null_finish(r#"{"finish_reason":null}"#));
        assert!(only_null_finish(r#"{"finish_reason" : null}"#));
        assert!(only_null_finish(r#"{"delta":{}}"#));
        assert!(!only_null_finish(r#"{"finish_reason": "stop"}"#));
        assert!(!only_null_finish(r#"{"finish_reason":"tool_calls"}"#));
        // Every match counts, not the first alone; any other key found counts.
        assert!(!only_null_finish(
            r#"{"finish_reason":null,"x":{"finish_reason":"stop"}}"#
        ));
        assert!(!only_null_finish(r#"{"finish_reason":null,"usage":{}}"#));
        assert!(!only_null_finish(r#"{"usage":{},"finish_reason":null}"#));
        // A text delta that talks about tool calls is still skipped: the quote is escaped.
        assert!(!contains(
            r#"{"content":"say \"tool_calls\""}"#,
            &TOOL_CALLS
        ));
        assert!(only_null_finish(
            r#"{"content":"say \"usage\"","finish_reason":null}"#
        ));
    }

    #[test]
    fn a_body_may_call_tools_when_it_is_json_naming_the_apis_calls_as_a_key() {
        assert!(may_call_tools(
            Api::ChatCompletions,
            br#"{"choices":[{"message":{"tool_calls":[]}}],"usage":{"prompt_tokens":-1}}"#
        ));
        // Quoted in a text, the name's quotes are escaped.
        assert!(!may_call_tools(
            Api::ChatCompletions,
            br#"{"content":"say \"tool_calls\""}"#
        ));
        // Not JSON: no client reads calls from it.
        assert!(!may_call_tools(
            Api::ChatCompletions,
            br#"{"tool_calls":[ "#
        ));
        assert!(may_call_tools(
            Api::Messages,
            br#"{"content":[{"type":"tool_use"}]}"#
        ));
        assert!(may_call_tools(
            Api::GenerateContent,
            br#"[{"functionCall":1}]"#
        ));
        assert!(may_call_tools(
            Api::Responses,
            br#"{"output":[{"type":"function_call"}]}"#
        ));
        assert!(!may_call_tools(
            Api::Responses,
            br#"{"output":[{"type":"function_call_output"}]}"#
        ));
    }

    #[test]
    fn an_event_no_reader_can_read_is_unreadable_for_every_provider() {
        for (api, event) in [
            (
                Api::ChatCompletions,
                &b"data: {\"model\":5,\"choices\":[{\"delta\":{\"tool_calls\":[]}}]}\n\n"[..],
            ),
            (
                Api::Responses,
                b"event: response.output_item.added\ndata: {\"type\":7}\n\n",
            ),
            (
                Api::Messages,
                b"event: content_block_start\ndata: {\"type\":[]}\n\n",
            ),
            (Api::GenerateContent, b"data: {\"candidates\":3}\n\n"),
        ] {
            let fields = crate::sse::parse_event(event).unwrap();
            let mut facts = ResponseFacts::default();
            let verdict = ResponseInspector::new(api, false).on_event(&fields, &mut facts);
            assert_eq!(verdict, EventVerdict::Unreadable, "{api:?}");
        }
    }

    /// A refusal rewrites whatever JSON the upstream sent without panicking; found by the
    /// `request_inspector` fuzz target (`[""]` as a Messages body).
    #[test]
    fn refusing_bodies_that_are_not_objects_does_not_panic() {
        for api in [
            Api::ChatCompletions,
            Api::Responses,
            Api::Messages,
            Api::GenerateContent,
        ] {
            for body in [
                &br#"[""]"#[..],
                br#""text""#,
                b"42",
                b"null",
                br#"{"choices":[1]}"#,
                br#"{"choices":["x"],"content":"y"}"#,
                br#"{"candidates":[7]}"#,
            ] {
                let _ = refuse_json(api, body, "refused");
            }
        }
        let chat = refuse_json(
            Api::ChatCompletions,
            br#"{"choices":[{"message":{}}]}"#,
            "no",
        );
        assert!(String::from_utf8_lossy(&chat.unwrap_or_default()).contains(r#""content":"no""#));
    }
}
