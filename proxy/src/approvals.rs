//! Approvals for `require_approval` calls. A refused call carries an approval id derived
//! from the tool's identity and its canonical arguments (SHA-256, so arguments cannot be
//! crafted to match an approved call); once an admin approves that id, the identical call is
//! let through until the approval expires. Approvals live in memory on this proxy; the
//! control plane will distribute them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_policies::ToolId;

/// The id of one exact call: `apr_` + the first 128 bits of SHA-256 over the tool identity
/// and the arguments with object keys sorted.
pub fn approval_id(tool: &ToolId, args: &Value) -> String {
    let mut h = Sha256::new();
    h.update(tool.source.as_bytes());
    h.update([0]);
    h.update(tool.name.as_bytes());
    h.update([0]);
    // serde_json's maps are ordered by key, so this text is canonical.
    h.update(args.to_string().as_bytes());
    let digest = h.finalize();
    let mut id = String::with_capacity(36);
    id.push_str("apr_");
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// True when `id` is approved on this proxy or in the snapshot (the control plane's
/// approvals, with their end in ms since the epoch).
pub fn approved(store: &ApprovalStore, snapshot: &HashMap<String, i64>, id: &str) -> bool {
    if store.is_approved(id) {
        return true;
    }
    snapshot.get(id).is_some_and(|until| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        *until > now
    })
}

/// Granted approvals and their expiry.
#[derive(Debug)]
pub struct ApprovalStore {
    ttl: Duration,
    granted: Mutex<HashMap<String, Instant>>,
}

impl ApprovalStore {
    /// A store whose approvals last `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            granted: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        match self.granted.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Approves `id` for the configured time; returns when it expires (seconds from now).
    pub fn approve(&self, id: &str) -> u64 {
        let mut g = self.lock();
        let now = Instant::now();
        g.retain(|_, until| *until > now);
        g.insert(id.to_owned(), now + self.ttl);
        self.ttl.as_secs()
    }

    /// True when `id` is approved and not expired.
    pub fn is_approved(&self, id: &str) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|until| *until > Instant::now())
    }

    /// The approved ids and their remaining seconds.
    pub fn list(&self) -> Vec<(String, u64)> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(id, until)| (id.clone(), until.duration_since(now).as_secs()))
            .collect()
    }
}

impl Default for ApprovalStore {
    fn default() -> Self {
        Self::new(Duration::from_secs(3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_canonical_and_approvals_expire() {
        let t = ToolId::new("profile:a", "send_email");
        let a: Value = serde_json::from_str(r#"{"to":"x","cc":["y"]}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"cc":["y"],"to":"x"}"#).expect("json");
        let c: Value = serde_json::from_str(r#"{"to":"z","cc":["y"]}"#).expect("json");
        assert_eq!(approval_id(&t, &a), approval_id(&t, &b));
        assert_ne!(approval_id(&t, &a), approval_id(&t, &c));
        assert_ne!(
            approval_id(&t, &a),
            approval_id(&ToolId::new("profile:b", "send_email"), &a)
        );
        let store = ApprovalStore::new(Duration::from_secs(60));
        let id = approval_id(&t, &a);
        assert!(!store.is_approved(&id));
        store.approve(&id);
        assert!(store.is_approved(&id));
        let expired = ApprovalStore::new(Duration::ZERO);
        expired.approve(&id);
        assert!(!expired.is_approved(&id));
    }
}
