//! The JSON-RPC methods. The gateway answers the handshake, `ping` and the merged lists
//! itself; calls, reads and gets go to the server that owns the name, judged by the
//! profile's policies on the way out (the call) and on the way back (the result).

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::jsonrpc::{self, INTERNAL_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND};
use super::session::Session;
use super::upstream::Connection;
use super::{LEGACY_VERSIONS, McpGateway};
use crate::config::{Config, McpServer, Profile};
use crate::events::McpRecord;
use crate::guard::Decision;

/// Judges a result before the client sees it: the decisions, and whether it was blocked.
type Judge = Box<dyn FnOnce(&mut Value) -> (Vec<Decision>, bool) + Send>;

/// One request's surroundings.
#[derive(Clone)]
pub struct Call {
    /// The gateway.
    pub gw: Arc<McpGateway>,
    /// The snapshot this request uses throughout.
    pub config: Arc<Config>,
    /// The profile whose endpoint it is.
    pub profile: Arc<Profile>,
    /// The client's session (or conversation, or a session for this request alone).
    pub session: Arc<Session>,
    /// The stateless era.
    pub stateless: bool,
    /// The virtual key's id.
    pub key_id: Option<String>,
    /// `X-Sluice-Agent-Id`.
    pub agent: Option<String>,
    /// `X-Sluice-Session-Id`: the conversation whose user texts the LLM proxy saw.
    pub conversation: Option<String>,
    /// The client's `traceparent`, kept only while tracing is on.
    pub traceparent: Option<String>,
    /// The capabilities a stateless client declared in this request's `_meta` (a legacy
    /// client's are its session's).
    pub capabilities: Value,
}

/// What to send back.
pub enum Reply {
    /// An answer, now.
    Now(Value),
    /// Nothing (a notification or a response was accepted): 202.
    Accepted,
    /// A request forwarded to a server: its messages about it, then its answer.
    Forwarded(Forwarded),
    /// A stateless client's `subscriptions/listen`: a stream of the changes it opted in to
    /// (the honoured filter, and the resource subscriptions held while it is open).
    Listen(Value, Vec<super::upstream::ResourceHold>),
}

/// A request in flight at a server.
pub struct Forwarded {
    /// Notifications and server requests about it, as the server sent them.
    pub events: mpsc::Receiver<Value>,
    /// The answer, with the client's id, after the policies.
    pub answer: oneshot::Receiver<Value>,
    /// The client's progress token, restored on progress notifications.
    pub progress: Option<Value>,
    /// Where it went, to cancel it when a stateless client goes away.
    pub cancel: (Arc<Connection>, Value),
}

pub(super) fn record(call: &Call, server: &str, method: &str, tool: Option<String>) -> McpRecord {
    McpRecord {
        profile: call.profile.name.to_string(),
        server: server.into(),
        method: method.into(),
        tool,
        status: "ok",
        duration_us: 0,
        decisions: Vec::new(),
        key_id: call.key_id.clone(),
        session: (!call.session.id.starts_with("once:")).then(|| call.session.id.to_string()),
        arguments: None,
        result: None,
    }
}

pub(super) fn finish(call: &Call, r: McpRecord, started: Instant) {
    finish_span(call, r, started, None);
}

/// [`finish`] for a request whose span was started before it went to the server.
fn finish_span(
    call: &Call,
    mut r: McpRecord,
    started: Instant,
    span: Option<crate::trace::LiveSpan>,
) {
    r.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    crate::trace::mcp(&r, call.traceparent.as_deref(), span);
    call.gw.sink.record_mcp(&r);
}

/// What the gateway itself offers: everything it can relay.
pub fn capabilities() -> Value {
    json!({
        "tools": {"listChanged": true},
        "prompts": {"listChanged": true},
        "resources": {"subscribe": true, "listChanged": true},
        "logging": {},
        "completions": {},
    })
}

fn server_info() -> Value {
    json!({"name": "sluice", "version": env!("CARGO_PKG_VERSION")})
}

/// The version answered to an `initialize` asking for `asked`.
pub fn negotiate(asked: Option<&str>) -> &'static str {
    LEGACY_VERSIONS
        .iter()
        .find(|v| Some(**v) == asked)
        .copied()
        .unwrap_or(LEGACY_VERSIONS[0])
}

/// The `initialize` result (the transport opens the session).
pub fn initialize_result(version: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": capabilities(),
        "serverInfo": server_info(),
        "instructions": "Sluice MCP gateway: the tools of this profile's servers, under its policies.",
    })
}

