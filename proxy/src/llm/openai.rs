//! OpenAI wire format: Chat Completions and Responses, JSON and SSE.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;

use super::{
    EventVerdict, InspectedRequest, JStr, Needle, Raw, RawContent, absent_or_null, contains,
    json_string, malformed,
};
use crate::error::{ErrorKind, SluiceError};
use crate::events::{RequestFacts, ResponseFacts, ToolCall, ToolResult, Usage};
use crate::sse::EventFields;

// ---------------------------------------------------------------- requests

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    model: Option<JStr<'a>>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(borrow, default)]
    messages: Vec<ChatMessage<'a>>,
    #[serde(borrow, default)]
    tools: Vec<ChatTool<'a>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow)]
    role: JStr<'a>,
    #[serde(borrow, default)]
    tool_call_id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    content: Option<RawContent<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<FullToolCall<'a>>>,
}

#[derive(Deserialize)]
struct FullToolCall<'a> {
    #[serde(borrow, default)]
    id: Option<JStr<'a>>,
    #[serde(borrow)]
    function: FunctionCall<'a>,
}

#[derive(Deserialize)]
struct FunctionCall<'a> {
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    arguments: Option<JStr<'a>>,
}

#[derive(Deserialize)]
struct ChatTool<'a> {
    #[serde(borrow, default)]
    function: Option<NamedTool<'a>>,
}

#[derive(Deserialize)]
struct NamedTool<'a> {
    #[serde(borrow)]
    name: JStr<'a>,
}

/// Reads a chat request; turns `stream_options.include_usage` on for streams that lack it.
pub fn inspect_chat_request(body: &[u8]) -> Result<InspectedRequest, SluiceError> {
    let req: ChatRequest<'_> = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let mut facts = RequestFacts {
        model: req.model.map(|m| m.into_owned()),
        stream: req.stream,
        tools_declared: req
            .tools
            .into_iter()
            .filter_map(|t| t.function.map(|f| f.name.into_owned()))
            .collect(),
        ..RequestFacts::default()
    };
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for msg in req.messages {
        if let Some(calls) = msg.tool_calls {
            for (i, c) in calls.into_iter().enumerate() {
                let id = c.id.map(|s| s.into_owned()).unwrap_or_default();
                let name = c.function.name.map(|s| s.into_owned()).unwrap_or_default();
                names.insert(id.clone(), name.clone());
                facts.prior_tool_calls.push(ToolCall {
                    id,
                    name,
                    arguments: c
                        .function
                        .arguments
                        .map(|s| s.into_owned())
                        .unwrap_or_default(),
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    malformed: None,
                });
            }
        }
        if msg.role == "tool" {
            let call_id = msg.tool_call_id.map(|s| s.into_owned()).unwrap_or_default();
            facts.tool_results.push(ToolResult {
                name: names.get(&call_id).cloned(),
                call_id,
                content_bytes: msg.content.as_ref().map_or(0, |c| c.len()),
                span: msg.content.as_ref().and_then(|c| c.span(body)),
            });
        }
    }
    let wants_usage = req.stream_options.and_then(|o| o.include_usage);
    let rewritten = if facts.stream && wants_usage != Some(true) {
        facts.usage_injected = true;
        Some(with_include_usage(body, wants_usage.is_none())?)
    } else {
        None
    };
    Ok(InspectedRequest { facts, rewritten })
}

/// Adds `"stream_options":{"include_usage":true}` without re-serialising the body when the
/// field is absent (the common case); otherwise edits the parsed object.
fn with_include_usage(body: &[u8], options_absent: bool) -> Result<Bytes, SluiceError> {
    const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
    if options_absent
        && let Some(open) = body.iter().position(|b| !b.is_ascii_whitespace())
        && body[open] == b'{'
    {
        let mut out = Vec::with_capacity(body.len() + FIELD.len());
        out.extend_from_slice(&body[..=open]);
        out.extend_from_slice(FIELD);
        out.extend_from_slice(&body[open + 1..]);
        return Ok(Bytes::from(out));
    }
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(SluiceError::MalformedRequest(
            "the request body must be a JSON object".into(),
        ));
    };
    let opts = obj
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(o) = opts.as_object_mut() {
        o.insert("include_usage".into(), serde_json::Value::Bool(true));
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|_| SluiceError::Internal)
}

