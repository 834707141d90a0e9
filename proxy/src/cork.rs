//! One segment for a response Sluice holds whole (Linux `TCP_CORK` on the client's socket).
//!
//! A JSON response whose tool calls may be refused loses its Content-Length (a refusal has
//! another length) and goes out chunked. Pingora flushes a chunked response's header at
//! once, then the body's chunk, then the last chunk: three sends, each a packet the client
//! wakes for, although Sluice has the whole body before any of it may go. Corked, the
//! three writes leave as one packet when the response ends (`uncork`, from the logging
//! phase, which Pingora runs after the last write). The kernel sends a corked partial
//! packet after 200 ms at most, so a missed `uncork` delays, never loses.
//!
//! Plain-text HTTP/1.x only: an HTTP/2 connection carries other streams, and a TLS stream is
//! not reachable as a socket here.

use std::os::fd::{AsRawFd, BorrowedFd};

use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::proxy::Session;

/// Sets or clears `TCP_CORK` on the client's connection; false when it does not apply.
pub fn set(session: &Session, on: bool) -> bool {
    let Some(stream) = session.downstream_session.stream() else {
        return false;
    };
    let Some(tcp) = stream.as_any().downcast_ref::<TcpStream>() else {
        return false;
    };
    // SAFETY: the descriptor belongs to `tcp`, which the session owns and which outlives
    // this borrow; it is used for one `setsockopt` and not kept.
    #[allow(unsafe_code)]
    let fd = unsafe { BorrowedFd::borrow_raw(tcp.as_raw_fd()) };
    rustix::net::sockopt::set_tcp_cork(fd, on).is_ok()
}
