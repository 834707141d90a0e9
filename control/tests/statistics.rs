//! `GET /usage/statistics`: sums by group and time bucket over shipped usage, on SQLite and
//! PostgreSQL, scoped like the call logs; and batches larger than one insert statement
//! (LLM and MCP records) store each record once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, Api, control, stores};
use serde_json::{Value, json};

const HOUR: i64 = 3_600_000;

fn rec(seq: u64, ts_ms: i64, profile: &str, model: &str, input: u64, cost: i64) -> Value {
    json!({"seq": seq, "ts_ms": ts_ms, "profile": profile, "provider": "openai",
        "api": "chat_completions", "model": model, "status": 200, "input_tokens": input,
        "output_tokens": 10, "cache_read_tokens": 2, "cache_write_tokens": 0,
        "reasoning_tokens": 1, "cost_micros": cost, "duration_us": 900, "ttfb_us": 300,
        "refused": false, "trusted": true, "tool_calls": [], "decisions": [],
        "request_body": null, "response_body": null, "usage_estimated": seq == 4})
}

#[tokio::test]
async fn statistics_sum_by_group_and_bucket() {
    for (engine, url, _dir) in stores().await {
        let c = control(&url).await;
        let api = Api::new(c.addr, Some(ADMIN_KEY));
        let team = api.create("/teams", json!({"name": "payments"})).await;
        api.create("/profiles", json!({"name": "pay", "team_id": team["id"]}))
            .await;
        api.create("/profiles", json!({"name": "ops"})).await;
        let t0 = 1_795_600_000_000 / HOUR * HOUR;
        let batch = json!({"proxy_id": "px", "records": [
            rec(1, t0 + 1, "pay", "gpt-4o", 100, 1000),
            rec(2, t0 + 2, "pay", "gpt-4o-mini", 50, 10),
            rec(3, t0 + HOUR + 5, "pay", "gpt-4o", 200, 2000),
            rec(4, t0 + HOUR + 6, "ops", "gpt-4o", 300, 3000),
        ]});
        assert_eq!(api.post("/usage/batches", batch).await.0, 200, "{engine}");

        let (s, all) = api.get("/usage/statistics").await;
        assert_eq!(s, 200, "{engine}: {all}");
        let rows = all["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0]["requests"].clone(),
                rows[0]["input_tokens"].clone(),
                rows[0]["cost_micros"].clone(),
                rows[0]["estimated_requests"].clone()
            ),
            (json!(4), json!(650), json!(6010), json!(1)),
            "{engine}"
        );

        let (_, by) = api
            .get("/usage/statistics?group_by=profile,model&bucket=hour")
            .await;
        let got: Vec<(i64, String, String, i64, i64)> = by["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["bucket_start_ms"].as_i64().unwrap() - t0,
                    r["profile"].as_str().unwrap().to_owned(),
                    r["model"].as_str().unwrap().to_owned(),
                    r["requests"].as_i64().unwrap(),
                    r["cost_micros"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (0, "pay".into(), "gpt-4o".into(), 1, 1000),
                (0, "pay".into(), "gpt-4o-mini".into(), 1, 10),
                (HOUR, "ops".into(), "gpt-4o".into(), 1, 3000),
                (HOUR, "pay".into(), "gpt-4o".into(), 1, 2000),
            ],
            "{engine}"
        );

        // Teams are the profiles' teams; the organisation's own profiles have none.
        let (_, teams) = api.get("/usage/statistics?group_by=team").await;
        let mut got: Vec<(Value, i64)> = teams["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["team"].clone(), r["cost_micros"].as_i64().unwrap()))
            .collect();
        got.sort_by_key(|(_, c)| *c);
        assert_eq!(
            got,
            [(Value::Null, 3000), (team["id"].clone(), 3010)],
            "{engine}"
        );

        let (_, since) = api
            .get(&format!(
                "/usage/statistics?group_by=organisation&since_ms={}",
                t0 + HOUR
            ))
            .await;
        assert_eq!(since["rows"][0]["requests"], 2);
        assert_eq!(since["rows"][0]["organisation"], c.org_id.as_str());

        for bad in ["bucket=week", "group_by=colour", "nope=1"] {
            let (s, e) = api.get(&format!("/usage/statistics?{bad}")).await;
            assert_eq!(s, 400, "{engine} {bad}: {e}");
        }
    }
}

