//! Runs the proxy (and the admin listener) on listeners the caller bound, in a runtime of
//! its own. Binding first lets tests and `sluice dev` use port 0 and learn the real port.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds};
use pingora::services::Service;
use pingora::services::listening::Service as ListeningService;
use tokio::sync::watch;

use crate::admin::AdminApp;
use crate::drain::{Drained, InFlight};
use crate::events::{EventSink, RecentRecords};
pub use crate::listen::{Listen, bind};
use crate::live::LiveConfig;
use crate::phases::SluiceProxy;

/// What the data plane needs to run.
pub struct ProxyParts {
    /// Live config.
    pub live: Arc<LiveConfig>,
    /// Where request records go.
    pub sink: Arc<dyn EventSink>,
    /// The records the admin API shows.
    pub recent: Arc<RecentRecords>,
    /// Worker threads.
    pub threads: usize,
    /// Idle upstream connections kept.
    pub upstream_pool_size: usize,
    /// Approvals for `require_approval` calls (shared with the admin API).
    pub approvals: Arc<crate::approvals::ApprovalStore>,
    /// Tools seen per profile (shared with the admin API).
    pub catalogue: Arc<crate::catalogue::ToolCatalogue>,
    /// The usage journal, when a control plane collects usage (shown by the admin API).
    pub journal: Option<Arc<crate::journal::Journal>>,
    /// Prometheus metrics and the listener that serves them (`SLUICE_METRICS_LISTEN`).
    pub metrics: Option<(Arc<crate::metrics::ProxyMetrics>, Listen)>,
    /// Where MCP servers' tool lists are reported for the control plane; when set, every
    /// server's list is also fetched after each snapshot and every minute.
    pub inventory: Option<Arc<crate::mcp::inventory::ToolInventory>>,
    /// Accept HTTP/2 with prior knowledge from plaintext clients (`SLUICE_H2C`, see
    /// [`h2c_from_env`]).
    pub h2c: bool,
}

/// A running proxy; dropping it does not stop it, [`RunningProxy::stop`] does.
pub struct RunningProxy {
    /// The proxy's address.
    pub proxy_addr: SocketAddr,
    /// The admin listener's address.
    pub admin_addr: Option<SocketAddr>,
    /// The metrics listener's address.
    pub metrics_addr: Option<SocketAddr>,
    /// The spend limits' ledgers (and leases, behind a control plane).
    pub spend: Arc<crate::spend::SpendBook>,
    /// The rate limits' buckets (their shares, behind a control plane).
    pub rates: Arc<crate::rate::RateBook>,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    fds: ListenFds,
    drain: Arc<DrainPlan>,
}

/// What the runtime does between "stop accepting" and "stop": wait for requests in flight
/// up to a grace period (zero: stop at once).
#[derive(Debug, Default)]
struct DrainPlan {
    grace_ms: AtomicU64,
    in_flight: Option<Arc<InFlight>>,
}

/// After the last request, how long a draining proxy still serves requests on connections
/// it accepted just before it stopped accepting.
const DRAIN_QUIET: Duration = Duration::from_millis(250);

impl RunningProxy {
    /// Stops accepting, ends the runtime and waits for its thread.
    pub fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops accepting, lets the requests in flight finish (up to `grace`), then stops.
    pub fn drain(self, grace: Duration) {
        let ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.drain.grace_ms.store(ms, Ordering::Release);
        self.stop();
    }

    /// Sends the listening sockets to a new process waiting on `path` (the first half of
    /// a zero-downtime upgrade; [`RunningProxy::drain`] is the second).
    pub fn send_listeners(&self, path: &Path) -> std::io::Result<()> {
        crate::listen::send(&self.fds, path)
    }

    /// Requests running now.
    pub fn in_flight(&self) -> usize {
        self.drain.in_flight.as_ref().map_or(0, |f| f.count())
    }

