#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Provenance: indexing a 200-message, 1 MiB conversation the first time, again at a later
//! turn (every text cached), and tracing a tool call's 10 string arguments against it (the
//! per-call cost; goal ≤ 50 µs).

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use sluice_policies::provenance::{Origin, ProvenanceIndex, Source, SourceCache};
use std::hint::black_box;

/// 200 messages of about 5 KiB each: user turns, trusted and untrusted tool results.
fn conversation() -> Vec<(Origin, String)> {
    let mut out = Vec::new();
    for m in 0..200 {
        let origin = match m % 4 {
            0 => Origin::User,
            1 => Origin::TrustedResult,
            2 => Origin::UntrustedResult,
            _ => Origin::System,
        };
        let mut text = String::with_capacity(5300);
        let mut w = 0;
        while text.len() < 5300 {
            text.push_str(&format!(
                "word{m}x{w} contact{m}-{w}@corp.example, amount {w}.50; "
            ));
            w += 1;
        }
        out.push((origin, text));
    }
    out
}

fn bench(c: &mut Criterion) {
    let conv = conversation();
    let total: usize = conv.iter().map(|(_, t)| t.len()).sum();
    assert!(total >= 1 << 20, "{total}");
    let sources: Vec<Source<'_>> = conv
        .iter()
        .map(|(o, t)| Source {
            origin: *o,
            text: t,
            tool: "tool",
        })
        .collect();
    c.bench_function("provenance/index 200 messages, 1 MiB", |b| {
        b.iter(|| black_box(ProvenanceIndex::build(black_box(&sources))))
    });
    let cache = SourceCache::new(10_000);
    let _ = ProvenanceIndex::build_cached(&sources, &cache);
    c.bench_function(
        "provenance/index 1 MiB again, a later turn (texts cached)",
        |b| b.iter(|| black_box(ProvenanceIndex::build_cached(black_box(&sources), &cache))),
    );
    let idx = ProvenanceIndex::build(&sources);
    let args: Vec<Value> = vec![
        json!("contact0-3@corp.example"),
        json!("contact121-40@corp.example"),
        json!("word60x7"),
        json!("DE89 3704 0044 0532 0130 00"),
        json!("https://pay.example/invoice/"),
        json!("contact199-80@corp.example"),
        json!("mallory@evil.example"),
        json!("word2x100 contact2-100@corp.example"),
        json!("amount 3.50"),
        json!("nothing-like-this"),
    ];
    c.bench_function("provenance/one call, 10 string arguments", |b| {
        b.iter(|| {
            for a in &args {
                black_box(idx.of_value(black_box(a)));
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
