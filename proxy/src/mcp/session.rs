//! Client sessions: the legacy era's `Mcp-Session-Id` sessions, and the stateless era's
//! conversations named by `X-Sluice-Session-Id`. Each carries its conversation's taint and
//! the texts of its tool results (for provenance), bounded, and ends when idle.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

/// Tool-result texts a session keeps for provenance, at most.
const MAX_RESULT_TEXTS: usize = 1000;
/// Their total size, at most; the oldest go first.
const MAX_RESULT_BYTES: usize = 8 * 1024 * 1024;
/// Events of the GET stream kept for `Last-Event-ID` resumption.
const REPLAY_EVENTS: usize = 256;

/// What a session remembers.
#[derive(Debug, Default)]
pub struct SessionState {
    /// The conversation is still trusted.
    pub untrusted: bool,
    /// Where its taint began.
    pub boundary: Option<String>,
    /// Tool results' texts: (trusted, text, tool).
    pub results: VecDeque<(bool, String, String)>,
    results_bytes: usize,
    /// Lowest log level the client asked for (`logging/setLevel`).
    pub log_level: Option<String>,
    /// Resource URIs it subscribed to, each held at the server that owns it.
    pub subscriptions: HashMap<String, super::upstream::ResourceHold>,
    /// Requests a server made that were relayed to this client: our id → (server, its id).
    pub server_requests: HashMap<String, (Arc<str>, Value)>,
    /// This client's requests in flight: its id (JSON text) → (server, our id upstream).
    pub inflight: HashMap<String, (Arc<str>, Value)>,
    /// The open GET stream, if any.
    pub stream: Option<mpsc::Sender<(u64, Value)>>,
    /// The GET stream's recent events, for resumption.
    pub replay: VecDeque<(u64, Value)>,
    /// The next event id.
    pub next_event: u64,
}

impl SessionState {
    /// Remembers a tool result's text, dropping the oldest past the bounds.
    pub fn remember_result(&mut self, trusted: bool, text: String, tool: String) {
        self.results_bytes += text.len();
        self.results.push_back((trusted, text, tool));
        while self.results.len() > MAX_RESULT_TEXTS || self.results_bytes > MAX_RESULT_BYTES {
            match self.results.pop_front() {
                Some((_, t, _)) => self.results_bytes -= t.len(),
                None => break,
            }
        }
    }

    /// Queues a message for the GET stream (kept for replay even while none is open).
    pub fn push_event(&mut self, msg: Value) {
        self.next_event += 1;
        let id = self.next_event;
        self.replay.push_back((id, msg.clone()));
        if self.replay.len() > REPLAY_EVENTS {
            self.replay.pop_front();
        }
        if let Some(tx) = &self.stream
            && tx.try_send((id, msg)).is_err()
        {
            self.stream = None;
        }
    }
}

/// One client session.
#[derive(Debug)]
pub struct Session {
    /// Its id.
    pub id: Arc<str>,
    /// The profile it was opened on.
    pub profile: Arc<str>,
    /// The negotiated protocol version.
    pub version: String,
    /// The virtual key that opened it.
    pub key_id: Option<String>,
    /// The client's capabilities.
    pub client_capabilities: Value,
    last_used: parking_lot::Mutex<Instant>,
    /// Mutable state.
    pub state: parking_lot::Mutex<SessionState>,
}

impl Session {
    /// True when the client can take `sampling/createMessage` and friends.
    pub fn can(&self, capability: &str) -> bool {
        self.client_capabilities.get(capability).is_some()
    }
}

/// Every session of this proxy.
#[derive(Debug, Default)]
pub struct Sessions {
    map: parking_lot::Mutex<HashMap<Arc<str>, Arc<Session>>>,
}

impl Sessions {
    /// Opens a session (evicting the least recently used one past `max`).
    pub fn open(
        &self,
        id: Arc<str>,
        profile: Arc<str>,
        version: String,
        key_id: Option<String>,
        client_capabilities: Value,
        max: usize,
    ) -> Arc<Session> {
        let s = Arc::new(Session {
            id: id.clone(),
            profile,
            version,
            key_id,
            client_capabilities,
            last_used: parking_lot::Mutex::new(Instant::now()),
            state: parking_lot::Mutex::default(),
        });
        let mut map = self.map.lock();
        if map.len() >= max {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| *s.last_used.lock())
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(id, s.clone());
        s
    }

    /// A session kept for one request only (a stateless client without a conversation id).
    pub fn detached(profile: Arc<str>) -> Arc<Session> {
        // Never recorded, never looked up (not in the map): unique is enough, and random
        // bytes cost a system call per request.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Arc::new(Session {
            id: format!("once:{n}").into(),
            profile,
            version: super::upstream::STATELESS_VERSION.into(),
            key_id: None,
            client_capabilities: Value::Null,
            last_used: parking_lot::Mutex::new(Instant::now()),
            state: parking_lot::Mutex::default(),
        })
    }

    /// The session, if it exists, belongs to `profile` and has not idled out.
    pub fn get(&self, id: &str, profile: &str, idle: Duration) -> Option<Arc<Session>> {
        let mut map = self.map.lock();
        let s = map.get(id)?.clone();
        let mut last = s.last_used.lock();
        if last.elapsed() > idle {
            drop(last);
            map.remove(id);
            return None;
        }
        if &*s.profile != profile {
            return None;
        }
        *last = Instant::now();
        drop(last);
        Some(s)
    }

    /// The stateless era's conversation `id`, opened on first use.
    pub fn conversation(
        &self,
        id: &str,
        profile: &Arc<str>,
        idle: Duration,
        max: usize,
    ) -> Arc<Session> {
        let key = format!("conv:{profile}:{id}");
        if let Some(s) = self.get(&key, profile, idle) {
            return s;
        }
        self.open(
            key.into(),
            profile.clone(),
            super::upstream::STATELESS_VERSION.into(),
            None,
            Value::Null,
            max,
        )
    }

    /// Ends a session; false when there was none.
    pub fn close(&self, id: &str) -> bool {
        self.map.lock().remove(id).is_some()
    }

    /// Every live session of `profile`.
    pub fn of_profile(&self, profile: &str) -> Vec<Arc<Session>> {
        self.map
            .lock()
            .values()
            .filter(|s| &*s.profile == profile)
            .cloned()
            .collect()
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.map.lock().values().cloned().collect()
    }
}

/// A new session id: 128 random bits, hex.
pub fn new_id() -> Arc<str> {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No randomness: fall back on time and a counter (still unique, not secret).
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return format!("{t:x}{n:x}").into();
    }
    hex_of(&b).into()
}

fn hex_of(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(b.len() * 2);
    for x in b {
        out.push(char::from(DIGITS[usize::from(x >> 4)]));
        out.push(char::from(DIGITS[usize::from(x & 0x0f)]));
    }
    out
}
