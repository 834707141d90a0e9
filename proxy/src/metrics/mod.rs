//! Prometheus metrics, from the request records (off the byte path) and read at scrape time
//! (snapshot, journal). Label values are bounded: no key or request ids; models and tools
//! beyond the first 50 / 200 seen are counted under `other`; profiles come from the
//! configuration.

use std::collections::HashSet;
use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::events::{EventSink, RequestRecord};

mod hot;

const MAX_MODELS: usize = 50;
const MAX_TOOLS: usize = 200;

/// Keeps a label's distinct values bounded.
#[derive(Debug)]
struct Bounded {
    max: usize,
    seen: parking_lot::Mutex<HashSet<String>>,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Self {
            max,
            seen: parking_lot::Mutex::new(HashSet::new()),
        }
    }

    fn label<'a>(&self, v: &'a str) -> &'a str {
        let mut seen = self.seen.lock();
        if seen.contains(v) {
            return v;
        }
        if seen.len() < self.max && v.len() <= 128 {
            seen.insert(v.to_owned());
            return v;
        }
        "other"
    }
}

/// The proxy's metrics.
pub struct ProxyMetrics {
    registry: Registry,
    duration: HistogramVec,
    ttft: HistogramVec,
    tokens: IntCounterVec,
    cost: prometheus::CounterVec,
    without_price: IntCounterVec,
    toon_saved: IntCounterVec,
    blocked_tools: IntCounterVec,
    decisions: IntCounterVec,
    overhead: HistogramVec,
    mcp_calls: IntCounterVec,
    mcp_duration: HistogramVec,
    records: IntCounter,
    snapshot_version: IntGauge,
    snapshot_age: Gauge,
    limit_spent: prometheus::GaugeVec,
    limit_reserved: prometheus::GaugeVec,
    limit_lease: prometheus::GaugeVec,
    limit_max: prometheus::GaugeVec,
    rate_limit: IntGaugeVec,
    rate_share: IntGaugeVec,
    journal_backlog: IntGauge,
    journal_failures: IntGauge,
    memory_in_use: IntGauge,
    memory_budget: IntGauge,
    memory_reserved: IntGauge,
    spans_dropped: IntCounter,
    trace_export_failures: IntCounter,
    models: Bounded,
    tools: Bounded,
    /// The series each request record touches (hot.rs).
    hot: hot::HotSeries,
    /// `overhead`'s series, by provider.
    overhead_by_provider:
        [std::sync::OnceLock<prometheus::Histogram>; crate::events::Provider::COUNT],
}

impl std::fmt::Debug for ProxyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyMetrics")
    }
}

/// Latency buckets, seconds: 1 ms to 2 min.
const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Overhead buckets, seconds: 10 µs to 50 ms.
const OVERHEAD: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
];

