//! Gemini generateContent / streamGenerateContent wire format, JSON and SSE (`alt=sse`).
//!
//! The model and whether the call streams come from the URL, not the body; the router fills
//! them in.

use serde::Deserialize;

use super::{
    EventVerdict, InspectedRequest, JStr, Named, Raw, RawContent, json_string, malformed, names,
    owned,
};
use crate::error::{ErrorKind, SluiceError};
use crate::events::{RequestFacts, ResponseFacts, Speaker, ToolCall, ToolResult, Usage};
use crate::sse::EventFields;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest<'a> {
    #[serde(borrow, default)]
    contents: Vec<Content<'a>>,
    #[serde(borrow, default)]
    system_instruction: Option<RawContent<'a>>,
    #[serde(borrow, default)]
    tools: Vec<Tool<'a>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    parts: Vec<Part<'a>>,
    #[serde(borrow, default)]
    role: Option<JStr<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(borrow, default)]
    function_call: Option<FunctionCall<'a>>,
    #[serde(borrow, default)]
    function_response: Option<FunctionResponse<'a>>,
    #[serde(borrow, default)]
    text: Option<RawContent<'a>>,
}

#[derive(Deserialize)]
struct FunctionCall<'a> {
    #[serde(borrow, default)]
    id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    args: Option<Raw<'a>>,
}

impl FunctionCall<'_> {
    fn into_call(self, index: u32) -> ToolCall {
        ToolCall {
            id: owned(self.id),
            name: owned(self.name),
            arguments: self
                .args
                .map(|r| r.get().to_owned())
                .unwrap_or_else(|| "{}".into()),
            index,
            malformed: None,
        }
    }
}

#[derive(Deserialize)]
struct FunctionResponse<'a> {
    #[serde(borrow, default)]
    id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    response: Option<RawContent<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tool<'a> {
    #[serde(borrow, default)]
    function_declarations: Vec<Named<'a>>,
}

/// Reads a generateContent request body.
pub fn inspect_request(body: &[u8]) -> Result<InspectedRequest, SluiceError> {
    let req: GenerateRequest<'_> = crate::llm::parse_json(body).map_err(|e| malformed(&e))?;
    let mut facts = RequestFacts {
        tools_declared: names(
            req.tools
                .into_iter()
                .flat_map(|t| t.function_declarations)
                .collect(),
        ),
        ..RequestFacts::default()
    };
    if let Some(span) = req.system_instruction.as_ref().and_then(|c| c.span(body)) {
        facts.texts.push((Speaker::System, span));
    }
    let mut index = 0u32;
    for content in req.contents {
        let from_user = content.role.as_deref().is_none_or(|r| r == "user");
        for part in content.parts {
            if from_user && let Some(span) = part.text.as_ref().and_then(|c| c.span(body)) {
                facts.texts.push((Speaker::User, span));
            }
            read_part(part, &mut facts, &mut index, body);
        }
    }
    Ok(InspectedRequest {
        facts,
        rewritten: None,
    })
}

fn read_part(part: Part<'_>, facts: &mut RequestFacts, index: &mut u32, body: &[u8]) {
    {
        if let Some(call) = part.function_call {
            facts.prior_tool_calls.push(call.into_call(*index));
            *index = index.saturating_add(1);
        }
        if let Some(r) = part.function_response {
            facts.tool_results.push(ToolResult {
                call_id: owned(r.id),
                name: r.name.map(|s| s.into_owned()),
                content_bytes: r.response.as_ref().map_or(0, |c| c.len()),
                span: r.response.as_ref().and_then(|c| c.span(body)),
            });
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse<'a> {
    #[serde(borrow, default)]
    candidates: Vec<Candidate<'a>>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(borrow, default)]
    model_version: Option<JStr<'a>>,
    #[serde(borrow, default)]
    error: Option<Raw<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<JStr<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default, deserialize_with = "crate::llm::tokens::count")]
    prompt_token_count: u64,
    #[serde(default, deserialize_with = "crate::llm::tokens::count")]
    candidates_token_count: u64,
    #[serde(default, deserialize_with = "crate::llm::tokens::count")]
    cached_content_token_count: u64,
    #[serde(default, deserialize_with = "crate::llm::tokens::count")]
    thoughts_token_count: u64,
}

/// Gemini's `promptTokenCount` includes cached tokens; Sluice reports them apart.
impl UsageMetadata {
    fn to_usage(&self) -> Usage {
        Usage {
            input_tokens: self
                .prompt_token_count
                .saturating_sub(self.cached_content_token_count),
            output_tokens: self.candidates_token_count,
            cache_read_tokens: self.cached_content_token_count,
            cache_write_tokens: 0,
            reasoning_tokens: self.thoughts_token_count,
        }
    }
}