#[derive(Deserialize)]
struct ResponsesRequest<'a> {
    #[serde(borrow)]
    model: Option<JStr<'a>>,
    #[serde(default)]
    stream: bool,
    /// A string or a list of items; kept raw and read as items only when it is a list
    /// (an untagged enum would lose the borrowed raw values).
    #[serde(borrow, default)]
    input: Option<Raw<'a>>,
    #[serde(borrow, default)]
    tools: Vec<ResponsesTool<'a>>,
}

#[derive(Deserialize)]
struct ResponsesItem<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<JStr<'a>>,
    #[serde(borrow, default)]
    call_id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    arguments: Option<JStr<'a>>,
    #[serde(borrow, default)]
    output: Option<RawContent<'a>>,
}

#[derive(Deserialize)]
struct ResponsesTool<'a> {
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
}

/// Reads a Responses API request.
pub fn inspect_responses_request(body: &[u8]) -> Result<InspectedRequest, SluiceError> {
    let req: ResponsesRequest<'_> = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let mut facts = RequestFacts {
        model: req.model.map(|m| m.into_owned()),
        stream: req.stream,
        tools_declared: req
            .tools
            .into_iter()
            .filter_map(|t| t.name.map(|n| n.into_owned()))
            .collect(),
        ..RequestFacts::default()
    };
    let items: Option<Vec<ResponsesItem<'_>>> = match req.input {
        Some(raw) if raw.get().trim_start().starts_with('[') => {
            Some(serde_json::from_str(raw.get()).map_err(|e| malformed(&e))?)
        }
        _ => None,
    };
    if let Some(items) = items {
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for (i, item) in items.into_iter().enumerate() {
            let call_id = item.call_id.map(|s| s.into_owned()).unwrap_or_default();
            match item.kind.as_deref() {
                Some("function_call") => {
                    let name = item.name.map(|s| s.into_owned()).unwrap_or_default();
                    names.insert(call_id.clone(), name.clone());
                    facts.prior_tool_calls.push(ToolCall {
                        id: call_id,
                        name,
                        arguments: item.arguments.map(|s| s.into_owned()).unwrap_or_default(),
                        index: u32::try_from(i).unwrap_or(u32::MAX),
                        malformed: None,
                    });
                }
                Some("function_call_output") => facts.tool_results.push(ToolResult {
                    name: names.get(&call_id).cloned(),
                    call_id,
                    content_bytes: item.output.as_ref().map_or(0, |c| c.len()),
                    span: item.output.as_ref().and_then(|c| c.span(body)),
                }),
                _ => {}
            }
        }
    }
    Ok(InspectedRequest {
        facts,
        rewritten: None,
    })
}

// ---------------------------------------------------------------- responses

#[derive(Deserialize, Default)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl ChatUsage {
    fn to_usage(&self) -> Usage {
        openai_usage(
            self.prompt_tokens,
            self.completion_tokens,
            self.prompt_tokens_details.as_ref(),
            self.completion_tokens_details.as_ref(),
        )
    }
}

/// Both OpenAI APIs report usage the same way under different field names.
fn openai_usage(
    input: u64,
    output: u64,
    prompt: Option<&PromptDetails>,
    completion: Option<&CompletionDetails>,
) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: prompt.and_then(|d| d.cached_tokens).unwrap_or(0),
        cache_write_tokens: 0,
        reasoning_tokens: completion.and_then(|d| d.reasoning_tokens).unwrap_or(0),
    }
}

