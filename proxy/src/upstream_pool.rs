//! Upstream connections as Sluice sees them, for the metrics.
//!
//! Pingora keeps its pool of idle upstream connections private, so what can be measured is
//! measured where a request takes a connection: whether it was new or reused from the pool,
//! and how many are in use by requests right now, per upstream kind. A falling reuse ratio
//! (new connections per request) is what a pool too small, or an upstream closing idle
//! connections early, looks like.

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::events::Provider;

/// The kinds of upstream, as label values (fixed: the label is bounded).
const KINDS: [&str; 4] = ["openai", "anthropic", "gemini", "mcp"];

/// Which upstream a connection goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// An LLM provider.
    Llm(Provider),
    /// An MCP server over HTTP.
    Mcp,
}

impl UpstreamKind {
    fn index(self) -> usize {
        match self {
            Self::Llm(Provider::Openai) => 0,
            Self::Llm(Provider::Anthropic) => 1,
            Self::Llm(Provider::Gemini) => 2,
            Self::Mcp => 3,
        }
    }
}

/// Counters and gauges of upstream connections (an atomic add each), registered in the
/// metrics registry when metrics are on.
#[derive(Debug, Clone)]
pub struct UpstreamConnections {
    taken: IntCounterVec,
    in_use: IntGaugeVec,
    idle_capacity: IntGauge,
    new: [IntCounter; 4],
    reused: [IntCounter; 4],
    busy: [IntGauge; 4],
}

/// A connection in use by one request; dropping it (the request ended, or gave the
/// connection up) lowers the in-use gauge.
#[derive(Debug)]
pub struct InUse(IntGauge);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl UpstreamConnections {
    /// The collectors, all at zero.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let taken = IntCounterVec::new(
            Opts::new(
                "sluice_upstream_connections_taken_total",
                "Upstream connections requests took, by upstream and whether the connection \
                 was reused from the idle pool (true) or newly opened (false).",
            ),
            &["upstream", "reused"],
        )?;
        let in_use = IntGaugeVec::new(
            Opts::new(
                "sluice_upstream_connections_in_use",
                "Upstream connections in use by requests now.",
            ),
            &["upstream"],
        )?;
        let idle_capacity_gauge = IntGauge::new(
            "sluice_upstream_pool_idle_capacity",
            "Idle upstream connections the pool keeps at most (upstream_pool_size).",
        )?;
        let new = KINDS.map(|k| taken.with_label_values(&[k, "false"]));
        let reused = KINDS.map(|k| taken.with_label_values(&[k, "true"]));
        let busy = KINDS.map(|k| in_use.with_label_values(&[k]));
        Ok(Arc::new(Self {
            taken,
            in_use,
            idle_capacity: idle_capacity_gauge,
            new,
            reused,
            busy,
        }))
    }

    /// The pool's configured capacity of idle connections.
    pub fn set_idle_capacity(&self, n: usize) {
        self.idle_capacity.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a connection a request took; the guard marks it in use until dropped.
    pub fn taken(&self, kind: UpstreamKind, reused: bool) -> InUse {
        let i = kind.index();
        if reused {
            self.reused[i].inc();
        } else {
            self.new[i].inc();
        }
        self.busy[i].inc();
        InUse(self.busy[i].clone())
    }

    /// The collectors, for a metrics registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.taken.clone()),
            Box::new(self.in_use.clone()),
            Box::new(self.idle_capacity.clone()),
        ]
    }
}