/// Handles one request.
pub async fn request(call: &Call, id: Value, method: &str, params: Option<Value>) -> Reply {
    let started = Instant::now();
    let answer = |r: Value| Reply::Now(jsonrpc::result(id.clone(), r));
    // A stateless client's retry with its answer to a question a server asked through
    // the gateway: the parked request goes on.
    if call.stateless
        && super::mrtr::RESUMABLE.contains(&method)
        && let Some(p) = &params
        && let Some(state) = p.get("requestState").and_then(Value::as_str)
        && super::mrtr::is_ours(state)
    {
        return Box::pin(super::mrtr::resume(call, id, state, p)).await;
    }
    // Every arm but `tools/call` is boxed: an async fn's future is as large as its largest
    // awaited future, and the per-call path would otherwise carry (and copy) theirs.
    match method {
        "ping" => answer(json!({})),
        "server/discover" => answer(json!({
            "supportedVersions": [super::upstream::STATELESS_VERSION],
            "capabilities": capabilities(),
            "instructions": "Sluice MCP gateway: the tools of this profile's servers, under its policies.",
            "_meta": {"io.modelcontextprotocol/serverInfo": server_info()},
        })),
        "initialize" => Reply::Now(jsonrpc::error(
            id,
            jsonrpc::INVALID_REQUEST,
            "the session is already initialized",
        )),
        "tools/list" => {
            let (tools, failed) = Box::pin(call.gw.tools(&call.config, &call.profile)).await;
            let mut rec = record(call, "", method, None);
            if !failed.is_empty() {
                rec.status = "error";
                for e in &failed {
                    tracing::warn!(error = %e, "an MCP server's tools are missing from tools/list");
                }
            }
            let list: Vec<Value> = tools
                .into_iter()
                .filter(|t| t.withheld.is_none())
                .map(|t| t.definition)
                .collect();
            finish(call, rec, started);
            answer(json!({ "tools": list }))
        }
        "prompts/list" | "resources/list" | "resources/templates/list" => {
            Box::pin(merged_list(call, id.clone(), method)).await
        }
        "tools/call" => super::tools_call::tools_call(call, id, params, started).await,
        "prompts/get" | "completion/complete" | "resources/read" => {
            Box::pin(routed(call, id, method, params, started)).await
        }
        "resources/subscribe" | "resources/unsubscribe" => {
            Box::pin(super::subscribe::subscription(
                call, id, method, params, started,
            ))
            .await
        }
        "logging/setLevel" => {
            Box::pin(set_level(call, method, params)).await;
            answer(json!({}))
        }
        // Legacy clients have the session's GET stream instead.
        "subscriptions/listen" if call.stateless => {
            let (honoured, holds) = Box::pin(super::listen::honour(call, params.as_ref())).await;
            Reply::Listen(honoured, holds)
        }
        _ => Reply::Now(jsonrpc::error(
            id,
            METHOD_NOT_FOUND,
            &format!("method '{}' is not supported", truncate(method)),
        )),
    }
}

/// `logging/setLevel`: the session's level, passed on to the servers that log.
async fn set_level(call: &Call, method: &str, params: Option<Value>) {
    let level = jsonrpc::param_str(params.as_ref(), "level").map(str::to_owned);
    call.session.state.lock().log_level = level;
    for s in McpGateway::servers_of(&call.config, &call.profile) {
        let conn = call.gw.connection(&s);
        let has_logging = conn
            .establish()
            .await
            .is_ok_and(|e| e.capabilities.get("logging").is_some());
        if has_logging {
            let _ = conn.request(method, params.clone(), None).await;
        }
    }
}

pub(super) fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Prompts, resources and templates of every server, prompts renamed like tools.
async fn merged_list(call: &Call, id: Value, method: &str) -> Reply {
    let kind = match method {
        "prompts/list" => "prompts",
        "resources/list" => "resources",
        _ => "resourceTemplates",
    };
    let mut out = Vec::new();
    for s in McpGateway::servers_of(&call.config, &call.profile) {
        let Ok(items) = call.gw.list(&s, kind).await else {
            continue;
        };
        for item in items.iter() {
            let mut item = item.clone();
            if kind == "prompts"
                && let Some(name) = item.get("name").and_then(Value::as_str)
            {
                let exposed = super::aggregate::exposed_name(&s, name);
                item["name"] = Value::String(exposed);
            }
            out.push(item);
        }
    }
    Reply::Now(jsonrpc::result(id, json!({ kind: out })))
}

