#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The usage journal's cost per request: one typical record (a tool-using chat turn with two
//! policy decisions) serialised and appended, which the proxy does in the response's last
//! phase when a control plane collects usage.

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use sluice_proxy::journal::{Decisions, Journal, UsageRecord};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), 64 << 20).unwrap();
    let record = UsageRecord {
        ts_ms: 1_795_600_000_000,
        request_id: Some("req-0123456789".into()),
        profile: "payments".into(),
        key_id: Some("0123456789abcdef".into()),
        provider: "openai".into(),
        api: Some("chat_completions".into()),
        model: Some("gpt-4o-mini".into()),
        status: 200,
        input_tokens: 1_200,
        output_tokens: 80,
        duration_us: 2_400,
        ttfb_us: Some(900),
        tool_calls: vec!["send_email".into()],
        decisions: Decisions::of(&json!([
            {"kind": "result", "tool": "profile:payments/fetch_url", "call_id": "c1", "verdict": "untrusted", "policy": "web", "reason": "policy 'web' marks fetch_url output as untrusted"},
            {"kind": "call", "tool": "profile:payments/send_email", "call_id": "c2", "verdict": "blocked", "policy": "no-email", "reason": "email cannot be sent after untrusted content"}
        ])),
        ..UsageRecord::default()
    };
    c.bench_function("journal/append one record", |b| {
        b.iter(|| journal.append(black_box(record.clone())).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
