#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! TOON on the request path: one tool result of 50 uniform rows (about 5 KB of JSON) parsed,
//! encoded and both forms' tokens counted (the first time a result is seen), and the same
//! result found in the cache (every later turn of the conversation).

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_proxy::events::Provider;
use sluice_proxy::toon::{Cache, Json, compress, encode};
use std::hint::black_box;

fn result() -> String {
    let rows: Vec<serde_json::Value> = (0..50)
        .map(|i| {
            serde_json::json!({"id": i, "name": format!("User {i}"), "email": format!("u{i}@corp.example"),
                               "active": i % 3 != 0, "balance": 1234.5 + f64::from(i)})
        })
        .collect();
    serde_json::to_string(&serde_json::to_string(&rows).unwrap()).unwrap()
}

fn bench(c: &mut Criterion) {
    let content = result();
    let body = content.as_bytes();
    let span = [(0, body.len())];
    let inner: String = serde_json::from_str(&content).unwrap();
    c.bench_function("toon/encode 50 rows (parse + encode)", |b| {
        b.iter(|| encode(&Json::parse(black_box(&inner)).unwrap()))
    });
    c.bench_function(
        "toon/first sight of a 50-row result (encode + count tokens)",
        |b| {
            b.iter(|| {
                // A fresh cache each time: the conversion and both token counts run.
                let cache = Cache::new(1 << 20);
                compress(Provider::Openai, black_box(body), span, 1 << 20, &cache)
            })
        },
    );
    let cache = Cache::new(1 << 20);
    let _ = compress(Provider::Openai, body, span, 1 << 20, &cache);
    c.bench_function("toon/a 50-row result seen before (cache hit)", |b| {
        b.iter(|| compress(Provider::Openai, black_box(body), span, 1 << 20, &cache))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
