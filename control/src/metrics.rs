//! The control plane's Prometheus metrics: API requests by route template (never by id),
//! their latency, snapshots published, usage ingested. Served on their own listener.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The metrics.
pub struct ControlMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Snapshots published by this replica.
    pub snapshots: IntCounter,
    /// The newest snapshot version this replica knows.
    pub snapshot_version: IntGauge,
    /// Usage records inserted (a resent record is not counted).
    pub usage_records: IntCounter,
    /// Usage batches received.
    pub usage_batches: IntCounter,
    /// Spend-limit leases granted (one per limit and window per request).
    pub lease_grants: IntCounter,
}

impl std::fmt::Debug for ControlMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlMetrics")
    }
}

impl ControlMetrics {
    /// Registers every metric.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "control_api_requests_total",
                "Admin API requests by route template and status.",
            ),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "control_api_request_duration_seconds",
                "Admin API latency by route template.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
            ]),
            &["method", "route"],
        )?;
        let snapshots = IntCounter::new(
            "control_snapshots_published_total",
            "Snapshots this replica published.",
        )?;
        let snapshot_version = IntGauge::new(
            "control_snapshot_version",
            "The newest snapshot version this replica knows.",
        )?;
        let usage_records = IntCounter::new(
            "control_usage_records_total",
            "Usage records inserted (resent ones not counted).",
        )?;
        let usage_batches = IntCounter::new(
            "control_usage_batches_total",
            "Usage batches received from proxies.",
        )?;
        let lease_grants = IntCounter::new(
            "control_lease_grants_total",
            "Spend-limit leases granted to proxies.",
        )?;
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(snapshots.clone()),
            Box::new(snapshot_version.clone()),
            Box::new(usage_records.clone()),
            Box::new(usage_batches.clone()),
            Box::new(lease_grants.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Arc::new(Self {
            registry,
            requests,
            latency,
            snapshots,
            snapshot_version,
            usage_records,
            usage_batches,
            lease_grants,
        }))
    }

    /// The text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Counts and times every routed API request by its route template.
pub async fn track(
    State(metrics): State<Arc<ControlMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics
        .latency
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[&method, &route, resp.status().as_str()])
        .inc();
    resp
}
