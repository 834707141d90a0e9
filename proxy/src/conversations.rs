//! The user's and the system's texts of a conversation, as the LLM proxy saw them, for the
//! MCP gateway's provenance conditions. An agent that talks to its model and to its tools
//! through Sluice names one conversation on both (`X-Sluice-Session-Id`); a `tools/call`
//! argument the user typed in the chat then counts as coming from the user, which the MCP
//! request alone cannot show (MCP carries no user messages).
//!
//! Scoped by profile and virtual key: a caller cannot plant "user" texts in another
//! caller's conversation by guessing its id. Bounded: texts and bytes per conversation,
//! conversations in all (the least recently used goes first).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use sluice_policies::provenance::Origin;

/// Texts kept per conversation, at most (the oldest go first).
const MAX_TEXTS: usize = 512;
/// Their total size per conversation, at most.
const MAX_BYTES: usize = 2 * 1024 * 1024;
/// The longest conversation id taken from the header.
pub const MAX_ID_CHARS: usize = 128;

/// Who may read and extend a conversation: its profile, its virtual key, its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConversationKey {
    /// The profile.
    pub profile: Arc<str>,
    /// The virtual key's id (none on an open profile).
    pub key_id: Option<String>,
    /// The client's conversation id.
    pub id: String,
}

#[derive(Debug, Default)]
struct Entry {
    texts: VecDeque<(Origin, Arc<str>, u64)>,
    seen: HashSet<u64>,
    bytes: usize,
    used: Option<Instant>,
}

/// The conversations' user and system texts.
#[derive(Debug)]
pub struct Conversations {
    hasher: std::hash::RandomState,
    capacity: usize,
    map: parking_lot::Mutex<HashMap<ConversationKey, Entry>>,
}

impl Conversations {
    /// A store of at most `capacity` conversations.
    pub fn new(capacity: usize) -> Self {
        Self {
            hasher: std::hash::RandomState::new(),
            capacity: capacity.max(1),
            map: parking_lot::Mutex::default(),
        }
    }

    /// Adds the texts of one request; a text already held is not added again (every turn
    /// resends the history).
    pub fn record(&self, key: &ConversationKey, texts: &[(Origin, &str)]) {
        if texts.is_empty() {
            return;
        }
        let hashed: Vec<(Origin, &str, u64)> = texts
            .iter()
            .map(|(o, t)| (*o, *t, self.hasher.hash_one((*o as u8, *t))))
            .collect();
        let mut map = self.map.lock();
        if !map.contains_key(key) && map.len() >= self.capacity {
            let oldest = map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        let e = map.entry(key.clone()).or_default();
        e.used = Some(Instant::now());
        for (origin, text, h) in hashed {
            if !e.seen.insert(h) {
                continue;
            }
            e.bytes += text.len();
            e.texts.push_back((origin, Arc::from(text), h));
            while e.texts.len() > MAX_TEXTS || e.bytes > MAX_BYTES {
                let Some((_, t, h)) = e.texts.pop_front() else {
                    break;
                };
                e.bytes -= t.len();
                e.seen.remove(&h);
            }
        }
    }

    /// The texts held for a conversation (none when unknown).
    pub fn texts(&self, key: &ConversationKey) -> Vec<(Origin, Arc<str>)> {
        let mut map = self.map.lock();
        let Some(e) = map.get_mut(key) else {
            return Vec::new();
        };
        e.used = Some(Instant::now());
        e.texts.iter().map(|(o, t, _)| (*o, t.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(profile: &str, key_id: Option<&str>, id: &str) -> ConversationKey {
        ConversationKey {
            profile: profile.into(),
            key_id: key_id.map(str::to_owned),
            id: id.into(),
        }
    }

    #[test]
    fn a_resent_history_is_held_once_and_scoped_to_its_caller() {
        let c = Conversations::new(10);
        let k = key("agents", Some("vk_1"), "conv-1");
        c.record(
            &k,
            &[(Origin::System, "be brief"), (Origin::User, "pay DE89")],
        );
        c.record(
            &k,
            &[
                (Origin::System, "be brief"),
                (Origin::User, "pay DE89"),
                (Origin::User, "and email bob@example.com"),
            ],
        );
        assert_eq!(c.texts(&k).len(), 3);
        assert!(c.texts(&key("agents", Some("vk_2"), "conv-1")).is_empty());
        assert!(c.texts(&key("other", Some("vk_1"), "conv-1")).is_empty());
    }

    #[test]
    fn bounded_in_texts_and_conversations() {
        let c = Conversations::new(2);
        let k = key("p", None, "a");
        let texts: Vec<String> = (0..MAX_TEXTS + 10).map(|i| format!("text {i}")).collect();
        let refs: Vec<(Origin, &str)> = texts.iter().map(|t| (Origin::User, t.as_str())).collect();
        c.record(&k, &refs);
        let held = c.texts(&k);
        assert_eq!(held.len(), MAX_TEXTS);
        assert_eq!(&*held[0].1, "text 10", "the oldest went first");
        c.record(&key("p", None, "b"), &[(Origin::User, "b")]);
        c.record(&key("p", None, "c"), &[(Origin::User, "c")]);
        assert!(
            c.texts(&k).is_empty(),
            "the least recently used conversation went"
        );
        assert_eq!(c.texts(&key("p", None, "c")).len(), 1);
    }
}