#[derive(Deserialize)]
struct ChatCompletion<'a> {
    #[serde(borrow, default)]
    model: Option<JStr<'a>>,
    #[serde(borrow, default)]
    choices: Vec<ChatChoice<'a>>,
    #[serde(default)]
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct ChatChoice<'a> {
    #[serde(borrow, default)]
    message: Option<ChatChoiceMessage<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<JStr<'a>>,
}

#[derive(Deserialize)]
struct ChatChoiceMessage<'a> {
    #[serde(borrow, default)]
    tool_calls: Option<Vec<FullToolCall<'a>>>,
}

/// Reads a non-streaming chat completion.
pub fn read_chat_json(body: &[u8], facts: &mut ResponseFacts) {
    let Ok(c) = serde_json::from_slice::<ChatCompletion<'_>>(body) else {
        facts.error = Some("unparseable chat completion body".into());
        return;
    };
    facts.model = c.model.map(|m| m.into_owned());
    facts.usage = c.usage.map(|u| u.to_usage());
    if let Some(choice) = c.choices.into_iter().next() {
        facts.finish_reason = choice.finish_reason.map(|f| f.into_owned());
        for (i, call) in choice
            .message
            .and_then(|m| m.tool_calls)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            facts.tool_calls.push(ToolCall {
                id: call.id.map(|s| s.into_owned()).unwrap_or_default(),
                name: call
                    .function
                    .name
                    .map(|s| s.into_owned())
                    .unwrap_or_default(),
                arguments: call
                    .function
                    .arguments
                    .map(|s| s.into_owned())
                    .unwrap_or_default(),
                index: u32::try_from(i).unwrap_or(u32::MAX),
                malformed: None,
            });
        }
    }
    facts.completed = true;
}

#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(borrow, default)]
    id: Option<JStr<'a>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(borrow, default)]
    model: Option<JStr<'a>>,
    #[serde(borrow, default)]
    choices: Vec<ChunkChoice<'a>>,
    #[serde(default)]
    usage: Option<ChatUsage>,
    #[serde(borrow, default)]
    error: Option<Raw<'a>>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<ChunkDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<JStr<'a>>,
}

#[derive(Deserialize)]
struct ChunkDelta<'a> {
    #[serde(borrow, default)]
    tool_calls: Option<Vec<DeltaToolCall<'a>>>,
}

#[derive(Deserialize)]
struct DeltaToolCall<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    function: Option<FunctionCall<'a>>,
}

static TOOL_CALLS: Needle = Needle::new("\"tool_calls\"");
static USAGE: Needle = Needle::new("\"usage\"");
static ERROR: Needle = Needle::new("\"error\"");
static FINISH_REASON: Needle = Needle::new("\"finish_reason\"");

/// Assembles chat-completion tool calls from their deltas, keyed by `index`.
#[derive(Debug, Default)]
pub struct ChatStream {
    partial: BTreeMap<u32, ToolCall>,
    drop_usage_chunk: bool,
    /// The stream's `id` and `created`, reused in refusal chunks.
    id: String,
    created: u64,
    saw_tool_call: bool,
}

impl ChatStream {
    /// A reader; see [`super::ResponseInspector::new`].
    pub fn new(drop_usage_chunk: bool) -> Self {
        Self {
            partial: BTreeMap::new(),
            drop_usage_chunk,
            id: String::new(),
            created: 0,
            saw_tool_call: false,
        }
    }

