//! Property tests of the response path: a stream delivered in any chunking (every split
//! point, 1-byte chunks, random cuts) reaches the client byte-identical and yields the same
//! tool calls and usage. Recorded transcripts live in `tests/fixtures/`; generated streams
//! put framing look-alikes and multi-byte UTF-8 inside the JSON.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use pingora::http::ResponseHeader;
use proptest::prelude::*;
use sluice_proxy::config::{Environment, compile, parse_toml};
use sluice_proxy::events::ResponseFacts;
use sluice_proxy::phases::ctx::RequestCtx;
use sluice_proxy::phases::response;
use sluice_proxy::route::route;

/// Runs the response phases over `input` cut at `cuts`; returns the bytes sent downstream.
fn pipeline(path: &str, input: &[u8], cuts: &[usize]) -> (Vec<u8>, ResponseFacts) {
    let env = Environment {
        openai_base_url: Some("http://127.0.0.1:1/v1".into()),
        anthropic_base_url: Some("http://127.0.0.1:1".into()),
        gemini_base_url: Some("http://127.0.0.1:1".into()),
        ..Environment::default()
    };
    let config = compile(parse_toml("").unwrap(), &env).unwrap();
    let mut ctx = RequestCtx::new();
    ctx.route = Some(route(&config, &http::Method::POST, path).unwrap());
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("content-type", "text/event-stream")
        .unwrap();
    response::on_header(&mut resp, &mut ctx, 1 << 20, true).unwrap();
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let mut body = Some(Bytes::copy_from_slice(&input[start..cut]));
        response::on_chunk(&mut body, false, &mut ctx, 1 << 20).unwrap();
        out.extend_from_slice(&body.unwrap_or_default());
        start = cut;
    }
    let mut body = None;
    response::on_chunk(&mut body, true, &mut ctx, 1 << 20).unwrap();
    out.extend_from_slice(&body.unwrap_or_default());
    (out, ctx.response_facts)
}

struct Fixture {
    path: &'static str,
    stream: Vec<u8>,
    expect: serde_json::Value,
}

fn fixtures() -> Vec<Fixture> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    [
        ("openai_chat_parallel", "/v1/openai/chat/completions"),
        ("openai_responses_function_call", "/v1/openai/responses"),
        ("anthropic_tool_use_crlf", "/v1/anthropic/v1/messages"),
        (
            "gemini_function_call",
            "/v1/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        ),
    ]
    .into_iter()
    .map(|(name, path)| Fixture {
        path,
        stream: std::fs::read(format!("{dir}{name}.sse")).unwrap(),
        expect: serde_json::from_slice(&std::fs::read(format!("{dir}{name}.expect.json")).unwrap())
            .unwrap(),
    })
    .collect()
}

