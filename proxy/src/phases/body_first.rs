//! Small request bodies are read whole before Sluice connects upstream, so a client that
//! sends its body slowly (a slow POST) holds no upstream connection while it does.
//!
//! Pingora connects upstream as soon as `request_filter` returns and reads the body only
//! then. The one way to hand it a body read earlier is its retry buffer, which keeps the
//! first 64 KiB and is replayed to the upstream first. Bodies declared up to that size are
//! therefore read here; larger and chunked bodies take Pingora's path (connect, then read —
//! Sluice still holds an inspected body until it is complete, so nothing reaches the
//! upstream early either way).
//!
//! A body read here is also inspected here (limits, policies, the quarantine), so a
//! request Sluice refuses never takes an upstream connection: before, each took one (a
//! pooled one, or a new TCP and TLS handshake) and the refusal discarded it, mid-request.
//! `request_body_filter` then hands Pingora the body prepared here.

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::error::SluiceError;

/// What Pingora's retry buffer holds (`BODY_BUF_LIMIT` in pingora-core); a longer body
/// would be truncated there and could not be handed on.
pub const MAX_READ_FIRST_BYTES: u64 = 64 * 1024;

/// Reads the body of a routed request whose declared length is at most
/// [`MAX_READ_FIRST_BYTES`] (into Pingora's retry buffer, and returned whole). `None` when
/// the body is left to Pingora's path.
pub async fn read_small_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Option<bytes::Bytes>, ReadFirstError> {
    let Some(cfg) = ctx.config.clone() else {
        return Ok(None);
    };
    let req = session.req_header();
    let declared = super::request::declared_length(req);
    let chunked = req.headers.contains_key(http::header::TRANSFER_ENCODING);
    match declared {
        Some(len) if len > 0 && len <= MAX_READ_FIRST_BYTES && !chunked => {}
        _ => return Ok(None),
    }
    let expects_continue = req
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // The client waits for this before it sends the body; the upstream, which would
        // otherwise answer it, is not connected yet.
        // Pingora marks a connection to close when a response header goes out before the
        // body is in (so it need not drain it); this one asks for the body.
        session.set_close_on_response_before_downstream_finish(false);
        let sent = session.write_continue_response().await;
        session.set_close_on_response_before_downstream_finish(true);
        sent.map_err(ReadFirstError::Io)?;
    }
    session.enable_retry_buffering();
    let mut received = 0usize;
    // Most bodies arrive in one read: the first chunk needs no list.
    let mut first = None;
    let mut chunks = Vec::new();
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(ReadFirstError::Io)?
    {
        received = received.saturating_add(chunk.len());
        match first {
            None => first = Some(chunk),
            Some(_) => chunks.push(chunk),
        }
        if !session.is_body_done() {
            super::request::check_body_rate(ctx.started.elapsed(), received, &cfg.limits)
                .map_err(ReadFirstError::Refused)?;
        }
    }
    if session.retry_buffer_truncated() {
        // Cannot happen for a declared length within the buffer; if it did, the body is
        // gone and must not be sent short.
        return Err(ReadFirstError::Refused(SluiceError::Internal));
    }
    let Some(first) = first else {
        return Ok(Some(bytes::Bytes::new()));
    };
    if chunks.is_empty() {
        return Ok(Some(first));
    }
    chunks.insert(0, first);
    Ok(Some(super::join_chunks(chunks, received)))
}

/// Why a body could not be read first.
#[derive(Debug)]
pub enum ReadFirstError {
    /// The client's connection failed or timed out (Pingora's own error, kept as it is).
    Io(Box<pingora::Error>),
    /// Sluice refuses the request (too slow).
    Refused(SluiceError),
}
