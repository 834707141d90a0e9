#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The SSE framer and the stream readers: bytes per second through the framer, and one
//! 43-event OpenAI chat stream (with a parallel tool call) framed and read.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_proxy::events::{Api, ResponseFacts};
use sluice_proxy::llm::ResponseInspector;
use sluice_proxy::sse::{Framed, SseFramer, parse_event};
use std::hint::black_box;

fn chat_stream() -> Bytes {
    let mut s = String::new();
    for i in 0..40 {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"send_email\",\"arguments\":\"{\\\"to\\\":\\\"a@b.c\\\"}\"}}]},\"finish_reason\":null}]}\n\n");
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n");
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":50}}\n\ndata: [DONE]\n\n");
    Bytes::from(s)
}

fn bench(c: &mut Criterion) {
    let stream = chat_stream();
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("frame_only", |b| {
        b.iter(|| {
            let mut f = SseFramer::new(1 << 20);
            let mut out = Framed::default();
            for chunk in stream.chunks(1400) {
                let _ = f.push(&Bytes::copy_from_slice(chunk), &mut out);
            }
            black_box(out.events.len())
        })
    });
    g.bench_function("frame_and_read_openai_stream", |b| {
        b.iter(|| {
            let mut f = SseFramer::new(1 << 20);
            let mut out = Framed::default();
            let mut inspector = ResponseInspector::new(Api::ChatCompletions, false);
            let mut facts = ResponseFacts::default();
            for chunk in stream.chunks(1400) {
                let _ = f.push(&Bytes::copy_from_slice(chunk), &mut out);
            }
            for ev in &out.events {
                if let Ok(fields) = parse_event(ev) {
                    inspector.on_event(&fields, &mut facts);
                }
            }
            black_box(facts.tool_calls.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
