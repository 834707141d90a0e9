//! The MCP gateway end to end: a client on a real socket, the gateway in the proxy, the
//! fixture MCP server (written from the specification) behind it over HTTP. Both eras,
//! aggregation, SSE answers with progress, taint across a session, the same refusal
//! through the LLM proxy and through `tools/call`, a rug pull withheld, upstream session
//! expiry handled transparently, and Origin checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::mcp::*;
use common::{post_json, promtool_check, sample, scrape, send};
use serde_json::{Value, json};

#[test]
fn legacy_session_lists_calls_and_refuses_after_taint() {
    let s = setup("");
    let c = Legacy::open(&s);
    let list = answer(&c.post(&rpc(2, "tools/list", json!({}))));
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"fx__send_email") && names.contains(&"fx__add"),
        "{names:?}"
    );
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "tool order is stable");
    assert!(
        list["result"].get("resultType").is_none(),
        "legacy results carry no resultType"
    );

    let sum = c.call(3, "fx__add", json!({"a": 2, "b": 40}));
    assert_eq!(sum["result"]["structuredContent"]["sum"], 42.0, "{sum}");
    assert_eq!(sum["id"], 3);
    // Before any untrusted content, email is allowed.
    let ok = c.call(4, "fx__send_email", json!({"to": "bob@example.com"}));
    assert_eq!(
        ok["result"]["content"][0]["text"],
        "Email sent to bob@example.com."
    );
    // The inbox is untrusted: afterwards email is refused, adding still works.
    c.call(5, "fx__read_inbox", json!({}));
    let refused = c.call(6, "fx__send_email", json!({"to": "attacker@evil.example"}));
    let r = &refused["result"];
    assert_eq!(r["isError"], true, "{refused}");
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("[sluice:policy_denied policy=no-email-after-untrusted]"),
        "{text}"
    );
    assert_eq!(
        r["_meta"]["sluice/refusal"]["decision"]["tool"],
        "mcp:fx/send_email"
    );
    let calls = s.fixture.fixture.calls.lock().unwrap().clone();
    assert_eq!(
        calls.get("send_email"),
        Some(&1),
        "the refused call never reached the server"
    );
    assert_eq!(
        c.call(7, "fx__add", json!({"a": 1, "b": 1}))["result"]["structuredContent"]["sum"],
        2.0
    );
    // Each call is counted by server, tool and status (recorded before its answer left).
    let exposition = scrape(&s.h);
    let calls = |tool: &str, status: &str| {
        let labels = [
            "server=\"fx\"".to_owned(),
            format!("tool=\"{tool}\""),
            format!("status=\"{status}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        sample(&exposition, "mcp_tool_calls_total", &labels)
    };
    assert_eq!(calls("add", "ok"), Some(2.0), "{exposition}");
    assert_eq!(calls("send_email", "ok"), Some(1.0));
    assert_eq!(calls("send_email", "refused"), Some(1.0));
    assert_eq!(calls("read_inbox", "ok"), Some(1.0), "{exposition}");
    let timed = sample(
        &exposition,
        "mcp_tool_call_duration_seconds_count",
        &["tool=\"add\"", "status=\"ok\""],
    );
    assert_eq!(timed, Some(2.0));
    promtool_check(&exposition);

    // The same call through the LLM proxy, after the same untrusted result, gets the same
    // decision and the same sentence.
    let body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "read my inbox"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "fx__read_inbox", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "an email"}],
        "tools": [{"type": "function", "function": {"name": "fx__send_email", "parameters": {"type": "object"}}}]});
    let llm = s.h.rt.block_on(post_json(
        s.h.addr(),
        "/v1/openai/tools/chat/completions",
        &[
            ("x-mock-tools", "fx__send_email"),
            ("x-mock-tool-args", r#"{"to":"attacker@evil.example"}"#),
        ],
        &body,
    ));
    let said = llm.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        said.contains(text),
        "LLM refusal {said:?} should contain the MCP one {text:?}"
    );

    // The session's journal records: the refused call is there with its decision.
    let r = c.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    assert_eq!(r.status, 202);
    // DELETE ends the session; it is then unknown (404).
    let d = s.h.rt.block_on(send(
        s.h.addr(),
        "DELETE",
        "/v1/mcp/tools",
        &[("mcp-session-id", c.sid.as_str())],
        b"",
    ));
    assert_eq!(d.status, 200);
    assert_eq!(c.post(&rpc(8, "ping", json!({}))).status, 404);
    s.fixture.stop();
    drop(s.fixture_rt);
}

