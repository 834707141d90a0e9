//! Spend and rate limits through the admin API: checked on write, and carried to proxies in
//! the snapshot with their targets resolved from ids to names, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, Api, control, stores};
use serde_json::json;

#[tokio::test]
async fn limits_reach_proxies_with_names_and_bad_ones_are_refused() {
    for (engine, url, _dir) in stores().await {
        let c = control(&url).await;
        let api = Api::new(c.addr, Some(ADMIN_KEY));
        let profile = api.create("/profiles", json!({"name": "payments"})).await;
        let pid = profile["id"].as_str().unwrap();
        let limit = api
            .create(
                "/limits",
                json!({"name": "payments daily", "scope": "profile", "target": pid,
                    "window": "day", "time_zone": "Europe/Berlin", "model": "gpt-4o*",
                    "max_cost_usd": 25.5}),
            )
            .await;
        api.create(
            "/limits",
            json!({"name": "org monthly", "scope": "organisation", "window": "rolling_30d",
                "max_tokens": 1000000}),
        )
        .await;
        api.create(
            "/rate-limits",
            json!({"name": "payments rpm", "scope": "profile", "target": pid,
                "requests_per_minute": 600, "tokens_per_minute": 200000}),
        )
        .await;
        let (_, snap) = api.get("/snapshots/latest").await;
        let cfg = &snap["config"];
        let spend = cfg["spend_limits"].as_array().expect("spend limits");
        assert_eq!(spend.len(), 2, "{engine}: {spend:?}");
        let daily = spend
            .iter()
            .find(|l| l["name"] == "payments daily")
            .unwrap();
        assert_eq!(daily["id"], limit["id"]);
        assert_eq!(daily["target"], "payments", "{engine}: ids become names");
        assert_eq!(daily["time_zone"], "Europe/Berlin");
        assert_eq!(daily["window"], "day");
        let org = spend.iter().find(|l| l["name"] == "org monthly").unwrap();
        assert_eq!(org["target"], c.org_id.as_str());
        assert_eq!(
            cfg["profiles"]["payments"]["organisation"],
            c.org_id.as_str()
        );
        assert_eq!(cfg["rate_limits"][0]["target"], "payments");
        assert_eq!(cfg["rate_limits"][0]["requests_per_minute"], 600);

        for (path, body, needle) in [
            (
                "/limits",
                json!({"name": "x", "scope": "organisation", "window": "day",
                    "time_zone": "Mars/Olympus", "max_tokens": 1}),
                "IANA",
            ),
            (
                "/limits",
                json!({"name": "y", "scope": "organisation", "window": "fortnight", "max_tokens": 1}),
                "rolling_24h",
            ),
            (
                "/rate-limits",
                json!({"name": "z", "scope": "team", "target": "t", "requests_per_minute": 1}),
                "profile or a virtual_key",
            ),
            (
                "/rate-limits",
                json!({"name": "w", "scope": "profile", "target": pid, "requests_per_minute": 0}),
                "0",
            ),
        ] {
            let (s, v) = api.post(path, body).await;
            assert_eq!(s, 422, "{engine}: {v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(needle),
                "{engine}: {v}"
            );
        }
        c.task.abort();
    }
}
