#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Admission and settlement of one request against a spend limit: on a proxy that counts
//! alone (a file-configured proxy, the baseline) and on one that spends from a lease the
//! control plane granted (proxies behind a control plane). The lease path adds a check of
//! the lease's ceiling and the renewal decision, under the same per-limit lock; this
//! measures what that costs on the request path (the renewal itself runs in the background).

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_policies::limits::Amount;
use sluice_proxy::lease::{LeaseAnswer, LeaseGrant};
use sluice_proxy::spend::{RawSpendLimit, Requester, SpendBook, SpendLimit, settle};
use std::hint::black_box;

fn limit() -> SpendLimit {
    SpendLimit::compile(&RawSpendLimit {
        id: "lim_shop".into(),
        name: "shop daily".into(),
        scope: "profile".into(),
        target: Some("shop".into()),
        // The rolling window with the most buckets to sum.
        window: "rolling_24h".into(),
        max_cost_usd: Some(1_000_000.0),
        ..Default::default()
    })
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let limits = vec![limit()];
    let who = Requester {
        profile: "shop",
        team: Some("payments"),
        organisation: Some("org_1"),
        key_id: Some("key_1"),
        model: Some("gpt-4o-mini"),
    };
    let estimate = Amount {
        micros: 1_200,
        tokens: 2_000,
    };
    let admit_and_settle = |book: &SpendBook| {
        let holds = book.admit(&limits, black_box(&who), estimate).unwrap();
        settle(holds, estimate)
    };

    let alone = SpendBook::default();
    c.bench_function("spend/admit + settle, counted alone (baseline)", |b| {
        b.iter(|| admit_and_settle(&alone))
    });

    let leased = SpendBook::default();
    leased.lease_from_control();
    let asks = leased.lease_asks(&limits, std::time::Duration::ZERO);
    let answer = LeaseAnswer {
        ttl_ms: 3_600_000,
        leases: asks
            .iter()
            .map(|a| LeaseGrant {
                limit_id: a.limit_id.clone(),
                window_start: a.window_start,
                ceiling: Amount {
                    micros: 900_000_000_000,
                    tokens: u64::MAX / 4,
                }
                .into(),
                used_total: Amount::default().into(),
                others_committed: Amount::default().into(),
            })
            .collect(),
        rates: Vec::new(),
    };
    leased.take_grants(&answer, Instant::now());
    c.bench_function("spend/admit + settle, spent from a lease", |b| {
        b.iter(|| admit_and_settle(&leased))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
