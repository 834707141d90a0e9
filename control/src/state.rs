//! What every handler shares.

use std::sync::Arc;

use crate::crypto::MasterKey;
use crate::snapshot::SnapshotHub;
use crate::store::Db;

/// The control plane's shared state.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Encrypts provider credentials.
    pub master: MasterKey,
    /// Compiles and publishes snapshots.
    pub hub: Arc<SnapshotHub>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::ControlMetrics>,
    /// Runs catalogue MCP servers on Kubernetes, when enabled.
    pub runtime: Option<Arc<crate::runtime::McpRuntime>>,
    /// Grants spend-limit leases to proxies.
    pub leases: Arc<crate::leases::LeaseDesk>,
}

impl AppState {
    /// Compiles the database into a new snapshot (if anything changed) and tells every
    /// subscribed proxy, and wakes the Kubernetes runtime. Called after every write.
    pub async fn publish(&self) -> Result<(), crate::error::ApiError> {
        let published = self.hub.publish(&self.db, &self.metrics).await;
        if let Some(rt) = &self.runtime {
            rt.poke();
        }
        published
    }
}
