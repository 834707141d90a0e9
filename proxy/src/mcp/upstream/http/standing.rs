//! The streams the gateway keeps open to an HTTP server for what it sends outside
//! requests: a legacy session's GET stream, or a stateless `subscriptions/listen`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::super::subscriptions::{IDLE_LISTEN_CHECK, listen_id};
use super::super::{Connection, Established, Kind, Retry};
use super::HttpConn;

impl HttpConn {
    /// The legacy GET stream: what the server sends outside requests (list changes,
    /// resource updates), read while this session is current.
    pub(super) fn listen(&self, conn: Arc<Connection>, est: Established) {
        Self::follow(conn, est, Standing::Get);
    }

    /// The stateless era's counterpart of the GET stream: a `subscriptions/listen` request
    /// whose answer stays open, asking for the list changes the server says it announces
    /// and the resources the gateway's clients subscribed to.
    pub(super) fn subscribe(&self, conn: Arc<Connection>, est: Established) {
        Self::follow(conn, est, Standing::Listen);
    }

    /// Keeps a standing stream open while this handshake is current: what arrives on it
    /// goes where the server's unsolicited messages go; it is re-opened after a graceful
    /// end, with backoff after a failure, and given up when the server does not offer it.
    fn follow(conn: Arc<Connection>, est: Established, standing: Standing) {
        tokio::spawn(async move {
            let Kind::Http(me) = &conn.kind else {
                return;
            };
            let mut delay = Duration::from_millis(500);
            let mut rounds = 0u32;
            while rounds < 100 {
                if me.stale.load(Ordering::Relaxed) >= est.generation
                    || me.generation.load(Ordering::Relaxed) != est.generation
                {
                    return;
                }
                let next = match &standing {
                    Standing::Get => me.get_stream(&conn, &est).await,
                    Standing::Listen => me.listen_stream(&conn, &est).await,
                };
                match next {
                    Next::Now => continue,
                    Next::Again => delay = Duration::from_millis(500),
                    Next::Later => delay = (delay * 2).min(Duration::from_secs(30)),
                    Next::Stop => return,
                }
                rounds += 1;
                tokio::time::sleep(delay).await;
            }
        });
    }

    async fn get_stream(&self, conn: &Connection, est: &Established) -> Next {
        let headers = Self::session_headers(est, &Value::Null);
        match self.open(conn, "GET", &headers, None).await {
            Ok(r) if r.status == 200 && r.sse => {
                let _ = self.read_stream(conn, r, None, None).await;
                Next::Again
            }
            // 405: the server offers no such stream.
            Ok(r) if r.status == 405 => Next::Stop,
            Ok(r) if r.status == 404 => {
                self.reset(est.generation);
                Next::Stop
            }
            Ok(_) | Err(_) => Next::Later,
        }
    }

    async fn listen_stream(&self, conn: &Connection, est: &Established) -> Next {
        let (version, filter) = conn.listen_filter(est);
        let Some(filter) = filter else {
            // Nothing to listen for yet; look again when a subscription comes (or a while
            // later, to notice a replaced session).
            let _ = tokio::time::timeout(IDLE_LISTEN_CHECK, conn.filter_changed(version)).await;
            return Next::Now;
        };
        let msg = super::super::listen_request(est, &filter, listen_id(version, "http"));
        let answer = tokio::select! {
            answer = self.exchange(conn, est, msg, None) => answer,
            // Closing the stream cancels the old listen at the server.
            () = conn.filter_changed(version) => return Next::Now,
        };
        match answer {
            // A graceful end (the server drained or dropped us): listen again.
            Ok(answer) if answer.get("result").is_some() => Next::Again,
            // The server does not offer it after all.
            Ok(answer) => {
                tracing::debug!(server = %conn.server.name, ?answer, "subscriptions/listen refused");
                Next::Stop
            }
            Err(Retry::SessionGone) => Next::Stop,
            Err(Retry::Failed(e)) => {
                tracing::debug!(error = %e, "subscriptions/listen ended");
                Next::Later
            }
        }
    }
}

/// A stream the gateway keeps open to a server for what it sends outside requests.
enum Standing {
    /// The legacy session's GET stream.
    Get,
    /// A stateless `subscriptions/listen` (its filter changes with the subscriptions).
    Listen,
}

/// What to do once a standing stream ended.
enum Next {
    /// Open it again at once (its filter changed).
    Now,
    /// Open it again now (it ended gracefully).
    Again,
    /// Open it again after a backoff (it failed).
    Later,
    /// Give up (not offered, or the session is gone).
    Stop,
}
