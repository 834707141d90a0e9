#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The configuration snapshot: compiling one (what a proxy does with each version the
//! control plane pushes), swapping it in, and what a request pays to take the current one,
//! alone and while another thread swaps a new snapshot in every millisecond.
//!
//! The snapshot is the end-to-end benchmark's: one profile and 100 policies (94 on other
//! tools; result and invocation policies with conditions, a wildcard path and a regex on
//! the tools its traffic uses).

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use sluice_proxy::config::{Environment, RawConfig, compile, parse_toml};
use sluice_proxy::live::LiveConfig;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn hundred_policies() -> Value {
    let mut invocation: Vec<Value> = (0..94)
        .map(|i| {
            json!({"id": format!("other-{i}"), "tool": {"source": "profile:*", "name": format!("tool_{i}")},
                "conditions": [{"path": "query", "op": "contains", "value": "secret"}], "action": "block"})
        })
        .collect();
    invocation.extend([
        json!({"id": "email-default", "tool": {"source": "profile:*", "name": "send_email"}, "action": "block_when_untrusted"}),
        json!({"id": "email-external", "tool": {"source": "profile:*", "name": "send_email"},
            "conditions": [{"path": "to", "op": "notEndsWith", "value": "@example.com"}], "action": "require_approval"}),
        json!({"id": "email-cc", "tool": {"source": "profile:*", "name": "send_email"},
            "conditions": [{"path": "cc[*]", "op": "regex", "value": "@rival\\.com$", "quantifier": "any"}], "action": "block"}),
        json!({"id": "weather-ok", "tool": {"source": "profile:*", "name": "get_weather"}, "action": "allow_when_untrusted"}),
    ]);
    json!({
        "invocation": invocation,
        "result": [
            {"id": "weather-trusted", "tool": {"source": "profile:*", "name": "get_weather"}, "action": "trusted"},
            {"id": "web-untrusted", "tool": {"source": "profile:*", "name": "fetch_url"}, "action": "untrusted"},
        ],
    })
}

fn raw_snapshot() -> RawConfig {
    let mut raw = parse_toml(
        "listen = \"127.0.0.1:8080\"\nthreads = 1\n[profiles.default]\nopenai = { base_url = \"http://127.0.0.1:9000/v1\" }\n",
    )
    .expect("the profile parses");
    raw.policies = serde_json::from_value(hundred_policies()).expect("the policies parse");
    raw
}

fn bench(c: &mut Criterion) {
    let env = Environment::default();
    let raw = raw_snapshot();
    let first = compile(raw.clone(), &env).expect("the snapshot compiles");
    assert_eq!(first.profiles.len(), 1);
    let live = LiveConfig::with(first);

    let mut g = c.benchmark_group("snapshot");
    g.bench_function("compile_1_profile_100_policies", |b| {
        b.iter(|| black_box(compile(black_box(raw.clone()), &env)))
    });
    // The swap drops the snapshot it replaces (no request holds it here): that is part of
    // what a swap costs.
    g.bench_function("swap_in_a_compiled_snapshot", |b| {
        b.iter_batched(
            || compile(raw.clone(), &env).expect("compiles"),
            |config| live.store(config),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("take_the_current_snapshot_for_a_request", |b| {
        b.iter(|| black_box(live.current()))
    });

    // Another thread swaps a new snapshot in every millisecond while requests take it.
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (live, stop, swaps, raw, env) = (
            Arc::clone(&live),
            Arc::clone(&stop),
            Arc::clone(&swaps),
            raw.clone(),
            env.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let config = compile(raw.clone(), &env).expect("compiles");
                live.store(config);
                swaps.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    g.bench_function(
        "take_the_current_snapshot_while_another_thread_swaps",
        |b| b.iter(|| black_box(live.current())),
    );
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("the swapping thread ends");
    assert!(
        swaps.load(Ordering::Relaxed) > 0,
        "snapshots were swapped during the measurement"
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
