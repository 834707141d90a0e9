//! OpenAI Chat Completions and Responses, from the public API reference: the
//! `chat.completion` / `chat.completion.chunk` objects, `data: [DONE]`, `stream_options`,
//! and the Responses API's typed streaming events.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::script::{self, Answer};
use super::{MockState, Rendered, knobs, now, preflight, respond};

const BAD_JSON: &str = "We could not parse the JSON body of your request.";

fn error_json(status: u16, message: &str) -> String {
    let (kind, code) = match status {
        429 => ("rate_limit_exceeded", "rate_limit_exceeded"),
        400 => ("invalid_request_error", "invalid_request"),
        _ => ("server_error", "server_error"),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}}).to_string()
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// `GET /v1/models`.
pub async fn models() -> axum::Json<Value> {
    axum::Json(json!({"object": "list", "data": [
        {"id": "gpt-4o-mini", "object": "model", "created": 1_721_172_741u64, "owned_by": "system"}
    ]}))
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(state): State<MockState>, headers: HeaderMap, body: Bytes) -> Response {
    let k = knobs(&state, &headers);
    let (k, req) = match preflight(&state, k, &body, error_json, BAD_JSON).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let model = req["model"].as_str().unwrap_or("gpt-4o-mini").to_owned();
    let system = req
        .pointer("/messages/0/content")
        .and_then(Value::as_str)
        .unwrap_or("");
    let user = req
        .pointer("/messages/1/content")
        .and_then(Value::as_str)
        .unwrap_or("");
    if let Some(text) = script::quarantine_reply(system, user) {
        let body = json!({"id": "chatcmpl-quarantine", "object": "chat.completion", "created": now(&headers),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
        return respond(
            &state,
            k,
            Rendered::Json(StatusCode::OK, body.to_string()),
            1,
        )
        .await;
    }
    let declared = script::names_at(&req, "/tools", "/function/name");
    let last_tool = req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .filter(|m| m["role"] == "tool")
        .map(|m| &m["content"]);
    let answer = script::answer(&k, &declared, last_tool);
    let prompt = script::input_tokens(&body);
    let out = answer.output_tokens();
    let usage = json!({
        "prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0}
    });
    let id = "chatcmpl-mock";
    let created = now(&headers);
    if req["stream"] != true {
        let (message, finish) = match &answer {
            Answer::Text(words) => (
                json!({"role": "assistant", "content": words.concat(), "refusal": null}),
                "stop",
            ),
            Answer::Tools(calls) => (
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": calls.iter().map(|c| json!({
                    "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}
                })).collect::<Vec<_>>()}),
                "tool_calls",
            ),
        };
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage, "system_fingerprint": "fp_mock"
        });
        return respond(
            &state,
            k,
            Rendered::Json(StatusCode::OK, body.to_string()),
            out,
        )
        .await;
    }
    let chunk = |delta: Value, finish: Value| {
        sse(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        }))
    };
    let mut events = Vec::new();
    let finish = match &answer {
        Answer::Text(words) => {
            events.push(chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                Value::Null,
            ));
            for d in script::deltas(words, k.tokens_per_chunk) {
                events.push(chunk(json!({"content": d}), Value::Null));
            }
            "stop"
        }
        Answer::Tools(calls) => {
            for (n, c) in calls.iter().enumerate() {
                let i = if k.shared_index { 0 } else { n };
                let first = json!({"tool_calls": [{"index": i, "id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": ""}}]});
                let first = if n == 0 {
                    let mut f = first;
                    f["role"] = json!("assistant");
                    f["content"] = Value::Null;
                    f
                } else {
                    first
                };
                events.push(chunk(first, Value::Null));
                let args: Vec<char> = c.arguments.chars().collect();
                // Small pieces like the real API; large arguments in 64 KiB pieces.
                let piece_len = if args.len() > 65_536 { 65_536 } else { 8 };
                for piece in args.chunks(piece_len) {
                    let s: String = piece.iter().collect();
                    events.push(chunk(
                        json!({"tool_calls": [{"index": i, "function": {"arguments": s}}]}),
                        Value::Null,
                    ));
                }
            }
            "tool_calls"
        }
    };
    events.push(chunk(json!({}), json!(finish)));
    if req["stream_options"]["include_usage"] == true {
        events.push(sse(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock", "choices": [], "usage": usage
        })));
    }
    events.push("data: [DONE]\n\n".into());
    let error_event = sse(
        &json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}),
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

