//! Gemini generateContent / streamGenerateContent, from the public API reference:
//! `GenerateContentResponse` with `candidates`, `functionCall` parts, `usageMetadata` and
//! `modelVersion`; `alt=sse` streams whole responses as events separated by `\r\n\r\n`.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::script::{self, Answer};
use super::{MockState, Rendered, knobs, preflight, respond};

fn error_json(status: u16, message: &str) -> String {
    let name = match status {
        400 => "INVALID_ARGUMENT",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let mut v = json!({"error": {"code": status, "message": message, "status": name}});
    if status == 429 {
        v["error"]["details"] =
            json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}]);
    }
    v.to_string()
}

fn sse(v: &Value) -> String {
    format!("data: {v}\r\n\r\n")
}

/// `POST /{version}/models/{model}:{generateContent|streamGenerateContent}`.
pub async fn generate(
    State(state): State<MockState>,
    Path((_version, model_call)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let k = knobs(&state, &headers);
    let Some((model, method)) = model_call.split_once(':') else {
        let r = Rendered::Json(StatusCode::NOT_FOUND, error_json(404, "method not found"));
        return respond(&state, k, r, 0).await;
    };
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => {
            let r = Rendered::Json(StatusCode::NOT_FOUND, error_json(404, "method not found"));
            return respond(&state, k, r, 0).await;
        }
    };
    let (k, req) = match preflight(
        &state,
        k,
        &body,
        error_json,
        "Invalid JSON payload received.",
    )
    .await
    {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let declared: Vec<String> = req["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .flat_map(|t| script::names_at(t, "/functionDeclarations", "/name"))
                .collect()
        })
        .unwrap_or_default();
    let last_tool = req["contents"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|c| c["parts"].as_array())
        .and_then(|p| {
            p.iter()
                .find_map(|part| part.pointer("/functionResponse/response"))
        });
    let answer = script::answer(&k, &declared, last_tool);
    let prompt = script::input_tokens(&body);
    let out = answer.output_tokens();
    let usage = json!({"promptTokenCount": prompt, "candidatesTokenCount": out, "totalTokenCount": prompt + out});
    let candidate = |parts: Vec<Value>, finish: Option<&str>| {
        let mut c = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        c
    };
    let response = |c: Value, usage: Option<&Value>| {
        let mut r =
            json!({"candidates": [c], "modelVersion": model, "responseId": "mock-response"});
        if let Some(u) = usage {
            r["usageMetadata"] = u.clone();
        }
        r
    };
    let call_parts = |calls: &[script::ScriptedCall]| -> Vec<Value> {
        calls
            .iter()
            .map(|c| {
                let args: Value = serde_json::from_str(&c.arguments).unwrap_or(json!({}));
                json!({"functionCall": {"name": c.name, "args": args}})
            })
            .collect()
    };
    if !stream {
        let parts = match &answer {
            Answer::Text(words) => vec![json!({"text": words.concat()})],
            Answer::Tools(calls) => call_parts(calls),
        };
        let body = response(candidate(parts, Some("STOP")), Some(&usage));
        return respond(
            &state,
            k,
            Rendered::Json(StatusCode::OK, body.to_string()),
            out,
        )
        .await;
    }
    let sse_mode = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|p| p == "alt=sse"));
    let mut chunks = Vec::new();
    match &answer {
        Answer::Text(words) => {
            let ds = script::deltas(words, k.tokens_per_chunk);
            let last = ds.len().saturating_sub(1);
            for (i, d) in ds.into_iter().enumerate() {
                let finish = (i == last).then_some("STOP");
                let u = (i == last).then_some(&usage);
                chunks.push(response(candidate(vec![json!({"text": d})], finish), u));
            }
        }
        Answer::Tools(calls) => chunks.push(response(
            candidate(call_parts(calls), Some("STOP")),
            Some(&usage),
        )),
    }
    if !sse_mode {
        // Without alt=sse the API streams one JSON array.
        let body = Value::Array(chunks).to_string();
        return respond(&state, k, Rendered::Json(StatusCode::OK, body), out).await;
    }
    let events = chunks.iter().map(sse).collect();
    let error_event = sse(
        &json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}),
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
