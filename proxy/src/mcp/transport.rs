//! The HTTP side of `/v1/mcp/{profile}`: both transport eras on one endpoint.
//!
//! - Legacy (2025-03-26 … 2025-11-25): `initialize` opens a session (`Mcp-Session-Id`);
//!   later POSTs carry it (400 without, 404 once it ended); GET opens the session's stream
//!   (with `Last-Event-ID` replay); DELETE ends it; batches only under 2025-03-26.
//! - Stateless (2026-07-28): every POST carries `MCP-Protocol-Version`, `Mcp-Method` and
//!   (for calls, reads and gets) `Mcp-Name`, checked against the body; GET and DELETE get
//!   405; taint follows `X-Sluice-Session-Id` when the client sends one.
//!
//! A request's answer is JSON, unless the server sends messages about it first (progress,
//! logs, sampling): then the answer is an SSE stream carrying them, then the answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::proxy::Session;
use serde_json::{Value, json};

use super::dispatch::{self, Call, Forwarded, Reply};
use super::jsonrpc::{self, Message, UNSUPPORTED_VERSION};
use super::modern::check_modern_headers;
use super::upstream::STATELESS_VERSION;
use super::wire::{
    header, origin_allowed, read_body, rpc_error, simple, sluice_error, sse_event, start_sse,
    write_json,
};
use super::{LEGACY_VERSIONS, McpGateway};
use crate::config::Config;
use crate::header_names::{
    AGENT_ID, LAST_EVENT_ID, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, SESSION_ID, TRACEPARENT,
};
use crate::keys::FailedAuthLimiter;
use crate::phases::ctx::RequestCtx;

/// True when the path is the MCP endpoint's.
pub fn is_mcp_path(path: &str) -> bool {
    path == "/v1/mcp" || path.starts_with("/v1/mcp/")
}