/// `POST /v1/responses`.
pub async fn responses(
    State(state): State<MockState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let k = knobs(&state, &headers);
    let (k, req) = match preflight(&state, k, &body, error_json, BAD_JSON).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let model = req["model"].as_str().unwrap_or("gpt-4o-mini").to_owned();
    let declared = script::names_at(&req, "/tools", "/name");
    let last_tool = req["input"]
        .as_array()
        .and_then(|m| m.last())
        .filter(|m| m["type"] == "function_call_output")
        .map(|m| &m["output"]);
    let answer = script::answer(&k, &declared, last_tool);
    let prompt = script::input_tokens(&body);
    let out = answer.output_tokens();
    let usage = json!({
        "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + out
    });
    let items: Vec<Value> = match &answer {
        Answer::Text(words) => vec![json!({
            "type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": words.concat(), "annotations": []}]
        })],
        Answer::Tools(calls) => calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "type": "function_call", "id": format!("fc_mock_{i}"), "call_id": c.id,
                    "name": c.name, "arguments": c.arguments, "status": "completed"
                })
            })
            .collect(),
    };
    let created_at = now(&headers);
    let response = |status: &str, output: Vec<Value>, usage: Value| {
        json!({
            "id": "resp_mock", "object": "response", "created_at": created_at, "status": status,
            "model": model, "output": output, "parallel_tool_calls": true, "tool_choice": "auto",
            "tools": [], "usage": usage, "error": null, "incomplete_details": null,
            "instructions": null, "metadata": {}, "temperature": 1.0, "top_p": 1.0, "text": {"format": {"type": "text"}}
        })
    };
    if req["stream"] != true {
        let body = response("completed", items, usage);
        return respond(
            &state,
            k,
            Rendered::Json(StatusCode::OK, body.to_string()),
            out,
        )
        .await;
    }
    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut ev = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        events.push(format!("event: {kind}\ndata: {data}\n\n"));
    };
    ev(
        "response.created",
        json!({"response": response("in_progress", vec![], Value::Null)}),
    );
    ev(
        "response.in_progress",
        json!({"response": response("in_progress", vec![], Value::Null)}),
    );
    match &answer {
        Answer::Text(words) => {
            let text = words.concat();
            ev(
                "response.output_item.added",
                json!({"output_index": 0, "item": {
                "type": "message", "id": "msg_mock", "status": "in_progress", "role": "assistant", "content": []}}),
            );
            ev(
                "response.content_part.added",
                json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            for d in script::deltas(words, k.tokens_per_chunk) {
                ev(
                    "response.output_text.delta",
                    json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": d, "logprobs": []}),
                );
            }
            ev(
                "response.output_text.done",
                json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            );
            ev(
                "response.content_part.done",
                json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": text, "annotations": []}}),
            );
            ev(
                "response.output_item.done",
                json!({"output_index": 0, "item": items[0]}),
            );
        }
        Answer::Tools(calls) => {
            for (i, c) in calls.iter().enumerate() {
                let item_id = format!("fc_mock_{i}");
                ev(
                    "response.output_item.added",
                    json!({"output_index": i, "item": {
                    "type": "function_call", "id": item_id, "call_id": c.id, "name": c.name, "arguments": "", "status": "in_progress"}}),
                );
                let args: Vec<char> = c.arguments.chars().collect();
                for piece in args.chunks(8) {
                    let s: String = piece.iter().collect();
                    ev(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": i, "delta": s}),
                    );
                }
                ev(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": i, "arguments": c.arguments}),
                );
                ev(
                    "response.output_item.done",
                    json!({"output_index": i, "item": items[i]}),
                );
            }
        }
    }
    ev(
        "response.completed",
        json!({"response": response("completed", items.clone(), usage)}),
    );
    let error_event = format!(
        "event: error\ndata: {}\n\n",
        json!({"type": "error", "code": "server_error", "message": "The server had an error while processing your request.", "param": null, "sequence_number": seq})
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
