//! The load generator's workers: each keeps one request in flight, picks the next kind of
//! request from the plan, and records what came back in the run's shared [`Recorder`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;

use crate::client::{Protocol, Sender};
use crate::loadgen::{Endpoint, new_hist};
use crate::scenario::{Plan, RequestKind};

/// Everything recorded in a run, shared by the workers (one lock per finished request).
pub(crate) struct Recorder {
    pub(crate) latency: Histogram<u64>,
    pub(crate) ttfb: Histogram<u64>,
    pub(crate) gaps: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) late: u64,
    pub(crate) errors_by_status: BTreeMap<u16, u64>,
    pub(crate) kinds: Vec<KindRecorder>,
}

pub(crate) struct KindRecorder {
    pub(crate) latency: Histogram<u64>,
    pub(crate) ttfb: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
}

impl Recorder {
    pub(crate) fn new(kinds: usize) -> Result<Self> {
        Ok(Self {
            latency: new_hist()?,
            ttfb: new_hist()?,
            gaps: new_hist()?,
            ok: 0,
            errors: 0,
            late: 0,
            errors_by_status: BTreeMap::new(),
            kinds: (0..kinds)
                .map(|_| {
                    Ok(KindRecorder {
                        latency: new_hist()?,
                        ttfb: new_hist()?,
                        ok: 0,
                        errors: 0,
                    })
                })
                .collect::<Result<_>>()?,
        })
    }
}

pub(crate) fn lock(r: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One request in flight at a time, sent over its own HTTP/1.1 connection or a shared
/// HTTP/2 one.
pub(crate) struct Worker {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) plan: Arc<Plan>,
    pub(crate) requests: Arc<Vec<Prepared>>,
    pub(crate) recorder: Arc<Mutex<Recorder>>,
    pub(crate) sent: Arc<AtomicU64>,
    pub(crate) done: Arc<AtomicU64>,
    pub(crate) window: (Instant, Instant),
    pub(crate) interval: Option<Duration>,
    pub(crate) offset: Option<Duration>,
}

/// A kind of request with its URI on this endpoint.
pub(crate) struct Prepared {
    pub(crate) kind: RequestKind,
    pub(crate) uri: hyper::Uri,
}

/// What one request came to.
pub(crate) struct Outcome {
    status: hyper::StatusCode,
    first: Option<Instant>,
    arrivals: Vec<Instant>,
    /// The body's first bytes, when the kind checks them.
    kept: Vec<u8>,
    /// The client hung up on purpose (`abort_after_bytes`).
    aborted: bool,
}

