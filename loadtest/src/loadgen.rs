//! A small HTTP/1.1 load generator: closed loop (each connection sends as soon as its last
//! response ended) or open loop at a fixed rate (latency measured from the intended send
//! time, so a stall is not hidden). Records full latency and time to the first body byte
//! (for SSE: the first event) and the gaps between body chunks in HDR histograms, and
//! prints one JSON summary line. With `--baseline`, target and baseline run interleaved
//! (`compare.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::http::uri::Authority;
use serde::Serialize;

use crate::client::{Protocol, Sender};
use crate::scenario::Plan;
use crate::worker::{Prepared, Recorder, Worker, lock};

/// Command-line arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Target URL (http only); with --scenario, the base the scenario's paths go under.
    #[arg(long)]
    pub url: String,
    /// A scenario file (TOML): the mix of requests to send (docs/loadtest.md).
    #[arg(long)]
    pub scenario: Option<std::path::PathBuf>,
    /// Speak HTTP/2 (cleartext, prior knowledge) instead of HTTP/1.1.
    #[arg(long)]
    pub http2: bool,
    /// With --http2: TCP connections the requests in flight share.
    #[arg(long, default_value_t = 1)]
    pub h2_connections: usize,
    /// Request body (JSON text); `@file` reads a file.
    #[arg(long, default_value = "{}")]
    pub body: String,
    /// Extra headers, `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Requests in flight (HTTP/1.1: one connection each).
    #[arg(long, short = 'c', default_value_t = 32)]
    pub connections: usize,
    /// Measured seconds.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Warm-up seconds (not measured).
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Total requests per second for open loop; 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Label for the report.
    #[arg(long, default_value = "target")]
    pub label: String,
    /// A baseline URL (e.g. the upstream directly) run in the same session, interleaved
    /// with the target, with ratios in the report.
    #[arg(long)]
    pub baseline: Option<String>,
    /// The baseline's label.
    #[arg(long, default_value = "baseline")]
    pub baseline_label: String,
    /// Repetitions of each (target, baseline) pair when comparing; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// The target server's PID: its CPU time per request and peak RSS are sampled.
    #[arg(long)]
    pub pid: Option<u32>,
    /// The baseline server's PID.
    #[arg(long)]
    pub baseline_pid: Option<u32>,
    /// Write a Markdown report here (with date, machine and command).
    #[arg(long)]
    pub markdown: Option<std::path::PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Set while the baseline is measured: a scenario's `baseline_path`s are used.
    #[arg(skip)]
    pub measuring_baseline: bool,
}

/// One run's results.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Label.
    pub label: String,
    /// Completed requests in the measured window.
    pub requests: u64,
    /// Non-2xx or failed requests.
    pub errors: u64,
    /// Fixed-rate sends that left more than 1 ms after their slot (the generator fell behind).
    pub late_sends: u64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles, microseconds.
    pub latency_us: Percentiles,
    /// Time to first body byte, microseconds.
    pub ttfb_us: Percentiles,
    /// Gaps between body chunks (SSE: between events as they arrive), microseconds.
    pub chunk_gap_us: Percentiles,
    /// The server's CPU time per completed request, microseconds (with `--pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_request: Option<f64>,
    /// The server's largest resident set seen, bytes (with `--pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_peak_rss_bytes: Option<u64>,
    /// Failed requests by status (`0`: no response: refused, reset, timed out).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors_by_status: BTreeMap<u16, u64>,
    /// Each kind of request of a scenario on its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_request: Vec<KindReport>,
}

/// One kind of request's figures in a run.
#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    /// The kind's name.
    pub name: String,
    /// Completed as expected.
    pub requests: u64,
    /// Not as expected.
    pub errors: u64,
    /// Latency percentiles, microseconds.
    pub latency_us: Percentiles,
    /// Time to first body byte, microseconds.
    pub ttfb_us: Percentiles,
}

/// p50/p90/p99/max.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th.
    pub p90: u64,
    /// 99th.
    pub p99: u64,
    /// Max.
    pub max: u64,
}

fn pct(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        max: h.max(),
    }
}