/// The server that owns a prompt name, a resource URI or a completion reference.
pub(super) async fn owner(call: &Call, method: &str, params: &mut Value) -> Option<Arc<McpServer>> {
    let servers = McpGateway::servers_of(&call.config, &call.profile);
    let rename = |p: &mut Value, pointer: &str| -> Option<Arc<McpServer>> {
        let name = p.pointer(pointer)?.as_str()?.to_owned();
        let (s, original) = super::aggregate::split_prefixed(&name, &servers)?;
        let original = original.to_owned();
        if let Some(slot) = p.pointer_mut(pointer) {
            *slot = Value::String(original);
        }
        Some(s)
    };
    match method {
        "prompts/get" => rename(params, "/name"),
        "completion/complete" if params.pointer("/ref/type") == Some(&json!("ref/prompt")) => {
            rename(params, "/ref/name")
        }
        _ => {
            let uri = params
                .pointer("/uri")
                .or_else(|| params.pointer("/ref/uri"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if servers.len() <= 1 {
                return servers.into_iter().next();
            }
            for s in &servers {
                if let Ok(list) = call.gw.list(s, "resources").await
                    && list
                        .iter()
                        .any(|r| r.get("uri").and_then(Value::as_str) == Some(&uri))
                {
                    return Some(s.clone());
                }
                if let Ok(list) = call.gw.list(s, "resourceTemplates").await
                    && list.iter().any(|t| {
                        t.get("uriTemplate")
                            .and_then(Value::as_str)
                            .and_then(|u| u.split('{').next())
                            .is_some_and(|prefix| !prefix.is_empty() && uri.starts_with(prefix))
                    })
                {
                    return Some(s.clone());
                }
            }
            servers.into_iter().next()
        }
    }
}

async fn routed(
    call: &Call,
    id: Value,
    method: &str,
    params: Option<Value>,
    started: Instant,
) -> Reply {
    let mut p = params.unwrap_or_else(|| json!({}));
    let Some(server) = owner(call, method, &mut p).await else {
        return Reply::Now(jsonrpc::error(
            id,
            INVALID_PARAMS,
            "no MCP server of this profile serves that name",
        ));
    };
    let rec = record(call, &server.name, method, None);
    forward(call, id, &server, method, p, rec, started, None)
}

/// Sends the request to the server on a task of its own (a legacy client that goes away
/// does not cancel it); `judge` runs on the answer before the client sees it.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    call: &Call,
    id: Value,
    server: &Arc<McpServer>,
    method: &str,
    mut params: Value,
    mut rec: McpRecord,
    started: Instant,
    judge: Option<Judge>,
) -> Reply {
    let conn = call.gw.connection(server);
    // The server joins the trace: W3C trace context in `_meta` (either transport; HTTP
    // servers also get it as a header), naming the gateway's span as the parent.
    let span = crate::trace::start_mcp(call.traceparent.as_deref());
    if let (Some(tp), Some(p)) = (
        span.as_ref().map(crate::trace::traceparent_of),
        params.as_object_mut(),
    ) {
        let meta = p.entry("_meta").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("traceparent".into(), Value::String(tp));
        }
    }
    let progress = jsonrpc::at(&params, &["_meta", "progressToken"]).cloned();
    let (ev_tx, ev_rx) = mpsc::channel(64);
    let (tx, rx) = oneshot::channel();
    let (c2, method, call2) = (conn.clone(), method.to_owned(), call.clone());
    let upstream_id = conn.new_id();
    let client_id = jsonrpc::to_text(&id);
    call.session.state.lock().inflight.insert(
        client_id.clone(),
        (server.name.clone(), upstream_id.clone()),
    );
    let cancel_id = upstream_id.clone();
    // The task's future is boxed, and so is the exchange's inside it: tokio copies a task's
    // future whole into its cell on spawn and writes the whole stage again as it ends.
    tokio::spawn(Box::pin(async move {
        let answer = Box::pin(c2.request_as(upstream_id, &method, Some(params), Some(ev_tx))).await;
        call2.session.state.lock().inflight.remove(&client_id);
        let msg = match answer {
            Ok(mut a) => {
                a["id"] = id.clone();
                if a.get("error").is_some() {
                    rec.status = "error";
                } else if let (Some(judge), Some(result)) = (judge, a.get_mut("result")) {
                    let (decisions, blocked) = judge(result);
                    rec.decisions.extend(decisions);
                    if blocked {
                        rec.status = "refused";
                    }
                }
                a
            }
            Err(e) => {
                rec.status = "error";
                tracing::warn!(error = %e, "MCP request failed");
                jsonrpc::error(id.clone(), INTERNAL_ERROR, &e.to_string())
            }
        };
        let msg = shape_for(&call2, msg);
        if call2.profile.capture_content {
            rec.result = msg.get("result").map(Value::to_string);
        }
        finish_span(&call2, rec, started, span);
        let _ = tx.send(msg);
    }));
    Reply::Forwarded(Forwarded {
        events: ev_rx,
        answer: rx,
        progress,
        cancel: (conn, cancel_id),
    })
}

