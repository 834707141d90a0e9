//! The MCP gateway's test surroundings: the fixture MCP server (written from the
//! specification) on 127.0.0.1 port 0 behind a proxy, its policies, and a hand-spoken
//! 2025-11-25 client session.

use serde_json::{Value, json};

use super::{Harness, RawResponse, post_json, send};

pub const POLICIES: &str = r#"
[[policies.result]]
id = "inbox-is-untrusted"
tool = { source = "*", name = "read_inbox" }
action = "untrusted"

[[policies.result]]
id = "sent-receipts-are-trusted"
tool = { source = "mcp:fx", name = "send_email" }
action = "trusted"

[[policies.result]]
id = "sums-are-trusted"
tool = { source = "mcp:fx", name = "add" }
action = "trusted"

[[policies.invocation]]
id = "no-email-after-untrusted"
tool = { source = "*", name = "send_email" }
action = "block_when_untrusted"
reason = "email cannot be sent after the conversation read untrusted content"

[[policies.invocation]]
id = "adding-is-fine"
tool = { source = "mcp:fx", name = "add" }
action = "allow_when_untrusted"
"#;

pub struct Setup {
    pub h: Harness,
    pub fixture_rt: tokio::runtime::Runtime,
    pub fixture: sluice_loadtest::mcp::RunningFixture,
}

pub fn setup(extra: &str) -> Setup {
    let fixture_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fixture = fixture_rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        sluice_loadtest::mcp::serve(l).await.unwrap()
    });
    let toml = format!(
        "[profiles.tools]\nmcp_servers = [\"fx\"]\n[mcp_servers.fx]\nurl = \"{}\"\n{extra}\n{POLICIES}",
        fixture.url()
    );
    Setup {
        h: Harness::start(&toml),
        fixture_rt,
        fixture,
    }
}

pub fn rpc(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

pub const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");

/// The JSON-RPC messages of a response: the body, or each SSE event's data.
pub fn messages(r: &RawResponse) -> Vec<Value> {
    if r.header("content-type") == Some("text/event-stream") {
        r.text()
            .split("\n\n")
            .filter_map(|ev| {
                ev.lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .filter(|d| !d.trim().is_empty())
                    .map(|d| serde_json::from_str(d).unwrap())
            })
            .collect()
    } else {
        vec![r.json()]
    }
}

pub fn answer(r: &RawResponse) -> Value {
    messages(r)
        .into_iter()
        .find(|m| m.get("result").is_some() || m.get("error").is_some())
        .unwrap_or_else(|| panic!("no answer in {}", r.text()))
}

pub struct Legacy<'a> {
    pub s: &'a Setup,
    pub sid: String,
}

impl Legacy<'_> {
    pub fn open(s: &Setup) -> Legacy<'_> {
        let init = rpc(
            1,
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
        );
        let r =
            s.h.rt
                .block_on(post_json(s.h.addr(), "/v1/mcp/tools", &[ACCEPT], &init));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["result"]["protocolVersion"], "2025-11-25");
        let sid = r.header("mcp-session-id").expect("session id").to_owned();
        Legacy { s, sid }
    }

    pub fn post(&self, body: &Value) -> RawResponse {
        let h = [
            ACCEPT,
            ("mcp-session-id", self.sid.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
        ];
        self.s
            .h
            .rt
            .block_on(post_json(self.s.h.addr(), "/v1/mcp/tools", &h, body))
    }

    pub fn call(&self, id: u64, tool: &str, args: Value) -> Value {
        answer(&self.post(&rpc(
            id,
            "tools/call",
            json!({"name": tool, "arguments": args}),
        )))
    }
}

/// Reads from `t` until `needle` has been seen (bounded by a deadline).
pub async fn wait_for(t: &mut tokio::net::TcpStream, seen: &mut Vec<u8>, needle: &[u8]) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout_at(deadline, t.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("timed out; seen: {}", String::from_utf8_lossy(seen)))
            .unwrap();
        assert!(n > 0, "the stream ended: {}", String::from_utf8_lossy(seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

/// The fixture forgets every session (as a server restart does).
pub fn expire_fixture_sessions(s: &Setup) {
    let expired = s.fixture_rt.block_on(send(
        s.fixture.addr,
        "POST",
        "/_fixture/expire-sessions",
        &[],
        b"",
    ));
    assert_eq!(expired.status, 200);
}
