//! A fixture MCP server written from the MCP specification (2025-03-26 … 2026-07-28), not
//! from Sluice's code: the conformance suite's server surface (`test_*` tools, prompts and
//! `test://` resources) plus a few tools for demos and policy tests (`send_email`,
//! `read_inbox`, `fetch_url`, `add`, `echo`). It speaks the legacy session era (initialize,
//! `Mcp-Session-Id`, SSE answers carrying notifications and server requests, GET stream,
//! DELETE) and the stateless 2026-07-28 revision (`server/discover`, per-request `_meta`,
//! `resultType`) on one endpoint, `/mcp`, and the same over stdio.
//!
//! `POST /_fixture/rug-pull` changes `send_email`'s description (a rug pull) and sends
//! `notifications/tools/list_changed`.

mod http;
mod surface;

pub use http::{RunningFixture, serve};
pub use surface::Fixture;

use serde_json::{Value, json};

/// A JSON-RPC success.
pub fn ok(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A JSON-RPC error.
pub fn err(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Serves the fixture over stdio (newline-delimited JSON-RPC) until stdin closes.
pub async fn serve_stdio() -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let fixture = Fixture::new();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Value>(256);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(msg) = out_rx.recv().await {
            let mut line = msg.to_string();
            line.push('\n');
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let session = fixture.new_session();
    while let Some(line) = lines.next_line().await? {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            let _ = out_tx.send(err(Value::Null, -32700, "Parse error")).await;
            continue;
        };
        if msg.get("method").is_none() {
            fixture.answer_from_client(&msg);
            continue;
        }
        let Some(id) = msg.get("id").cloned() else {
            continue;
        };
        let (f, s, tx) = (fixture.clone(), session.clone(), out_tx.clone());
        tokio::spawn(async move {
            let stateless = msg
                .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
                .is_some();
            let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
            let params = msg.get("params").cloned().unwrap_or_else(|| json!({}));
            let answer = f.handle(&s, id, method, &params, stateless, &tx).await;
            let _ = tx.send(answer).await;
        });
    }
    drop(out_tx);
    let _ = writer.await;
    Ok(())
}
