#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Tool-call assembly and usage extraction, the two readings every response gets.
//!
//! - **Assembly**: a streamed tool call whose arguments (1.2 KB of JSON) arrive in 60
//!   fragments, for OpenAI Chat Completions (`tool_calls[].function.arguments` deltas) and
//!   Anthropic Messages (`input_json_delta` events), and three OpenAI calls in parallel.
//!   The events are framed beforehand; what is timed is what the proxy does per event once
//!   framed: reading its fields, then the provider's reader.
//! - **Usage**: a ~1 KB non-streaming answer of each API (the same 110 words of text), read
//!   whole for its usage, model, finish reason and tool calls; and the final usage-only
//!   event of an OpenAI stream.
//!
//! The bodies follow the providers' documented wire formats; each bench checks once,
//! outside the timing, that the reader got the call or the usage right.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_proxy::events::{Api, ResponseFacts};
use sluice_proxy::llm::ResponseInspector;
use sluice_proxy::sse::{Framed, SseFramer, parse_event};
use std::hint::black_box;

/// The arguments every streamed call carries: 1.2 KB of JSON, as a model writes it.
fn arguments() -> String {
    let body = "Hi Bob, here are the quarterly numbers you asked for. ".repeat(18);
    serde_json::json!({
        "to": "bob@example.com",
        "cc": ["carol@example.com", "dave@example.com"],
        "subject": "Quarterly numbers",
        "body": body,
    })
    .to_string()
}

/// `s` cut into `n` fragments of about equal length (on character boundaries).
fn fragments(s: &str, n: usize) -> Vec<&str> {
    let step = s.len().div_ceil(n);
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < s.len() {
        let mut end = (start + step).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(&s[start..end]);
        start = end;
    }
    out
}

/// A JSON string literal holding `s`.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// OpenAI Chat Completions: `calls` tool calls whose argument fragments interleave.
fn openai_stream(calls: usize, args: &str) -> Bytes {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let mut s = String::new();
    for i in 0..calls {
        s.push_str(&chunk(
            &format!(
                "{{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{{\"index\":{i},\"id\":\"call_{i}\",\"type\":\"function\",\"function\":{{\"name\":\"send_email\",\"arguments\":\"\"}}}}]}}"
            ),
            "null",
        ));
    }
    for piece in fragments(args, 60) {
        for i in 0..calls {
            s.push_str(&chunk(
                &format!(
                    "{{\"tool_calls\":[{{\"index\":{i},\"function\":{{\"arguments\":{}}}}}]}}",
                    quoted(piece)
                ),
                "null",
            ));
        }
    }
    s.push_str(&chunk("{}", "\"tool_calls\""));
    s.push_str(&usage_chunk());
    s.push_str("data: [DONE]\n\n");
    Bytes::from(s)
}

/// The usage-only chunk that ends an OpenAI stream asked for with `include_usage`.
fn usage_chunk() -> String {
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":27,\"completion_tokens\":350,\"total_tokens\":377,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n".to_owned()
}

/// Anthropic Messages: one `tool_use` block whose input arrives as `input_json_delta`s.
fn anthropic_stream(args: &str) -> Bytes {
    let mut s = String::new();
    let mut event = |name: &str, data: String| {
        s.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    event(
        "message_start",
        "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":27,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}".to_owned(),
    );
    event(
        "content_block_start",
        "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"send_email\",\"input\":{}}}".to_owned(),
    );
    for piece in fragments(args, 60) {
        event(
            "content_block_delta",
            format!(
                "{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":{}}}}}",
                quoted(piece)
            ),
        );
    }
    event(
        "content_block_stop",
        "{\"type\":\"content_block_stop\",\"index\":0}".to_owned(),
    );
    event(
        "message_delta",
        "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":350}}".to_owned(),
    );
    event("message_stop", "{\"type\":\"message_stop\"}".to_owned());
    Bytes::from(s)
}

/// The stream's events, framed as the proxy frames them.
fn framed(stream: &Bytes) -> Vec<Bytes> {
    let mut f = SseFramer::new(1 << 20);
    let mut out = Framed::default();
    for chunk in stream.chunks(1400) {
        f.push(&Bytes::copy_from_slice(chunk), &mut out).unwrap();
    }
    out.events
}

/// Reads framed events as the proxy does; the facts at the end.
fn read_events(api: Api, events: &[Bytes]) -> ResponseFacts {
    let mut inspector = ResponseInspector::new(api, false);
    let mut facts = ResponseFacts::default();
    for ev in events {
        if let Ok(fields) = parse_event(ev) {
            inspector.on_event(&fields, &mut facts);
        }
    }
    inspector.finish(&mut facts);
    facts
}

