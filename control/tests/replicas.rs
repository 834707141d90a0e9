//! Two control-plane replicas on one database: writes through either are published as
//! distinct versions, and the newest snapshot holds every write, even when they race.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ADMIN_KEY, Api, control, stores};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_replicas_lose_no_write() {
    for (engine, url, _dir) in stores().await {
        let a = control(&url).await;
        let b = control(&url).await;
        let (api_a, api_b) = (
            Api::new(a.addr, Some(ADMIN_KEY)),
            Api::new(b.addr, Some(ADMIN_KEY)),
        );
        let mut writes = Vec::new();
        for i in 0..8 {
            let api = if i % 2 == 0 {
                api_a.clone()
            } else {
                api_b.clone()
            };
            writes.push(tokio::spawn(async move {
                api.post(
                    "/profiles",
                    json!({"name": format!("p{i}"), "require_virtual_key": false}),
                )
                .await
            }));
        }
        for w in writes {
            let (s, v) = w.await.unwrap();
            assert_eq!(s, 201, "{engine}: {v}");
        }
        // The newest version, whichever replica wrote it, holds all eight profiles.
        let roles = api_a.get("/roles").await.1;
        let proxy_role = roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "proxy")
            .unwrap()["id"]
            .clone();
        let m = api_a
            .create(
                "/members",
                json!({"name": "px", "email": "px@example.com", "role_id": proxy_role}),
            )
            .await;
        let key = api_a
            .create("/admin-keys", json!({"member_id": m["id"], "name": "px"}))
            .await["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let (_, snap) = api_b.with_key(&key).get("/snapshots/watch?after=0").await;
        let v = snap["version"].as_u64().unwrap();
        let (_, latest_a) = api_a
            .with_key(&key)
            .get(&format!(
                "/snapshots/watch?after={}&timeout_ms=3000",
                v.saturating_sub(1)
            ))
            .await;
        let newest = if latest_a["version"].as_u64() > Some(v) {
            latest_a
        } else {
            snap
        };
        for i in 0..8 {
            assert!(
                newest["config"]["profiles"][format!("p{i}")].is_object(),
                "{engine}: p{i} missing from {}",
                newest["version"]
            );
        }
        a.task.abort();
        b.task.abort();
    }
}