    /// Blocks until the proxy stops (after [`RunningProxy::shutdown_handle`] is used).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// A handle that stops the proxy when `true` is sent.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Starts the bare passthrough (benchmark floor) on `listener`, one worker thread.
pub fn start_passthrough(
    listener: TcpListener,
    upstream: SocketAddr,
    http2: bool,
) -> std::io::Result<RunningProxy> {
    let fds: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
    let mut addrs = Vec::new();
    let proxy_addr = Listen::from(listener).hand_over(&fds, &mut addrs)?;
    let conf = Arc::new(ServerConf {
        threads: 1,
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    });
    let mut svc = pingora::proxy::http_proxy_service(
        &conf,
        crate::passthrough::Passthrough { upstream, http2 },
    );
    for a in &addrs {
        svc.add_tcp(a);
    }
    let drain = Arc::new(DrainPlan::default());
    let (shutdown, thread) = spawn_runtime(1, fds.clone(), vec![Box::new(svc)], drain.clone())?;
    Ok(RunningProxy {
        metrics_addr: None,
        proxy_addr,
        admin_addr: None,
        spend: Arc::default(),
        rates: Arc::default(),
        shutdown,
        thread: Some(thread),
        fds,
        drain,
    })
}

type BoxedService = Box<dyn Service + Send + Sync>;

/// Runs `services` on a runtime of `threads` workers in a new thread until shutdown.
fn spawn_runtime(
    threads: usize,
    fds: ListenFds,
    services: Vec<BoxedService>,
    drain: Arc<DrainPlan>,
) -> std::io::Result<(watch::Sender<bool>, JoinHandle<()>)> {
    // One worker: a current-thread runtime, with no cross-thread wake-ups on the hot path.
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sluice-worker")
            .enable_all()
            .build()?
    };
    let (tx, rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("sluice-proxy".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for mut svc in services {
                    let (f, r) = (fds.clone(), rx.clone());
                    tasks.push(tokio::spawn(async move {
                        svc.start_service(Some(f), r, 1).await;
                    }));
                }
                let mut rx = rx;
                while !*rx.borrow() {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
                // The listeners stop accepting on the signal; requests in flight go on.
                let grace = Duration::from_millis(drain.grace_ms.load(Ordering::Acquire));
                if let (Some(f), false) = (&drain.in_flight, grace.is_zero()) {
                    let running = f.count();
                    tracing::info!(running, grace_s = grace.as_secs(), "draining");
                    match f.drain(grace, DRAIN_QUIET).await {
                        Drained::Idle => tracing::info!("drained"),
                        Drained::GraceExpired(cut) => {
                            tracing::warn!(
                                cut,
                                "grace period over; cutting requests still running"
                            );
                        }
                    }
                }
                for t in tasks {
                    t.abort();
                }
            });
            runtime.shutdown_background();
        })?;
    Ok((tx, thread))
}

/// The read buffer Pingora puts in front of each accepted client connection:
/// `SLUICE_LISTENER_READ_BUFFER_BYTES`, 4 KiB by default. Pingora's own default is 64 KiB,
/// zero-filled when the connection is accepted: with thousands of open streams it was a
/// quarter of the proxy's memory per stream; with none at all, a request takes more reads
/// (11% fewer requests/s). 4 KiB holds a typical request in one read (docs/benchmarks.md).
fn listener_read_buffer(get: impl Fn(&str) -> Option<String>) -> std::io::Result<usize> {
    listener_buffer("SLUICE_LISTENER_READ_BUFFER_BYTES", 4096, get)
}

/// The write buffer Pingora puts in front of each accepted client connection:
/// `SLUICE_LISTENER_WRITE_BUFFER_BYTES`, 16 KiB by default. Pingora's own default is 1,460
/// bytes (one Ethernet segment), and a write that does not fit beside what is buffered
/// first sends that on its own: the header of a response with a length went out alone before
/// any body over ~1 KB. Up to the buffer's size, header and body now leave in one write
/// (+7% req/s for 3.5 KB answers). It is filled only as far as a response's writes reach,
/// not zeroed up front: ~3 KiB more per open stream (docs/benchmarks.md).
fn listener_write_buffer(get: impl Fn(&str) -> Option<String>) -> std::io::Result<usize> {
    listener_buffer("SLUICE_LISTENER_WRITE_BUFFER_BYTES", 16 * 1024, get)
}

