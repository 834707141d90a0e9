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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::live::LiveConfig;

/// One connection's state, shared by its handler and the request running on it.
#[derive(Debug, Default)]
pub struct Connection {
    busy: AtomicBool,
    ended: Notify,
}

tokio::task_local! {
    static CONNECTION: Arc<Connection>;
}

/// Marks the connection's request as running until dropped (kept in the request context).
#[derive(Debug)]
pub struct RequestOnConnection(Arc<Connection>);

impl Drop for RequestOnConnection {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
        self.0.ended.notify_one();
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
        let conn = Arc::new(Connection::default());
        // Pingora serves every request of a kept-alive connection inside this one call.
        let serve = CONNECTION.scope(conn.clone(), self.inner.process_new(stream, shutdown));
        tokio::pin!(serve);
        let mut deadline = Some(started + first);
        loop {
            let expiry = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                done = &mut serve => return done,
                () = conn.ended.notified() => deadline = Some(Instant::now() + later),
                () = expiry => {
                    if !conn.busy.load(Ordering::Acquire) {
                        // Dropping the handler closes the connection.
                        tracing::debug!("request header deadline passed; closing the connection");
                        return None;
                    }
                    // A request is running: no deadline until it ends.
                    deadline = None;
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