pub(crate) fn new_hist() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// Runs the load (or the comparison) and prints the JSON report on stdout.
pub async fn run(args: Args) -> Result<()> {
    if args.baseline.is_some() {
        return crate::compare::run(args).await;
    }
    let report = measure(&args, args.pid).await?;
    let text = serde_json::to_string(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        let md = crate::compare::markdown(&args, &[(report_row(&report), None)]);
        std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{text}");
    Ok(())
}

fn report_row(r: &Report) -> crate::compare::Row {
    crate::compare::Row::from_reports(&r.label, std::slice::from_ref(r))
}

/// Where requests go: the target's (or baseline's) authority and path prefix.
pub(crate) struct Endpoint {
    pub(crate) authority: Authority,
    pub(crate) prefix: String,
    pub(crate) protocol: Protocol,
}

impl Endpoint {
    fn uri(&self, path: &str) -> Result<hyper::Uri> {
        let pq = format!("{}{path}", self.prefix);
        Ok(match self.protocol {
            // Origin form: what HTTP/1.1 servers expect from a client (not a proxy).
            Protocol::Http1 => pq.parse()?,
            Protocol::Http2 => format!("http://{}{pq}", self.authority).parse()?,
        })
    }
}

/// The plan (what to send) and the endpoint (where) for `args`.
fn plan_and_endpoint(args: &Args) -> Result<(Plan, Endpoint)> {
    let uri: hyper::Uri = args.url.parse().context("parsing --url")?;
    if uri.scheme_str().is_some_and(|s| s != "http") {
        return Err(anyhow!(
            "only http:// URLs are supported (got {})",
            args.url
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("--url needs a host and port"))?
        .clone();
    let protocol = if args.http2 {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let (plan, prefix) = match &args.scenario {
        Some(path) => (
            Plan::from_file(path, &args.headers)?,
            crate::scenario::url_prefix(&uri).to_owned(),
        ),
        None => {
            let body = match args.body.strip_prefix('@') {
                Some(path) => {
                    Bytes::from(std::fs::read(path).with_context(|| format!("reading {path}"))?)
                }
                None => Bytes::from(args.body.clone()),
            };
            let pq = uri.path_and_query().map_or("/", |p| p.as_str());
            (Plan::single(pq, body, &args.headers)?, String::new())
        }
    };
    Ok((
        plan,
        Endpoint {
            authority,
            prefix,
            protocol,
        },
    ))
}

/// Runs the load against `args.url` and returns the report; samples `pid` when given.
pub async fn measure(args: &Args, pid: Option<u32>) -> Result<Report> {
    let (plan, endpoint) = plan_and_endpoint(args)?;
    let requests: Arc<Vec<Prepared>> = Arc::new(
        plan.kinds
            .iter()
            .map(|k| {
                let path = if args.measuring_baseline {
                    &k.baseline_path
                } else {
                    &k.path
                };
                Ok(Prepared {
                    kind: k.clone(),
                    uri: endpoint.uri(path)?,
                })
            })
            .collect::<Result<_>>()?,
    );
    let plan = Arc::new(plan);
    let recorder = Arc::new(Mutex::new(Recorder::new(if plan.from_file {
        plan.kinds.len()
    } else {
        0
    })?));
    let sent = Arc::new(AtomicU64::new(0));
    let endpoint = Arc::new(endpoint);
    // HTTP/2: the workers share these connections, round-robin.
    let mut shared = Vec::new();
    if endpoint.protocol == Protocol::Http2 {
        for _ in 0..args.h2_connections.max(1) {
            match Sender::connect(&endpoint.authority, Protocol::Http2).await? {
                Sender::H2(s) => shared.push(s),
                Sender::H1(_) => return Err(anyhow!("an HTTP/2 connection expected")),
            }
        }
    }
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(args.warmup_secs);
    let end = warm_end + Duration::from_secs_f64(args.duration_secs);
    let per_conn_interval =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate));
    let done_count = Arc::new(AtomicU64::new(0));
    let progress = (!args.quiet).then(|| {
        let (done, label) = (done_count.clone(), args.label.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0;
            loop {
                tick.tick().await;
                let now = done.load(Ordering::Relaxed);
                let phase = if Instant::now() < warm_end {
                    "warm-up"
                } else {
                    "measuring"
                };
                eprint!("\r{label}: {phase}, {} req/s, {now} done   ", now - last);
                last = now;
            }
        })
    });
    let cpu_before = pid.and_then(crate::compare::cpu_seconds);
    let rss_peak = Arc::new(AtomicU64::new(0));
    let rss_sampler = pid.map(|pid| {
        let peak = rss_peak.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if let Some(rss) = crate::compare::rss_bytes(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
            }
        })
    });
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let sender = shared
            .get(i % shared.len().max(1))
            .map(|h2| Sender::H2(h2.clone()));
        let w = Worker {
            endpoint: endpoint.clone(),
            plan: plan.clone(),
            requests: requests.clone(),
            recorder: recorder.clone(),
            sent: sent.clone(),
            done: done_count.clone(),
            window: (warm_end, end),
            interval: per_conn_interval,
            offset: per_conn_interval.map(|iv| iv.mul_f64(i as f64 / args.connections as f64)),
        };
        tasks.push(tokio::spawn(w.run(sender)));
    }
    for t in tasks {
        t.await.map_err(|e| anyhow!("worker: {e}"))??;
    }
    let rec = lock(&recorder);
    let by_request = rec
        .kinds
        .iter()
        .zip(&plan.kinds)
        .map(|(k, kind)| KindReport {
            name: kind.name.clone(),
            requests: k.ok,
            errors: k.errors,
            latency_us: pct(&k.latency),
            ttfb_us: pct(&k.ttfb),
        })
        .collect();
    let (latency, ttfb, gaps) = (pct(&rec.latency), pct(&rec.ttfb), pct(&rec.gaps));
    let (ok, errors, late) = (rec.ok, rec.errors, rec.late);
    let errors_by_status = rec.errors_by_status.clone();
    drop(rec);
    if let Some(p) = progress {
        p.abort();
        eprint!("\r{:60}\r", "");
    }
    if let Some(s) = rss_sampler {
        s.abort();
    }
    // CPU over warm-up and measurement, per request completed in both.
    let served = done_count.load(Ordering::Relaxed).max(1);
    let cpu = match (cpu_before, pid.and_then(crate::compare::cpu_seconds)) {
        (Some(a), Some(b)) => Some((b - a) * 1e6 / served as f64),
        _ => None,
    };
    Ok(Report {
        label: args.label.clone(),
        requests: ok,
        errors,
        late_sends: late,
        rps: ok as f64 / args.duration_secs,
        latency_us: latency,
        ttfb_us: ttfb,
        chunk_gap_us: gaps,
        server_cpu_us_per_request: cpu,
        server_peak_rss_bytes: pid.map(|_| rss_peak.load(Ordering::Relaxed)),
        errors_by_status,
        by_request,
    })
}