fn listener_buffer(
    name: &str,
    default: usize,
    get: impl Fn(&str) -> Option<String>,
) -> std::io::Result<usize> {
    crate::env_number::bounded(name, default, 1 << 20, "bytes", get)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// Whether plaintext clients may speak HTTP/2 with prior knowledge (h2c): `SLUICE_H2C=1`.
/// Off by default: HTTP/1.1 clients then skip the 24-byte preface check on each new
/// connection, and HTTP/2's attack surface stays closed unless someone needs it.
pub fn h2c_from_env() -> std::io::Result<bool> {
    h2c_enabled(|k| std::env::var(k).ok())
}

fn h2c_enabled(get: impl Fn(&str) -> Option<String>) -> std::io::Result<bool> {
    match get("SLUICE_H2C").as_deref().map(str::trim) {
        None | Some("" | "0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(v) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("SLUICE_H2C must be 1 (or true) or 0 (or false), not {v:?}"),
        )),
    }
}

/// Starts the proxy on `proxy` (and the admin app on `admin`) in a new thread.
pub fn start(
    parts: ProxyParts,
    proxy: impl Into<Listen>,
    admin: Option<Listen>,
) -> std::io::Result<RunningProxy> {
    let read_buffer = listener_read_buffer(|k| std::env::var(k).ok())?;
    let write_buffer = listener_write_buffer(|k| std::env::var(k).ok())?;
    // Pingora's "fast" timeouts read the clock each time a read or write is wrapped in one
    // (to check that their timer thread runs), even when it completes at once: eight reads
    // per request here. A Tokio timeout reads it only when the operation has to wait. So
    // every timeout of a second or more (Sluice's limits, by default) is Tokio's: the same
    // deadlines, 1.5% more requests per second (docs/benchmarks.md). Process-wide, and the
    // same for every proxy a process starts.
    pingora::prelude::fast_timeout::set_fast_timeout_to_tokio_threshold(Some(Duration::ZERO));
    let fds: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
    let mut proxy_addrs = Vec::new();
    let proxy_addr = proxy.into().hand_over(&fds, &mut proxy_addrs)?;
    let mut admin_addrs = Vec::new();
    let admin_addr = match admin {
        Some(l) => Some(l.hand_over(&fds, &mut admin_addrs)?),
        None => None,
    };
    let mut metrics_addrs = Vec::new();
    let (metrics, metrics_addr) = match parts.metrics {
        Some((m, l)) => (Some(m), Some(l.hand_over(&fds, &mut metrics_addrs)?)),
        None => (None, None),
    };
    // Metrics read the same records as every other sink, after the response.
    let sink: Arc<dyn EventSink> = match &metrics {
        Some(m) => Arc::new(crate::journal::Tee(vec![parts.sink.clone(), m.clone()])),
        None => parts.sink.clone(),
    };
    let conf = Arc::new(ServerConf {
        threads: parts.threads,
        upstream_keepalive_pool_size: parts.upstream_pool_size,
        ..ServerConf::default()
    });
    let proxy = SluiceProxy::new(parts.live.clone(), sink, parts.approvals.clone())
        .with_catalogue(parts.catalogue.clone());
    let mcp = proxy.mcp();
    let refresh = parts.inventory.clone().map(|inv| {
        let _ = mcp.inventory.set(inv);
        crate::mcp::inventory::InventoryRefresh {
            mcp: mcp.clone(),
            live: parts.live.clone(),
            every: std::time::Duration::from_secs(60),
        }
    });
    if let Some(c) = proxy.upstream_connections() {
        c.set_idle_capacity(parts.upstream_pool_size);
        if let Some(m) = &metrics
            && let Err(e) = m.adopt(c.collectors())
        {
            tracing::warn!(error = %e, "upstream connection metrics not registered");
        }
    }
    let spend = proxy.spend();
    let rates = proxy.rates();
    let drain = Arc::new(DrainPlan {
        grace_ms: AtomicU64::new(0),
        in_flight: Some(proxy.in_flight()),
    });
    let spend_for_metrics = spend.clone();
    // Each connection's handler runs under the request-header deadlines.
    let mut http = pingora::proxy::http_proxy(&conf, proxy);
    if parts.h2c {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        // An HTTP/2 connection with no stream open is closed like an idle HTTP/1.1 one.
        options.h2_idle_timeout = Some(crate::header_deadline::connection_deadlines(&parts.live).1);
        http.server_options = Some(options);
    }
    let mut proxy_svc = ListeningService::new(
        "sluice-proxy".into(),
        crate::header_deadline::HeaderDeadline::new(http, parts.live.clone(), parts.h2c),
    );
    for a in &proxy_addrs {
        proxy_svc.add_listener(
            ListenerConfig::tcp(a.as_str())
                .l4_buffer(L4BufferSettings::new(read_buffer, write_buffer)),
        );
    }
    let mut services: Vec<BoxedService> = vec![Box::new(proxy_svc)];
    if let Some(r) = refresh {
        services.push(Box::new(r));
    }
    if !admin_addrs.is_empty() {
        let mut s = ListeningService::new(
            "sluice-admin".into(),
            AdminApp {
                live: parts.live.clone(),
                recent: parts.recent.clone(),
                approvals: parts.approvals.clone(),
                catalogue: parts.catalogue.clone(),
                journal: parts.journal.clone(),
                mcp,
                spend: spend.clone(),
            },
        );
        for a in &admin_addrs {
            s.add_tcp(a);
        }
        services.push(Box::new(s));
    }
    if let Some(m) = metrics {
        let mut s = ListeningService::new(
            "sluice-metrics".into(),
            crate::admin::MetricsApp {
                metrics: m,
                live: parts.live.clone(),
                journal: parts.journal.clone(),
                spend: Some(spend_for_metrics),
                rates: Some(rates.clone()),
            },
        );
        for a in &metrics_addrs {
            s.add_tcp(a);
        }
        services.push(Box::new(s));
    }
    let (shutdown, thread) = spawn_runtime(parts.threads, fds.clone(), services, drain.clone())?;
    Ok(RunningProxy {
        metrics_addr,
        proxy_addr,
        admin_addr,
        spend,
        rates,
        shutdown,
        thread: Some(thread),
        fds,
        drain,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn h2c_is_off_unless_asked_for() {
        let env = |v: Option<&'static str>| move |_: &str| v.map(str::to_owned);
        assert!(!h2c_enabled(env(None)).unwrap());
        assert!(!h2c_enabled(env(Some("0"))).unwrap());
        assert!(h2c_enabled(env(Some("1"))).unwrap());
        let err = h2c_enabled(env(Some("yes"))).unwrap_err().to_string();
        assert!(
            err.contains("SLUICE_H2C must be 1 (or true) or 0 (or false)"),
            "{err}"
        );
    }

    #[test]
    fn the_listener_write_buffer_is_16_kib_unless_set_and_bounded() {
        let env = |v: Option<&'static str>| move |_: &str| v.map(str::to_owned);
        assert_eq!(listener_write_buffer(env(None)).unwrap(), 16 * 1024);
        assert_eq!(listener_write_buffer(env(Some("1460"))).unwrap(), 1460);
        let e = listener_write_buffer(env(Some("2000000"))).unwrap_err();
        assert!(
            e.to_string().contains("SLUICE_LISTENER_WRITE_BUFFER_BYTES"),
            "{e}"
        );
    }

    #[test]
    fn the_listener_read_buffer_is_4_kib_unless_set_and_bounded() {
        let env = |v: Option<&'static str>| move |_: &str| v.map(str::to_owned);
        assert_eq!(listener_read_buffer(env(None)).unwrap(), 4096);
        assert_eq!(listener_read_buffer(env(Some("0"))).unwrap(), 0);
        assert_eq!(listener_read_buffer(env(Some("65536"))).unwrap(), 65536);
        for bad in ["-1", "lots", "2000000"] {
            let e = listener_read_buffer(env(Some(bad))).unwrap_err();
            assert!(
                e.to_string().contains("SLUICE_LISTENER_READ_BUFFER_BYTES"),
                "{e}"
            );
        }
    }
}
