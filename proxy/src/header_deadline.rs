//! A total deadline on each request header, and on idle keep-alive connections.
//!
//! Pingora times out each *read* of a request header (60 s), so a client sending one byte
//! every few seconds (slowloris) holds a connection forever, and an idle HTTP/1.1
//! keep-alive connection is kept without limit. This wraps the proxy's connection handler:
//! the first request on a connection must deliver its whole header within
//! `limits.client_header_timeout_ms`, and each later one within
//! `limits.client_keepalive_timeout_ms` of the previous response. Past that the connection
//! is closed; while a request runs (from its header to its last byte) there is no deadline:
//! body and response have their own limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::time::Instant;

use crate::live::LiveConfig;

/// One connection's state, shared by its handler and the request running on it.
///
/// A request does not wake the handler when it ends: it records when, and the handler's
/// one timer, which never fires after the deadline it guards, reads that when it fires.
/// (A `Notify` did the same, but the handler polled it on every wake-up of every request:
/// ~0.2 µs per request, for an event that matters only to idle connections.)
#[derive(Debug)]
pub struct Connection {
    accepted: Instant,
    busy: AtomicBool,
    /// Nanoseconds from `accepted` to the end of the last request; `NONE` before one ends.
    ended_ns: AtomicU64,
}

const NONE: u64 = u64::MAX;

impl Connection {
    fn new(accepted: Instant) -> Self {
        Self {
            accepted,
            busy: AtomicBool::new(false),
            ended_ns: AtomicU64::new(NONE),
        }
    }

    /// When the connection must be closed unless a request header arrives first: `None`
    /// while a request runs.
    fn deadline(&self, first: Duration, later: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) {
            return None;
        }
        Some(match self.ended_ns.load(Ordering::Acquire) {
            NONE => self.accepted + first,
            ns => self.accepted + Duration::from_nanos(ns) + later,
        })
    }
}

tokio::task_local! {
    static CONNECTION: Arc<Connection>;
}

/// Marks the connection's request as running until dropped (kept in the request context).
#[derive(Debug)]
pub struct RequestOnConnection(Arc<Connection>);

impl Drop for RequestOnConnection {
    fn drop(&mut self) {
        let since = Instant::now().saturating_duration_since(self.0.accepted);
        let ns = u64::try_from(since.as_nanos())
            .unwrap_or(NONE - 1)
            .min(NONE - 1);
        self.0.ended_ns.store(ns, Ordering::Release);
        self.0.busy.store(false, Ordering::Release);
    }
}

/// Called once a request's header has been read (from `new_ctx`): the deadline is off
/// until the request ends, then the keep-alive deadline starts.
pub fn request_started() -> Option<RequestOnConnection> {
    CONNECTION
        .try_with(|c| {
            c.busy.store(true, Ordering::Release);
            RequestOnConnection(c.clone())
        })
        .ok()
}

/// The proxy's connection handler with header deadlines.
pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    live: Arc<LiveConfig>,
    h2c: bool,
}

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<A> HeaderDeadline<A> {
    /// Wraps `inner`, reading the deadlines from the live config for each connection. With
    /// `h2c`, a connection that opens with the HTTP/2 preface (which must arrive within the
    /// header deadline) is served without the per-request deadlines: its streams run on
    /// their own tasks, and an idle HTTP/2 connection is closed by Pingora's idle timeout.
    pub fn new(inner: A, live: Arc<LiveConfig>, h2c: bool) -> Self {
        Self {
            inner: Arc::new(inner),
            live,
            h2c,
        }
    }

    fn deadlines(&self) -> (Duration, Duration) {
        connection_deadlines(&self.live)
    }
}

/// The first request header's deadline and the kept-alive connection's, from the live
/// config (the defaults before there is one).
pub fn connection_deadlines(live: &LiveConfig) -> (Duration, Duration) {
    let d = crate::config::Limits::default();
    live.current()
        .map_or((d.client_header_timeout, d.client_keepalive_timeout), |c| {
            (
                c.limits.client_header_timeout,
                c.limits.client_keepalive_timeout,
            )
        })
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (first, later) = self.deadlines();
        let started = Instant::now();
        if self.h2c && stream.get_ssl_digest().is_none() {
            let mut head = [0u8; H2_PREFACE.len()];
            // Read and put back: Pingora reads the same bytes again to choose the protocol.
            match tokio::time::timeout(first, stream.try_peek(&mut head)).await {
                Ok(Ok(true)) if &head == H2_PREFACE => {
                    return self.inner.process_new(stream, shutdown).await;
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
        let conn = Arc::new(Connection::new(started));
        // Pingora serves every request of a kept-alive connection inside this one call.
        let serve = CONNECTION.scope(conn.clone(), self.inner.process_new(stream, shutdown));
        tokio::pin!(serve);
        // The timer never fires after the deadline: a request that starts and ends after
        // it was set ends at or after now, so its deadline is at least `now + later`.
        let expiry = tokio::time::sleep_until(started + first.min(later));
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                biased;
                done = &mut serve => return done,
                () = &mut expiry => {
                    let now = Instant::now();
                    match conn.deadline(first, later) {
                        Some(at) if at <= now => {
                            // Dropping the handler closes the connection.
                            tracing::debug!("request header deadline passed; closing the connection");
                            return None;
                        }
                        Some(at) => expiry.as_mut().reset(at.min(now + later)),
                        // A request is running: no deadline until it ends.
                        None => expiry.as_mut().reset(now + later),
                    }
                }
            }
        }
    }

    // Not passed on. Pingora's proxy, once cleaned up, drops every connection waiting for a
    // request header, including one accepted just before the listeners closed whose
    // request is still on the wire: its client would get a close instead of an answer.
    // Kept instead, such connections are served (with `connection: close`, as the service
    // is shutting down) until the drain ends and the runtime goes, and each is still
    // closed at its header deadline.
    async fn cleanup(&self) {}
}