#[test]
fn progress_and_logs_stream_back_and_the_upstream_session_is_renewed() {
    let s = setup("era = \"legacy\"");
    let c = Legacy::open(&s);
    let r = c.post(&rpc(
        2,
        "tools/call",
        json!({"name": "fx__test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "tok-1"}}),
    ));
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream"),
        "{}",
        r.text()
    );
    let msgs = messages(&r);
    let progress: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{msgs:?}");
    assert!(
        progress
            .iter()
            .all(|p| p["params"]["progressToken"] == "tok-1"),
        "the client's token comes back"
    );
    assert_eq!(msgs.last().unwrap()["id"], 2);
    // The fixture forgets every session (a restart): the gateway re-initializes by itself.
    expire_fixture_sessions(&s);
    let sum = c.call(3, "fx__add", json!({"a": 20, "b": 22}));
    assert_eq!(sum["result"]["structuredContent"]["sum"], 42.0, "{sum}");
}

#[test]
fn stateless_era_checks_headers_and_tracks_a_conversation() {
    let s = setup("");
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}});
    let post = |method: &str, name: Option<&str>, conv: &str, params: Value| {
        let mut h = vec![
            ACCEPT,
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
            ("x-sluice-session-id", conv),
        ];
        if let Some(n) = name {
            h.push(("mcp-name", n));
        }
        s.h.rt.block_on(post_json(
            s.h.addr(),
            "/v1/mcp/tools",
            &h,
            &rpc(1, method, params),
        ))
    };
    let d = post("server/discover", None, "c1", json!({"_meta": meta}));
    assert_eq!(
        d.json()["result"]["supportedVersions"][0],
        "2026-07-28",
        "{}",
        d.text()
    );
    assert_eq!(d.json()["result"]["resultType"], "complete");
    let l = post("tools/list", None, "c1", json!({"_meta": meta}));
    assert_eq!(l.json()["result"]["resultType"], "complete");
    // Mcp-Name must match the body.
    let bad = post(
        "tools/call",
        Some("fx__other"),
        "c1",
        json!({"name": "fx__add", "arguments": {"a": 1, "b": 2}, "_meta": meta}),
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["code"], -32020);
    let call = |tool: &str, conv: &str, args: Value| {
        answer(&post(
            "tools/call",
            Some(tool),
            conv,
            json!({"name": tool, "arguments": args, "_meta": meta}),
        ))
    };
    assert_eq!(
        call("fx__add", "c1", json!({"a": 1, "b": 2}))["result"]["resultType"],
        "complete"
    );
    call("fx__read_inbox", "c1", json!({}));
    let refused = call("fx__send_email", "c1", json!({"to": "x@evil.example"}));
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    // Another conversation is not tainted by the first.
    let other = call("fx__send_email", "c2", json!({"to": "bob@example.com"}));
    assert!(other["result"].get("isError").is_none(), "{other}");
    // An unsupported version names the supported ones.
    let h = [
        ACCEPT,
        ("mcp-protocol-version", "2099-01-01"),
        ("mcp-method", "tools/list"),
    ];
    let v = s.h.rt.block_on(post_json(
        s.h.addr(),
        "/v1/mcp/tools",
        &h,
        &rpc(
            1,
            "tools/list",
            json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "2099-01-01"}}),
        ),
    ));
    assert_eq!(v.status, 400, "{}", v.text());
    assert_eq!(v.json()["error"]["code"], -32022);
    // GET and DELETE have no meaning in this era.
    assert_eq!(
        s.h.rt
            .block_on(send(s.h.addr(), "GET", "/v1/mcp/tools", &[ACCEPT], b""))
            .status,
        405
    );
}

