//! The MCP server runtime on Kubernetes, against an in-process fake of the API server's
//! paths: the objects sent for an HTTP image and a stdio image, no writes when nothing
//! changed, a changed environment rolling only its server, restart, status, logs,
//! deletion, and snapshots addressing the servers through their Services.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::fake_kube::{FakeKube, FakeState};
use common::{ADMIN_KEY, Api, control, control_with};
use serde_json::{Value, json};
use sluice_control::runtime::{KubeApi, RuntimeConfig, RuntimeSettings};

const NS: &str = "/namespaces/mcp-test";

fn path(kind: &str, name: &str) -> String {
    let group = match kind {
        "deployments" => "/apis/apps/v1",
        "networkpolicies" => "/apis/networking.k8s.io/v1",
        _ => "/api/v1",
    };
    format!("{group}{NS}/{kind}/{name}")
}

const KINDS: [&str; 4] = ["deployments", "services", "secrets", "networkpolicies"];

fn has_all(st: &FakeState, name: &str) -> bool {
    KINDS
        .iter()
        .all(|k| st.objects.contains_key(&path(k, name)))
}

fn b64(v: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

fn config(fake: &FakeKube) -> RuntimeConfig {
    RuntimeConfig {
        api: KubeApi::Url(fake.url.clone()),
        settings: RuntimeSettings {
            namespace: "mcp-test".into(),
            bridge_image: "registry.example/sluice:test".into(),
            ..Default::default()
        },
        // Only snapshots (and explicit calls) trigger reconciliation in this test.
        resync: Duration::from_secs(3600),
    }
}

fn writes_since(fake: &FakeKube, mark: usize) -> Vec<String> {
    fake.requests()[mark..]
        .iter()
        .filter(|r| r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_servers_run_on_kubernetes() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    let c = control_with(&url, Some(config(&fake))).await;
    let api = Api::new(c.addr, Some(ADMIN_KEY));

    let web = api
        .create(
            "/mcp-servers",
            json!({"name": "web", "transport": "streamable_http",
                "image": "ghcr.io/acme/web-mcp:1.0", "port": 3000, "path": "/api/mcp",
                "env": {"API_TOKEN": "t0ps3cret"}, "egress": ["140.82.112.0/20"]}),
        )
        .await;
    let files = api
        .create(
            "/mcp-servers",
            json!({"name": "fs", "transport": "stdio", "image": "ghcr.io/acme/files-mcp:2",
                "command": ["node", "server.js", "--root", "/data"], "env": {"ROOT": "/data"}}),
        )
        .await;
    let remote = api
        .create(
            "/mcp-servers",
            json!({"name": "remote", "transport": "streamable_http",
                "url": "https://mcp.example.com/mcp"}),
        )
        .await;

    // Every write publishes a snapshot, and every snapshot starts a reconciliation.
    fake.wait_for("both servers' four objects", |st| {
        has_all(st, "sluice-mcp-web") && has_all(st, "sluice-mcp-fs")
    })
    .await;
    let applies: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert!(applies.iter().all(|r| {
        r.content_type.starts_with("application/apply-patch")
            && r.query.get("fieldManager").map(String::as_str) == Some("sluice-control")
            && r.query.get("force").map(String::as_str) == Some("true")
    }));
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.path.contains("sluice-mcp-remote")),
        "a server with its own URL is not run"
    );

    // The HTTP image: its port, its environment from the Secret, no API token, locked down.
    let d = fake
        .object(&path("deployments", "sluice-mcp-web"))
        .expect("deployment");
    let pod = &d["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "ghcr.io/acme/web-mcp:1.0");
    assert_eq!(container["ports"][0]["containerPort"], 3000);
    assert_eq!(
        container["envFrom"][0]["secretRef"]["name"],
        "sluice-mcp-web"
    );
    assert_eq!(container["readinessProbe"]["tcpSocket"]["port"], 3000);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(
        d["spec"]["selector"]["matchLabels"]["sluice.dev/mcp-server"],
        "sluice-mcp-web"
    );
    assert_eq!(
        d["spec"]["template"]["metadata"]["labels"]["sluice.dev/mcp-server"],
        "sluice-mcp-web"
    );
    let first_config_hash =
        d["spec"]["template"]["metadata"]["annotations"]["sluice.dev/config-hash"]
            .as_str()
            .expect("config hash")
            .to_owned();
    let s = fake
        .object(&path("secrets", "sluice-mcp-web"))
        .expect("secret");
    assert_eq!(b64(&s["data"]["API_TOKEN"]), "t0ps3cret");
    let svc = fake
        .object(&path("services", "sluice-mcp-web"))
        .expect("service");
    assert_eq!(svc["spec"]["ports"][0]["port"], 3000);
    assert_eq!(
        svc["spec"]["selector"]["sluice.dev/mcp-server"],
        "sluice-mcp-web"
    );
    let np = fake
        .object(&path("networkpolicies", "sluice-mcp-web"))
        .expect("network policy");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let ingress = &np["spec"]["ingress"][0];
    assert_eq!(
        ingress["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "sluice-proxy"
    );
    assert_eq!(ingress["ports"][0]["port"], 3000);
    let egress = np["spec"]["egress"].as_array().expect("egress");
    assert_eq!(egress.len(), 2, "DNS, then the declared ranges: {egress:?}");
    assert_eq!(egress[0]["ports"][0]["port"], 53);
    assert!(egress[0].get("to").is_none());
    assert_eq!(egress[1]["to"][0]["ipBlock"]["cidr"], "140.82.112.0/20");

    // The stdio image: the bridge installed by an init container serves its command.
    let d = fake
        .object(&path("deployments", "sluice-mcp-fs"))
        .expect("deployment");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(
        pod["initContainers"][0]["image"],
        "registry.example/sluice:test"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "ghcr.io/acme/files-mcp:2");
    assert_eq!(
        container["command"],
        json!([
            "/opt/sluice/sluice",
            "proxy",
            "--config",
            "/etc/sluice-bridge/bridge.toml"
        ])
    );
    let s = fake
        .object(&path("secrets", "sluice-mcp-fs"))
        .expect("secret");
    let bridge = b64(&s["data"]["bridge.toml"]);
    let raw = sluice_proxy::config::parse_toml(&bridge).expect("the bridge config parses");
    let cfg = sluice_proxy::config::compile(raw.clone(), &Default::default())
        .expect("the bridge config is valid");
    assert_eq!(cfg.listen, "0.0.0.0:8080");
    let server = &raw.mcp_servers["fs"];
    assert_eq!(server.command, ["node", "server.js", "--root", "/data"]);
    assert_eq!(server.env["ROOT"], "/data");
    assert_eq!(raw.profiles["bridge"].mcp_servers, ["fs"]);

    // Proxies reach both through their Services.
    let (_, snap) = api.get("/snapshots/latest").await;
    let servers = &snap["config"]["mcp_servers"];
    assert_eq!(
        servers["web"]["url"],
        "http://sluice-mcp-web.mcp-test.svc.cluster.local:3000/api/mcp"
    );
    assert_eq!(
        servers["fs"]["url"],
        "http://sluice-mcp-fs.mcp-test.svc.cluster.local:8080/v1/mcp/bridge"
    );
    assert!(
        servers["fs"]["command"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    assert_eq!(servers["remote"]["url"], "https://mcp.example.com/mcp");

    // Nothing changed: nothing is written (no pod restarts).
    let mark = fake.requests().len();
    let (s, report) = api.post("/mcp-runtime/reconcile", json!({})).await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["applied"], json!([]), "{report}");
    assert_eq!(report["unchanged"].as_array().expect("list").len(), 8);
    assert_eq!(writes_since(&fake, mark), Vec::<String>::new());

    // A changed environment rewrites that server's Secret and rolls its Deployment only.
    let web_id = web["id"].as_str().expect("id");
    let mark = fake.requests().len();
    let (s, v) = api
        .put(
            &format!("/mcp-servers/{web_id}"),
            json!({"name": "web", "transport": "streamable_http",
                "image": "ghcr.io/acme/web-mcp:1.0", "port": 3000, "path": "/api/mcp",
                "env": {"API_TOKEN": "n3w-s3cret"}, "egress": ["140.82.112.0/20"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let dpath = path("deployments", "sluice-mcp-web");
    fake.wait_for("the web Deployment rolled", |st| {
        st.objects[&dpath]["spec"]["template"]["metadata"]["annotations"]["sluice.dev/config-hash"]
            .as_str()
            != Some(first_config_hash.as_str())
    })
    .await;
    let (_, report) = api.post("/mcp-runtime/reconcile", json!({})).await;
    assert_eq!(report["applied"], json!([]), "{report}");
    assert_eq!(
        writes_since(&fake, mark),
        [
            format!("PATCH {}", path("secrets", "sluice-mcp-web")),
            format!("PATCH {dpath}")
        ]
    );
    let s = fake
        .object(&path("secrets", "sluice-mcp-web"))
        .expect("secret");
    assert_eq!(b64(&s["data"]["API_TOKEN"]), "n3w-s3cret");

    // Restart on request: a merge patch on the pod template, which reconciling keeps.
    let mark = fake.requests().len();
    let (s, v) = api
        .post(&format!("/mcp-servers/{web_id}/restart"), json!({}))
        .await;
    assert_eq!(s, 202, "{v}");
    let at = v["restarted_at"].as_str().expect("time").to_owned();
    let reqs = fake.requests();
    let patch = reqs[mark..]
        .iter()
        .find(|r| r.method == "PATCH")
        .expect("restart patch");
    assert_eq!(patch.path, dpath);
    assert!(
        patch
            .content_type
            .starts_with("application/merge-patch+json")
    );
    let (_, report) = api.post("/mcp-runtime/reconcile", json!({})).await;
    assert_eq!(report["applied"], json!([]), "{report}");
    let d = fake.object(&dpath).expect("deployment");
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["sluice.dev/restarted-at"],
        at.as_str()
    );

    // Status and logs, as the cluster reports them.
    {
        let mut st = fake.state.lock().expect("lock");
        st.objects.get_mut(&dpath).expect("deployment")["status"] = json!({
            "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
            "conditions": [{"type": "Available", "status": "True",
                "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."}]});
        st.objects.insert(
            path("pods", "sluice-mcp-web-7d9f-x2x"),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "sluice-mcp-web-7d9f-x2x", "namespace": "mcp-test",
                    "labels": {"sluice.dev/mcp-server": "sluice-mcp-web"}},
                "status": {"phase": "Running", "containerStatuses": [{"name": "server",
                    "ready": true, "restartCount": 2, "image": "ghcr.io/acme/web-mcp:1.0",
                    "imageID": "", "state": {"running": {}}}]}}),
        );
        st.logs.insert(
            "sluice-mcp-web-7d9f-x2x".into(),
            "listening on :3000\nGET /api/mcp 200\n".into(),
        );
    }
    let (s, v) = api.get(&format!("/mcp-servers/{web_id}/runtime")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["deployed"], true);
    assert_eq!(v["ready_replicas"], 1);
    assert_eq!(v["conditions"][0]["type"], "Available");
    assert_eq!(v["pods"][0]["restarts"], 2);
    assert_eq!(v["pods"][0]["ready"], true);
    assert_eq!(
        v["url"],
        "http://sluice-mcp-web.mcp-test.svc.cluster.local:3000/api/mcp"
    );
    let (s, v) = api
        .get(&format!("/mcp-servers/{web_id}/logs?tail_lines=50"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["pods"][0]["pod"], "sluice-mcp-web-7d9f-x2x");
    assert!(
        v["pods"][0]["log"]
            .as_str()
            .expect("log")
            .contains("GET /api/mcp 200")
    );
    let log_req = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path.ends_with("/log"))
        .expect("log request");
    assert_eq!(log_req.query["tailLines"], "50");
    assert_eq!(log_req.query["container"], "server");
    let (s, v) = api
        .get(&format!("/mcp-servers/{web_id}/logs?tail_lines=0"))
        .await;
    assert_eq!(s, 400, "{v}");

    // A server with its own URL is not the runtime's.
    let remote_id = remote["id"].as_str().expect("id");
    let (s, v) = api.get(&format!("/mcp-servers/{remote_id}/runtime")).await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("image")
    );

    // A deleted server's objects are deleted; the other server's stay.
    let (s, _) = api
        .delete(&format!(
            "/mcp-servers/{}",
            files["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(s, 204);
    fake.wait_for("the fs server's objects deleted", |st| {
        KINDS
            .iter()
            .all(|k| !st.objects.contains_key(&path(k, "sluice-mcp-fs")))
    })
    .await;
    let deletes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path)
        .collect();
    assert_eq!(deletes.len(), 4, "{deletes:?}");
    let st = fake.state.lock().expect("lock");
    assert!(has_all(&st, "sluice-mcp-web"));
    drop(st);

    // No environment value reached the control plane's log.
    let logged = String::from_utf8_lossy(&common::logs().lock().expect("lock")).into_owned();
    assert!(!logged.contains("t0ps3cret") && !logged.contains("n3w-s3cret"));
    c.task.abort();
}

#[tokio::test]
async fn without_the_runtime_image_servers_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    let c = control(&url).await;
    let api = Api::new(c.addr, Some(ADMIN_KEY));
    let web = api
        .create(
            "/mcp-servers",
            json!({"name": "web", "transport": "streamable_http", "image": "ghcr.io/acme/web:1"}),
        )
        .await;
    let id = web["id"].as_str().expect("id");
    let (s, v) = api.get(&format!("/mcp-servers/{id}/runtime")).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["type"], "conflict");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("--kube")
    );
    let (s, _) = api.post("/mcp-runtime/reconcile", json!({})).await;
    assert_eq!(s, 409);
    // Not served by proxies until something runs it.
    let (_, snap) = api.get("/snapshots/latest").await;
    assert!(snap["config"]["mcp_servers"].get("web").is_none());

    // Bad runtime fields are refused with the reason.
    for (body, needle) in [
        (
            json!({"name": "a", "transport": "stdio", "image": "x/y:1"}),
            "command",
        ),
        (
            json!({"name": "b", "transport": "streamable_http", "image": "x/y:1", "egress": ["10.0.0.0"]}),
            "CIDR",
        ),
        (
            json!({"name": "c", "transport": "streamable_http", "url": "http://h/mcp", "port": 80}),
            "image",
        ),
        (
            json!({"name": "d", "transport": "streamable_http", "image": "x/y:1", "path": "mcp"}),
            "path",
        ),
    ] {
        let (s, v) = api.post("/mcp-servers", body).await;
        assert_eq!(s, 422, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .expect("message")
                .contains(needle),
            "{v}"
        );
    }
    c.task.abort();
}