impl Worker {
    pub(crate) async fn run(self, sender: Option<Sender>) -> Result<()> {
        let (warm_end, end) = self.window;
        // The first connection must open (a wrong address fails the run at once); later
        // ones that cannot are counted as failed requests (status 0) and tried again.
        let mut sender = Some(match sender {
            Some(s) => s,
            None => Sender::connect(&self.endpoint.authority, self.endpoint.protocol).await?,
        });
        let mut next = Instant::now() + self.offset.unwrap_or_default();
        while Instant::now() < end {
            let mut late = false;
            if let Some(iv) = self.interval {
                // The timer wheel has 1 ms resolution: wake early and yield to the exact
                // instant, so latency is measured from the real send, not a rounded schedule.
                if let Some(early) = next.checked_sub(Duration::from_millis(1)) {
                    tokio::time::sleep_until(early.into()).await;
                }
                while Instant::now() < next {
                    tokio::task::yield_now().await;
                }
                late = Instant::now().duration_since(next) > Duration::from_millis(1);
                next += iv;
            }
            let index = self.plan.pick(self.sent.fetch_add(1, Ordering::Relaxed));
            let Some(prepared) = self.requests.get(index) else {
                return Err(anyhow!("no request {index} in the plan"));
            };
            let kind = &prepared.kind;
            let intended = Instant::now();
            let mut req = Request::builder()
                .method(kind.method.clone())
                .uri(prepared.uri.clone());
            if self.endpoint.protocol == Protocol::Http1 {
                req = req.header(http::header::HOST, self.endpoint.authority.as_str());
            }
            for (k, v) in &kind.headers {
                req = req.header(k, v);
            }
            let req = req.body(Full::new(kind.body.clone()))?;
            if let Some(s) = sender.as_mut()
                && !s.ready().await
            {
                sender = None;
            }
            let connection = match sender.take() {
                Some(s) => Ok(s),
                None => Sender::connect(&self.endpoint.authority, self.endpoint.protocol).await,
            };
            let mut connection = match connection {
                Ok(c) => c,
                Err(e) => {
                    self.done.fetch_add(1, Ordering::Relaxed);
                    if intended >= warm_end {
                        self.record(index, kind, intended, Instant::now(), late, Err(e));
                    }
                    // Not a busy loop against a server that refuses connections.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let outcome = send(&mut connection, req, kind).await;
            let finished = Instant::now();
            self.done.fetch_add(1, Ordering::Relaxed);
            // An HTTP/1.1 connection is closed by hanging up; an HTTP/2 stream was reset.
            let keep = match &outcome {
                Ok(o) => !(o.aborted && self.endpoint.protocol == Protocol::Http1),
                Err(_) => false,
            };
            if keep {
                sender = Some(connection);
            }
            if intended >= warm_end {
                self.record(index, kind, intended, finished, late, outcome);
            }
        }
        Ok(())
    }

    fn record(
        &self,
        index: usize,
        kind: &RequestKind,
        intended: Instant,
        finished: Instant,
        late: bool,
        outcome: Result<Outcome>,
    ) {
        let us = |from: Instant, t: Instant| {
            u64::try_from(t.duration_since(from).as_micros())
                .unwrap_or(u64::MAX)
                .max(1)
        };
        let mut rec = lock(&self.recorder);
        rec.late += u64::from(late);
        let status = match &outcome {
            Ok(o) => o.status.as_u16(),
            Err(_) => 0,
        };
        match outcome {
            Ok(o) if o.aborted && kind.succeeded(o.status, &o.kept) => {
                rec.ok += 1;
                let ttfb = us(intended, o.first.unwrap_or(finished));
                let _ = rec.ttfb.record(ttfb);
                if let Some(k) = rec.kinds.get_mut(index) {
                    k.ok += 1;
                    let _ = k.ttfb.record(ttfb);
                }
            }
            Ok(o) if kind.succeeded(o.status, &o.kept) => {
                let (latency, ttfb) = (
                    us(intended, finished),
                    us(intended, o.first.unwrap_or(finished)),
                );
                rec.ok += 1;
                let _ = rec.latency.record(latency);
                let _ = rec.ttfb.record(ttfb);
                for w in o.arrivals.windows(2) {
                    let _ = rec.gaps.record(us(w[0], w[1]));
                }
                if let Some(k) = rec.kinds.get_mut(index) {
                    k.ok += 1;
                    let _ = k.latency.record(latency);
                    let _ = k.ttfb.record(ttfb);
                }
            }
            _ => {
                rec.errors += 1;
                *rec.errors_by_status.entry(status).or_default() += 1;
                if let Some(k) = rec.kinds.get_mut(index) {
                    k.errors += 1;
                }
            }
        }
    }
}

/// Sends `req` and reads the response, noting when each body chunk arrived (keeping the
/// body's first MiB when the kind checks it, hanging up early when the kind says so).
async fn send(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
    kind: &RequestKind,
) -> Result<Outcome> {
    let keep = kind.expect_body.is_some();
    let mut received = 0usize;
    let resp = sender.send(req).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut first = None;
    let mut arrivals = Vec::new();
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(d) = frame.data_ref().filter(|d| !d.is_empty()) {
            let now = Instant::now();
            first.get_or_insert(now);
            arrivals.push(now);
            if keep {
                let room = crate::scenario::MAX_CHECKED_BODY_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&d[..d.len().min(room)]);
            }
            received += d.len();
            if kind.abort_after.is_some_and(|n| received >= n) {
                return Ok(Outcome {
                    status,
                    first,
                    arrivals,
                    kept,
                    aborted: true,
                });
            }
        }
    }
    Ok(Outcome {
        status,
        first,
        arrivals,
        kept,
        aborted: false,
    })
}