#[test]
fn a_rug_pull_is_withheld_until_approved_and_foreign_origins_are_refused() {
    // Pin send_email's current definition.
    let tool = json!({"name": "send_email", "description": "Sends an email.", "inputSchema": {"type": "object",
        "properties": {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}}, "required": ["to"]}});
    let hash = sluice_proxy::mcp::aggregate::definition_hash(&tool);
    let s = setup(&format!(
        "era = \"legacy\"\ntool_pins = {{ send_email = \"{hash}\" }}"
    ));
    let c = Legacy::open(&s);
    let names = |c: &Legacy<'_>| -> Vec<String> {
        answer(&c.post(&rpc(2, "tools/list", json!({}))))["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&c),
        vec!["fx__send_email"],
        "only approved tools are listed"
    );
    // The client's GET stream: the gateway relays the server's list_changed there after
    // dropping its cached list, so seeing it is the signal to list again.
    let mut stream = s.h.rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut t = tokio::net::TcpStream::connect(s.h.addr()).await.unwrap();
        let req = format!(
            "GET /v1/mcp/tools HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\nmcp-session-id: {}\r\n\r\n",
            c.sid
        );
        t.write_all(req.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        wait_for(&mut t, &mut seen, b"id: 0").await;
        t
    });
    let pulled =
        s.fixture_rt
            .block_on(send(s.fixture.addr, "POST", "/_fixture/rug-pull", &[], b""));
    assert_eq!(pulled.status, 200);
    s.h.rt.block_on(async {
        let mut seen = Vec::new();
        wait_for(&mut stream, &mut seen, b"notifications/tools/list_changed").await;
    });
    let listed = names(&c);
    assert!(
        listed.is_empty(),
        "the changed tool is withheld: {listed:?}"
    );
    let r = c.call(3, "fx__send_email", json!({"to": "bob@example.com"}));
    let text = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        r["result"]["isError"] == true && text.contains("withheld"),
        "{r}"
    );
    // The admin listener shows what changed: the new hash, why it is withheld, and the
    // instruction-like phrase the rug pull planted in the description.
    let admin = s.h.rt.block_on(send(
        s.h.admin_addr(),
        "GET",
        "/admin/v1/mcp/tools",
        &[],
        b"",
    ));
    assert_eq!(admin.status, 200, "{}", admin.text());
    let listed = admin.json();
    let send_email = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "fx__send_email")
        .unwrap_or_else(|| panic!("{listed}"))
        .clone();
    assert_eq!(send_email["approved"], false, "{send_email}");
    assert_ne!(send_email["hash"], hash.as_str());
    assert!(
        send_email["withheld"].as_str().unwrap().contains("changed"),
        "{send_email}"
    );
    assert!(
        send_email["injection_flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().contains("<IMPORTANT>")),
        "{send_email}"
    );
    let add = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "fx__add")
        .unwrap();
    assert_eq!(add["approved"], false, "never approved: {add}");
    assert!(add["injection_flags"].as_array().unwrap().is_empty());
    // An admin re-approves the new definition (a new snapshot with its hash): the tool
    // is listed and served again.
    let toml = format!(
        "[profiles.tools]\nmcp_servers = [\"fx\"]\n[mcp_servers.fx]\nurl = \"{}\"\nera = \"legacy\"\ntool_pins = {{ send_email = \"{}\" }}\n{POLICIES}",
        s.fixture.url(),
        send_email["hash"].as_str().unwrap()
    );
    let config = sluice_proxy::config::compile(
        sluice_proxy::config::parse_toml(&toml).unwrap(),
        &sluice_proxy::config::Environment::default(),
    )
    .unwrap();
    s.h.live.store(config);
    let c = Legacy::open(&s);
    assert_eq!(names(&c), vec!["fx__send_email"], "approved again");
    let sent = c.call(4, "fx__send_email", json!({"to": "bob@example.com"}));
    assert!(sent["result"].get("isError").is_none(), "{sent}");
    let evil = s.h.rt.block_on(post_json(
        s.h.addr(),
        "/v1/mcp/tools",
        &[ACCEPT, ("origin", "http://evil.example")],
        &rpc(1, "ping", json!({})),
    ));
    assert_eq!(evil.status, 403);
}

