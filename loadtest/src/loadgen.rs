//! A small HTTP/1.1 load generator: closed loop (each connection sends as soon as its last
//! response ended) or open loop at a fixed rate (latency measured from the intended send
//! time, so a stall is not hidden). Records full latency and time to the first body byte
//! (for SSE: the first event) and the gaps between body chunks in HDR histograms, and
//! prints one JSON summary line. With `--baseline`, target and baseline run interleaved
//! (`compare.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;

/// Command-line arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Target URL (http only).
    #[arg(long)]
    pub url: String,
    /// Request body (JSON text); `@file` reads a file.
    #[arg(long, default_value = "{}")]
    pub body: String,
    /// Extra headers, `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Connections.
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
}

/// p50/p90/p99/max.
#[derive(Debug, Serialize)]
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

struct WorkerResult {
    latency: Histogram<u64>,
    ttfb: Histogram<u64>,
    gaps: Histogram<u64>,
    ok: u64,
    errors: u64,
    late: u64,
}

fn new_hist() -> Result<Histogram<u64>> {
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

/// Runs the load against `args.url` and returns the report; samples `pid` when given.
pub async fn measure(args: &Args, pid: Option<u32>) -> Result<Report> {
    let uri: hyper::Uri = args.url.parse().context("parsing --url")?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("url needs a host"))?
        .clone();
    let body = match args.body.strip_prefix('@') {
        Some(path) => Bytes::from(std::fs::read(path).with_context(|| format!("reading {path}"))?),
        None => Bytes::from(args.body.clone()),
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("header '{h}' needs 'name: value'"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
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
        let (uri, authority, body, headers) = (
            uri.clone(),
            authority.clone(),
            body.clone(),
            headers.clone(),
        );
        let offset = per_conn_interval.map(|iv| iv.mul_f64(i as f64 / args.connections as f64));
        let done = done_count.clone();
        tasks.push(tokio::spawn(async move {
            worker(
                uri,
                authority,
                body,
                headers,
                (warm_end, end),
                per_conn_interval,
                offset,
                done,
            )
            .await
        }));
    }
    let mut latency = new_hist()?;
    let mut ttfb = new_hist()?;
    let mut gaps = new_hist()?;
    let (mut ok, mut errors, mut late) = (0, 0, 0);
    for t in tasks {
        let r = t.await.map_err(|e| anyhow!("worker: {e}"))??;
        latency.add(&r.latency).map_err(|e| anyhow!("{e}"))?;
        ttfb.add(&r.ttfb).map_err(|e| anyhow!("{e}"))?;
        gaps.add(&r.gaps).map_err(|e| anyhow!("{e}"))?;
        ok += r.ok;
        errors += r.errors;
        late += r.late;
    }
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
        latency_us: pct(&latency),
        ttfb_us: pct(&ttfb),
        chunk_gap_us: pct(&gaps),
        server_cpu_us_per_request: cpu,
        server_peak_rss_bytes: pid.map(|_| rss_peak.load(Ordering::Relaxed)),
    })
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    uri: hyper::Uri,
    authority: hyper::http::uri::Authority,
    body: Bytes,
    headers: Vec<(String, String)>,
    (warm_end, end): (Instant, Instant),
    interval: Option<Duration>,
    offset: Option<Duration>,
    done: Arc<AtomicU64>,
) -> Result<WorkerResult> {
    let mut res = WorkerResult {
        latency: new_hist()?,
        ttfb: new_hist()?,
        gaps: new_hist()?,
        ok: 0,
        errors: 0,
        late: 0,
    };
    let mut sender = connect(&authority).await?;
    let mut next = Instant::now() + offset.unwrap_or_default();
    while Instant::now() < end {
        if let Some(iv) = interval {
            // The timer wheel has 1 ms resolution: wake early and yield to the exact instant,
            // so latency is measured from the real send, not from a rounded schedule.
            if let Some(early) = next.checked_sub(Duration::from_millis(1)) {
                tokio::time::sleep_until(early.into()).await;
            }
            while Instant::now() < next {
                tokio::task::yield_now().await;
            }
            if Instant::now().duration_since(next) > Duration::from_millis(1) {
                res.late += 1;
            }
            next += iv;
        }
        let intended = Instant::now();
        let mut req = Request::post(uri.clone()).header("host", authority.as_str());
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(body.clone()))?;
        if sender.ready().await.is_err() {
            sender = connect(&authority).await?;
        }
        let outcome = async {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let mut b = resp.into_body();
            let mut first = None;
            let mut arrivals = Vec::new();
            while let Some(frame) = b.frame().await {
                let frame = frame?;
                if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    arrivals.push(now);
                }
            }
            Ok::<_, anyhow::Error>((status, first, arrivals))
        }
        .await;
        let finished = Instant::now();
        done.fetch_add(1, Ordering::Relaxed);
        if intended < warm_end {
            continue;
        }
        match outcome {
            Ok((status, first, arrivals)) if status.is_success() => {
                res.ok += 1;
                let us = |from: Instant, t: Instant| {
                    u64::try_from(t.duration_since(from).as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1)
                };
                let _ = res.latency.record(us(intended, finished));
                let _ = res.ttfb.record(us(intended, first.unwrap_or(finished)));
                for w in arrivals.windows(2) {
                    let _ = res.gaps.record(us(w[0], w[1]));
                }
            }
            Ok(_) => res.errors += 1,
            Err(_) => {
                res.errors += 1;
                sender = connect(&authority).await?;
            }
        }
    }
    Ok(res)
}

async fn connect(
    authority: &hyper::http::uri::Authority,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
