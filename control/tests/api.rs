//! The admin API on SQLite and PostgreSQL: every route group, RBAC denials for each built-in
//! role and a custom one, snapshots, idempotent usage ingestion, and a scan for secrets in
//! every response after creation and in every log line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, Api, control, logs, stores};
use serde_json::{Value, json};
use sluice_control::auth::{member_permissions, proxy_permissions};
use sluice_control::openapi::Method;

const PROVIDER_CANARY: &str = "sk-canary-provider-77f3c1d2e5";

fn path_of(route: &str) -> String {
    route.replace("{id}", "missing_0000")
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_group_on_every_store() {
    for (engine, url, _dir) in stores().await {
        eprintln!("== {engine}");
        suite(&url).await;
    }
}

async fn suite(url: &str) {
    let running = control(url).await;
    let anon = Api::new(running.addr, None);
    let admin = anon.with_key(ADMIN_KEY);

    // --- authentication
    assert_eq!(anon.get("/me").await.0, 401);
    let bogus = anon
        .with_key("sluice-admin-00000000000000aa-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
    let (s, v) = bogus.get("/me").await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["type"], "unauthorized");
    let (s, me) = admin.get("/me").await;
    assert_eq!(s, 200);
    assert_eq!(me["role"], "admin");

    // --- organisations
    let org = admin
        .create("/organisations", json!({"name": "other-org"}))
        .await;
    assert!(org["id"].as_str().unwrap().starts_with("org_"));
    assert_eq!(
        admin
            .post("/organisations", json!({"name": "other-org"}))
            .await
            .0,
        409
    );
    assert_eq!(
        admin.get("/organisations").await.1["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // --- teams
    let team_a = admin.create("/teams", json!({"name": "team-a"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let team_b = admin.create("/teams", json!({"name": "team-b"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(admin.post("/teams", json!({"name": "team-a"})).await.0, 409);
    assert_eq!(admin.post("/teams", json!({"name": ""})).await.0, 422);
    assert_eq!(admin.post("/teams", json!({"nam": "x"})).await.0, 422);
    assert_eq!(admin.call("POST", "/teams", None).await.0, 400);
    assert_eq!(
        admin.get(&format!("/teams/{team_a}")).await.1["name"],
        "team-a"
    );
    assert_eq!(admin.get("/teams/team_nope").await.0, 404);

    // --- roles: built-ins, a custom one, and what a custom role may not grant
    let (_, roles) = admin.get("/roles").await;
    let role_id = |name: &str| {
        roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (member_role, proxy_role, admin_role) =
        (role_id("member"), role_id("proxy"), role_id("admin"));
    let auditor = admin
        .create(
            "/roles",
            json!({"name": "auditor", "permissions": ["logs:read", "profiles:read"]}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let nobody_role = admin
        .create("/roles", json!({"name": "nobody", "permissions": []}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        admin
            .post(
                "/roles",
                json!({"name": "x", "permissions": ["profiles:fly"]})
            )
            .await
            .0,
        422
    );
    assert_eq!(admin.delete(&format!("/roles/{member_role}")).await.0, 409);

    // --- members and their keys
    let mut keys = std::collections::HashMap::new();
    for (name, role, teams) in [
        ("alice", &member_role, vec![team_a.clone()]),
        ("audrey", &auditor, vec![]),
        ("nobody", &nobody_role, vec![]),
        ("proxy", &proxy_role, vec![]),
    ] {
        let m = admin
            .create("/members", json!({"name": name, "email": format!("{name}@example.com"), "role_id": role, "team_ids": teams}))
            .await;
        let k = admin
            .create(
                "/admin-keys",
                json!({"member_id": m["id"], "name": format!("{name}'s key")}),
            )
            .await;
        let key = k["key"].as_str().unwrap().to_owned();
        assert!(key.starts_with("sluice-admin-"));
        keys.insert(name, key);
    }
    assert_eq!(
        admin
            .post(
                "/members",
                json!({"name": "x", "email": "x@example.com", "role_id": "role_nope"})
            )
            .await
            .0,
        422
    );
    let alice = anon.with_key(&keys["alice"]);
    let audrey = anon.with_key(&keys["audrey"]);
    // A member cannot mint an admin, nor a role with more than they hold.
    assert_eq!(
        alice
            .post(
                "/roles",
                json!({"name": "up", "permissions": ["policies:write"]})
            )
            .await
            .0,
        403
    );
    let (_, listed) = admin.get("/admin-keys").await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("key").is_none())
    );
    let _ = admin_role;

    // --- credentials: stored sealed, never returned
    let cred = admin
        .create(
            "/credentials",
            json!({"name": "openai prod", "provider": "openai", "api_key": PROVIDER_CANARY}),
        )
        .await;
    assert!(cred.get("api_key").is_none());
    let cred_id = cred["id"].as_str().unwrap().to_owned();
    let anth = admin
        .create("/credentials", json!({"name": "anthropic prod", "provider": "anthropic", "api_key": format!("{PROVIDER_CANARY}-a")}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        admin
            .post(
                "/credentials",
                json!({"name": "n", "provider": "mistral", "api_key": "k"})
            )
            .await
            .0,
        422
    );

    // --- profiles, scoped by team
    let prof_a = admin
        .create(
            "/profiles",
            json!({"name": "prof-a", "team_id": team_a, "openai": {"credential_id": cred_id}}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let prof_b = admin
        .create(
            "/profiles",
            json!({"name": "prof-b", "team_id": team_b, "anthropic": {"credential_id": anth}}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        admin.post("/profiles", json!({"name": "v1beta"})).await.0,
        422
    );
    assert_eq!(
        admin
            .post(
                "/profiles",
                json!({"name": "p", "openai": {"credential_id": anth}})
            )
            .await
            .0,
        422
    );
    assert_eq!(
        admin.post("/profiles", json!({"name": "prof-a"})).await.0,
        409
    );
    let (_, seen_by_alice) = alice.get("/profiles").await;
    let names: Vec<_> = seen_by_alice["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("prof-a")]);
    assert_eq!(alice.get(&format!("/profiles/{prof_b}")).await.0, 404);
    assert_eq!(
        admin.delete(&format!("/credentials/{cred_id}")).await.0,
        409
    );

    // --- virtual keys: members issue them for their teams' profiles only
    let vk = alice
        .create("/virtual-keys", json!({"name": "ci", "profile_id": prof_a}))
        .await;
    let vk_key = vk["key"].as_str().unwrap().to_owned();
    let vk_id = vk["id"].as_str().unwrap().to_owned();
    assert!(vk_key.starts_with("sk-sluice-"));
    assert_eq!(
        alice
            .post("/virtual-keys", json!({"name": "x", "profile_id": prof_b}))
            .await
            .0,
        422
    );
    assert_eq!(
        alice
            .post(
                "/virtual-keys",
                json!({"name": "x", "profile_id": prof_a, "expires_at_ms": 1})
            )
            .await
            .0,
        422
    );
    let (_, one) = alice.get(&format!("/virtual-keys/{vk_id}")).await;
    assert!(one.get("key").is_none());

    // --- policies: compiled on write
    let pol = admin
        .create("/policies/invocation", json!({"id": "no-wire", "tool": {"source": "profile:*", "name": "wire_money"}, "action": "block"}))
        .await;
    let pol_id = pol["id"].as_str().unwrap().to_owned();
    assert_eq!(pol_id, "no-wire", "a policy's id is its document id");
    let (s, v) = admin
        .post(
            "/policies/invocation",
            json!({"id": "bad-re", "tool": {"source": "profile:*", "name": "x"}, "action": "block",
            "conditions": [{"path": "to", "op": "regex", "value": "("}]}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(
        admin.post("/policies/invocation", json!({"id": "no-wire", "tool": {"source": "profile:*", "name": "y"}, "action": "block"})).await.0,
        409
    );
    let (s, v) = admin
        .put(&format!("/policies/invocation/{pol_id}"), json!({"id": "no-wire", "tool": {"source": "profile:*", "name": "wire_money"}, "action": "require_approval"}))
        .await;
    assert_eq!(s, 200, "{v}");
    admin
        .create("/policies/result", json!({"id": "web-untrusted", "tool": {"source": "profile:*", "name": "fetch_url"}, "action": "untrusted"}))
        .await;
    assert_eq!(audrey.get("/policies/invocation").await.0, 403);

    // --- the other document kinds
    let price = admin
        .create("/prices", json!({"provider": "openai", "model": "gpt-4o-mini", "input_per_mtok_usd": 0.15, "output_per_mtok_usd": 0.6}))
        .await;
    assert_eq!(admin.post("/prices", json!({"provider": "openai", "model": "m", "input_per_mtok_usd": -1, "output_per_mtok_usd": 0})).await.0, 422);
    admin
        .create("/limits", json!({"name": "team-a-daily", "scope": "team", "target": team_a, "window": "day", "max_cost_usd": 10.0}))
        .await;
    assert_eq!(
        admin
            .post(
                "/limits",
                json!({"name": "l", "scope": "team", "window": "day", "max_tokens": 5})
            )
            .await
            .0,
        422
    );
    admin
        .create("/optimisation-rules", json!({"name": "small-to-mini", "provider": "openai", "max_input_tokens": 500, "use_model": "gpt-4o-mini"}))
        .await;
    admin
        .create("/mcp-servers", json!({"name": "github", "team_id": team_a, "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"}))
        .await;
    assert_eq!(
        admin
            .post("/mcp-servers", json!({"name": "s", "transport": "stdio"}))
            .await
            .0,
        422
    );
    assert_eq!(
        alice.get("/mcp-servers").await.1["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let tool = admin
        .create(
            "/tools",
            json!({"source": "profile:prof-a", "name": "wire_money", "description": "moves money"}),
        )
        .await;
    assert_eq!(tool["origin"], "declared");
    let price_id = price["id"].as_str().unwrap();
    assert_eq!(admin.delete(&format!("/prices/{price_id}")).await.0, 204);
    assert_eq!(admin.get(&format!("/prices/{price_id}")).await.0, 404);

    // --- approvals
    assert_eq!(
        admin.post("/approvals", json!({"call_id": "nope"})).await.0,
        422
    );
    let call_id = format!("apr_{}", "ab".repeat(16));
    let appr = admin
        .create(
            "/approvals",
            json!({"call_id": call_id, "note": "ok once", "ttl_secs": 60}),
        )
        .await;
    assert_eq!(
        admin.get("/approvals").await.1["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // --- snapshots: what proxies get, digests and sealed credentials only
    let proxy = anon.with_key(&keys["proxy"]);
    let (s, snap) = proxy.get("/snapshots/latest").await;
    assert_eq!(s, 200);
    let cfg = &snap["config"];
    assert!(cfg["profiles"]["prof-a"]["openai"]["api_key_sealed"]["ciphertext"].is_string());
    assert_eq!(cfg["profiles"]["prof-a"]["require_virtual_key"], true);
    assert_eq!(cfg["profiles"]["prof-a"]["team"], "team-a");
    assert_eq!(cfg["virtual_keys"].as_array().unwrap().len(), 1);
    assert_eq!(cfg["approvals"][0]["id"], json!(call_id));
    assert_eq!(
        cfg["policies"]["invocation"][0]["action"],
        "require_approval"
    );
    let version = snap["version"].as_u64().unwrap();
    // The long poll answers at once for an older version, and with 204 when nothing changes.
    let (s, _) = proxy
        .get(&format!(
            "/snapshots/watch?after={}&timeout_ms=1",
            version - 1
        ))
        .await;
    assert_eq!(s, 200);
    let (s, _) = proxy
        .get(&format!("/snapshots/watch?after={version}&timeout_ms=50"))
        .await;
    assert_eq!(s, 204);
    // A revocation publishes a version without the key, to a proxy already waiting.
    let waiter = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            proxy
                .get(&format!(
                    "/snapshots/watch?after={version}&timeout_ms=10000"
                ))
                .await
        })
    };
    assert_eq!(alice.delete(&format!("/virtual-keys/{vk_id}")).await.0, 204);
    let (s, next) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, 200);
    assert!(next["version"].as_u64().unwrap() > version);
    assert_eq!(next["config"]["virtual_keys"].as_array().unwrap().len(), 0);
    assert_eq!(alice.delete(&format!("/virtual-keys/{vk_id}")).await.0, 409);
    assert_eq!(
        admin
            .delete(&format!("/approvals/{}", appr["id"].as_str().unwrap()))
            .await
            .0,
        204
    );

    // --- usage: idempotent per (proxy, seq); discovered tools; logs and sums
    let rec = |seq: u64| {
        json!({"seq": seq, "ts_ms": 1_000 + seq, "request_id": format!("r{seq}"), "profile": "prof-a",
            "key_id": vk_id, "provider": "openai", "api": "chat_completions", "model": "gpt-4o-mini",
            "status": 200, "input_tokens": 10, "output_tokens": 5, "cache_read_tokens": 0,
            "cache_write_tokens": 0, "reasoning_tokens": 0, "cost_micros": null, "duration_us": 900,
            "ttfb_us": 300, "refused": seq == 2, "trusted": true, "tool_calls": ["lookup"],
            "decisions": [], "request_body": null, "response_body": null})
    };
    let batch = json!({"proxy_id": "px-test", "records": [rec(1), rec(2), rec(3)]});
    let (s, ack) = proxy.post("/usage/batches", batch.clone()).await;
    assert_eq!(
        (s, ack["acked_seq"].clone(), ack["inserted"].clone()),
        (200, json!(3), json!(3))
    );
    let (_, ack) = proxy.post("/usage/batches", batch).await;
    assert_eq!(ack["inserted"], 0, "a resent batch inserts nothing");
    assert_eq!(
        alice
            .post("/usage/batches", json!({"proxy_id": "p", "records": []}))
            .await
            .0,
        403
    );
    let (_, sum) = admin.get("/usage/summary").await;
    assert_eq!(
        (
            sum["requests"].clone(),
            sum["input_tokens"].clone(),
            sum["output_tokens"].clone()
        ),
        (json!(3), json!(30), json!(15))
    );
    let (_, logs_page) = admin.get("/logs/llm?limit=2&refused=true").await;
    assert_eq!(logs_page["items"].as_array().unwrap().len(), 1);
    assert_eq!(logs_page["items"][0]["seq"], 2);
    let (_, page1) = admin.get("/logs/llm?limit=2").await;
    assert_eq!(page1["next_offset"], 2);
    assert_eq!(
        alice.get("/usage/summary").await.0,
        200,
        "members read their teams' usage"
    );
    let (_, tools) = admin.get("/tools?limit=500").await;
    assert!(
        tools["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "lookup" && t["origin"] == "discovered")
    );
    // MCP records go to their own log, once per (proxy, seq), not into the LLM sums.
    let mcp = |seq: u64, tool: &str, status: &str| {
        json!({"seq": seq, "ts_ms": 2_000 + seq, "profile": "prof-a", "key_id": vk_id,
            "provider": "mcp", "api": "tools/call", "status": 200, "input_tokens": 0,
            "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
            "reasoning_tokens": 0, "cost_micros": null, "duration_us": 700, "ttfb_us": null,
            "refused": status == "refused", "trusted": true, "tool_calls": [tool],
            "decisions": [{"policy": "p1", "action": "block"}], "request_body": null,
            "response_body": null,
            "mcp": {"server": "mail", "method": "tools/call", "tool": tool, "status": status,
                "session": "5e55"}})
    };
    let batch = json!({"proxy_id": "px-test", "records": [mcp(4, "send_email", "refused"),
        mcp(5, "read_inbox", "ok")]});
    let (_, ack) = proxy.post("/usage/batches", batch.clone()).await;
    assert_eq!(
        (ack["acked_seq"].clone(), ack["inserted"].clone()),
        (json!(5), json!(2))
    );
    let (_, ack) = proxy.post("/usage/batches", batch).await;
    assert_eq!(ack["inserted"], 0, "a resent MCP batch inserts nothing");
    let (_, sum) = admin.get("/usage/summary").await;
    assert_eq!(sum["requests"], 3, "MCP calls are not LLM requests");
    let (s, mcp_logs) = admin.get("/logs/mcp").await;
    assert_eq!(s, 200);
    let items = mcp_logs["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        (
            items[0]["seq"].clone(),
            items[0]["tool"].clone(),
            items[0]["profile"].clone(),
            items[0]["session_id"].clone()
        ),
        (
            json!(5),
            json!("read_inbox"),
            json!("prof-a"),
            json!("5e55")
        )
    );
    let (_, refused) = admin.get("/logs/mcp?status=refused&server=mail").await;
    let refused = refused["items"].as_array().unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["tool"], "send_email");
    assert_eq!(refused[0]["decisions"][0]["action"], "block");
    let (_, none) = admin.get("/logs/mcp?profile=someone-else").await;
    assert_eq!(none["items"].as_array().unwrap().len(), 0);
    let (s, theirs) = alice.get("/logs/mcp?tool=send_email").await;
    assert_eq!(
        (s, theirs["items"].as_array().map(Vec::len)),
        (200, Some(1)),
        "members read their teams' MCP calls"
    );
    assert_eq!(admin.get("/logs/llm?limit=0").await.0, 400);
    let (_, proxies) = admin.get("/proxies").await;
    assert!(
        proxies["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["proxy_id"] == "px-test" && p["acked_seq"] == 5)
    );

    // --- every route, every role: a role without the route's permission gets 403, and no
    // key at all gets 401. The route table is the one the router was built from.
    let (_, _, routes) = sluice_control::routes::api(running.state.clone());
    let openapi = anon.get("/openapi.json").await.1;
    let nobody = anon.with_key(&keys["nobody"]);
    for r in &routes {
        let p = path_of(r.path);
        let m = method_name(r.method);
        let body = matches!(r.method, Method::Post | Method::Put).then(|| json!({}));
        assert_eq!(
            anon.call(m, &p, body.clone()).await.0,
            401,
            "{m} {p} without a key"
        );
        assert_eq!(
            nobody.call(m, &p, body.clone()).await.0,
            403,
            "{m} {p} for a role without permissions"
        );
        if !member_permissions().contains(&r.perm) {
            assert_eq!(
                alice.call(m, &p, body.clone()).await.0,
                403,
                "{m} {p} as member"
            );
        }
        if !proxy_permissions().contains(&r.perm) {
            assert_eq!(
                proxy.call(m, &p, body.clone()).await.0,
                403,
                "{m} {p} as proxy"
            );
        }
        if !["logs:read", "profiles:read"].contains(&r.perm.to_string().as_str()) {
            assert_eq!(
                audrey.call(m, &p, body.clone()).await.0,
                403,
                "{m} {p} as auditor"
            );
        }
        let documented = &openapi["paths"][format!("/api/v1{}", r.path)][m.to_lowercase()];
        assert_eq!(
            documented["x-permission"],
            json!(r.perm.to_string()),
            "{m} {p} is documented with its permission"
        );
    }

    // --- no secret in any response after creation, nor in any log line
    let created_keys: Vec<String> = keys.values().cloned().chain([vk_key.clone()]).collect();
    let seen: Vec<String> = [&anon, &admin, &alice, &audrey, &proxy, &nobody, &bogus]
        .iter()
        .flat_map(|a| a.seen.lock().unwrap().clone())
        .collect();
    let log_text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    for body in seen.iter().chain(std::iter::once(&log_text)) {
        assert!(
            !body.contains(PROVIDER_CANARY),
            "a provider key leaked: {body:.300}"
        );
        assert!(!body.contains(ADMIN_KEY), "the bootstrap admin key leaked");
        for k in &created_keys {
            // The one creation response that returns each key is excluded by shape: it is
            // the only body with a top-level "key" equal to it.
            let creation = serde_json::from_str::<Value>(body)
                .ok()
                .is_some_and(|v| v["key"] == json!(k));
            assert!(
                creation || !body.contains(k.as_str()),
                "a key leaked after creation: {body:.300}"
            );
        }
    }
    // --- the control plane's own metrics: by route template, never by id
    let (s, text) = anon
        .text(&format!("http://{}/metrics", running.metrics_addr.unwrap()))
        .await;
    assert_eq!(s, 200);
    assert!(
        text.contains(
            r#"control_api_requests_total{method="POST",route="/api/v1/teams",status="201"} 2"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"route="/api/v1/teams/{id}""#));
    assert!(!text.contains("team_"), "an id became a label");
    assert!(text.contains("control_usage_records_total 5"));
    assert!(text.contains("control_usage_batches_total 4"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("control_snapshots_published_total ") && !l.ends_with(" 0"))
    );
    common::promtool_accepts(&text);
    running.task.abort();
}