fn read_response(r: GenerateResponse<'_>, next_index: &mut u32, facts: &mut ResponseFacts) {
    if r.error.is_some() {
        facts.error = Some("upstream reported an error".into());
        facts.completed = true;
    }
    if let Some(m) = r.model_version {
        facts.model = Some(m.into_owned());
    }
    if let Some(u) = r.usage_metadata {
        facts.usage = Some(u.to_usage());
    }
    if let Some(c) = r.candidates.into_iter().next() {
        for part in c.content.map(|c| c.parts).unwrap_or_default() {
            if let Some(call) = part.function_call {
                facts.tool_calls.push(call.into_call(*next_index));
                *next_index = next_index.saturating_add(1);
            }
        }
        if let Some(reason) = c.finish_reason {
            facts.finish_reason = Some(reason.into_owned());
            facts.completed = true;
        }
    }
}

/// Reads a non-streaming response, or a non-SSE `streamGenerateContent` JSON array; false
/// when it cannot be read.
pub fn read_json(body: &[u8], facts: &mut ResponseFacts) -> bool {
    let mut index = 0;
    if let Ok(r) = crate::llm::parse_json::<GenerateResponse<'_>>(body) {
        read_response(r, &mut index, facts);
        facts.completed = true;
    } else if let Ok(list) = crate::llm::parse_json::<Vec<GenerateResponse<'_>>>(body) {
        for r in list {
            read_response(r, &mut index, facts);
        }
    } else {
        facts.error = Some("unparseable generateContent body".into());
        return false;
    }
    true
}

/// Reads `alt=sse` events: each is a whole `GenerateContentResponse`; calls arrive complete.
#[derive(Debug, Default)]
pub struct GeminiStream {
    next_index: u32,
}

impl GeminiStream {
    pub(super) fn on_event(
        &mut self,
        ev: &EventFields<'_>,
        facts: &mut ResponseFacts,
    ) -> EventVerdict {
        if !ev.has_data {
            return EventVerdict::Forward;
        }
        let Ok(r) = serde_json::from_str::<GenerateResponse<'_>>(&ev.data) else {
            return EventVerdict::Unreadable;
        };
        let before = facts.tool_calls.len();
        read_response(r, &mut self.next_index, facts);
        if facts.tool_calls.len() > before {
            return EventVerdict::WholeBatch;
        }
        EventVerdict::Forward
    }
}

/// Replaces `functionCall` parts with one text part, in a response object or in each
/// element of a streamed JSON array.
pub(super) fn refuse(v: &mut serde_json::Value, text: &str) {
    match v {
        serde_json::Value::Array(items) => {
            let mut first = true;
            for item in items.iter_mut() {
                if refuse_one(item, if first { text } else { "" }) {
                    first = false;
                }
            }
        }
        other => {
            refuse_one(other, text);
        }
    }
}

fn refuse_one(v: &mut serde_json::Value, text: &str) -> bool {
    let Some(parts) = v
        .pointer_mut("/candidates/0/content/parts")
        .and_then(|p| p.as_array_mut())
    else {
        return false;
    };
    let had_calls = parts.iter().any(|p| p.get("functionCall").is_some());
    if had_calls {
        parts.retain(|p| p.get("functionCall").is_none());
        if !text.is_empty() {
            parts.push(serde_json::json!({ "text": text }));
        }
    }
    had_calls
}

/// The SSE event that replaces a refused `functionCall` event: the same response with its
/// calls replaced by `text`, keeping usage and finish reason, and the event's line ending.
pub(super) fn refusal_event(original: &[u8], text: &str) -> String {
    let raw = String::from_utf8_lossy(original);
    let terminator = if raw.ends_with("\r\n\r\n") {
        "\r\n\r\n"
    } else {
        "\n\n"
    };
    let data = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n");
    let mut v: serde_json::Value =
        serde_json::from_str(&data).unwrap_or_else(|_| serde_json::json!({}));
    if !refuse_one(&mut v, text) {
        v = serde_json::json!({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
            "finishReason": "STOP", "index": 0}]});
    }
    format!("data: {v}{terminator}")
}

/// `{"error":{"code","message","status"}}`, as google-genai parses it.
pub fn error_body(status: u16, message: &str, kind: ErrorKind) -> String {
    let status_name = match kind {
        ErrorKind::InvalidRequest | ErrorKind::TooLarge | ErrorKind::HeadersTooLarge => {
            "INVALID_ARGUMENT"
        }
        ErrorKind::NotFound => "NOT_FOUND",
        ErrorKind::Unauthenticated => "UNAUTHENTICATED",
        ErrorKind::PermissionDenied => "PERMISSION_DENIED",
        ErrorKind::RateLimited | ErrorKind::PaymentRequired => "RESOURCE_EXHAUSTED",
        ErrorKind::Upstream => "UNAVAILABLE",
        ErrorKind::Unavailable => "UNAVAILABLE",
        ErrorKind::Internal => "INTERNAL",
    };
    format!(
        r#"{{"error":{{"code":{status},"message":{},"status":"{status_name}"}}}}"#,
        json_string(message)
    )
}
