//! `resources/subscribe` and `resources/unsubscribe` from a legacy client session: the
//! session holds each URI once, and the server that owns it hears only of its first holder
//! and its last (`upstream::ResourceHold`), so one client letting go never ends another's
//! updates. A session that ends lets go of all it held.

use std::time::Instant;

use serde_json::{Value, json};

use super::dispatch::{Call, Reply, finish, owner, record};
use super::jsonrpc::{self, INTERNAL_ERROR, INVALID_PARAMS};

/// Answers a legacy session's `resources/subscribe` or `resources/unsubscribe`.
pub async fn subscription(
    call: &Call,
    id: Value,
    method: &str,
    params: Option<Value>,
    started: Instant,
) -> Reply {
    let mut p = params.unwrap_or_else(|| json!({}));
    let Some(uri) = p.get("uri").and_then(Value::as_str).map(str::to_owned) else {
        return Reply::Now(jsonrpc::error(id, INVALID_PARAMS, "params.uri is required"));
    };
    if method == "resources/unsubscribe" {
        // Dropping the hold lets go at the server, if it was the last.
        call.session.state.lock().subscriptions.remove(&uri);
        return Reply::Now(jsonrpc::result(id, json!({})));
    }
    if call.session.state.lock().subscriptions.contains_key(&uri) {
        return Reply::Now(jsonrpc::result(id, json!({})));
    }
    let Some(server) = owner(call, method, &mut p).await else {
        return Reply::Now(jsonrpc::error(
            id,
            INVALID_PARAMS,
            "no MCP server of this profile serves that resource",
        ));
    };
    let mut rec = record(call, &server.name, method, None);
    let conn = call.gw.connection(&server);
    // On a task of its own: a client going away mid-way leaves no half-made subscription
    // (the hold, unclaimed, is dropped and lets go).
    let wanted = uri.clone();
    let held = tokio::spawn(async move { conn.hold_resource(&wanted).await }).await;
    let msg = match held {
        Ok(Ok(hold)) => {
            call.session.state.lock().subscriptions.insert(uri, hold);
            jsonrpc::result(id, json!({}))
        }
        Ok(Err(mut refused)) => {
            rec.status = "error";
            refused["id"] = id;
            refused
        }
        Err(_) => {
            rec.status = "error";
            jsonrpc::error(id, INTERNAL_ERROR, "the subscription was interrupted")
        }
    };
    finish(call, rec, started);
    Reply::Now(msg)
}