#[tokio::test]
async fn batches_across_insert_statements_store_each_record_once() {
    for (engine, url, _dir) in stores().await {
        let c = control(&url).await;
        let api = Api::new(c.addr, Some(ADMIN_KEY));
        api.create("/profiles", json!({"name": "pay"})).await;
        let t0 = 1_795_600_000_000;
        let batch = |seqs: std::ops::RangeInclusive<u64>| -> Vec<Value> {
            seqs.map(|s| {
                let mut r = rec(s, t0 + s as i64, "pay", "gpt-4o", 10, 1);
                if s == 130 {
                    r["tool_calls"] = json!(["found_in_traffic"]);
                }
                r
            })
            .collect()
        };
        // 150 records (three statements' worth), one of them twice: the first copy counts.
        let mut first = batch(1..=150);
        first.insert(100, rec(70, t0, "pay", "gpt-4o", 999_999, 1));
        let (s, ack) = api
            .post(
                "/usage/batches",
                json!({"proxy_id": "px", "records": first}),
            )
            .await;
        assert_eq!(s, 200, "{engine}: {ack}");
        assert_eq!(
            (ack["acked_seq"].as_u64(), ack["inserted"].as_u64()),
            (Some(150), Some(150)),
            "{engine}"
        );
        // A resend overlapping the stored half: only the new 70 are inserted.
        let (_, ack) = api
            .post(
                "/usage/batches",
                json!({"proxy_id": "px", "records": batch(81..=220)}),
            )
            .await;
        assert_eq!(
            (ack["acked_seq"].as_u64(), ack["inserted"].as_u64()),
            (Some(220), Some(70)),
            "{engine}"
        );
        let (_, all) = api.get("/usage/statistics").await;
        assert_eq!(
            (
                all["rows"][0]["requests"].clone(),
                all["rows"][0]["input_tokens"].clone()
            ),
            (json!(220), json!(2200)),
            "{engine}"
        );
        // MCP records, 70 of them with one twice, among LLM ones in one batch: their own table.
        let mcp = |seq: u64| {
            let mut r = rec(seq, t0 + seq as i64, "pay", "gpt-4o", 0, 0);
            r["mcp"] = json!({"server": "mail", "method": "tools/call", "tool": "send",
                "status": "ok", "session": null});
            r
        };
        let mut mixed: Vec<Value> = (1001..=1070).map(mcp).collect();
        mixed.insert(35, mcp(1010));
        mixed.push(rec(1071, t0 + 1071, "pay", "gpt-4o", 10, 1));
        let (s, ack) = api
            .post(
                "/usage/batches",
                json!({"proxy_id": "px", "records": mixed}),
            )
            .await;
        assert_eq!(s, 200, "{engine}: {ack}");
        assert_eq!(ack["inserted"].as_u64(), Some(71), "{engine}: {ack}");
        let resend: Vec<Value> = (1061..=1080).map(mcp).collect();
        let (_, ack) = api
            .post(
                "/usage/batches",
                json!({"proxy_id": "px", "records": resend}),
            )
            .await;
        assert_eq!(ack["inserted"].as_u64(), Some(10), "{engine}: {ack}");
        let (_, calls) = api.get("/logs/mcp?limit=500").await;
        assert_eq!(calls["items"].as_array().unwrap().len(), 80, "{engine}");
        let (_, all) = api.get("/usage/statistics").await;
        assert_eq!(
            all["rows"][0]["requests"], 221,
            "{engine}: MCP calls are not LLM requests"
        );
        let (_, tools) = api.get("/tools?limit=500").await;
        let found = tools["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"] == "found_in_traffic")
            .count();
        assert_eq!(found, 1, "{engine}: {tools}");
    }
}