impl ProxyMetrics {
    /// Registers every metric.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "llm_request_duration_seconds",
                "Wall time of an LLM request through Sluice, from its first byte to its end.",
            )
            .buckets(LATENCY.to_vec()),
            &["provider", "model", "profile", "status"],
        )?;
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "llm_time_to_first_token_seconds",
                "Time from the request to the upstream's first response byte.",
            )
            .buckets(LATENCY.to_vec()),
            &["provider", "model", "profile"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "llm_tokens_total",
                "Tokens the providers reported, by type.",
            ),
            &["provider", "model", "profile", "type"],
        )?;
        let cost = prometheus::CounterVec::new(
            Opts::new(
                "llm_cost_total",
                "Cost in US dollars, where the model's price is known.",
            ),
            &["provider", "model", "profile"],
        )?;
        let without_price = IntCounterVec::new(
            Opts::new(
                "llm_requests_without_price_total",
                "Requests whose model has no price of its own (costed at the provider's default price, or not at all).",
            ),
            &["provider", "model"],
        )?;
        let toon_saved = IntCounterVec::new(
            Opts::new(
                "sluice_toon_tokens_saved_total",
                "Tokens taken out of tool results by re-encoding them as TOON (o200k_base count).",
            ),
            &["provider", "profile"],
        )?;
        let blocked_tools = IntCounterVec::new(
            Opts::new("llm_blocked_tools_total", "Tool calls Sluice refused."),
            &["provider", "profile", "tool"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "llm_policy_decisions_total",
                "Policy decisions: action is call or result; decision is the verdict.",
            ),
            &["action", "decision"],
        )?;
        let overhead = HistogramVec::new(
            HistogramOpts::new(
                "sluice_overhead_seconds",
                "Time spent in Sluice itself (its filters), excluding the upstream and the client.",
            )
            .buckets(OVERHEAD.to_vec()),
            &["provider"],
        )?;
        let mcp_calls = IntCounterVec::new(
            Opts::new(
                "mcp_tool_calls_total",
                "MCP tools/call requests through the gateway; status is ok, error or refused.",
            ),
            &["server", "tool", "status"],
        )?;
        let mcp_duration = HistogramVec::new(
            HistogramOpts::new(
                "mcp_tool_call_duration_seconds",
                "MCP tools/call wall time through the gateway, the server included.",
            ),
            &["server", "tool", "status"],
        )?;
        let records = IntCounter::new(
            "sluice_request_records_total",
            "Request records written (one per inspected request).",
        )?;
        let snapshot_version = IntGauge::new(
            "sluice_snapshot_version",
            "The control plane's version of the serving snapshot (0: from a file).",
        )?;
        let snapshot_age = Gauge::new(
            "sluice_snapshot_age_seconds",
            "Seconds since the serving configuration was swapped in.",
        )?;
        let limit_gauge = |name: &str, help: &str| {
            prometheus::GaugeVec::new(Opts::new(name, help), &["limit", "unit"])
        };
        let limit_spent = limit_gauge(
            "sluice_spend_limit_spent",
            "What a spend limit's current window spent on this proxy (unit usd or tokens).",
        )?;
        let limit_reserved = limit_gauge(
            "sluice_spend_limit_reserved",
            "What requests in flight hold in a spend limit on this proxy (unit usd or tokens).",
        )?;
        let limit_lease = limit_gauge(
            "sluice_spend_limit_lease",
            "This proxy's current lease of a spend limit behind a control plane: the ceiling on \
             what it may spend in the window (absent: no live lease; the limit fails closed \
             unless it fails open).",
        )?;
        let limit_max = limit_gauge(
            "sluice_spend_limit_max",
            "A spend limit's cap per window (unit usd or tokens).",
        )?;
        let rate_gauge =
            |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["limit", "unit"]);
        let rate_limit = rate_gauge(
            "sluice_rate_limit_per_minute",
            "A rate limit's rate per minute (unit requests or tokens).",
        )?;
        let rate_share = rate_gauge(
            "sluice_rate_limit_share_per_minute",
            "This proxy's share of a rate limit per minute: the whole rate, or behind a control \
             plane what it granted this replica (unit requests or tokens).",
        )?;
        let journal_backlog = IntGauge::new(
            "sluice_usage_journal_backlog",
            "Usage records written but not yet acknowledged by the control plane.",
        )?;
        let journal_failures = IntGauge::new(
            "sluice_usage_journal_failures",
            "Usage records that could not be written to the journal.",
        )?;
        let memory_in_use = IntGauge::new(
            "sluice_memory_in_use_bytes",
            "What the memory budget reads: the heap in use (resident memory where the \
             allocator does not count it).",
        )?;
        let memory_budget = IntGauge::new(
            "sluice_memory_budget_bytes",
            "limits.memory_budget_bytes: from 95% of it (heap in use plus reservations) new \
             requests get 503 (0: no budget).",
        )?;
        let memory_reserved = IntGauge::new(
            "sluice_memory_reserved_bytes",
            "Memory held against the budget for admitted requests whose responses have not \
             started.",
        )?;
        let spans_dropped = IntCounter::new(
            "sluice_trace_spans_dropped_total",
            "Spans dropped because the exporter's queue was full (SLUICE_OTEL_MAX_QUEUE).",
        )?;
        let trace_export_failures = IntCounter::new(
            "sluice_trace_export_failures_total",
            "OTLP export requests that failed (their spans are lost).",
        )?;
        for c in [
            Box::new(duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ttft.clone()),
            Box::new(tokens.clone()),
            Box::new(cost.clone()),
            Box::new(without_price.clone()),
            Box::new(toon_saved.clone()),
            Box::new(blocked_tools.clone()),
            Box::new(decisions.clone()),
            Box::new(overhead.clone()),
            Box::new(mcp_calls.clone()),
            Box::new(mcp_duration.clone()),
            Box::new(records.clone()),
            Box::new(snapshot_version.clone()),
            Box::new(snapshot_age.clone()),
            Box::new(limit_spent.clone()),
            Box::new(limit_reserved.clone()),
            Box::new(limit_lease.clone()),
            Box::new(limit_max.clone()),
            Box::new(rate_limit.clone()),
            Box::new(rate_share.clone()),
            Box::new(journal_backlog.clone()),
            Box::new(journal_failures.clone()),
            Box::new(memory_in_use.clone()),
            Box::new(memory_budget.clone()),
            Box::new(memory_reserved.clone()),
            Box::new(spans_dropped.clone()),
            Box::new(trace_export_failures.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Arc::new(Self {
            registry,
            duration,
            ttft,
            tokens,
            cost,
            without_price,
            toon_saved,
            blocked_tools,
            decisions,
            overhead,
            mcp_calls,
            mcp_duration,
            records,
            snapshot_version,
            snapshot_age,
            limit_spent,
            limit_reserved,
            limit_lease,
            limit_max,
            rate_limit,
            rate_share,
            journal_backlog,
            journal_failures,
            memory_in_use,
            memory_budget,
            memory_reserved,
            spans_dropped,
            trace_export_failures,
            models: Bounded::new(MAX_MODELS),
            tools: Bounded::new(MAX_TOOLS),
            hot: hot::HotSeries::default(),
            overhead_by_provider: Default::default(),
        }))
    }

    /// Adds collectors kept elsewhere (the upstream connection counters) to the exposition.
    pub fn adopt(
        &self,
        collectors: Vec<Box<dyn prometheus::core::Collector>>,
    ) -> Result<(), prometheus::Error> {
        for c in collectors {
            self.registry.register(c)?;
        }
        Ok(())
    }

    /// The text exposition, with the scrape-time gauges brought up to date.
    pub fn render(
        &self,
        live: &crate::live::LiveConfig,
        journal: Option<&crate::journal::Journal>,
        spend: Option<&crate::spend::SpendBook>,
        rates: Option<&crate::rate::RateBook>,
    ) -> Vec<u8> {
        // Limits come and go with snapshots: the gauges show exactly the current ones.
        self.limit_spent.reset();
        self.limit_reserved.reset();
        self.limit_max.reset();
        self.limit_lease.reset();
        if let (Some(book), Some(cfg)) = (spend, live.current()) {
            for (limit, spent, reserved, lease) in book.standings(&cfg.spend_limits) {
                let name = limit.name();
                let (max_micros, max_tokens) = limit.caps();
                if let Some(l) = lease {
                    if max_micros.is_some() {
                        self.limit_lease
                            .with_label_values(&[name, "usd"])
                            .set(l.micros as f64 / 1e6);
                    }
                    if max_tokens.is_some() {
                        self.limit_lease
                            .with_label_values(&[name, "tokens"])
                            .set(l.tokens as f64);
                    }
                }
                if let Some(m) = max_micros {
                    self.limit_max
                        .with_label_values(&[name, "usd"])
                        .set(m as f64 / 1e6);
                    self.limit_spent
                        .with_label_values(&[name, "usd"])
                        .set(spent.micros as f64 / 1e6);
                    self.limit_reserved
                        .with_label_values(&[name, "usd"])
                        .set(reserved.micros as f64 / 1e6);
                }
                if let Some(t) = max_tokens {
                    self.limit_max
                        .with_label_values(&[name, "tokens"])
                        .set(t as f64);
                    self.limit_spent
                        .with_label_values(&[name, "tokens"])
                        .set(spent.tokens as f64);
                    self.limit_reserved
                        .with_label_values(&[name, "tokens"])
                        .set(reserved.tokens as f64);
                }
            }
        }
        self.rate_limit.reset();
        self.rate_share.reset();
        if let (Some(book), Some(cfg)) = (rates, live.current()) {
            for (limit, unit, rate, share) in book.standings(&cfg.rate_limits) {
                let labels = [limit.name(), unit];
                let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                self.rate_limit.with_label_values(&labels).set(gauge(rate));
                self.rate_share.with_label_values(&labels).set(gauge(share));
            }
        }
        self.snapshot_version
            .set(i64::try_from(live.control_version()).unwrap_or(i64::MAX));
        self.snapshot_age
            .set(live.age().map_or(0.0, |d| d.as_secs_f64()));
        if let Some(j) = journal {
            let backlog = j.last_seq().saturating_sub(j.acked());
            self.journal_backlog
                .set(i64::try_from(backlog).unwrap_or(i64::MAX));
            self.journal_failures
                .set(i64::try_from(j.failures()).unwrap_or(i64::MAX));
        }
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.memory_in_use.set(gauge(crate::overload::in_use_now()));
        self.memory_reserved.set(gauge(crate::overload::reserved()));
        self.memory_budget.set(gauge(
            live.current().map_or(0, |c| c.limits.memory_budget_bytes),
        ));
        // Counted by the exporter; brought up to date here (counters only go up).
        let catch_up = |counter: &IntCounter, total: &std::sync::atomic::AtomicU64| {
            let total = total.load(std::sync::atomic::Ordering::Relaxed);
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        catch_up(&self.spans_dropped, &crate::trace::SPANS_DROPPED);
        catch_up(&self.trace_export_failures, &crate::trace::FAILED_EXPORTS);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl EventSink for ProxyMetrics {
    fn record(&self, r: &Arc<RequestRecord>) {
        let provider = r.provider.as_str();
        let model_text = r
            .response
            .model
            .as_deref()
            .or(r.request.model.as_deref())
            .unwrap_or("unknown");
        let profile = &*r.profile;
        let series = self
            .hot
            .get(r.provider, profile, model_text, |m| self.models.label(m));
        let model = &*series.label;
        self.records.inc();
        series
            .duration(r.status, || {
                let mut status = itoa::Buffer::new();
                self.duration.with_label_values(&[
                    provider,
                    model,
                    profile,
                    status.format(r.status),
                ])
            })
            .observe(r.duration_us as f64 / 1e6);
        if let Some(t) = r.ttfb_us {
            series
                .ttft
                .get_or_init(|| self.ttft.with_label_values(&[provider, model, profile]))
                .observe(t as f64 / 1e6);
        }
        if let Some(u) = r.response.usage {
            let counts = [
                u.input_tokens,
                u.output_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                u.reasoning_tokens,
            ];
            for ((n, kind), counter) in counts.into_iter().zip(hot::TOKEN_KINDS).zip(&series.tokens)
            {
                if n > 0 {
                    counter
                        .get_or_init(|| {
                            self.tokens
                                .with_label_values(&[provider, model, profile, kind])
                        })
                        .inc_by(n);
                }
            }
        }
        if r.price_missing {
            self.without_price
                .with_label_values(&[provider, model])
                .inc();
        }
        if let Some((before, after)) = r.toon_tokens {
            self.toon_saved
                .with_label_values(&[provider, profile])
                .inc_by(before.saturating_sub(after));
        }
        if let Some(micros) = r.cost_micros {
            series
                .cost
                .get_or_init(|| self.cost.with_label_values(&[provider, model, profile]))
                .inc_by(micros as f64 / 1e6);
        }
        for d in &r.decisions {
            self.decisions.with_label_values(&[d.kind, d.verdict]).inc();
            if d.kind == "call" && d.verdict != "allowed" {
                let name = d.tool.rsplit('/').next().unwrap_or(&d.tool);
                let tool = self.tools.label(name);
                self.blocked_tools
                    .with_label_values(&[provider, profile, tool])
                    .inc();
            }
        }
        if let Some(us) = r.sluice_us {
            self.overhead_by_provider[r.provider.slot()]
                .get_or_init(|| self.overhead.with_label_values(&[provider]))
                .observe(us as f64 / 1e6);
        }
    }

    fn record_mcp(&self, r: &crate::events::McpRecord) {
        for d in &r.decisions {
            self.decisions.with_label_values(&[d.kind, d.verdict]).inc();
        }
        if r.method != "tools/call" {
            return;
        }
        // Servers come from the configuration; tools share the tool label cap.
        let tool = self.tools.label(r.tool.as_deref().unwrap_or("unknown"));
        let labels = [r.server.as_str(), tool, r.status];
        self.mcp_calls.with_label_values(&labels).inc();
        self.mcp_duration
            .with_label_values(&labels)
            .observe(r.duration_us as f64 / 1e6);
    }
}
