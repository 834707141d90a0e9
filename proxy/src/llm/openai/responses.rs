//! Responses API responses: the JSON object and the typed event stream.

use serde::Deserialize;

use super::{CompletionDetails, PromptDetails, openai_usage};
use crate::events::{ResponseFacts, ToolCall, Usage};
use crate::llm::{EventVerdict, JStr, owned};
use crate::sse::EventFields;

#[derive(Deserialize, Default)]
struct ResponsesUsage {
    #[serde(default, deserialize_with = "crate::llm::tokens::count")]
    input_tokens: u64,
    #[serde(default, deserialize_with = "crate::llm::tokens::count")]
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
            id: owned(self.call_id),
            name: owned(self.name),
            arguments: owned(self.arguments),
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

/// Reads a non-streaming Responses API body; false when it cannot be read.
pub fn read_responses_json(body: &[u8], facts: &mut ResponseFacts) -> bool {
    match crate::llm::parse_json::<ResponseObject<'_>>(body) {
        Ok(r) => {
            read_response_object(r, facts, true);
            facts.completed = true;
            true
        }
        Err(_) => {
            facts.error = Some("unparseable response body".into());
            false
        }
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

/// Reads Responses API stream events; a call is complete at `response.output_item.done`,
/// and a batch at `response.completed`.
#[derive(Debug, Default)]
pub struct ResponsesStream {
    /// The output index of the first function call: a refusal's message takes it.
    first_call_index: Option<u32>,
}

impl ResponsesStream {
    pub(in crate::llm) fn on_event(
        &mut self,
        ev: &EventFields<'_>,
        facts: &mut ResponseFacts,
    ) -> EventVerdict {
        if !ev.has_data {
            return EventVerdict::Forward;
        }
        match ev.event {
            // Argument fragments belong to the function call being held (or streamed).
            Some(
                "response.function_call_arguments.delta" | "response.function_call_arguments.done",
            ) => {
                return EventVerdict::ToolCall { name: None };
            }
            // Only these events carry calls, usage or errors; the rest are not parsed.
            Some(
                "response.output_item.added"
                | "response.output_item.done"
                | "response.completed"
                | "response.incomplete"
                | "response.failed"
                | "error",
            )
            | None => {}
            Some(_) => return EventVerdict::Forward,
        }
        let Ok(e) = serde_json::from_str::<ResponsesEvent<'_>>(&ev.data) else {
            return EventVerdict::Unreadable;
        };
        match e.kind.as_ref() {
            "response.output_item.added" => {
                if let Some(item) = e.item
                    && item.kind.as_deref() == Some("function_call")
                {
                    self.first_call_index
                        .get_or_insert(e.output_index.unwrap_or(0));
                    return EventVerdict::ToolCall {
                        name: Some(item.name.map(|n| n.into_owned()).unwrap_or_default()),
                    };
                }
            }
            "response.output_item.done" => {
                if let Some(call) = e
                    .item
                    .and_then(|i| i.into_call(e.output_index.unwrap_or(0)))
                {
                    facts.tool_calls.push(call);
                    return EventVerdict::ToolCall { name: None };
                }
            }
            "response.completed" | "response.incomplete" => {
                if let Some(r) = e.response {
                    read_response_object(r, facts, false);
                }
                facts.completed = true;
                if self.first_call_index.is_some() {
                    return EventVerdict::BatchEnd;
                }
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

    /// The events of one output message carrying `text`, at the first call's output index,
    /// and the closing `response.completed` rewritten so its output holds that message
    /// instead of the refused function calls.
    pub(in crate::llm) fn refusal_events(&self, text: &str, closing: &[u8]) -> String {
        let index = self.first_call_index.unwrap_or(0);
        let id = "msg_sluice_refusal";
        let part =
            |t: &str| serde_json::json!({"type": "output_text", "text": t, "annotations": []});
        let message = |status: &str, content: serde_json::Value| serde_json::json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content});
        let ev = |kind: &str, mut data: serde_json::Value| {
            data["type"] = serde_json::json!(kind);
            data["sequence_number"] = serde_json::json!(0);
            format!("event: {kind}\ndata: {data}\n\n")
        };
        let raw = String::from_utf8_lossy(closing);
        let data: String = raw
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        let mut completed: serde_json::Value = serde_json::from_str(&data)
            .unwrap_or_else(|_| serde_json::json!({"type": "response.completed", "response": {}}));
        if let Some(r) = completed.get_mut("response") {
            super::refuse_response(r, text);
        }
        [
            ev("response.output_item.added", serde_json::json!({"output_index": index, "item": message("in_progress", serde_json::json!([]))})),
            ev("response.content_part.added", serde_json::json!({"item_id": id, "output_index": index, "content_index": 0, "part": part("")})),
            ev("response.output_text.delta", serde_json::json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []})),
            ev("response.output_text.done", serde_json::json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []})),
            ev("response.content_part.done", serde_json::json!({"item_id": id, "output_index": index, "content_index": 0, "part": part(text)})),
            ev("response.output_item.done", serde_json::json!({"output_index": index, "item": message("completed", serde_json::json!([part(text)]))})),
            format!("event: response.completed\ndata: {completed}\n\n"),
        ]
        .concat()
    }
}
