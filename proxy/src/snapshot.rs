//! The snapshot the control plane publishes: the same raw configuration a file feeds, plus
//! its version and content hash. The proxy checks the hash and compiles it before it swaps.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::RawConfig;

/// One published snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDoc {
    /// Increases with every change.
    pub version: u64,
    /// SHA-256 (hex) of the config's canonical JSON.
    pub hash: String,
    /// When it was compiled, ms since the epoch.
    pub created_at_ms: i64,
    /// The configuration.
    pub config: RawConfig,
}

/// The content hash of a config: SHA-256 of its JSON, which is canonical because every map
/// in it is ordered.
pub fn content_hash(config: &RawConfig) -> String {
    let bytes = serde_json::to_vec(config).unwrap_or_default();
    let d = Sha256::digest(&bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl SnapshotDoc {
    /// True when the hash matches the content (a torn or edited cache file does not).
    pub fn hash_matches(&self) -> bool {
        content_hash(&self.config) == self.hash
    }
}