    /// A text chunk carrying `text` and a closing chunk with `finish_reason: "stop"`.
    pub(super) fn refusal_events(&self, text: &str, facts: &ResponseFacts) -> String {
        let model = facts.model.as_deref().unwrap_or("");
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
            serde_json::json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        };
        format!(
            "data: {}\n\ndata: {}\n\n",
            chunk(
                serde_json::json!({"role": "assistant", "content": text}),
                serde_json::Value::Null
            ),
            chunk(serde_json::json!({}), serde_json::json!("stop"))
        )
    }

    pub(super) fn on_event(
        &mut self,
        ev: &EventFields<'_>,
        facts: &mut ResponseFacts,
    ) -> EventVerdict {
        if !ev.has_data {
            return EventVerdict::Forward;
        }
        if ev.data.trim_end() == "[DONE]" {
            self.finish(facts);
            facts.completed = true;
            return EventVerdict::Forward;
        }
        // Most events are text deltas: skip parsing those that cannot carry a tool call,
        // usage, a finish reason or an error once the model is known.
        let data: &str = &ev.data;
        if facts.model.is_some()
            && !contains(data, &TOOL_CALLS)
            && !contains(data, &USAGE)
            && !contains(data, &ERROR)
            && absent_or_null(data, &FINISH_REASON)
        {
            return EventVerdict::Forward;
        }
        let Ok(chunk) = serde_json::from_str::<ChatChunk<'_>>(&ev.data) else {
            return EventVerdict::Forward;
        };
        if chunk.error.is_some() {
            facts.error = Some("upstream reported an error inside the stream".into());
        }
        if facts.model.is_none() {
            facts.model = chunk.model.map(|m| m.into_owned());
            self.id = chunk.id.map(|i| i.into_owned()).unwrap_or_default();
            self.created = chunk.created.unwrap_or(0);
        }
        let mut verdict = EventVerdict::Forward;
        let usage_only = chunk.choices.is_empty() && chunk.usage.is_some();
        if let Some(u) = &chunk.usage {
            facts.usage = Some(u.to_usage());
        }
        for choice in chunk.choices {
            for d in choice.delta.and_then(|d| d.tool_calls).unwrap_or_default() {
                // A delta without an index continues the most recent call.
                let index = d
                    .index
                    .unwrap_or_else(|| self.partial.keys().next_back().copied().unwrap_or(0));
                let call = self.partial.entry(index).or_insert_with(|| ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                    index,
                    malformed: None,
                });
                self.saw_tool_call = true;
                if let Some(id) = d.id {
                    if call.id.is_empty() {
                        call.id = id.into_owned();
                    } else if call.id != id {
                        // Two calls on one index (or a new call without one): the arguments
                        // cannot be told apart, so the call is refused.
                        call.malformed =
                            Some(format!("two tool calls share the stream index {index}"));
                    }
                }
                let mut named = None;
                if let Some(f) = d.function {
                    if let Some(n) = f.name {
                        call.name.push_str(&n);
                        named = Some(call.name.clone());
                    }
                    if let Some(a) = f.arguments {
                        call.arguments.push_str(&a);
                    }
                }
                if !matches!(verdict, EventVerdict::ToolCall { name: Some(_) }) {
                    verdict = EventVerdict::ToolCall { name: named };
                }
            }
            if let Some(reason) = choice.finish_reason {
                facts.finish_reason = Some(reason.into_owned());
                self.finish(facts);
                if self.saw_tool_call {
                    verdict = EventVerdict::BatchEnd;
                }
            }
        }
        if usage_only && self.drop_usage_chunk {
            EventVerdict::Drop
        } else {
            verdict
        }
    }

    /// Completes every call still being assembled, in index order.
    pub fn finish(&mut self, facts: &mut ResponseFacts) {
        facts
            .tool_calls
            .extend(std::mem::take(&mut self.partial).into_values());
    }
}

#[derive(Deserialize, Default)]
struct ResponsesUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    output_tokens_details: Option<CompletionDetails>,
}

impl ResponsesUsage {
    fn to_usage(&self) -> Usage {
        openai_usage(
            self.input_tokens,
            self.output_tokens,
            self.input_tokens_details.as_ref(),
            self.output_tokens_details.as_ref(),
        )
    }
}

