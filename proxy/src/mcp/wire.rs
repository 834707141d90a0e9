//! Writing the MCP endpoint's HTTP answers: JSON bodies, plain statuses, JSON-RPC and
//! Sluice errors, SSE streams; reading a bounded request body; the Origin check.

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::Value;

use super::jsonrpc;
use crate::config::Config;
use crate::phases::ctx::RequestCtx;

pub(super) fn header<'a>(session: &'a Session, name: &http::HeaderName) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
}

pub(super) fn sse_event(id: u64, msg: &Value) -> Bytes {
    Bytes::from(format!("id: {id}\nevent: message\ndata: {msg}\n\n"))
}

pub(super) async fn start_sse(session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header("content-type", "text/event-stream")?;
    resp.insert_header("cache-control", "no-cache")?;
    resp.insert_header("x-accel-buffering", "no")?;
    resp.insert_header("transfer-encoding", "chunked")?;
    session.write_response_header(Box::new(resp), false).await?;
    ctx.status = 200;
    ctx.response_started = true;
    // A server stream or a listen stream can stay open for hours: its memory shows in the
    // count from here, so it does not hold a reservation against the budget all that time.
    ctx.memory_reservation = None;
    Ok(())
}

pub(super) async fn read_body(session: &mut Session, max: usize) -> Result<Bytes, u16> {
    let mut buf = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > max {
                    return Err(413);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(_) => return Err(400),
        }
    }
}

pub(super) fn origin_allowed(origin: &str, config: &Config) -> bool {
    if config
        .mcp_allowed_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split(':').next().unwrap_or("")
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

pub(super) async fn write_json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: &Value,
    session_id: Option<&str>,
) -> pingora::Result<()> {
    let body = jsonrpc::to_bytes(body);
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    if let Some(id) = session_id {
        resp.insert_header("mcp-session-id", id)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    ctx.status = status;
    ctx.response_started = true;
    Ok(())
}

pub(super) async fn simple(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    text: &str,
) -> pingora::Result<()> {
    let body = Bytes::from(text.to_owned());
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header("content-length", body.len().to_string())?;
    if status == 405 {
        resp.insert_header("allow", "POST, GET, DELETE")?;
    }
    if !body.is_empty() {
        resp.insert_header("content-type", "text/plain")?;
    }
    session
        .write_response_header(Box::new(resp), body.is_empty())
        .await?;
    if !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    ctx.status = status;
    ctx.response_started = true;
    Ok(())
}

pub(super) async fn rpc_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    id: Value,
    code: i64,
    msg: &str,
) -> pingora::Result<()> {
    write_json(session, ctx, status, &jsonrpc::error(id, code, msg), None).await
}

/// A Sluice error (auth, routing) as HTTP status + JSON-RPC error.
pub(super) async fn sluice_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    e: &crate::error::SluiceError,
) -> pingora::Result<()> {
    let (status, _, _) = e.classify();
    let body = jsonrpc::error(Value::Null, jsonrpc::INVALID_REQUEST, &e.to_string());
    let out = jsonrpc::to_bytes(&body);
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", out.len().to_string())?;
    if let crate::error::SluiceError::TooManyFailedAuth(secs) = e {
        resp.insert_header("retry-after", secs.to_string())?;
    } else if status == 503 {
        resp.insert_header("retry-after", "1")?;
    }
    if status == 401 {
        resp.insert_header("www-authenticate", "Bearer realm=\"sluice\"")?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(out), true).await?;
    ctx.status = status;
    ctx.response_started = true;
    Ok(())
}