/// Provenance on `tools/call`: the MCP request carries no user messages, but the LLM proxy
/// saw the user's chat in the same conversation (`X-Sluice-Session-Id`), so a URL the user
/// typed may be fetched after the session read untrusted email, and another may not.
#[test]
fn provenance_on_tools_call_sees_the_users_chat_in_the_same_conversation() {
    let s = setup(
        r#"
[[policies.invocation]]
id = "fetch-what-the-user-named"
tool = { source = "mcp:fx", name = "fetch_url" }
conditions = [{ path = "url", op = "fromUser" }]
action = "allow_when_untrusted"
"#,
    );
    let chat = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "Read my inbox, then fetch https://docs.example/q3-report/ for me."}]});
    let llm = s.h.rt.block_on(post_json(
        s.h.addr(),
        "/v1/openai/tools/chat/completions",
        &[("x-sluice-session-id", "conv-prov")],
        &chat,
    ));
    assert_eq!(llm.status, 200, "{}", llm.text());
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}});
    let call = |tool: &str, conv: &str, args: Value| {
        let h = [
            ACCEPT,
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", tool),
            ("x-sluice-session-id", conv),
        ];
        answer(&s.h.rt.block_on(post_json(
            s.h.addr(),
            "/v1/mcp/tools",
            &h,
            &rpc(
                1,
                "tools/call",
                json!({"name": tool, "arguments": args, "_meta": meta}),
            ),
        )))
    };
    for conv in ["conv-prov", "conv-other"] {
        call("fx__read_inbox", conv, json!({}));
    }
    let users = call(
        "fx__fetch_url",
        "conv-prov",
        json!({"url": "https://docs.example/q3-report"}),
    );
    assert!(users["result"].get("isError").is_none(), "{users}");
    let injected = call(
        "fx__fetch_url",
        "conv-prov",
        json!({"url": "https://evil.example/exfil"}),
    );
    assert_eq!(injected["result"]["isError"], true, "{injected}");
    let text = injected["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("`url`") && text.contains("nowhere"), "{text}");
    // A conversation whose chat the proxy never saw: the same URL is not the user's.
    let elsewhere = call(
        "fx__fetch_url",
        "conv-other",
        json!({"url": "https://docs.example/q3-report"}),
    );
    assert_eq!(elsewhere["result"]["isError"], true, "{elsewhere}");
    let fetched = s.fixture.fixture.calls.lock().unwrap().clone();
    assert_eq!(
        fetched.get("fetch_url"),
        Some(&1),
        "only the user's URL went out"
    );
}

#[test]
fn r30_an_idle_server_stream_gets_keep_alives_and_stays_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup("[limits]\nmcp_keepalive_interval_ms = 100\nclient_keepalive_timeout_ms = 300\n");
    let l = Legacy::open(&s);
    let addr = s.h.addr();
    let sid = l.sid.clone();
    let text = s.h.rt.block_on(async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /v1/mcp/tools HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\nmcp-protocol-version: 2025-11-25\r\n\r\n"
        );
        c.write_all(req.as_bytes()).await.unwrap();
        // Five keep-alives in a row: the stream outlives the connection idle deadline
        // (300 ms) because a running request has none.
        let mut got = String::new();
        let mut buf = [0u8; 1024];
        while got.matches(": keep-alive").count() < 5 {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "the idle stream was closed: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        got
    });
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.contains("\"jsonrpc\""),
        "no JSON-RPC message on an idle GET stream"
    );
}
