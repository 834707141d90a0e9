//! Spend limits across replicas, at the control plane, on SQLite and PostgreSQL: the
//! authoritative spend added up from journals (once per record, in the period the record
//! belongs to, however the batches race or however many records one batch holds) and the leases granted against it (never more,
//! together, than the cap).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, Api, control, stores};
use serde_json::{Value, json};
use sqlx::Row;

fn rec(seq: u64, ts_ms: i64, holder: &str, limit: &str, cost: i64) -> Value {
    json!({"seq": seq, "ts_ms": ts_ms, "profile": "pay", "provider": "openai",
        "api": "chat_completions", "model": "gpt-4o", "status": 200, "input_tokens": 10,
        "output_tokens": 5, "cache_read_tokens": 0, "cache_write_tokens": 0,
        "reasoning_tokens": 0, "cost_micros": cost, "duration_us": 900, "ttfb_us": 300,
        "refused": false, "trusted": true, "tool_calls": [], "decisions": [],
        "request_body": null, "response_body": null, "limits": [limit], "holder": holder})
}

fn ask(limit: &str, window: &str, start: i64, used: u64, want: u64) -> Value {
    json!({"limit_id": limit, "window": window, "window_start": start,
        "used": {"cost_micros": used, "tokens": 0}, "want": {"cost_micros": want, "tokens": 0}})
}

async fn period_sum(c: &sluice_control::server::RunningControl, limit: &str, start: i64) -> i64 {
    sqlx::query("SELECT CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS s FROM limit_usage WHERE limit_id = $1 AND bucket_start = $2")
        .bind(limit)
        .bind(start)
        .fetch_one(&c.state.db.pool)
        .await
        .unwrap()
        .try_get::<i64, _>("s")
        .unwrap()
}