#[derive(Deserialize)]
struct ResponseObject<'a> {
    #[serde(borrow, default)]
    model: Option<JStr<'a>>,
    #[serde(borrow, default)]
    status: Option<JStr<'a>>,
    #[serde(borrow, default)]
    output: Vec<OutputItem<'a>>,
    #[serde(default)]
    usage: Option<ResponsesUsage>,
}

#[derive(Deserialize)]
struct OutputItem<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<JStr<'a>>,
    #[serde(borrow, default)]
    call_id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    arguments: Option<JStr<'a>>,
}

impl OutputItem<'_> {
    fn into_call(self, index: u32) -> Option<ToolCall> {
        (self.kind.as_deref() == Some("function_call")).then(|| ToolCall {
            id: self.call_id.map(|s| s.into_owned()).unwrap_or_default(),
            name: self.name.map(|s| s.into_owned()).unwrap_or_default(),
            arguments: self.arguments.map(|s| s.into_owned()).unwrap_or_default(),
            index,
            malformed: None,
        })
    }
}

fn read_response_object(r: ResponseObject<'_>, facts: &mut ResponseFacts, with_calls: bool) {
    facts.model = r.model.map(|m| m.into_owned());
    facts.usage = r.usage.map(|u| u.to_usage());
    facts.finish_reason = r.status.map(|s| s.into_owned());
    if with_calls {
        for (i, item) in r.output.into_iter().enumerate() {
            if let Some(call) = item.into_call(u32::try_from(i).unwrap_or(u32::MAX)) {
                facts.tool_calls.push(call);
            }
        }
    }
}

/// Reads a non-streaming Responses API body.
pub fn read_responses_json(body: &[u8], facts: &mut ResponseFacts) {
    match serde_json::from_slice::<ResponseObject<'_>>(body) {
        Ok(r) => {
            read_response_object(r, facts, true);
            facts.completed = true;
        }
        Err(_) => facts.error = Some("unparseable response body".into()),
    }
}

#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: JStr<'a>,
    #[serde(default)]
    output_index: Option<u32>,
    #[serde(borrow, default)]
    item: Option<OutputItem<'a>>,
    #[serde(borrow, default)]
    response: Option<ResponseObject<'a>>,
}

/// Reads Responses API stream events; a call is complete at `response.output_item.done`.
#[derive(Debug, Default)]
pub struct ResponsesStream;

impl ResponsesStream {
    pub(super) fn on_event(
        &mut self,
        ev: &EventFields<'_>,
        facts: &mut ResponseFacts,
    ) -> EventVerdict {
        if !ev.has_data {
            return EventVerdict::Forward;
        }
        // Only these events carry calls, usage or errors; the rest are not parsed.
        if let Some(name) = ev.event
            && !matches!(
                name,
                "response.output_item.done"
                    | "response.completed"
                    | "response.incomplete"
                    | "response.failed"
                    | "error"
            )
        {
            return EventVerdict::Forward;
        }
        let Ok(e) = serde_json::from_str::<ResponsesEvent<'_>>(&ev.data) else {
            return EventVerdict::Forward;
        };
        match e.kind.as_ref() {
            "response.output_item.done" => {
                if let Some(call) = e
                    .item
                    .and_then(|i| i.into_call(e.output_index.unwrap_or(0)))
                {
                    facts.tool_calls.push(call);
                }
            }
            "response.completed" | "response.incomplete" => {
                if let Some(r) = e.response {
                    read_response_object(r, facts, false);
                }
                facts.completed = true;
            }
            "response.failed" | "error" => {
                if let Some(r) = e.response {
                    read_response_object(r, facts, false);
                }
                facts.error = Some(format!("upstream stream event {}", e.kind));
                facts.completed = true;
            }
            _ => {}
        }
        EventVerdict::Forward
    }
}

// ---------------------------------------------------------------- refusals

