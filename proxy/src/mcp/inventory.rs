//! The tools each MCP server offers, as this proxy last fetched them, for the control
//! plane: its admin API lists them beside their approval state and approves a server's
//! tools in one call. Reports are the latest list per server (bounded by the number of
//! servers), sent when a list changes, never on a request's path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pingora::server::{ListenFds, ShutdownWatch};
use serde_json::{Value, json};
use sha2::Digest;

use super::McpGateway;
use super::aggregate::Exposed;
use crate::live::LiveConfig;

/// One server's report, as `POST /api/v1/mcp-inventory` takes it.
#[derive(Debug, Clone)]
pub struct Report {
    /// The server's name.
    pub server: Arc<str>,
    /// Identifies the list (the tools' names and definition hashes).
    pub fingerprint: String,
    /// The request body (without the proxy's id).
    pub body: Value,
}

/// The latest list per server and which of them the control plane has.
#[derive(Debug, Default)]
pub struct ToolInventory {
    state: parking_lot::Mutex<State>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    latest: BTreeMap<Arc<str>, Report>,
    delivered: HashMap<Arc<str>, String>,
}

impl ToolInventory {
    /// Records a server's freshly fetched list; wakes the shipper when it differs from
    /// the last one recorded.
    pub fn observe(&self, server: &Arc<str>, tools: &[Exposed]) {
        let mut h = sha2::Sha256::new();
        for t in tools {
            h.update(t.original.as_bytes());
            h.update([0]);
            h.update(t.hash.as_bytes());
            h.update([0]);
        }
        let fingerprint: String = h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut state = self.state.lock();
        if state
            .latest
            .get(server)
            .is_some_and(|r| r.fingerprint == fingerprint)
        {
            return;
        }
        let body = json!({
            "server": &**server,
            "tools": tools.iter().map(|t| {
                let mut definition = t.definition.clone();
                if let Some(obj) = definition.as_object_mut() {
                    obj.insert("name".into(), Value::String(t.original.clone()));
                }
                json!({"name": t.original, "hash": t.hash, "definition": definition,
                       "injection_flags": t.flags})
            }).collect::<Vec<_>>(),
        });
        state.latest.insert(
            server.clone(),
            Report {
                server: server.clone(),
                fingerprint,
                body,
            },
        );
        drop(state);
        self.changed.notify_one();
    }

    /// Reports the control plane does not have yet.
    pub fn pending(&self) -> Vec<Report> {
        let state = self.state.lock();
        state
            .latest
            .values()
            .filter(|r| state.delivered.get(&r.server) != Some(&r.fingerprint))
            .cloned()
            .collect()
    }

    /// The control plane acknowledged `report`.
    pub fn delivered(&self, report: &Report) {
        self.state
            .lock()
            .delivered
            .insert(report.server.clone(), report.fingerprint.clone());
    }

    /// Resolves when a list changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Fetches every configured server's tool list after each new snapshot and every
/// `every`, so the control plane learns a server's tools (and a changed definition)
/// without waiting for a client to ask.
pub struct InventoryRefresh {
    /// The gateway whose lists are fetched.
    pub mcp: Arc<McpGateway>,
    /// Its config.
    pub live: Arc<LiveConfig>,
    /// How often lists are fetched again without a new snapshot.
    pub every: Duration,
}

#[async_trait::async_trait]
impl pingora::services::Service for InventoryRefresh {
    fn name(&self) -> &str {
        "mcp tool inventory"
    }

    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut versions = self.live.subscribe();
        loop {
            if let Some(config) = self.live.current() {
                let mut servers: Vec<_> = config.mcp_servers.values().cloned().collect();
                servers.sort_by(|a, b| a.name.cmp(&b.name));
                for s in servers {
                    let fetched =
                        tokio::time::timeout(Duration::from_secs(30), self.mcp.exposed_tools(&s));
                    tokio::select! {
                        r = fetched => {
                            if let Ok(Err(e)) = r {
                                tracing::debug!(server = %s.name, error = %e, "tool list for the inventory");
                            }
                        }
                        _ = shutdown.changed() => return,
                    }
                }
            }
            tokio::select! {
                _ = versions.changed() => {}
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tool(name: &str, hash: &str) -> Exposed {
        Exposed {
            name: format!("s__{name}"),
            server: "s".into(),
            original: name.into(),
            definition: json!({"name": format!("s__{name}"), "description": "d"}),
            hash: hash.into(),
            withheld: None,
            flags: vec![],
        }
    }

    #[test]
    fn a_list_is_pending_until_delivered_and_again_when_it_changes() {
        let inv = ToolInventory::default();
        let s: Arc<str> = "s".into();
        inv.observe(&s, &[tool("a", "11"), tool("b", "22")]);
        let p = inv.pending();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].body["tools"][0]["definition"]["name"], "a");
        inv.delivered(&p[0]);
        assert!(inv.pending().is_empty());
        inv.observe(&s, &[tool("a", "11"), tool("b", "22")]);
        assert!(inv.pending().is_empty(), "the same list is not sent again");
        inv.observe(&s, &[tool("a", "11"), tool("b", "33")]);
        assert_eq!(inv.pending().len(), 1, "a changed definition is");
    }
}
