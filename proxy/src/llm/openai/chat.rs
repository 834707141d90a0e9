//! Chat Completions responses: the JSON body and the chunk stream.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{CompletionDetails, FullToolCall, FunctionCall, PromptDetails, openai_usage};
use crate::events::{ResponseFacts, ToolCall, Usage};
use crate::llm::{EventVerdict, JStr, Needles, Raw, null_follows, owned};
use crate::sse::EventFields;

#[derive(Deserialize, Default)]
struct ChatUsage {
    #[serde(default, deserialize_with = "crate::llm::tokens::count")]
    prompt_tokens: u64,
    #[serde(default, deserialize_with = "crate::llm::tokens::count")]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
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

/// Reads a non-streaming chat completion; false when it cannot be read.
pub fn read_chat_json(body: &[u8], facts: &mut ResponseFacts) -> bool {
    let Ok(c) = crate::llm::parse_json::<ChatCompletion<'_>>(body) else {
        facts.error = Some("unparseable chat completion body".into());
        return false;
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
                id: owned(call.id),
                name: owned(call.function.name),
                arguments: owned(call.function.arguments),
                index: u32::try_from(i).unwrap_or(u32::MAX),
                malformed: None,
            });
        }
    }
    facts.completed = true;
    true
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

/// The keys that make a chunk worth parsing once the model is known: a tool call, usage, an
/// error, or a finish reason that is not null (`FINISH_REASON`, its index).
static KEYS: Needles = Needles::new(&[
    "\"tool_calls\"",
    "\"usage\"",
    "\"error\"",
    "\"finish_reason\"",
]);
const FINISH_REASON: usize = 3;

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
    pub(in crate::llm) fn refusal_events(&self, text: &str, facts: &ResponseFacts) -> String {
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

    pub(in crate::llm) fn on_event(
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
            && KEYS.every_match(data, |key, rest| key == FINISH_REASON && null_follows(rest))
        {
            return EventVerdict::Forward;
        }
        let Ok(chunk) = serde_json::from_str::<ChatChunk<'_>>(&ev.data) else {
            return EventVerdict::Unreadable;
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
                    } else if *call.id != *id {
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