/// Serves one HTTP request on the MCP endpoint; always answers it.
pub async fn serve(
    gw: &Arc<McpGateway>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    failures: &FailedAuthLimiter,
) -> pingora::Result<()> {
    let Some(config) = ctx.config.clone() else {
        return rpc_error(
            session,
            ctx,
            503,
            Value::Null,
            jsonrpc::INTERNAL_ERROR,
            "Sluice has no configuration yet",
        )
        .await;
    };
    // DNS rebinding: a browser page on another origin must not reach local servers.
    if let Some(origin) = header(session, &http::header::ORIGIN)
        && !origin_allowed(origin, &config)
    {
        return rpc_error(
            session,
            ctx,
            403,
            Value::Null,
            jsonrpc::INVALID_REQUEST,
            "Origin not allowed: add it to mcp_allowed_origins",
        )
        .await;
    }
    let key = match crate::phases::auth::verify_key(session, &config, failures) {
        Ok(k) => k,
        Err(e) => return sluice_error(session, ctx, &e).await,
    };
    let path = session.req_header().uri.path().to_owned();
    let named = path
        .strip_prefix("/v1/mcp")
        .map(|r| r.trim_matches('/'))
        .filter(|r| !r.is_empty());
    let profile_name = named
        .map(str::to_owned)
        .or_else(|| key.as_ref().map(|k| k.profile.to_string()))
        .unwrap_or_else(|| crate::route::DEFAULT_PROFILE.to_owned());
    let Some(profile) = config.profiles.get(profile_name.as_str()).cloned() else {
        let e = crate::error::SluiceError::UnknownProfile(profile_name.chars().take(64).collect());
        return sluice_error(session, ctx, &e).await;
    };
    match &key {
        Some(k) if *k.profile != *profile.name => {
            let e = crate::error::SluiceError::VirtualKeyWrongProfile {
                key_profile: k.profile.to_string(),
                url_profile: profile.name.to_string(),
            };
            return sluice_error(session, ctx, &e).await;
        }
        None if profile.require_virtual_key => {
            let e = crate::error::SluiceError::VirtualKeyRequired(profile.name.to_string());
            return sluice_error(session, ctx, &e).await;
        }
        _ => {}
    }
    ctx.key_id = key.map(|k| k.id.clone());
    let method = session.req_header().method.clone();
    let sid = header(session, &MCP_SESSION_ID).map(str::to_owned);
    let idle = config.limits.mcp_session_idle_timeout;
    let legacy_session = sid
        .as_deref()
        .map(|id| gw.sessions.get(id, &profile.name, idle));
    let (key_id, agent): (Option<String>, Option<String>) = (
        ctx.key_id.as_deref().map(str::to_owned),
        header(session, &AGENT_ID).map(|a| a.chars().take(128).collect()),
    );
    let conversation: Option<String> = header(session, &SESSION_ID)
        .map(|c| c.chars().take(crate::conversations::MAX_ID_CHARS).collect());
    let traceparent: Option<String> = crate::trace::enabled()
        .then(|| header(session, &TRACEPARENT).map(str::to_owned))
        .flatten();
    let (gw2, config2, profile2) = (gw.clone(), config.clone(), profile.clone());
    let call = move |s: Arc<super::session::Session>, stateless: bool| Call {
        gw: gw2.clone(),
        config: config2.clone(),
        profile: profile2.clone(),
        session: s,
        stateless,
        key_id: key_id.clone(),
        agent: agent.clone(),
        conversation: conversation.clone(),
        traceparent: traceparent.clone(),
        capabilities: Value::Null,
    };
    match method.as_str() {
        "GET" => match legacy_session {
            Some(Some(s)) => {
                let c = call(s, false);
                Box::pin(get_stream(session, ctx, &c)).await
            }
            Some(None) => session_not_found(session, ctx, Value::Null).await,
            None => simple(
                session,
                ctx,
                405,
                "the 2026-07-28 transport has no GET stream; a legacy client sends Mcp-Session-Id",
            )
            .await,
        },
        "DELETE" => match sid {
            Some(id) if gw.sessions.close(&id) => simple(session, ctx, 200, "").await,
            Some(_) => session_not_found(session, ctx, Value::Null).await,
            None => simple(session, ctx, 405, "no session to end").await,
        },
        "POST" => {
            let body = match read_body(session, config.limits.max_request_body_bytes).await {
                Ok(b) => b,
                Err(status) => {
                    return rpc_error(
                        session,
                        ctx,
                        status,
                        Value::Null,
                        jsonrpc::INVALID_REQUEST,
                        "the body is too large or could not be read",
                    )
                    .await;
                }
            };
            let Ok(value) = serde_json::from_slice::<Value>(&body) else {
                return rpc_error(
                    session,
                    ctx,
                    400,
                    Value::Null,
                    jsonrpc::PARSE_ERROR,
                    "Parse error: the body is not JSON",
                )
                .await;
            };
            post(
                gw,
                session,
                ctx,
                &config,
                &profile,
                legacy_session,
                value,
                &call,
            )
            .await
        }
        _ => simple(session, ctx, 405, "use POST, GET or DELETE").await,
    }
}

/// Refuses an MCP request with a Sluice error as HTTP status + JSON-RPC error.
pub async fn refuse(
    session: &mut Session,
    ctx: &mut RequestCtx,
    e: &crate::error::SluiceError,
) -> pingora::Result<()> {
    super::wire::sluice_error(session, ctx, e).await
}