/// Replaces the first choice's tool calls with an assistant message.
pub(super) fn refuse_chat(v: &mut serde_json::Value, text: &str) {
    if let Some(choice) = v.pointer_mut("/choices/0") {
        choice["message"] =
            serde_json::json!({"role": "assistant", "content": text, "refusal": null});
        choice["finish_reason"] = serde_json::json!("stop");
    }
}

/// Replaces the function calls of a Responses object with one output message.
pub(super) fn refuse_response(v: &mut serde_json::Value, text: &str) {
    if let Some(out) = v.get_mut("output").and_then(|o| o.as_array_mut()) {
        out.retain(|item| item["type"] != "function_call");
        out.push(serde_json::json!({"type": "message", "id": "msg_sluice_refusal", "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}));
    }
}

// ---------------------------------------------------------------- errors

/// `{"error":{"message","type","param","code"}}`, as the OpenAI SDKs parse it.
pub fn error_body(message: &str, code: &str, kind: ErrorKind) -> String {
    let kind = match kind {
        ErrorKind::InvalidRequest | ErrorKind::TooLarge | ErrorKind::HeadersTooLarge => {
            "invalid_request_error"
        }
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::Upstream => "upstream_error",
        ErrorKind::Unavailable => "service_unavailable",
        ErrorKind::Internal => "server_error",
    };
    format!(
        r#"{{"error":{{"message":{},"type":"{kind}","param":null,"code":"sluice_{code}"}}}}"#,
        json_string(message)
    )
}

/// The Responses API's terminal `error` event.
pub fn responses_error_event(message: &str, code: &str) -> String {
    format!(
        "event: error\ndata: {{\"type\":\"error\",\"code\":\"sluice_{code}\",\"message\":{},\"param\":null,\"sequence_number\":0}}\n\n",
        json_string(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injects_include_usage_without_reserialising() {
        let body = br#" {"model":"m","stream":true,"messages":[]}"#;
        let r = inspect_chat_request(body).expect("valid");
        assert!(r.facts.usage_injected);
        let out = r.rewritten.expect("rewritten");
        assert_eq!(
            &out[..],
            br#" {"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
    }

    #[test]
    fn edits_stream_options_when_present() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#;
        let out = inspect_chat_request(body)
            .expect("valid")
            .rewritten
            .expect("rewritten");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn leaves_requests_that_ask_for_usage() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        assert!(
            inspect_chat_request(body)
                .expect("valid")
                .rewritten
                .is_none()
        );
        let body = br#"{"model":"m","messages":[]}"#;
        assert!(
            inspect_chat_request(body)
                .expect("valid")
                .rewritten
                .is_none()
        );
    }

    #[test]
    fn finds_tool_results_and_their_names() {
        let body = br#"{"model":"m","messages":[
          {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},
          {"role":"tool","tool_call_id":"c1","content":"sunny"}],
          "tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}}]}"#;
        let f = inspect_chat_request(body).expect("valid").facts;
        assert_eq!(f.tools_declared, vec!["get_weather"]);
        assert_eq!(f.tool_results[0].name.as_deref(), Some("get_weather"));
        assert_eq!(f.tool_results[0].content_bytes, "\"sunny\"".len());
    }

    #[test]
    fn malformed_json_is_refused() {
        assert!(matches!(
            inspect_chat_request(b"{\"model\":"),
            Err(SluiceError::MalformedRequest(_))
        ));
    }
}

#[cfg(test)]
mod responses_tests {
    use super::*;

    #[test]
    fn responses_input_items_with_tool_outputs_are_read() {
        let body = br#"{"model":"m","input":[{"role":"user","content":"hi"},{"type":"function_call","call_id":"c1","name":"fetch_url","arguments":"{}"},{"type":"function_call_output","call_id":"c1","output":"page"}]}"#;
        let f = inspect_responses_request(body).expect("valid").facts;
        assert_eq!(f.tool_results.len(), 1);
        assert_eq!(f.tool_results[0].name.as_deref(), Some("fetch_url"));
        assert!(f.tool_results[0].span.is_some());
    }
}
