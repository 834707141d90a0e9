//! Anthropic Messages wire format, JSON and SSE.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    EventVerdict, InspectedRequest, JStr, Named, Needle, Raw, RawContent, contains, json_string,
    malformed, names, owned,
};
use crate::error::{ErrorKind, SluiceError};
use crate::events::{RequestFacts, ResponseFacts, Speaker, ToolCall, ToolResult, Usage};
use crate::sse::EventFields;

#[derive(Deserialize)]
struct MessagesRequest<'a> {
    #[serde(borrow)]
    model: Option<JStr<'a>>,
    #[serde(default)]
    stream: bool,
    #[serde(borrow, default)]
    messages: Vec<Message<'a>>,
    #[serde(borrow, default)]
    system: Option<RawContent<'a>>,
    #[serde(borrow, default)]
    tools: Vec<Named<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    /// A string or a list of blocks; kept raw and read as blocks only when it is a list
    /// (an untagged enum would lose the borrowed raw values).
    #[serde(borrow, default)]
    content: Option<Raw<'a>>,
    #[serde(borrow, default)]
    role: Option<JStr<'a>>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<JStr<'a>>,
    #[serde(borrow, default)]
    id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    input: Option<Raw<'a>>,
    #[serde(borrow, default)]
    tool_use_id: Option<JStr<'a>>,
    #[serde(borrow, default)]
    content: Option<RawContent<'a>>,
    #[serde(borrow, default)]
    text: Option<RawContent<'a>>,
}

/// Reads a Messages request.
pub fn inspect_request(body: &[u8]) -> Result<InspectedRequest, SluiceError> {
    let req: MessagesRequest<'_> = crate::llm::parse_json(body).map_err(|e| malformed(&e))?;
    let mut facts = RequestFacts {
        model: req.model.map(|m| m.into_owned()),
        stream: req.stream,
        tools_declared: names(req.tools),
        ..RequestFacts::default()
    };
    if let Some(span) = req.system.as_ref().and_then(|c| c.span(body)) {
        facts.texts.push((Speaker::System, span));
    }
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for msg in req.messages {
        let from_user = msg.role.as_deref() == Some("user");
        if from_user
            && let Some(raw) = msg.content
            && !raw.get().contains("\"tool_result\"")
        {
            facts.last_user = RawContent(raw).span(body);
        }
        if from_user
            && let Some(raw) = msg.content
            && !raw.get().trim_start().starts_with('[')
            && let Some(span) = RawContent(raw).span(body)
        {
            facts.texts.push((Speaker::User, span));
        }
        let Some(raw) = msg
            .content
            .filter(|r| r.get().trim_start().starts_with('['))
        else {
            continue;
        };
        let blocks: Vec<Block<'_>> = serde_json::from_str(raw.get()).map_err(|e| malformed(&e))?;
        for (i, b) in blocks.into_iter().enumerate() {
            match b.kind.as_deref() {
                Some("tool_use") => {
                    let id = owned(b.id);
                    let name = owned(b.name);
                    names.insert(id.clone(), name.clone());
                    facts.prior_tool_calls.push(ToolCall {
                        id,
                        name,
                        arguments: b.input.map(|r| r.get().to_owned()).unwrap_or_default(),
                        index: u32::try_from(i).unwrap_or(u32::MAX),
                        malformed: None,
                    });
                }
                // A user turn's own text blocks (its tool_result blocks are results).
                Some("text") if from_user => {
                    if let Some(span) = b.text.as_ref().and_then(|c| c.span(body)) {
                        facts.texts.push((Speaker::User, span));
                    }
                }
                Some("tool_result") => {
                    let call_id = owned(b.tool_use_id);
                    facts.tool_results.push(ToolResult {
                        name: names.get(&call_id).cloned(),
                        call_id,
                        content_bytes: b.content.as_ref().map_or(0, |c| c.len()),
                        span: b.content.as_ref().and_then(|c| c.span(body)),
                    });
                }
                _ => {}
            }
        }
    }
    Ok(InspectedRequest {
        facts,
        rewritten: None,
    })
}

