//! One segment where Pingora would send two or three (Linux `TCP_CORK`), on both sides.
//!
//! **The client's socket, for a response Sluice holds whole** ([`ClientSocket`]). A JSON
//! response whose tool calls may be refused loses its Content-Length (a refusal has another
//! length); when its body comes after its header has been written
//! (`phases/held_response.rs`), it goes out chunked. Pingora flushes a chunked response's
//! header at once, then the body's chunk, then the last chunk: three sends, each a packet
//! the client wakes for, although Sluice has the whole body before any of it may go.
//! Corked as the header is written, the three writes leave as one packet when the response
//! ends (uncorked from the logging phase, which Pingora runs after the last write).
//! Plain-text HTTP/1.x only: an HTTP/2 connection carries other streams, and a TLS stream
//! is not reachable as a socket here.
//!
//! **The upstream's socket, for a request body read first** (`phases/body_first.rs`).
//! Pingora's HTTP/1 client flushes the request header on its own and then writes the body:
//! two segments, and the upstream wakes twice — for a header it cannot act on without the
//! body that follows microseconds later. Sluice holds that body already, so the socket is
//! corked when the connection is handed to the request ([`UpstreamCork::new`], from
//! `connected_to_upstream`) and uncorked when Pingora is done with the body it was handed
//! ([`UpstreamCork::until_written`], from `request_body_filter`): the cork rides in the
//! body's `Bytes` and uncorks when they are dropped, which Pingora's HTTP/1 upstream writer
//! does just after writing them (`send_body_to1`). Header and body then leave as one
//! segment — over TLS as well, since the cork is on the TCP socket beneath. Not for HTTP/2
//! upstreams (one connection, many requests).
//!
//! Nothing waits on a cork: the kernel sends a corked partial segment after 200 ms at most,
//! and every [`UpstreamCork`] uncorks when dropped, so a path that never reaches the body's
//! write (an error, a retry on another connection) delays at most until its request ends;
//! an uncork that comes before the body's write only sends the header alone, as before.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use bytes::Bytes;

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

/// The client's connection of one session, when it is a plain TCP socket.
///
/// Kept in that session's own downstream module (`phases/held_response.rs`) and used only
/// from its header filter and the session's logging phase, both while the session, which
/// owns the stream, is alive: the descriptor is open whenever it is used. Dropping it
/// closes nothing.
#[derive(Debug)]
pub struct ClientSocket(RawFd);

impl ClientSocket {
    /// The session's client socket; `None` for TLS or HTTP/2 (see above).
    pub fn of(session: &Session) -> Option<Self> {
        let stream = session.downstream_session.stream()?;
        let tcp = stream.as_any().downcast_ref::<TcpStream>()?;
        Some(Self(tcp.as_raw_fd()))
    }

    /// Sets or clears `TCP_CORK`; false when it could not be set.
    pub fn set(&self, on: bool) -> bool {
        with_socket(self.0, |fd| {
            rustix::net::sockopt::set_tcp_cork(fd, on).is_ok()
        })
    }
}

/// An upstream socket corked until the request body is written; uncorks when dropped.
///
/// It keeps a duplicate of the descriptor: the uncork comes after `connected_to_upstream`
/// returned, when the body is dropped, and on a path that fails before the write that may
/// be after Pingora closed its own descriptor (the duplicate then holds the socket open
/// only until the uncork).
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

    /// `body`, carrying the cork: it uncorks when the last handle to these bytes is
    /// dropped, which Pingora's upstream writer does as soon as it has written them. The
    /// caller keeps no handle of its own (it hands over a clone of its `Bytes`, which
    /// shares the buffer, not this owner).
    pub fn until_written(self, body: Bytes) -> Bytes {
        Bytes::from_owner(CorkedBody { body, _cork: self })
    }
}

/// A request body that uncorks its upstream socket when dropped ([`UpstreamCork::until_written`]).
struct CorkedBody {
    body: Bytes,
    _cork: UpstreamCork,
}

impl AsRef<[u8]> for CorkedBody {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for UpstreamCork {
    fn drop(&mut self) {
        // Failure leaves the kernel's 200 ms cap; nothing to report to anyone.
        let _ = rustix::net::sockopt::set_tcp_cork(&self.0, false);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use bytes::Bytes;

    use super::UpstreamCork;

    fn corked(s: &TcpStream) -> bool {
        rustix::net::sockopt::tcp_cork(s).expect("TCP_CORK")
    }

    /// The cork holds while any handle to the body is alive (Pingora's, between the
    /// hand-over and the write) and lets go when the last one is dropped.
    #[test]
    fn the_body_uncorks_the_socket_when_its_last_handle_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let socket = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let cork = UpstreamCork::new(socket.as_raw_fd()).expect("cork");
        assert!(corked(&socket));
        let kept = Bytes::from_static(b"{\"model\":\"m\"}");
        let handed = cork.until_written(kept.clone());
        assert_eq!(handed, kept);
        let held_by_the_writer = handed.clone();
        drop(handed);
        assert!(corked(&socket), "a handle is still alive");
        drop(held_by_the_writer);
        assert!(!corked(&socket), "the last handle is gone");
        // The caller's own copy never held the cork.
        assert_eq!(&kept[..], b"{\"model\":\"m\"}");
    }

    /// A body never handed over (an error before the write) still uncorks, with the cork.
    #[test]
    fn a_cork_dropped_unused_uncorks() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let socket = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let cork = UpstreamCork::new(socket.as_raw_fd()).expect("cork");
        assert!(corked(&socket));
        drop(cork);
        assert!(!corked(&socket));
    }
}
