//! A small HTTP/1.1 load generator: closed loop (each connection sends as soon as its last
//! response ended) or open loop at a fixed rate (latency measured from the intended send
//! time, so a stall is not hidden). Records full latency and time to the first body byte
//! (for SSE: the first event) in HDR histograms, and prints one JSON summary line.

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
    ok: u64,
    errors: u64,
    late: u64,
}

fn new_hist() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// Runs the load and prints the JSON report on stdout.
pub async fn run(args: Args) -> Result<()> {
    let report = measure(&args).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Runs the load and returns the report.
pub async fn measure(args: &Args) -> Result<Report> {
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
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let (uri, authority, body, headers) = (
            uri.clone(),
            authority.clone(),
            body.clone(),
            headers.clone(),
        );
        let offset = per_conn_interval.map(|iv| iv.mul_f64(i as f64 / args.connections as f64));
        tasks.push(tokio::spawn(async move {
            worker(
                uri,
                authority,
                body,
                headers,
                warm_end,
                end,
                per_conn_interval,
                offset,
            )
            .await
        }));
    }
    let mut latency = new_hist()?;
    let mut ttfb = new_hist()?;
    let (mut ok, mut errors, mut late) = (0, 0, 0);
    for t in tasks {
        let r = t.await.map_err(|e| anyhow!("worker: {e}"))??;
        latency.add(&r.latency).map_err(|e| anyhow!("{e}"))?;
        ttfb.add(&r.ttfb).map_err(|e| anyhow!("{e}"))?;
        ok += r.ok;
        errors += r.errors;
        late += r.late;
    }
    Ok(Report {
        label: args.label.clone(),
        requests: ok,
        errors,
        late_sends: late,
        rps: ok as f64 / args.duration_secs,
        latency_us: pct(&latency),
        ttfb_us: pct(&ttfb),
    })
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    uri: hyper::Uri,
    authority: hyper::http::uri::Authority,
    body: Bytes,
    headers: Vec<(String, String)>,
    warm_end: Instant,
    end: Instant,
    interval: Option<Duration>,
    offset: Option<Duration>,
) -> Result<WorkerResult> {
    let mut res = WorkerResult {
        latency: new_hist()?,
        ttfb: new_hist()?,
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
            while let Some(frame) = b.frame().await {
                let frame = frame?;
                if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                    first = Some(Instant::now());
                }
            }
            Ok::<_, anyhow::Error>((status, first))
        }
        .await;
        let done = Instant::now();
        if intended < warm_end {
            continue;
        }
        match outcome {
            Ok((status, first)) if status.is_success() => {
                res.ok += 1;
                let us = |t: Instant| {
                    u64::try_from(t.duration_since(intended).as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1)
                };
                let _ = res.latency.record(us(done));
                let _ = res.ttfb.record(us(first.unwrap_or(done)));
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