#[allow(clippy::too_many_arguments)]
async fn post(
    gw: &Arc<McpGateway>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    config: &Arc<Config>,
    profile: &Arc<crate::config::Profile>,
    legacy_session: Option<Option<Arc<super::session::Session>>>,
    value: Value,
    call: &(dyn Fn(Arc<super::session::Session>, bool) -> Call + Send + Sync),
) -> pingora::Result<()> {
    let is_initialize = value.get("method").and_then(Value::as_str) == Some("initialize");
    let version_header = header(session, &MCP_PROTOCOL_VERSION).map(str::to_owned);
    let modern = !is_initialize
        && legacy_session.is_none()
        && (version_header.as_deref() == Some(STATELESS_VERSION)
            || jsonrpc::at(
                &value,
                &["params", "_meta", "io.modelcontextprotocol/protocolVersion"],
            )
            .is_some());
    if is_initialize {
        return Box::pin(initialize(gw, session, ctx, config, profile, value)).await;
    }
    if modern {
        if let Err((code, msg)) = check_modern_headers(session, &value) {
            let data = (code == UNSUPPORTED_VERSION)
                .then(|| json!({"supported": [STATELESS_VERSION], "requested": version_header}));
            let id = value.get("id").cloned().unwrap_or(Value::Null);
            let body = match data {
                Some(d) => jsonrpc::error_with(id, code, &msg, d),
                None => jsonrpc::error(id, code, &msg),
            };
            return write_json(session, ctx, 400, &body, None).await;
        }
        let s = match header(session, &SESSION_ID) {
            Some(conv) => gw.sessions.conversation(
                &conv.chars().take(128).collect::<String>(),
                &profile.name,
                config.limits.mcp_session_idle_timeout,
                config.limits.mcp_max_sessions,
            ),
            None => super::session::Sessions::detached(profile.name.clone()),
        };
        let mut c = call(s, true);
        if let Some(caps) = jsonrpc::at(
            &value,
            &[
                "params",
                "_meta",
                "io.modelcontextprotocol/clientCapabilities",
            ],
        ) {
            c.capabilities = caps.clone();
        }
        return Box::pin(one_message(session, ctx, &c, value)).await;
    }
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    let s = match legacy_session {
        Some(Some(s)) => s,
        Some(None) => return session_not_found(session, ctx, id.clone()).await,
        None => {
            let mut msg = "Bad Request: no Mcp-Session-Id; send initialize first, or use the 2026-07-28 revision".to_owned();
            if let Some(v) = &version_header
                && v != STATELESS_VERSION
                && !LEGACY_VERSIONS.contains(&v.as_str())
            {
                msg = format!(
                    "Unsupported protocol version {}",
                    v.chars().take(32).collect::<String>()
                );
            }
            return rpc_error(
                session,
                ctx,
                400,
                id.clone(),
                jsonrpc::INVALID_REQUEST,
                &msg,
            )
            .await;
        }
    };
    if let Some(v) = &version_header
        && v != &s.version
        && !LEGACY_VERSIONS.contains(&v.as_str())
    {
        return rpc_error(
            session,
            ctx,
            400,
            id.clone(),
            jsonrpc::INVALID_REQUEST,
            "Bad Request: unsupported MCP-Protocol-Version",
        )
        .await;
    }
    let c = call(s.clone(), false);
    if let Value::Array(items) = value {
        if s.version != "2025-03-26" || items.is_empty() {
            return rpc_error(
                session,
                ctx,
                400,
                Value::Null,
                jsonrpc::INVALID_REQUEST,
                "batches are allowed only under protocol version 2025-03-26",
            )
            .await;
        }
        return Box::pin(batch(session, ctx, &c, items)).await;
    }
    Box::pin(one_message(session, ctx, &c, value)).await
}

async fn initialize(
    gw: &Arc<McpGateway>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    config: &Arc<Config>,
    profile: &Arc<crate::config::Profile>,
    value: Value,
) -> pingora::Result<()> {
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    let asked = value
        .pointer("/params/protocolVersion")
        .and_then(Value::as_str);
    let version = dispatch::negotiate(asked);
    let caps = value
        .pointer("/params/capabilities")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let s = gw.sessions.open(
        super::session::new_id(),
        profile.name.clone(),
        version.to_owned(),
        ctx.key_id.as_deref().map(str::to_owned),
        caps,
        config.limits.mcp_max_sessions,
    );
    let started = std::time::Instant::now();
    let record = crate::events::McpRecord {
        profile: profile.name.to_string(),
        server: String::new(),
        method: "initialize".into(),
        tool: None,
        status: "ok",
        duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(0),
        decisions: Vec::new(),
        key_id: ctx.key_id.as_deref().map(str::to_owned),
        session: Some(s.id.to_string()),
        arguments: None,
        result: None,
    };
    crate::trace::mcp(&record, header(session, &TRACEPARENT), None);
    gw.sink.record_mcp(&record);
    let body = jsonrpc::result(id, dispatch::initialize_result(version));
    write_json(session, ctx, 200, &body, Some(&s.id)).await
}