#[derive(Deserialize, Default)]
struct AnthropicUsage {
    #[serde(default, deserialize_with = "crate::llm::tokens::optional_count")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "crate::llm::tokens::optional_count")]
    output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "crate::llm::tokens::optional_count")]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "crate::llm::tokens::optional_count")]
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Merges into `into`: Anthropic's stream reports input at `message_start` and the
    /// cumulative output at `message_delta`; fields absent from an event keep their value.
    fn merge(&self, into: &mut Usage) {
        if let Some(v) = self.input_tokens {
            into.input_tokens = v;
        }
        if let Some(v) = self.output_tokens {
            into.output_tokens = v;
        }
        if let Some(v) = self.cache_creation_input_tokens {
            into.cache_write_tokens = v;
        }
        if let Some(v) = self.cache_read_input_tokens {
            into.cache_read_tokens = v;
        }
    }
}

#[derive(Deserialize)]
struct MessageObject<'a> {
    #[serde(borrow, default)]
    model: Option<JStr<'a>>,
    #[serde(borrow, default)]
    content: Vec<Block<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<JStr<'a>>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

/// Reads a non-streaming message; false when it cannot be read.
pub fn read_json(body: &[u8], facts: &mut ResponseFacts) -> bool {
    let Ok(m) = crate::llm::parse_json::<MessageObject<'_>>(body) else {
        facts.error = Some("unparseable message body".into());
        return false;
    };
    facts.model = m.model.map(|s| s.into_owned());
    facts.finish_reason = m.stop_reason.map(|s| s.into_owned());
    if let Some(u) = m.usage {
        let mut usage = Usage::default();
        u.merge(&mut usage);
        facts.usage = Some(usage);
    }
    for (i, b) in m.content.into_iter().enumerate() {
        if b.kind.as_deref() == Some("tool_use") {
            facts.tool_calls.push(ToolCall {
                id: owned(b.id),
                name: owned(b.name),
                arguments: b.input.map(|r| r.get().to_owned()).unwrap_or_default(),
                index: u32::try_from(i).unwrap_or(u32::MAX),
                malformed: None,
            });
        }
    }
    facts.completed = true;
    true
}

#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: JStr<'a>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    message: Option<MessageObject<'a>>,
    #[serde(borrow, default)]
    content_block: Option<Block<'a>>,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    partial_json: Option<JStr<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<JStr<'a>>,
}

static INPUT_JSON_DELTA: Needle = Needle::new("\"input_json_delta\"");

/// Assembles `tool_use` blocks from `input_json_delta`s; a call completes at its
/// `content_block_stop`.
#[derive(Debug, Default)]
pub struct MessagesStream {
    open: BTreeMap<u32, (ToolCall, bool)>,
    /// The content-block index of the first tool call: a refusal's text block takes it.
    first_tool_index: Option<u32>,
}

