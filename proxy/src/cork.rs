//! One segment where Pingora would send two or three (Linux `TCP_CORK`), on both sides.
//!
//! **The client's socket, for a response Sluice holds whole.** A JSON response whose tool
//! calls may be refused loses its Content-Length (a refusal has another length) and goes
//! out chunked. Pingora flushes a chunked response's header at once, then the body's chunk,
//! then the last chunk: three sends, each a packet the client wakes for, although Sluice
//! has the whole body before any of it may go. Corked, the three writes leave as one packet
//! when the response ends (`set(.., false)`, from the logging phase, which Pingora runs
//! after the last write). Plain-text HTTP/1.x only: an HTTP/2 connection carries other
//! streams, and a TLS stream is not reachable as a socket here.
//!
//! **The upstream's socket, for a request body read first** (`phases/body_first.rs`).
//! Pingora's HTTP/1 client flushes the request header on its own and then writes the body:
//! two segments, and the upstream wakes twice — for a header it cannot act on without the
//! body that follows microseconds later. Sluice holds that body already, so the socket is
//! corked when the connection is handed to the request ([`UpstreamCork::new`], from
//! `connected_to_upstream`) and uncorked just after Pingora writes the body
//! ([`UpstreamCork::release_soon`], from `request_body_filter`, which hands Pingora the body:
//! a task that runs once the request's task has yielded, which it does after the write,
//! waiting for the answer). Header and body then leave as one segment — over TLS as well,
//! since the cork is on the TCP socket beneath. Not for HTTP/2 upstreams (one connection,
//! many requests).
//!
//! Nothing waits on a cork: the kernel sends a corked partial segment after 200 ms at most,
//! and every [`UpstreamCork`] uncorks when dropped, so a path that never reaches the body's
//! write (an error, a retry on another connection) delays at most until its request ends;
//! an uncork that comes before the body's write only sends the header alone, as before.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::proxy::Session;

/// Runs `f` on the socket `fd` names.
///
/// Callers pass a descriptor that stays open for the call: one owned by a Pingora stream
/// that outlives it (the client's, or the upstream's handed to `connected_to_upstream`).
fn with_socket<R>(fd: RawFd, f: impl FnOnce(BorrowedFd<'_>) -> R) -> R {
    // SAFETY: per the callers' contract above, `fd` is open until `f` returns, and the
    // borrow does not escape `f` (a descriptor kept longer is `f`'s own duplicate).
    #[allow(unsafe_code)]
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    f(fd)
}

/// Sets or clears `TCP_CORK` on the client's connection; false when it does not apply.
pub fn set(session: &Session, on: bool) -> bool {
    let Some(stream) = session.downstream_session.stream() else {
        return false;
    };
    let Some(tcp) = stream.as_any().downcast_ref::<TcpStream>() else {
        return false;
    };
    with_socket(tcp.as_raw_fd(), |fd| {
        rustix::net::sockopt::set_tcp_cork(fd, on).is_ok()
    })
}

/// An upstream socket corked until the request body is written; uncorks when dropped.
///
/// It keeps a duplicate of the descriptor: the uncork comes from another task, after
/// `connected_to_upstream` returned, when Pingora may have closed its own descriptor (the
/// duplicate then holds the socket open only until the uncork).
pub struct UpstreamCork(OwnedFd);

impl std::fmt::Debug for UpstreamCork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamCork")
    }
}

impl UpstreamCork {
    /// Corks the upstream socket `fd`, which Pingora's connection owns for the call (the
    /// `fd` argument of `connected_to_upstream`). `None` when it cannot be (not a TCP
    /// socket, or out of descriptors): the request then goes as Pingora sends it.
    pub fn new(fd: RawFd) -> Option<Self> {
        let own = with_socket(fd, |fd| rustix::io::fcntl_dupfd_cloexec(fd, 0)).ok()?;
        rustix::net::sockopt::set_tcp_cork(&own, true).ok()?;
        Some(Self(own))
    }

    /// Uncorks once the current task has yielded: Pingora writes the body this phase hands
    /// it and then waits for the answer. The uncorking task also yields first (until the
    /// runtime has run its other ready tasks), so that the request's task, woken by the
    /// same hand-over, writes before it.
    pub fn release_soon(self) {
        // Outside a runtime (never, in a phase) it uncorks at once, as it drops.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::task::yield_now().await;
                drop(self);
            });
        }
    }
}

impl Drop for UpstreamCork {
    fn drop(&mut self) {
        // Failure leaves the kernel's 200 ms cap; nothing to report to anyone.
        let _ = rustix::net::sockopt::set_tcp_cork(&self.0, false);
    }
}