/// A profile `pay` and a limit on it with `terms` (window and caps); the limit's id.
async fn profile_limit(api: &Api, mut terms: Value) -> String {
    let prof = api.create("/profiles", json!({"name": "pay"})).await;
    terms["name"] = json!("pay limit");
    terms["scope"] = json!("profile");
    terms["target"] = prof["id"].clone();
    let limit = api.create("/limits", terms).await;
    limit["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_rollover_under_fifty_racing_batches_loses_nothing_and_counts_nothing_twice() {
    for (engine, url, _dir) in stores().await {
        let c = control(&url).await;
        let api = Api::new(c.addr, Some(ADMIN_KEY));
        let id = profile_limit(
            &api,
            json!({"window": "day", "time_zone": "Europe/Berlin",
            "max_cost_usd": 100.0}),
        )
        .await;
        let (_, standing) = api.get(&format!("/limits/{id}/standing")).await;
        assert_eq!(standing["window"], "day@Europe/Berlin", "{engine}");
        // The current Berlin day began at `midnight`; 50 requests settle around it.
        let midnight = standing["window_start"].as_i64().unwrap();
        let records: Vec<Value> = (1..=50u64)
            .map(|i| {
                let ts = if i % 2 == 0 {
                    midnight + i as i64
                } else {
                    midnight - i as i64
                };
                rec(i, ts, "holder-a", &id, 1000 + i as i64)
            })
            .collect();
        // Each record in its own batch, every batch sent twice, all at once.
        let mut tasks = Vec::new();
        for r in records.iter().chain(records.iter()) {
            let api = api.clone();
            let body = json!({"proxy_id": "px", "records": [r]});
            tasks.push(tokio::spawn(async move {
                api.post("/usage/batches", body).await.0
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200, "{engine}");
        }
        let after: i64 = (1..=50).filter(|i| i % 2 == 0).map(|i| 1000 + i).sum();
        let before: i64 = (1..=50).filter(|i| i % 2 == 1).map(|i| 1000 + i).sum();
        let (_, standing) = api.get(&format!("/limits/{id}/standing")).await;
        assert_eq!(
            standing["spent"]["cost_micros"], after,
            "{engine}: {standing}"
        );
        assert_eq!(standing["spent"]["tokens"], 25 * 15, "{engine}");
        // The day before (23, 24 or 25 hours long), counted under its own start.
        let berlin = sluice_policies::limits::Window::parse("day", Some("Europe/Berlin")).unwrap();
        let (prev_start, prev_end) = berlin.period(midnight - 1).unwrap();
        assert_eq!(prev_end, midnight);
        assert_eq!(period_sum(&c, &id, prev_start).await, before, "{engine}");
        c.task.abort();
    }
}

#[tokio::test]
async fn a_batch_is_summed_per_period_and_holder_and_a_resent_overlap_counts_nothing() {
    for (engine, url, _dir) in stores().await {
        let c = control(&url).await;
        let api = Api::new(c.addr, Some(ADMIN_KEY));
        let id = profile_limit(
            &api,
            json!({"window": "day", "time_zone": "Europe/Berlin", "max_cost_usd": 100.0}),
        )
        .await;
        let (_, standing) = api.get(&format!("/limits/{id}/standing")).await;
        let midnight = standing["window_start"].as_i64().unwrap();
        // Odd records settle before midnight, even ones after; every third is another holder's.
        let ts = |i: u64| {
            if i.is_multiple_of(2) {
                midnight + i as i64
            } else {
                midnight - i as i64
            }
        };
        let batch = |seqs: std::ops::RangeInclusive<u64>| -> Value {
            let records: Vec<Value> = seqs
                .map(|i| {
                    let holder = if i.is_multiple_of(3) {
                        "holder-b"
                    } else {
                        "holder-a"
                    };
                    rec(i, ts(i), holder, &id, 1000 + i as i64)
                })
                .collect();
            json!({"proxy_id": "px", "records": records})
        };
        let (s, ack) = api.post("/usage/batches", batch(1..=150)).await;
        assert_eq!(
            (s, ack["inserted"].as_u64()),
            (200, Some(150)),
            "{engine}: {ack}"
        );
        let (_, ack) = api.post("/usage/batches", batch(101..=200)).await;
        assert_eq!(ack["inserted"].as_u64(), Some(50), "{engine}: {ack}");
        let sum = |after: bool| -> i64 {
            (1..=200i64)
                .filter(|i| (i % 2 == 0) == after)
                .map(|i| 1000 + i)
                .sum()
        };
        assert_eq!(period_sum(&c, &id, midnight).await, sum(true), "{engine}");
        let berlin = sluice_policies::limits::Window::parse("day", Some("Europe/Berlin")).unwrap();
        let (prev_start, _) = berlin.period(midnight - 1).unwrap();
        assert_eq!(
            period_sum(&c, &id, prev_start).await,
            sum(false),
            "{engine}"
        );
        let holders: i64 = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM limit_usage WHERE limit_id = $1",
        )
        .bind(&id)
        .fetch_one(&c.state.db.pool)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
        assert_eq!(holders, 4, "{engine}: two periods × two holders");
        c.task.abort();
    }
}

#[tokio::test]
async fn racing_holders_are_never_granted_more_than_the_cap_together() {
    for (engine, url, _dir) in stores().await {
        let c = control(&url).await;
        let api = Api::new(c.addr, Some(ADMIN_KEY));
        let id = profile_limit(&api, json!({"window": "hour", "max_cost_usd": 0.01})).await;
        // A holder that shipped 4000 µ$ and whose lease lapsed long ago still counts them.
        let shipped = json!({"proxy_id": "old", "records": [
            rec(1, common_now() - 1000, "gone", &id, 4000)]});
        assert_eq!(api.post("/usage/batches", shipped).await.0, 200);
        // Twenty holders ask for the whole cap at once.
        let mut tasks = Vec::new();
        for h in 0..20 {
            let api = api.clone();
            let body = json!({"proxy_id": format!("px{h}"), "holder": format!("h{h}"),
                "leases": [ask(&id, "rolling:3600", 0, 0, 10_000)]});
            tasks.push(tokio::spawn(async move {
                api.post("/proxy/leases", body).await
            }));
        }
        let mut granted = 0;
        for t in tasks {
            let (status, answer) = t.await.unwrap();
            assert_eq!(status, 200, "{engine}: {answer}");
            assert_eq!(answer["ttl_ms"], 6000);
            granted += answer["leases"][0]["ceiling"]["cost_micros"]
                .as_u64()
                .unwrap();
        }
        assert_eq!(
            granted, 6000,
            "{engine}: the cap less what the lapsed holder spent"
        );
        let (_, standing) = api.get(&format!("/limits/{id}/standing")).await;
        assert_eq!(standing["spent"]["cost_micros"], 4000, "{engine}");
        assert_eq!(standing["committed"]["cost_micros"], 10_000, "{engine}");
        assert_eq!(standing["live_holders"], 20, "{engine}");

        // A proxy on an older snapshot (another window) and an unknown limit get nothing.
        let (_, answer) = api
            .post(
                "/proxy/leases",
                json!({"proxy_id": "px", "holder": "h0", "leases": [
                    ask(&id, "day@UTC", 0, 0, 10), ask("lim_nope", "rolling:3600", 0, 0, 10)]}),
            )
            .await;
        assert_eq!(answer["leases"], json!([]), "{engine}");
        // Not a proxy's call to make without the usage permission.
        let (status, _) = Api::new(c.addr, None)
            .post(
                "/proxy/leases",
                json!({"proxy_id": "px", "holder": "h", "leases": []}),
            )
            .await;
        assert_eq!(status, 401);
        c.task.abort();
    }
}

fn common_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
