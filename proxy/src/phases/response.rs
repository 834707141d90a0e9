//! The response: choose how to read it from its header, then read it inline as it passes.
//!
//! SSE: the framer cuts the bytes at event boundaries and only whole events go downstream,
//! as zero-copy slices of the upstream's chunks (an event split across chunks is stitched in
//! a capped buffer). So if the upstream dies mid-event, the client gets a clean terminal
//! error event, never half an event glued to it. JSON: chunks pass unchanged; a refcounted
//! handle to each is kept and the body is read once at the end.

use bytes::Bytes;
use pingora::http::ResponseHeader;

use super::ctx::{BodyMode, RequestCtx};
use super::gate;
use crate::error::SluiceError;
use crate::llm::{EventVerdict, ResponseInspector, stream_error_event};
use crate::sse::{Framed, SseFramer, parse_event};

/// Reads the response header and picks the body mode.
///
/// `chunked_ok`: the client can take chunked framing (HTTP/1.1 or later).
pub fn on_header(
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
    max_event: usize,
    chunked_ok: bool,
) -> pingora::Result<()> {
    ctx.status = resp.status.as_u16();
    ctx.response_started = true;
    ctx.ttfb_us = Some(u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX));
    let Some(api) = ctx.api() else {
        return Ok(());
    };
    if !resp.status.is_success() {
        return Ok(());
    }
    let is_sse = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
    ctx.inspector = Some(ResponseInspector::new(
        api,
        ctx.request_facts.usage_injected,
    ));
    if is_sse {
        // Events may be dropped (injected usage) or appended (terminal errors): the length
        // is no longer the upstream's.
        unset_length(resp, chunked_ok)?;
        ctx.body_mode = BodyMode::Sse(SseFramer::new(max_event));
    } else {
        // The body is held whole. Its length changes only if a refused call is rewritten,
        // which is impossible when every declared tool is an unconditional allow: then the
        // upstream's Content-Length is kept. (The ~30 µs per response this once saved was
        // mostly a closed connection: see `unset_length`.)
        ctx.json_fixed_length = if gate::all_declared_unconditional(ctx) {
            resp.headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
        } else {
            None
        };
        if ctx.json_fixed_length.is_none() {
            unset_length(resp, chunked_ok)?;
        }
        ctx.body_mode = BodyMode::Json {
            chunks: Vec::new(),
            len: 0,
            overflowed: false,
        };
    }
    Ok(())
}