fn check(f: &Fixture, cuts: &[usize]) {
    let (out, facts) = pipeline(f.path, &f.stream, cuts);
    assert!(
        out == f.stream,
        "{}: output differs with cuts {cuts:?}",
        f.path
    );
    assert!(
        facts.completed && facts.error.is_none(),
        "{}: {:?}",
        f.path,
        facts.error
    );
    let calls: Vec<(String, String)> = facts
        .tool_calls
        .iter()
        .map(|c| (c.name.clone(), c.arguments.clone()))
        .collect();
    let want: Vec<(String, String)> = f.expect["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(calls, want, "{} with cuts {cuts:?}", f.path);
    let u = facts.usage.unwrap();
    let got = [
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
    ];
    let want: Vec<u64> = f.expect["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(got.to_vec(), want, "{}", f.path);
    assert_eq!(
        facts.finish_reason.as_deref(),
        f.expect["finish"].as_str(),
        "{}",
        f.path
    );
}

#[test]
fn r07_every_split_point_of_every_transcript() {
    for f in fixtures() {
        for i in 0..=f.stream.len() {
            check(&f, &[i]);
        }
    }
}

#[test]
fn one_byte_chunks() {
    for f in fixtures() {
        let cuts: Vec<usize> = (1..f.stream.len()).collect();
        check(&f, &cuts);
    }
}

#[test]
fn invalid_utf8_is_a_stream_error_not_a_substitution() {
    let mut stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"ok\"}}]}\n\n".to_vec();
    stream.extend_from_slice(b"data: {\"choices\":[{\"delta\":{\"content\":\"\xff\xfe\"}}]}\n\n");
    let env = Environment {
        openai_base_url: Some("http://127.0.0.1:1/v1".into()),
        ..Environment::default()
    };
    let config = compile(parse_toml("").unwrap(), &env).unwrap();
    let mut ctx = RequestCtx::new();
    ctx.route = Some(route(&config, &http::Method::POST, "/v1/openai/chat/completions").unwrap());
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("content-type", "text/event-stream")
        .unwrap();
    response::on_header(&mut resp, &mut ctx, 1 << 20, true).unwrap();
    let mut body = Some(Bytes::from(stream));
    let err = response::on_chunk(&mut body, false, &mut ctx, 1 << 20).expect_err("invalid utf-8");
    assert!(err.to_string().contains("UTF-8"), "{err}");
    let closing = String::from_utf8(ctx.closing_bytes.take().unwrap().to_vec()).unwrap();
    assert!(
        closing.starts_with("data: {\"choices\""),
        "the good event still goes out"
    );
    assert!(closing.contains("sluice_upstream_protocol"), "{closing}");
}

/// Text and arguments that look like framing, with multi-byte characters.
fn tricky_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("data: ".to_owned()),
            Just("\n\n".to_owned()),
            Just("\r\n\r\n".to_owned()),
            Just("event: x".to_owned()),
            Just("é".to_owned()),
            Just("🌊".to_owned()),
            Just("東京".to_owned()),
            "[a-z ]{1,6}",
        ],
        0..8,
    )
    .prop_map(|v| v.concat())
}

fn chat_stream(texts: &[String], args: &[String]) -> Vec<u8> {
    let mut s = String::new();
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    for t in texts {
        s.push_str(&chunk(
            serde_json::json!({"content": t}),
            serde_json::Value::Null,
        ));
    }
    s.push_str(&chunk(
        serde_json::json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        serde_json::Value::Null,
    ));
    for a in args {
        s.push_str(&chunk(
            serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}),
            serde_json::Value::Null,
        ));
    }
    s.push_str(&chunk(
        serde_json::json!({}),
        serde_json::json!("tool_calls"),
    ));
    s.push_str(&format!(
        "data: {}\n\ndata: [DONE]\n\n",
        serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7}})
    ));
    s.into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn generated_streams_survive_any_chunking(
        texts in prop::collection::vec(tricky_text(), 0..5),
        args in prop::collection::vec(tricky_text(), 1..5),
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream = chat_stream(&texts, &args);
        let mut cuts: Vec<usize> = raw_cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        let (out, facts) = pipeline("/v1/openai/chat/completions", &stream, &cuts);
        prop_assert_eq!(&out, &stream);
        prop_assert_eq!(facts.tool_calls.len(), 1);
        prop_assert_eq!(&facts.tool_calls[0].arguments, &args.concat());
        prop_assert_eq!(facts.usage.map(|u| u.output_tokens), Some(7));
        prop_assert!(facts.completed);
    }

    #[test]
    fn framer_yields_the_same_events_for_any_chunking(
        texts in prop::collection::vec(tricky_text(), 0..6),
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        use sluice_proxy::sse::{Framed, SseFramer};
        let stream = chat_stream(&texts, &["{}".to_owned()]);
        let whole = {
            let mut f = SseFramer::new(1 << 20);
            let mut out = Framed::default();
            f.push(&Bytes::from(stream.clone()), &mut out).unwrap();
            out.events
        };
        let mut cuts: Vec<usize> = raw_cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut f = SseFramer::new(1 << 20);
        let mut out = Framed::default();
        let mut start = 0;
        for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
            f.push(&Bytes::copy_from_slice(&stream[start..c]), &mut out).unwrap();
            start = c;
        }
        prop_assert_eq!(out.events, whole);
        prop_assert_eq!(f.pending_len(), 0);
    }
}
