//! The tool catalogue: every tool that requests on a profile declare is recorded under that
//! profile (its identity for policies is `profile:<name>` / tool name), so admins can see
//! what to write policies for. Bounded per profile.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// Tools seen per profile.
#[derive(Debug, Default)]
pub struct ToolCatalogue {
    inner: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

/// Tools kept per profile at most: a client declaring endless names cannot grow it forever.
const MAX_TOOLS_PER_PROFILE: usize = 10_000;

impl ToolCatalogue {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeSet<String>>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Records the tools one request declared.
    pub fn record(&self, profile: &str, tools: &[String]) {
        if tools.is_empty() {
            return;
        }
        let mut g = self.lock();
        let known = g.entry(profile.to_owned()).or_default();
        for t in tools {
            if known.len() >= MAX_TOOLS_PER_PROFILE {
                break;
            }
            if !known.contains(t) {
                known.insert(t.chars().take(128).collect());
            }
        }
    }

    /// `{"data":[{"profile","source","tools":[…]}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let g = self.lock();
        let data: Vec<_> = g
            .iter()
            .map(|(p, tools)| serde_json::json!({"profile": p, "source": format!("profile:{p}"), "tools": tools}))
            .collect();
        serde_json::json!({ "data": data })
    }
}