/// Drops the upstream's Content-Length and frames the body in chunks. Pingora turns a
/// response that has neither header into chunks itself, but before `response_filter`:
/// a length removed here would leave the body delimited by the connection's close, and the
/// client would lose its connection after every response (a new TCP handshake and a new
/// connection task each request).
fn unset_length(resp: &mut ResponseHeader, chunked_ok: bool) -> pingora::Result<()> {
    if resp.remove_header(&http::header::CONTENT_LENGTH).is_none() {
        return Ok(());
    }
    let no_body = matches!(resp.status.as_u16(), 204 | 304);
    if chunked_ok && !no_body && resp.headers.get(http::header::TRANSFER_ENCODING).is_none() {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// Reads one response body chunk and sets `body` to what goes downstream now.
///
/// An error means Sluice must end the stream now (the upstream broke framing or encoding):
/// the events still good and the terminal error event wait in `ctx.closing_bytes`, and the
/// caller fails the request so `fail_to_proxy` writes them and drops the upstream.
pub fn on_chunk(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
    max_json: usize,
) -> Result<(), SluiceError> {
    if ctx.stream_closed_by_sluice {
        *body = None;
        return Ok(());
    }
    match &mut ctx.body_mode {
        BodyMode::Passthrough => {}
        BodyMode::Json {
            chunks,
            len,
            overflowed,
        } => {
            // Held whole: its tool calls are judged before any of it goes out.
            if let Some(b) = body.take() {
                *len += b.len();
                if *len > max_json {
                    *overflowed = true;
                    chunks.clear();
                } else if !*overflowed {
                    chunks.push(b);
                }
            }
            if !end_of_stream {
                return Ok(());
            }
            let overflowed = *overflowed;
            let whole = super::join_chunks(std::mem::take(chunks), *len);
            let Some(api) = ctx.api() else {
                return Ok(());
            };
            if overflowed {
                // Fail closed: a body too large to read is not forwarded unread.
                let err = SluiceError::UpstreamProtocol {
                    provider: ctx.provider_name(),
                    detail: format!(
                        "the response is larger than limits.max_inspected_response_bytes ({max_json} bytes) and could not be checked"
                    ),
                };
                return fail_json(body, ctx, err);
            }
            if let Some(inspector) = ctx.inspector.as_mut() {
                let read = inspector.on_json(&whole, &mut ctx.response_facts);
                // Unreadable to Sluice (a member of an unexpected type) but JSON a client
                // reads, with tool calls in it: they were never judged.
                if !read && crate::llm::may_call_tools(api, &whole) {
                    let err = SluiceError::UpstreamProtocol {
                        provider: ctx.provider_name(),
                        detail: "the response calls tools but could not be read to judge them (a member of an unexpected type); it was not forwarded".into(),
                    };
                    return fail_json(body, ctx, err);
                }
            }
            let judged = match gate::on_json_body(ctx, api, &whole) {
                Ok(judged) => judged,
                Err(err) => return fail_json(body, ctx, err),
            };
            let out = match judged {
                None => whole,
                Some(rewritten) => match ctx.json_fixed_length {
                    None => rewritten,
                    // A call of an undeclared tool was refused under a kept Content-Length:
                    // JSON allows trailing spaces, so a shorter refusal is padded; a longer
                    // one cannot be sent, and the response is failed rather than let through.
                    Some(n) if rewritten.len() <= n => {
                        let mut padded = rewritten.to_vec();
                        padded.resize(n, b' ');
                        Bytes::from(padded)
                    }
                    Some(_) => {
                        return Err(SluiceError::UpstreamProtocol {
                            provider: ctx.provider_name(),
                            detail: "a refused tool call could not be rewritten within the response's length".into(),
                        });
                    }
                },
            };
            *body = Some(out);
        }
        BodyMode::Sse(_) => return on_sse_chunk(body, end_of_stream, ctx),
    }
    Ok(())
}

/// A held JSON body that must not go out: the error in the provider's shape in its place,
/// or, under a kept Content-Length it cannot fit, the response failed.
fn fail_json(
    body: &mut Option<Bytes>,
    ctx: &mut RequestCtx,
    err: SluiceError,
) -> Result<(), SluiceError> {
    ctx.response_facts.error = Some(err.to_string());
    if ctx.json_fixed_length.is_some() {
        return Err(err);
    }
    *body = Some(crate::llm::render_error(ctx.error_shape, &err).2);
    Ok(())
}

fn on_sse_chunk(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
) -> Result<(), SluiceError> {
    if ctx.inspector.is_none() {
        return Ok(());
    }
    let provider = ctx.provider_name();
    let BodyMode::Sse(framer) = &mut ctx.body_mode else {
        return Ok(());
    };
    let mut framed = Framed::default();
    let mut fault: Option<SluiceError> = None;
    let chunk_in = body.clone();
    if let Some(chunk) = body.as_ref()
        && let Err(e) = framer.push(chunk, &mut framed)
    {
        fault = Some(SluiceError::UpstreamProtocol {
            provider,
            detail: e.to_string(),
        });
    }
    if end_of_stream && fault.is_none() {
        if framer.remainder_is_complete_event() {
            framed.events.push(framer.take_remainder());
        } else if framer.pending_len() > 0 {
            // The stream ended inside an event: the fragment is not forwarded.
            let _fragment = framer.take_remainder();
        }
    }
    let mut keep = Vec::with_capacity(framed.events.len());
    let mut dropped = false;
    for ev in framed.events {
        let verdict = {
            let Some(inspector) = ctx.inspector.as_mut() else {
                break;
            };
            match parse_event(&ev) {
                Ok(fields) => inspector.on_event(&fields, &mut ctx.response_facts),
                Err(e) => {
                    fault = Some(SluiceError::UpstreamProtocol {
                        provider,
                        detail: e.to_string(),
                    });
                    break;
                }
            }
        };
        if verdict == EventVerdict::Unreadable
            && (gate::is_holding(ctx)
                || ctx
                    .api()
                    .is_some_and(|api| crate::llm::names_tool_calls(api, &ev)))
        {
            // A client's reader may take calls from it that were never judged.
            fault = Some(SluiceError::UpstreamProtocol {
                provider,
                detail:
                    "an event calls tools but could not be read to judge them; the stream was ended"
                        .into(),
            });
            break;
        }
        if !gate::on_event(ctx, ev, verdict, &mut keep) {
            dropped = true;
        }
    }
    if end_of_stream && fault.is_none() && gate::is_holding(ctx) {
        fault = Some(SluiceError::UpstreamBroken {
            provider,
            detail: "the stream ended inside a tool call, which was not forwarded".into(),
        });
    }
    if end_of_stream && fault.is_none() && !ctx.response_facts.completed {
        if let Some(inspector) = ctx.inspector.as_mut() {
            inspector.finish(&mut ctx.response_facts);
        }
        fault = Some(SluiceError::UpstreamBroken {
            provider,
            detail: "the stream ended before its final event".into(),
        });
    }
    if !dropped
        && fault.is_none()
        && let Some(slice) = chunk_in.as_ref().and_then(|c| contiguous_in(c, &keep))
    {
        *body = Some(slice);
        return Ok(());
    }
    let mut out = Framed { events: keep };
    let Some(err) = fault else {
        *body = Some(out.joined());
        return Ok(());
    };
    if let Some(api) = ctx.route.as_ref().and_then(|r| r.api) {
        out.events.push(stream_error_event(api, &err));
    }
    ctx.response_facts.error = Some(err.to_string());
    ctx.stream_closed_by_sluice = true;
    if end_of_stream {
        *body = Some(out.joined());
        return Ok(());
    }
    ctx.closing_bytes = Some(out.joined());
    *body = None;
    Err(err)
}

/// The terminal event for a stream the upstream broke after the header went out, or `None`
/// when the response is not a stream Sluice can still close cleanly.
pub fn terminal_event(ctx: &mut RequestCtx, err: &SluiceError) -> Option<Bytes> {
    if let Some(bytes) = ctx.closing_bytes.take() {
        return Some(bytes);
    }
    if ctx.stream_closed_by_sluice || !matches!(ctx.body_mode, BodyMode::Sse(_)) {
        return None;
    }
    let api = ctx.api()?;
    ctx.stream_closed_by_sluice = true;
    ctx.response_facts.error = Some(err.to_string());
    if let Some(i) = ctx.inspector.as_mut() {
        i.finish(&mut ctx.response_facts);
    }
    Some(stream_error_event(api, err))
}

/// When the events are back-to-back slices of `chunk` (the common case: nothing stitched,
/// nothing dropped), the one slice of `chunk` that covers them all, so nothing is copied.
fn contiguous_in(chunk: &Bytes, events: &[Bytes]) -> Option<Bytes> {
    let base = chunk.as_ptr() as usize;
    let first = events.first()?;
    let start = (first.as_ptr() as usize).checked_sub(base)?;
    let mut end = start;
    for e in events {
        if e.as_ptr() as usize != base + end {
            return None;
        }
        end += e.len();
    }
    (end <= chunk.len()).then(|| chunk.slice(start..end))
}