async fn one_message(
    session: &mut Session,
    ctx: &mut RequestCtx,
    call: &Call,
    value: Value,
) -> pingora::Result<()> {
    let msg = match Message::parse(value) {
        Ok(m) => m,
        Err(e) => return write_json(session, ctx, 400, &e, None).await,
    };
    match msg {
        Message::Request { id, method, params } => {
            match Box::pin(dispatch::request(call, id.clone(), &method, params)).await {
                Reply::Now(v) => {
                    let v = dispatch::shape_for(call, v);
                    write_json(session, ctx, 200, &v, None).await
                }
                Reply::Accepted => simple(session, ctx, 202, "").await,
                Reply::Forwarded(f) => Box::pin(stream_answer(session, ctx, call, id, f)).await,
                Reply::Listen(honoured, holds) => {
                    Box::pin(super::listen::serve(
                        session, ctx, call, id, honoured, holds,
                    ))
                    .await
                }
            }
        }
        Message::Notification { method, params } => {
            let body = jsonrpc::notification(&method, params);
            Box::pin(dispatch::one_way(call, Some(&method), body)).await;
            simple(session, ctx, 202, "").await
        }
        Message::Response { body, .. } => {
            Box::pin(dispatch::one_way(call, None, body)).await;
            simple(session, ctx, 202, "").await
        }
    }
}

