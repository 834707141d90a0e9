//! `subscriptions/listen` (2026-07-28, SEP-2575) for stateless clients: one long-lived SSE
//! answer carrying the change notifications the client opted in to.
//!
//! The first event acknowledges the subset the gateway honours; every notification after
//! it carries the listen request's id in `_meta["io.modelcontextprotocol/subscriptionId"]`.
//! What reaches a stream is what the profile's servers send outside requests (list
//! changes, updates of subscribed resources), as legacy sessions' GET streams get them;
//! resource URIs are subscribed at their servers when the stream opens and let go when it
//! ends. Idle streams get keep-alive comments; the stream ends when the client goes away,
//! or gracefully (a result) when the gateway drops behind or the proxy starts draining.

use std::sync::Arc;
use std::time::Duration;

use pingora::proxy::Session;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::dispatch::Call;
use super::upstream::ResourceHold;
use super::wire::{sse_event, start_sse};
use crate::phases::ctx::RequestCtx;

const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// The list-change opt-ins and the notification each stands for.
const LISTS: [(&str, &str); 3] = [
    ("toolsListChanged", "notifications/tools/list_changed"),
    ("promptsListChanged", "notifications/prompts/list_changed"),
    (
        "resourcesListChanged",
        "notifications/resources/list_changed",
    ),
];

/// The part of a client's filter the gateway honours: every list change, and the resource
/// URIs one of the profile's servers accepted a subscription for, with their holds (kept
/// while the stream is open).
pub async fn honour(call: &Call, params: Option<&Value>) -> (Value, Vec<ResourceHold>) {
    let asked = params
        .and_then(|p| p.get("notifications"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut honoured = Map::new();
    for (key, _) in LISTS {
        if asked.get(key).and_then(Value::as_bool) == Some(true) {
            honoured.insert(key.into(), Value::Bool(true));
        }
    }
    let uris: Vec<String> = asked
        .get("resourceSubscriptions")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .take(100)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut owned = Vec::new();
    for uri in uris {
        let mut p = json!({ "uri": uri });
        if let Some(server) = super::dispatch::owner(call, "resources/subscribe", &mut p).await {
            owned.push((call.gw.connection(&server), uri));
        }
    }
    // On a task of its own: a client going away mid-way leaves no half-made subscription.
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        for (conn, uri) in owned {
            if let Ok(hold) = conn.hold_resource(&uri).await {
                held.push((uri, hold));
            }
        }
        held
    })
    .await
    .unwrap_or_default();
    let (subscribed, holds): (Vec<_>, Vec<_>) = held
        .into_iter()
        .map(|(uri, hold)| (Value::String(uri), hold))
        .unzip();
    if !subscribed.is_empty() {
        honoured.insert("resourceSubscriptions".into(), Value::Array(subscribed));
    }
    (Value::Object(honoured), holds)
}

/// Whether `msg` from `server` belongs on a stream of `call`'s profile with `honoured`.
fn wanted(call: &Call, honoured: &Value, server: &str, msg: &Value) -> bool {
    if !call.profile.mcp_servers.iter().any(|s| &**s == server) {
        return false;
    }
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    if method == "notifications/resources/updated" {
        let uri = msg.pointer("/params/uri").and_then(Value::as_str);
        return honoured
            .get("resourceSubscriptions")
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().any(|u| u.as_str() == uri));
    }
    LISTS
        .iter()
        .any(|(key, m)| *m == method && honoured.get(key) == Some(&Value::Bool(true)))
}

/// `msg` stamped with the subscription's id.
fn stamped(mut msg: Value, id: &Value) -> Value {
    if let Some(o) = msg.as_object_mut() {
        let params = o.entry("params").or_insert_with(|| json!({}));
        if let Some(p) = params.as_object_mut() {
            let meta = p.entry("_meta").or_insert_with(|| json!({}));
            if let Some(m) = meta.as_object_mut() {
                m.insert(SUBSCRIPTION_ID.into(), id.clone());
            }
        }
    }
    msg
}

/// Serves the stream until the client goes away.
pub async fn serve(
    session: &mut Session,
    ctx: &mut RequestCtx,
    call: &Call,
    id: Value,
    honoured: Value,
    // Held while the stream is open; dropped (let go) when it ends.
    _holds: Vec<ResourceHold>,
) -> pingora::Result<()> {
    // Subscribed before the acknowledgement: nothing sent after it can be missed.
    let mut changes = call.gw.changes.subscribe();
    let keepalive = ctx
        .config
        .as_ref()
        .map_or(Duration::from_secs(15), |c| c.limits.mcp_keepalive_interval);
    start_sse(session, ctx).await?;
    let ack = json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": {"notifications": honoured},
    });
    let mut n = 1u64;
    session
        .write_response_body(Some(sse_event(n, &stamped(ack, &id))), false)
        .await?;
    let drained = crate::drain::drain_started(ctx.in_flight.as_ref());
    tokio::pin!(drained);
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(keepalive, changes.recv()) => next,
            // A proxy going away ends its streams gracefully: clients listen again, at the
            // proxy that replaces it.
            () = &mut drained => break,
        };
        match next {
            Ok(Ok((server, msg))) => {
                if !wanted(call, &honoured, &server, &msg) {
                    continue;
                }
                n += 1;
                let event = sse_event(n, &stamped((*msg).clone(), &id));
                session.write_response_body(Some(event), false).await?;
            }
            Ok(Err(RecvError::Lagged(missed))) => {
                // Notifications were lost to this stream: end it gracefully, so the client
                // listens again and refetches, instead of silently missing a change.
                tracing::warn!(missed, "an MCP listen stream fell behind; ending it");
                break;
            }
            Ok(Err(RecvError::Closed)) => break,
            Err(_) => {
                session
                    .write_response_body(
                        Some(bytes::Bytes::from_static(b": keep-alive\n\n")),
                        false,
                    )
                    .await?;
            }
        }
    }
    let end = json!({"jsonrpc": "2.0", "id": id.clone(),
        "result": {"resultType": "complete", "_meta": {SUBSCRIPTION_ID: id}}});
    session
        .write_response_body(Some(sse_event(n + 1, &end)), true)
        .await
}

/// A change a server sent, for the listen streams.
pub type Change = (Arc<str>, Arc<Value>);
