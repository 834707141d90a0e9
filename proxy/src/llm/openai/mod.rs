//! OpenAI wire format: Chat Completions and Responses, JSON and SSE.

mod chat;
mod request;
mod responses;

pub use chat::{ChatStream, read_chat_json};
pub use request::{inspect_chat_request, inspect_responses_request};
pub use responses::{ResponsesStream, read_responses_json};

use serde::Deserialize;

use super::{JStr, json_string};
use crate::error::ErrorKind;
use crate::events::Usage;

/// A complete tool call as both the request history and a chat completion carry it.
#[derive(Deserialize)]
pub(super) struct FullToolCall<'a> {
    #[serde(borrow, default)]
    pub(super) id: Option<JStr<'a>>,
    #[serde(borrow)]
    pub(super) function: FunctionCall<'a>,
}

/// A function name and its arguments, either of which may be a fragment in a stream.
#[derive(Deserialize)]
pub(super) struct FunctionCall<'a> {
    #[serde(borrow, default)]
    pub(super) name: Option<JStr<'a>>,
    #[serde(borrow, default)]
    pub(super) arguments: Option<JStr<'a>>,
}

#[derive(Deserialize, Default)]
pub(super) struct PromptDetails {
    #[serde(default, deserialize_with = "crate::llm::tokens::optional_count")]
    pub(super) cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
pub(super) struct CompletionDetails {
    #[serde(default, deserialize_with = "crate::llm::tokens::optional_count")]
    pub(super) reasoning_tokens: Option<u64>,
}

/// Both OpenAI APIs report usage the same way under different field names.
pub(super) fn openai_usage(
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

// ---------------------------------------------------------------- refusals

/// Replaces the first choice's tool calls with an assistant message.
pub(in crate::llm) fn refuse_chat(v: &mut serde_json::Value, text: &str) {
    if let Some(choice) = v
        .pointer_mut("/choices/0")
        .and_then(serde_json::Value::as_object_mut)
    {
        choice.insert(
            "message".into(),
            serde_json::json!({"role": "assistant", "content": text, "refusal": null}),
        );
        choice.insert("finish_reason".into(), serde_json::json!("stop"));
    }
}

/// Replaces the function calls of a Responses object with one output message.
pub(in crate::llm) fn refuse_response(v: &mut serde_json::Value, text: &str) {
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
        ErrorKind::Unauthenticated => "authentication_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::PaymentRequired => "insufficient_quota",
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