/// Results in the client's era: the stateless era wants `resultType` (and caching hints on
/// lists and reads); the legacy era has no such fields.
pub fn shape_for(call: &Call, mut msg: Value) -> Value {
    let Some(result) = msg.get_mut("result").and_then(Value::as_object_mut) else {
        return msg;
    };
    if call.stateless {
        result
            .entry("resultType")
            .or_insert_with(|| Value::String("complete".into()));
        // Lists and reads carry caching hints: private (they depend on the profile and its
        // policies) and immediately stale (a snapshot may change them at any time).
        let cacheable = [
            "tools",
            "prompts",
            "resources",
            "resourceTemplates",
            "contents",
        ]
        .iter()
        .any(|k| result.contains_key(*k));
        if cacheable {
            result.entry("ttlMs").or_insert_with(|| json!(0));
            result.insert("cacheScope".into(), json!("private"));
        }
    } else {
        result.remove("resultType");
        result.remove("ttlMs");
        result.remove("cacheScope");
    }
    msg
}

/// A message a server sent about a forwarded request, as the client gets it: server
/// requests get an id of ours (the client's answer is routed back by it), progress gets
/// the client's token back, log messages below the client's level are dropped. `None`:
/// nothing to send (the gateway answered a request the client cannot take).
pub async fn relay(
    call: &Call,
    server: &Arc<Connection>,
    fwd: &Forwarded,
    mut msg: Value,
) -> Option<Value> {
    let method = msg
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if let Some(upstream_id) = msg.get("id").cloned() {
        let capability = match method.as_str() {
            "sampling/createMessage" => "sampling",
            "elicitation/create" => "elicitation",
            "roots/list" => "roots",
            _ => "",
        };
        if call.stateless || !call.session.can(capability) {
            server
                .respond(jsonrpc::error(
                    upstream_id,
                    METHOD_NOT_FOUND,
                    &format!("the client does not support {}", truncate(&method)),
                ))
                .await;
            return None;
        }
        let ours = format!("sluice-s-{}", super::session::new_id());
        call.session
            .state
            .lock()
            .server_requests
            .insert(ours.clone(), (server.server.name.clone(), upstream_id));
        msg["id"] = Value::String(ours);
        return Some(msg);
    }
    match method.as_str() {
        "notifications/progress" => {
            if let (Some(tok), Some(slot)) =
                (&fwd.progress, msg.pointer_mut("/params/progressToken"))
            {
                *slot = tok.clone();
            }
            Some(msg)
        }
        "notifications/message" => {
            let level = msg
                .pointer("/params/level")
                .and_then(Value::as_str)
                .unwrap_or("info");
            let min = call.session.state.lock().log_level.clone();
            (severity(level) >= severity(min.as_deref().unwrap_or("debug"))).then_some(msg)
        }
        _ => Some(msg),
    }
}

fn severity(level: &str) -> u8 {
    match level {
        "debug" => 0,
        "info" => 1,
        "notice" => 2,
        "warning" => 3,
        "error" => 4,
        "critical" => 5,
        "alert" => 6,
        "emergency" => 7,
        _ => 1,
    }
}

/// A notification or response from the client.
pub async fn one_way(call: &Call, method: Option<&str>, msg: Value) {
    match method {
        Some("notifications/cancelled") => {
            let Some(rid) = msg.pointer("/params/requestId") else {
                return;
            };
            let target = call
                .session
                .state
                .lock()
                .inflight
                .get(&jsonrpc::to_text(rid))
                .cloned();
            if let Some((server, upstream_id)) = target
                && let Some(s) = call.config.mcp_servers.get(&server)
            {
                let mut params = msg.get("params").cloned().unwrap_or_else(|| json!({}));
                params["requestId"] = upstream_id;
                call.gw
                    .connection(s)
                    .notify("notifications/cancelled", Some(params))
                    .await;
            }
        }
        Some("notifications/roots/list_changed") => {
            for s in McpGateway::servers_of(&call.config, &call.profile) {
                call.gw
                    .connection(&s)
                    .notify("notifications/roots/list_changed", None)
                    .await;
            }
        }
        Some(_) => {}
        None => {
            // An answer to a request a server made through us.
            let Some(ours) = msg.get("id").and_then(Value::as_str) else {
                return;
            };
            let target = call.session.state.lock().server_requests.remove(ours);
            if let Some((server, upstream_id)) = target
                && let Some(s) = call.config.mcp_servers.get(&server)
            {
                let mut answer = msg.clone();
                answer["id"] = upstream_id;
                call.gw.connection(s).respond(answer).await;
            }
        }
    }
}
