//! Graceful shutdown: count the requests in flight, and once the listeners stop accepting,
//! wait for them to finish (up to a grace period) before the runtime goes away.
//!
//! Pingora does not wait for the requests in flight, and its proxy drops every connection
//! still waiting for a request header when the service shuts down; Sluice's connection
//! handler (`header_deadline`) keeps those until the drain ends, so a connection accepted
//! just before the listeners closed is still answered (with `connection: close`). A request here is counted from its context's creation (after its header was
//! read) to its context's drop (after the last byte went out, logging included).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Requests in flight, and a wake-up for whoever drains them.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    // Only while draining do transitions to and from zero wake anybody: the request path
    // pays two atomic adds and a load otherwise.
    draining: AtomicBool,
    changed: Notify,
    // Woken once when the drain starts: long-lived streams end then (they would hold the
    // drain to its grace period otherwise).
    started: Notify,
}

/// Held by one request's context; dropping it ends the request.
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let before = self.0.count.fetch_sub(1, Ordering::AcqRel);
        if before == 1 && self.0.draining.load(Ordering::Acquire) {
            self.0.changed.notify_waiters();
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every request finished, and none came after for the quiet period.
    Idle,
    /// The grace period ended with this many requests still running.
    GraceExpired(usize),
}

/// Resolves when a drain starts, for a long-lived stream counted by `guard` (never
/// without one). Owns what it waits on, so the stream may go on using its context.
pub fn drain_started(
    guard: Option<&InFlightGuard>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let flight = guard.map(|g| g.0.clone());
    async move {
        match flight {
            Some(f) => f.draining().await,
            None => std::future::pending().await,
        }
    }
}

impl InFlight {
    /// Resolves once a drain has started (at once if one has).
    pub async fn draining(&self) {
        loop {
            let started = self.started.notified();
            tokio::pin!(started);
            started.as_mut().enable();
            if self.draining.load(Ordering::Acquire) {
                return;
            }
            started.await;
        }
    }

    /// Counts one more request until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        let before = self.count.fetch_add(1, Ordering::AcqRel);
        if before == 0 && self.draining.load(Ordering::Acquire) {
            self.changed.notify_waiters();
        }
        InFlightGuard(self.clone())
    }

    /// Requests running now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until no request has run for `quiet`, or `grace` has passed. The quiet period
    /// covers connections accepted just before the listeners closed whose request header
    /// had not arrived yet: they are still served.
    pub async fn drain(&self, grace: Duration, quiet: Duration) -> Drained {
        self.draining.store(true, Ordering::Release);
        self.started.notify_waiters();
        let deadline = Instant::now() + grace;
        loop {
            // Until nothing runs.
            loop {
                let woken = self.changed.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let n = self.count();
                if n == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, woken).await.is_err() {
                    return Drained::GraceExpired(self.count());
                }
            }
            // Then nothing for `quiet`.
            let woken = self.changed.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.count() != 0 {
                continue;
            }
            let until = (Instant::now() + quiet).min(deadline);
            if tokio::time::timeout_at(until, woken).await.is_err() {
                return match self.count() {
                    0 => Drained::Idle,
                    n => Drained::GraceExpired(n),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_last_request_then_the_quiet_period() {
        let f = Arc::new(InFlight::default());
        let a = f.enter();
        let b = f.enter();
        let drainer = {
            let f = f.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let d = f
                    .drain(Duration::from_secs(60), Duration::from_millis(250))
                    .await;
                (d, t.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(a);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A late request during the quiet period is waited for too.
        drop(b);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let late = f.enter();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(late);
        let (d, took) = drainer.await.unwrap();
        assert_eq!(d, Drained::Idle);
        // 3.1 s of requests, then 250 ms of quiet.
        assert_eq!(took, Duration::from_millis(4350));
    }

    #[tokio::test(start_paused = true)]
    async fn long_streams_learn_that_a_drain_started() {
        let f = Arc::new(InFlight::default());
        let stream = f.enter();
        let told = {
            let f = f.clone();
            tokio::spawn(async move { f.draining().await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!told.is_finished(), "no drain yet");
        let drainer = {
            let f = f.clone();
            tokio::spawn(async move {
                f.drain(Duration::from_secs(60), Duration::from_millis(250))
                    .await
            })
        };
        told.await.unwrap();
        // The stream ends when told: the drain then ends after the quiet period.
        drop(stream);
        assert_eq!(drainer.await.unwrap(), Drained::Idle);
        // Asked after the drain started, it answers at once.
        f.draining().await;
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_grace_period() {
        let f = Arc::new(InFlight::default());
        let _stuck = f.enter();
        let t = Instant::now();
        let d = f
            .drain(Duration::from_secs(5), Duration::from_millis(250))
            .await;
        assert_eq!(d, Drained::GraceExpired(1));
        assert_eq!(t.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_running_ends_after_the_quiet_period() {
        let f = Arc::new(InFlight::default());
        let t = Instant::now();
        assert_eq!(
            f.drain(Duration::from_secs(5), Duration::from_millis(250))
                .await,
            Drained::Idle
        );
        assert_eq!(t.elapsed(), Duration::from_millis(250));
    }
}