async fn batch(
    session: &mut Session,
    ctx: &mut RequestCtx,
    call: &Call,
    items: Vec<Value>,
) -> pingora::Result<()> {
    let mut answers = Vec::new();
    for item in items {
        match Message::parse(item) {
            Err(e) => answers.push(e),
            Ok(Message::Request { id, method, params }) => {
                match dispatch::request(call, id.clone(), &method, params).await {
                    Reply::Now(v) => answers.push(v),
                    Reply::Accepted => {}
                    // Batches are legacy-only, where listen is not offered.
                    Reply::Listen(..) => answers.push(jsonrpc::error(
                        id.clone(),
                        jsonrpc::INVALID_REQUEST,
                        "subscriptions/listen cannot be batched",
                    )),
                    Reply::Forwarded(mut f) => {
                        // A batch answers in one JSON body: messages about a request are dropped
                        // (server requests are refused by the gateway).
                        let conn = f.cancel.0.clone();
                        loop {
                            tokio::select! {
                                a = &mut f.answer => { answers.push(a.unwrap_or_else(|_| jsonrpc::error(id.clone(), jsonrpc::INTERNAL_ERROR, "the request was lost"))); break; }
                                Some(ev) = f.events.recv() => {
                                    if let Some(rid) = ev.get("id").cloned() && ev.get("method").is_some() {
                                        conn.respond(jsonrpc::error(rid, jsonrpc::METHOD_NOT_FOUND, "not in a batch")).await;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Ok(Message::Notification { method, params }) => {
                dispatch::one_way(call, Some(&method), jsonrpc::notification(&method, params))
                    .await;
            }
            Ok(Message::Response { body, .. }) => dispatch::one_way(call, None, body).await,
        }
    }
    if answers.is_empty() {
        return simple(session, ctx, 202, "").await;
    }
    write_json(session, ctx, 200, &Value::Array(answers), None).await
}

/// Waits for the answer; if the server sends messages about the request first, switches
/// to an SSE answer that carries them.
async fn stream_answer(
    session: &mut Session,
    ctx: &mut RequestCtx,
    call: &Call,
    id: Value,
    mut f: Forwarded,
) -> pingora::Result<()> {
    let conn = f.cancel.0.clone();
    let mut streaming = false;
    let mut event_no = 0u64;
    let mut events_open = true;
    loop {
        // Messages about the request go before its answer: the answer is sent by the same
        // task after them, so the events branch is polled first.
        let ev = tokio::select! {
            biased;
            ev = f.events.recv(), if events_open => ev,
            a = &mut f.answer => {
                let mut msg = a.unwrap_or_else(|_| jsonrpc::error(id.clone(), jsonrpc::INTERNAL_ERROR, "the request was lost"));
                // A resumed request answers the retry, whose id is new.
                if let Some(o) = msg.as_object_mut() {
                    o.insert("id".into(), id.clone());
                }
                return finish_answer(session, ctx, streaming, event_no, &msg).await;
            }
        };
        let Some(ev) = ev else {
            events_open = false;
            continue;
        };
        if let Some(question) = asks_stateless_client(call, &ev) {
            let (wait, max) = ctx
                .config
                .as_ref()
                .map_or((Duration::from_secs(300), 10_000), |c| {
                    (c.limits.mcp_input_timeout, c.limits.mcp_max_sessions)
                });
            match super::mrtr::park(&call.gw, call, f, question, wait, max) {
                Ok(result) => {
                    let msg = jsonrpc::result(id, result);
                    return finish_answer(session, ctx, streaming, event_no, &msg).await;
                }
                Err(back) => {
                    f = back;
                    tracing::warn!(
                        "too many MCP requests wait for clients' input; refusing a server's question"
                    );
                }
            }
        }
        // The rest of the loop is for answers that stream: boxed, so the common case (one
        // answer, no events) does not carry these futures.
        let Some(out) = Box::pin(dispatch::relay(call, &conn, &f, ev)).await else {
            continue;
        };
        if !streaming {
            Box::pin(start_sse(session, ctx)).await?;
            streaming = true;
        }
        event_no += 1;
        if Box::pin(session.write_response_body(Some(sse_event(event_no, &out)), false))
            .await
            .is_err()
        {
            // The client went away. Only in the stateless era is that a cancellation.
            if call.stateless {
                let params =
                    json!({"requestId": f.cancel.1, "reason": "the client closed the stream"});
                Box::pin(conn.notify("notifications/cancelled", Some(params))).await;
            }
            return Ok(());
        }
    }
}

/// A server's request a stateless client said it can answer (its capability is in the
/// request's `_meta`): it becomes an `InputRequiredResult`.
fn asks_stateless_client<'a>(call: &Call, ev: &'a Value) -> Option<&'a Value> {
    if !call.stateless || ev.get("id").is_none() {
        return None;
    }
    let method = ev.get("method").and_then(Value::as_str)?;
    let needed = super::mrtr::capability(method)?;
    call.capabilities.get(needed).is_some().then_some(ev)
}

/// The answer: the whole JSON body, or the last event of a stream already started.
async fn finish_answer(
    session: &mut Session,
    ctx: &mut RequestCtx,
    streaming: bool,
    event_no: u64,
    msg: &Value,
) -> pingora::Result<()> {
    if !streaming {
        return write_json(session, ctx, 200, msg, None).await;
    }
    session
        .write_response_body(Some(sse_event(event_no + 1, msg)), true)
        .await
}

/// The legacy session's GET stream: what the servers send outside requests.
async fn get_stream(
    session: &mut Session,
    ctx: &mut RequestCtx,
    call: &Call,
) -> pingora::Result<()> {
    let accepts =
        header(session, &http::header::ACCEPT).is_some_and(|a| a.contains("text/event-stream"));
    if !accepts {
        return simple(
            session,
            ctx,
            406,
            "the GET stream needs Accept: text/event-stream",
        )
        .await;
    }
    let last: Option<u64> = header(session, &LAST_EVENT_ID).and_then(|v| v.parse().ok());
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let replay: Vec<(u64, Value)> = {
        let mut st = call.session.state.lock();
        st.stream = Some(tx);
        match last {
            Some(n) => st.replay.iter().filter(|(i, _)| *i > n).cloned().collect(),
            None => Vec::new(),
        }
    };
    start_sse(session, ctx).await?;
    // A priming event: the client learns an event id to resume from.
    session
        .write_response_body(Some(Bytes::from_static(b"id: 0\ndata: \n\n")), false)
        .await?;
    for (i, msg) in replay {
        session
            .write_response_body(Some(sse_event(i, &msg)), false)
            .await?;
    }
    // Comments on an idle stream keep intermediaries from reaping it (R30).
    let keepalive = ctx
        .config
        .as_ref()
        .map_or(Duration::from_secs(15), |c| c.limits.mcp_keepalive_interval);
    // A draining proxy ends the stream (the client reconnects to another), rather than
    // holding the drain to its grace period.
    let drained = crate::drain::drain_started(ctx.in_flight.as_ref());
    tokio::pin!(drained);
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(keepalive, rx.recv()) => next,
            () = &mut drained => break,
        };
        match next {
            Ok(Some((i, msg))) => {
                session
                    .write_response_body(Some(sse_event(i, &msg)), false)
                    .await?
            }
            Ok(None) => break,
            Err(_) => {
                session
                    .write_response_body(Some(Bytes::from_static(b": keep-alive\n\n")), false)
                    .await?
            }
        }
    }
    session.write_response_body(Some(Bytes::new()), true).await
}

/// 404 for a session that ended or never was: the client initializes again.
async fn session_not_found(
    session: &mut Session,
    ctx: &mut RequestCtx,
    id: Value,
) -> pingora::Result<()> {
    let msg = "Session not found: initialize again";
    rpc_error(session, ctx, 404, id, jsonrpc::INVALID_REQUEST, msg).await
}
