//! Multi round-trip requests (2026-07-28, SEP-2322) for stateless clients of servers that
//! ask in the middle of a request.
//!
//! A legacy server asks its client something while it works on a `tools/call`,
//! `prompts/get` or `resources/read`: a sampling, elicitation or roots request on the
//! request's stream. A stateless client cannot be sent requests; it expects an
//! `InputRequiredResult` (`resultType: "input_required"`, the question under a key in
//! `inputRequests`, a `requestState`) and sends the original request again with its
//! answer in `inputResponses` and the `requestState` echoed. The gateway keeps the
//! server's request running ("parked") under a fresh, unguessable `requestState`, answers
//! the client with the question, and on the retry hands the answer to the server and goes
//! on waiting: for the server's result, or for its next question (one more round).
//!
//! A parked request belongs to the profile and virtual key that started it, is cancelled
//! at the server when nobody comes back within `limits.mcp_input_timeout_ms`, and at most
//! `limits.mcp_max_sessions` are parked at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::McpGateway;
use super::dispatch::{Call, Forwarded, Reply};
use super::jsonrpc::{self, INTERNAL_ERROR, INVALID_PARAMS};

/// What marks a `requestState` as the gateway's own (a stateless server's own states go
/// to the server untouched).
const STATE_PREFIX: &str = "sluice-mrtr:";

/// The key the client answers the question under.
const KEY: &str = "input";

/// The methods that may answer `input_required`, and so be retried.
pub const RESUMABLE: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

/// A server request in flight, waiting for a client's answer.
struct Parked {
    fwd: Forwarded,
    /// The server's id for its question.
    upstream_id: Value,
    /// Who may resume it: the profile and the virtual key's id.
    owner: (Arc<str>, Option<String>),
}

/// The parked requests of the gateway.
#[derive(Default)]
pub struct ParkedCalls {
    map: parking_lot::Mutex<HashMap<String, Parked>>,
}

impl std::fmt::Debug for ParkedCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParkedCalls({})", self.map.lock().len())
    }
}

/// Whether `state` is one of the gateway's.
pub fn is_ours(state: &str) -> bool {
    state.starts_with(STATE_PREFIX)
}

/// The capability a client needs to answer a server's `method`.
pub fn capability(method: &str) -> Option<&'static str> {
    match method {
        "sampling/createMessage" => Some("sampling"),
        "elicitation/create" => Some("elicitation"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

/// Parks `fwd` on the server's `question` (a request the stateless client declared it can
/// answer); the `InputRequiredResult` for the client, or `fwd` back when too many are
/// parked. The request is cancelled at the server if nobody resumes it within `wait`.
pub fn park(
    gw: &Arc<McpGateway>,
    call: &Call,
    fwd: Forwarded,
    question: &Value,
    wait: Duration,
    max: usize,
) -> Result<Value, Forwarded> {
    let Some(upstream_id) = question.get("id").cloned() else {
        return Err(fwd);
    };
    let token = format!("{STATE_PREFIX}{}", super::session::new_id());
    {
        let mut map = gw.parked.map.lock();
        if map.len() >= max {
            return Err(fwd);
        }
        map.insert(
            token.clone(),
            Parked {
                fwd,
                upstream_id,
                owner: (call.profile.name.clone(), call.key_id.clone()),
            },
        );
    }
    let (gw2, expiring) = (gw.clone(), token.clone());
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        let gone = gw2.parked.map.lock().remove(&expiring);
        if let Some(p) = gone {
            tracing::info!("an MCP request waiting for the client's input expired; cancelled");
            cancel(p).await;
        }
    });
    let mut request = json!({"method": question.get("method").cloned().unwrap_or(Value::Null)});
    if let Some(params) = question.get("params") {
        request["params"] = params.clone();
    }
    Ok(json!({
        "resultType": "input_required",
        "inputRequests": {KEY: request},
        "requestState": token,
    }))
}

/// Tells the server its request is off.
async fn cancel(p: Parked) {
    let (conn, request_id) = p.fwd.cancel;
    let reason = "the client did not come back with the input the server asked for";
    conn.respond(jsonrpc::error(p.upstream_id, INTERNAL_ERROR, reason))
        .await;
    let params = json!({"requestId": request_id, "reason": reason});
    conn.notify("notifications/cancelled", Some(params)).await;
}

/// A retry carrying the gateway's `requestState`: the client's answer goes to the server,
/// and the request goes on as if it had just been forwarded.
pub async fn resume(call: &Call, id: Value, state: &str, params: &Value) -> Reply {
    let parked = {
        let mut map = call.gw.parked.map.lock();
        let mine = map
            .get(state)
            .is_some_and(|p| *p.owner.0 == *call.profile.name && p.owner.1 == call.key_id);
        if mine { map.remove(state) } else { None }
    };
    let Some(p) = parked else {
        return Reply::Now(jsonrpc::error(
            id,
            INVALID_PARAMS,
            "requestState is unknown or expired: send the request again without it",
        ));
    };
    let conn = p.fwd.cancel.0.clone();
    let answer = match params.pointer(&format!("/inputResponses/{KEY}")) {
        Some(result) => jsonrpc::result(p.upstream_id, result.clone()),
        None => jsonrpc::error(
            p.upstream_id,
            INTERNAL_ERROR,
            "the client retried without answering the question",
        ),
    };
    conn.respond(answer).await;
    Reply::Forwarded(p.fwd)
}
