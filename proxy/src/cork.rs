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
    /// it and then waits for the answer. The uncork waits for the request's task to be
    /// polled once more ([`after_next_poll`]), in case the hand-over only woke it.
    pub fn release_soon(self) {
        after_next_poll(move || drop(self));
    }
}

/// Runs `f` in a task of its own once the calling task has yielded and been polled once
/// more, if it was woken meanwhile; at once outside a runtime (never, in a phase).
///
/// The task yields once by waking itself, which puts it at the back of its runtime's
/// queue, behind the caller woken by the same hand-over (a task woken while it runs is
/// queued again at the back, on a current-thread runtime and on a multi-thread worker
/// alike). Not `tokio::task::yield_now`, which waits until the queue is empty and the
/// runtime has polled for I/O: one more `epoll_wait` per request, and under load the
/// upstream request stays corked while every other ready task runs.
fn after_next_poll(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                YieldOnce(false).await;
                f();
            });
        }
        Err(_) => f(),
    }
}

/// Pending once, waking itself.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
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
    use std::sync::{Arc, Mutex};

    use super::{YieldOnce, after_next_poll};

    /// The order the upstream cork depends on: a task hands over work that wakes itself
    /// (Pingora's body hand-over) after asking for the uncork; its next poll (the write)
    /// comes before the uncork.
    #[test]
    fn the_deferred_step_runs_after_the_callers_next_poll() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (caller_log, uncork_log) = (log.clone(), log.clone());
        runtime.block_on(async move {
            let caller = tokio::spawn(async move {
                after_next_poll(move || uncork_log.lock().expect("log").push("uncork"));
                // The hand-over: woken at once, polled again at the back of the queue.
                YieldOnce(false).await;
                caller_log.lock().expect("log").push("write");
            });
            caller.await.expect("caller");
            // Lets the deferred step run, wherever it is in the queue.
            for _ in 0..4 {
                YieldOnce(false).await;
            }
        });
        assert_eq!(*log.lock().expect("log"), ["write", "uncork"]);
    }

    #[test]
    fn outside_a_runtime_the_step_runs_at_once() {
        let ran = Arc::new(Mutex::new(false));
        let r = ran.clone();
        after_next_poll(move || *r.lock().expect("flag") = true);
        assert!(*ran.lock().expect("flag"));
    }
}
