//! Anthropic Messages, from the public API reference: the `message` object, and the stream
//! `message_start`, `content_block_start/delta/stop` (`text_delta`, `input_json_delta`),
//! `message_delta`, `message_stop`, `ping` and `error` events.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::script::{self, Answer};
use super::{MockState, Rendered, knobs, preflight, respond};

fn error_json(status: u16, message: &str) -> String {
    let kind = match status {
        400 => "invalid_request_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
}

fn event(kind: &str, data: &Value) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

/// `POST /v1/messages`.
pub async fn messages(State(state): State<MockState>, headers: HeaderMap, body: Bytes) -> Response {
    let k = knobs(&state, &headers);
    let (k, req) = match preflight(&state, k, &body, error_json, "invalid JSON body").await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let model = req["model"]
        .as_str()
        .unwrap_or("claude-sonnet-4-5")
        .to_owned();
    let declared = script::names_at(&req, "/tools", "/name");
    let last_tool = req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .and_then(|c| c.iter().find(|b| b["type"] == "tool_result"))
        .map(|b| &b["content"]);
    let answer = script::answer(&k, &declared, last_tool);
    let prompt = script::input_tokens(&body);
    let out = answer.output_tokens();
    let (content, stop) = match &answer {
        Answer::Text(words) => (vec![json!({"type": "text", "text": words.concat()})], "end_turn"),
        Answer::Tools(calls) => (
            calls
                .iter()
                .map(|c| {
                    let input: Value = serde_json::from_str(&c.arguments).unwrap_or(json!({}));
                    json!({"type": "tool_use", "id": format!("toolu_{}", c.id), "name": c.name, "input": input})
                })
                .collect(),
            "tool_use",
        ),
    };
    if req["stream"] != true {
        let body = json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": prompt, "output_tokens": out,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        });
        return respond(
            &state,
            k,
            Rendered::Json(StatusCode::OK, body.to_string()),
            out,
        )
        .await;
    }
    let mut events = vec![event(
        "message_start",
        &json!({"type": "message_start", "message": {
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": prompt, "output_tokens": 1,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
    )];
    match &answer {
        Answer::Text(words) => {
            events.push(event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ));
            events.push(event("ping", &json!({"type": "ping"})));
            for d in script::deltas(words, k.tokens_per_chunk) {
                events.push(event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": d}}),
                ));
            }
            events.push(event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": 0}),
            ));
        }
        Answer::Tools(calls) => {
            for (i, c) in calls.iter().enumerate() {
                events.push(event("content_block_start", &json!({"type": "content_block_start", "index": i,
                    "content_block": {"type": "tool_use", "id": format!("toolu_{}", c.id), "name": c.name, "input": {}}})));
                let args: Vec<char> = c.arguments.chars().collect();
                for piece in args.chunks(8) {
                    let s: String = piece.iter().collect();
                    events.push(event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": s}}),
                    ));
                }
                events.push(event(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": i}),
                ));
            }
        }
    }
    events.push(event(
        "message_delta",
        &json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": out}}),
    ));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    let error_event = event(
        "error",
        &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    );
    respond(
        &state,
        k,
        Rendered::Sse {
            events,
            error_event,
        },
        out,
    )
    .await
}