impl MessagesStream {
    /// A text block at the first tool call's index and a `message_delta` ending the turn.
    pub(super) fn refusal_events(&self, text: &str, facts: &ResponseFacts) -> String {
        let index = self.first_tool_index.unwrap_or(0);
        let output = facts.usage.map_or(0, |u| u.output_tokens);
        let ev = |kind: &str, data: serde_json::Value| format!("event: {kind}\ndata: {data}\n\n");
        [
            ev("content_block_start", serde_json::json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "text", "text": ""}})),
            ev("content_block_delta", serde_json::json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": text}})),
            ev("content_block_stop", serde_json::json!({"type": "content_block_stop", "index": index})),
            ev("message_delta", serde_json::json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output}})),
        ]
        .concat()
    }

    pub(super) fn on_event(
        &mut self,
        ev: &EventFields<'_>,
        facts: &mut ResponseFacts,
    ) -> EventVerdict {
        if !ev.has_data {
            return EventVerdict::Forward;
        }
        // Text and thinking deltas and pings carry nothing Sluice reads: not parsed.
        match ev.event {
            Some("ping") => return EventVerdict::Forward,
            Some("content_block_delta") if !contains(&ev.data, &INPUT_JSON_DELTA) => {
                return EventVerdict::Forward;
            }
            _ => {}
        }
        let Ok(e) = serde_json::from_str::<StreamEvent<'_>>(&ev.data) else {
            return EventVerdict::Unreadable;
        };
        let mut verdict = EventVerdict::Forward;
        match e.kind.as_ref() {
            "message_start" => {
                if let Some(m) = e.message {
                    facts.model = m.model.map(|s| s.into_owned());
                    if let Some(u) = m.usage {
                        u.merge(facts.usage.get_or_insert_with(Usage::default));
                    }
                }
            }
            "content_block_start" => {
                if let (Some(index), Some(b)) = (e.index, e.content_block)
                    && b.kind.as_deref() == Some("tool_use")
                {
                    // The start block carries `input: {}`; deltas replace it when present.
                    let initial = b.input.map(|r| r.get().to_owned()).unwrap_or_default();
                    let call = ToolCall {
                        id: owned(b.id),
                        name: owned(b.name),
                        arguments: initial,
                        index,
                        malformed: None,
                    };
                    self.first_tool_index.get_or_insert(index);
                    verdict = EventVerdict::ToolCall {
                        name: Some(call.name.clone()),
                    };
                    self.open.insert(index, (call, false));
                }
            }
            "content_block_delta" => {
                if let (Some(index), Some(d)) = (e.index, e.delta)
                    && let (Some((call, seen_delta)), Some(part)) =
                        (self.open.get_mut(&index), d.partial_json)
                {
                    if !*seen_delta {
                        call.arguments.clear();
                        *seen_delta = true;
                    }
                    call.arguments.push_str(&part);
                    verdict = EventVerdict::ToolCall { name: None };
                }
            }
            "content_block_stop" => {
                if let Some((call, _)) = e.index.and_then(|i| self.open.remove(&i)) {
                    facts.tool_calls.push(call);
                    verdict = EventVerdict::ToolCall { name: None };
                }
            }
            "message_delta" => {
                if let Some(reason) = e.delta.and_then(|d| d.stop_reason) {
                    facts.finish_reason = Some(reason.into_owned());
                }
                if let Some(u) = e.usage {
                    u.merge(facts.usage.get_or_insert_with(Usage::default));
                }
                if self.first_tool_index.is_some() {
                    verdict = EventVerdict::BatchEnd;
                }
            }
            "message_stop" => facts.completed = true,
            "error" => {
                facts.error = Some("upstream sent an error event".into());
                facts.completed = true;
            }
            _ => {}
        }
        verdict
    }
}

/// Replaces `tool_use` blocks with one text block and ends the turn. A body that is not
/// an object is left alone (indexing into it would panic).
pub(super) fn refuse(v: &mut serde_json::Value, text: &str) {
    let Some(message) = v.as_object_mut() else {
        return;
    };
    if let Some(content) = message.get_mut("content").and_then(|c| c.as_array_mut()) {
        content.retain(|b| b["type"] != "tool_use");
        content.push(serde_json::json!({"type": "text", "text": text}));
    }
    message.insert("stop_reason".into(), serde_json::json!("end_turn"));
}

/// `{"type":"error","error":{"type","message"}}`, as the Anthropic SDKs parse it.
pub fn error_body(message: &str, kind: ErrorKind) -> String {
    let kind = match kind {
        ErrorKind::InvalidRequest | ErrorKind::HeadersTooLarge => "invalid_request_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::Unauthenticated => "authentication_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::PaymentRequired => "billing_error",
        ErrorKind::TooLarge => "request_too_large",
        ErrorKind::Upstream | ErrorKind::Internal => "api_error",
        ErrorKind::Unavailable => "overloaded_error",
    };
    format!(
        r#"{{"type":"error","error":{{"type":"{kind}","message":{}}}}}"#,
        json_string(message)
    )
}