/// The same 110 words of answer in every non-streaming body.
fn answer_text() -> String {
    "Sluice is the gateway in front of this provider and it read every token of this answer "
        .repeat(7)
        .split(' ')
        .take(110)
        .collect::<Vec<_>>()
        .join(" ")
}

fn json_bodies() -> Vec<(&'static str, Api, String)> {
    let text = quoted(&answer_text());
    vec![
        (
            "openai_chat",
            Api::ChatCompletions,
            format!(
                "{{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1796542594,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{text},\"refusal\":null}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":27,\"completion_tokens\":110,\"total_tokens\":137,\"prompt_tokens_details\":{{\"cached_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0}}}},\"system_fingerprint\":\"fp_1\"}}"
            ),
        ),
        (
            "openai_responses",
            Api::Responses,
            format!(
                "{{\"id\":\"resp_1\",\"object\":\"response\",\"created_at\":1796542594,\"status\":\"completed\",\"model\":\"gpt-4o-mini\",\"output\":[{{\"type\":\"message\",\"id\":\"msg_1\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{{\"type\":\"output_text\",\"text\":{text},\"annotations\":[]}}]}}],\"usage\":{{\"input_tokens\":27,\"input_tokens_details\":{{\"cached_tokens\":0}},\"output_tokens\":110,\"output_tokens_details\":{{\"reasoning_tokens\":0}},\"total_tokens\":137}}}}"
            ),
        ),
        (
            "anthropic_messages",
            Api::Messages,
            format!(
                "{{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[{{\"type\":\"text\",\"text\":{text}}}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{{\"input_tokens\":27,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":110}}}}"
            ),
        ),
        (
            "gemini_generate_content",
            Api::GenerateContent,
            format!(
                "{{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":{text}}}],\"role\":\"model\"}},\"finishReason\":\"STOP\",\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":27,\"candidatesTokenCount\":110,\"totalTokenCount\":137}},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r1\"}}"
            ),
        ),
    ]
}

fn assembly(c: &mut Criterion) {
    let args = arguments();
    let cases = [
        (
            "openai_chat_one_call_60_fragments",
            Api::ChatCompletions,
            openai_stream(1, &args),
            1,
        ),
        (
            "openai_chat_three_parallel_calls",
            Api::ChatCompletions,
            openai_stream(3, &args),
            3,
        ),
        (
            "anthropic_messages_one_call_60_fragments",
            Api::Messages,
            anthropic_stream(&args),
            1,
        ),
    ];
    let mut g = c.benchmark_group("assembly");
    for (name, api, stream, calls) in cases {
        let events = framed(&stream);
        let facts = read_events(api, &events);
        assert_eq!(facts.tool_calls.len(), calls, "{name}");
        for call in &facts.tool_calls {
            assert_eq!(call.name, "send_email", "{name}");
            assert_eq!(call.arguments, args, "{name}: the arguments, whole");
        }
        assert_eq!(facts.usage.map(|u| u.output_tokens), Some(350), "{name}");
        g.throughput(Throughput::Bytes(stream.len() as u64));
        g.bench_function(name, |b| b.iter(|| black_box(read_events(api, &events))));
    }
    g.finish();
}

fn usage(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage");
    for (name, api, body) in json_bodies() {
        let read = |body: &[u8]| {
            let mut facts = ResponseFacts::default();
            let ok = ResponseInspector::new(api, false).on_json(body, &mut facts);
            (ok, facts)
        };
        let (ok, facts) = read(body.as_bytes());
        assert!(ok, "{name}: {:?}", facts.error);
        let u = facts.usage.expect(name);
        assert_eq!((u.input_tokens, u.output_tokens), (27, 110), "{name}");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("{name}_json_{}_bytes", body.len()), |b| {
            b.iter(|| black_box(read(black_box(body.as_bytes()))))
        });
    }
    let last = framed(&Bytes::from(usage_chunk()));
    let facts = read_events(Api::ChatCompletions, &last);
    assert_eq!(facts.usage.map(|u| u.input_tokens), Some(27));
    g.throughput(Throughput::Elements(1));
    g.bench_function("openai_chat_stream_final_usage_event", |b| {
        b.iter(|| black_box(read_events(Api::ChatCompletions, &last)))
    });
    g.finish();
}

criterion_group!(benches, assembly, usage);
criterion_main!(benches);
