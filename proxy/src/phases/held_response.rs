//! The framing of a JSON response Sluice holds whole, decided as its header is written.
//!
//! A held response whose tool calls may be refused cannot keep the upstream's
//! Content-Length (a refusal has another length), so `response_filter` frames it in chunks.
//! But Pingora runs each batch of upstream tasks through the phases before writing any of
//! them (`process_upstream_tasks`), and runs the downstream modules' filters as it writes
//! (`write_response_tasks`). A small response usually comes in one read, header and whole
//! body in one batch: by the time its header is written, `response_body_filter` has made
//! the body that goes out (allowed, refused or an error in the provider's shape), and this
//! module gives the header that body's length. Pingora then keeps the header in the write
//! buffer and sends it with the body: one send, no chunks, no last chunk.
//!
//! When the body comes in a later read, the header is written first and goes chunked, as
//! before; the client's socket is corked then (`cork.rs`), so that header, chunk and last
//! chunk still leave as one packet when the logging phase uncorks it.

use std::any::Any;

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora::proxy::Session;

/// Adds [`HeldResponse`] to each request's downstream modules.
pub struct HeldResponseBuilder;

impl HttpModuleBuilder for HeldResponseBuilder {
    fn init(&self) -> Module {
        Box::new(HeldResponse::default())
    }
}

/// One request's held response, between its phases and the writing of its header.
#[derive(Debug, Default)]
pub struct HeldResponse {
    /// The next header written is the held response's.
    held: bool,
    /// The client's socket, when it is a plain TCP connection (for the cork).
    client: Option<crate::cork::ClientSocket>,
    /// The length of the body that goes out, once it is complete.
    length: Option<usize>,
    /// The client's socket was corked for a header sent before its body.
    corked: bool,
}

#[async_trait]
impl HttpModule for HeldResponse {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> pingora::Result<()> {
        if !std::mem::take(&mut self.held) {
            return Ok(());
        }
        match self.length.take() {
            Some(n) => {
                resp.remove_header(&http::header::TRANSFER_ENCODING);
                resp.insert_header(http::header::CONTENT_LENGTH, n)?;
            }
            None => {
                if let Some(c) = &self.client {
                    self.corked = c.set(true);
                }
            }
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// From `response_filter`: the response is held whole and framed in chunks for now.
pub fn hold(session: &mut Session) {
    let client = crate::cork::ClientSocket::of(session);
    if let Some(m) = session.downstream_modules_ctx.get_mut::<HeldResponse>() {
        m.held = true;
        m.client = client;
    }
}

/// From `response_body_filter`: the held body is complete and `len` bytes go out. Only a
/// header not yet written takes the length.
pub fn complete(session: &mut Session, len: usize) {
    if let Some(m) = session.downstream_modules_ctx.get_mut::<HeldResponse>()
        && m.held
    {
        m.length = Some(len);
    }
}

/// From the logging phase, after the last write: uncorks the client's socket if the header
/// went before the body.
pub fn release(session: &mut Session) {
    if let Some(m) = session.downstream_modules_ctx.get_mut::<HeldResponse>() {
        m.held = false;
        if let (true, Some(c)) = (m.corked, &m.client) {
            m.corked = !c.set(false);
        }
    }
}
