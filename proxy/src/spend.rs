//! Spend and token limits on the request path: which limits a request falls under, the
//! reservation admission makes, and the settlement at its end. The arithmetic and the
//! windows are `sluice_policies::limits`; this file holds the ledgers (which outlive
//! snapshots: a new snapshot with the same terms keeps counting) and the estimate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sluice_policies::limits::{Amount, Exceeded, Ledger, Window};

use crate::error::SluiceError;
use crate::events::{Provider, Usage};

/// One limit as written (`[[spend_limits]]`, or from the control plane's `/limits`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpendLimit {
    /// Stable id: the ledger follows it across snapshots.
    pub id: String,
    /// What people call it (in the 402 message).
    pub name: String,
    /// `organisation` (its profiles; every request when no target), `team`, `profile` or
    /// `virtual_key`.
    pub scope: String,
    /// The organisation id, team or profile name, or virtual key id.
    pub target: Option<String>,
    /// Only requests for this model (exact, or a prefix ending in `*`).
    pub model: Option<String>,
    /// `minute`, `hour`, `rolling_24h`, `rolling_7d`, `rolling_30d`, `day`, `week`, `month`.
    pub window: String,
    /// IANA time zone of calendar windows (default UTC).
    pub time_zone: Option<String>,
    /// Dollars per window.
    pub max_cost_usd: Option<f64>,
    /// Tokens (input + output) per window.
    pub max_tokens: Option<u64>,
    /// Behind a control plane, when this proxy holds no current lease of the limit (the
    /// control plane unreachable for longer than a lease lives): `false` (default) refuses
    /// the limit's requests with 503, `true` enforces the cap on this proxy's own count.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_open: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Scope {
    All,
    Organisation(String),
    Team(String),
    Profile(String),
    VirtualKey(String),
}

/// A checked limit.
#[derive(Debug, Clone)]
pub struct SpendLimit {
    pub(crate) id: String,
    name: String,
    scope: Scope,
    model: Option<String>,
    pub(crate) window: Window,
    max_micros: Option<u64>,
    max_tokens: Option<u64>,
    fail_open: bool,
}

impl SpendLimit {
    /// Where its current window starts: the calendar period's start, 0 when rolling.
    pub fn window_start(&self, now_ms: i64) -> i64 {
        self.window.period(now_ms).map_or(0, |p| p.0)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its caps: µ$ and tokens.
    pub fn caps(&self) -> (Option<u64>, Option<u64>) {
        (self.max_micros, self.max_tokens)
    }

    /// Checks one raw limit.
    pub fn compile(raw: &RawSpendLimit) -> Result<Self, String> {
        let what = format!("spend limit '{}'", raw.name);
        let target = || {
            raw.target
                .clone()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("{what}: scope {} needs a target", raw.scope))
        };
        let scope = match raw.scope.as_str() {
            "organisation" => match raw.target.clone().filter(|t| !t.is_empty()) {
                Some(org) => Scope::Organisation(org),
                None => Scope::All,
            },
            "team" => Scope::Team(target()?),
            "profile" => Scope::Profile(target()?),
            "virtual_key" => Scope::VirtualKey(target()?),
            other => {
                return Err(format!(
                    "{what}: scope '{other}' is not organisation, team, profile or virtual_key"
                ));
            }
        };
        let window = Window::parse(&raw.window, raw.time_zone.as_deref())
            .map_err(|e| format!("{what}: {e}"))?;
        let max_micros = match raw.max_cost_usd {
            Some(usd) if usd.is_finite() && (0.0..=1e12).contains(&usd) => {
                Some((usd * 1e6).round() as u64)
            }
            Some(_) => return Err(format!("{what}: max_cost_usd must be 0 or more")),
            None => None,
        };
        if max_micros.is_none() && raw.max_tokens.is_none() {
            return Err(format!("{what}: set max_cost_usd, max_tokens or both"));
        }
        Ok(Self {
            id: raw.id.clone(),
            name: raw.name.clone(),
            scope,
            model: raw.model.clone().filter(|m| !m.is_empty()),
            window,
            max_micros,
            max_tokens: raw.max_tokens,
            fail_open: raw.fail_open,
        })
    }

    fn applies(&self, who: &Requester<'_>) -> bool {
        let scoped = match &self.scope {
            Scope::All => true,
            Scope::Organisation(o) => who.organisation == Some(o.as_str()),
            Scope::Team(t) => who.team == Some(t.as_str()),
            Scope::Profile(p) => who.profile == p,
            Scope::VirtualKey(k) => who.key_id == Some(k.as_str()),
        };
        scoped && model_matches(self.model.as_deref(), who.model)
    }
}

/// Whether `model` is what `pattern` names: any model without a pattern, else the exact
/// model or, for a pattern ending in `*`, any model with that prefix.
pub(crate) fn model_matches(pattern: Option<&str>, model: Option<&str>) -> bool {
    match (pattern, model) {
        (None, _) => true,
        (Some(p), Some(model)) => match p.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => model == p,
        },
        (Some(_), None) => false,
    }
}

/// Who is asking, for matching limits.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// Profile name.
    pub profile: &'a str,
    /// Its team's name.
    pub team: Option<&'a str>,
    /// Its organisation's id.
    pub organisation: Option<&'a str>,
    /// Virtual key id.
    pub key_id: Option<&'a str>,
    /// The requested model.
    pub model: Option<&'a str>,
}

/// Room held for one request: in a spend limit's ledger, or tokens taken from a rate
/// limit's bucket.
#[derive(Debug)]
pub enum Hold {
    /// A spend limit's reservation.
    Ledger {
        /// The limit's id.
        limit: String,
        /// The ledger.
        ledger: Arc<Mutex<LimitState>>,
        /// What was reserved.
        reserved: Amount,
    },
    /// Tokens taken from a tokens-per-minute bucket.
    Bucket {
        /// The bucket.
        bucket: Arc<Mutex<sluice_policies::bucket::TokenBucket>>,
        /// Tokens taken.
        taken: u64,
    },
}

/// A limit, what its window spent here, what is reserved, and its live lease's ceiling.
pub type Standing<'a> = (&'a SpendLimit, Amount, Amount, Option<Amount>);

/// One limit's count on this proxy, and its lease when a control plane shares it.
#[derive(Debug)]
pub struct LimitState {
    pub(crate) ledger: Ledger,
    pub(crate) lease: crate::lease::LeaseState,
}

/// The ledgers of every limit this proxy enforces, by limit id.
#[derive(Debug)]
pub struct SpendBook {
    pub(crate) ledgers: Mutex<HashMap<String, Arc<Mutex<LimitState>>>>,
    // This process, as a lease holder.
    holder: Arc<str>,
    // Set by a proxy behind a control plane: limits are spent from leases.
    leasing: AtomicBool,
    // Woken when a request wanted more than a lease had left.
    wanted: tokio::sync::Notify,
    // Set once the control plane has answered a lease request.
    answered: AtomicBool,
}

impl Default for SpendBook {
    fn default() -> Self {
        let mut id = [0u8; 12];
        // Without randomness, the time stands in: holders only need to differ.
        if getrandom::fill(&mut id).is_err() {
            id[..8].copy_from_slice(&now_ms().to_le_bytes());
        }
        Self {
            ledgers: Mutex::default(),
            holder: id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into(),
            leasing: AtomicBool::new(false),
            wanted: tokio::sync::Notify::new(),
            answered: AtomicBool::new(false),
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl SpendBook {
    pub(crate) fn state(&self, limit: &SpendLimit) -> Arc<Mutex<LimitState>> {
        let mut all = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = || {
            Arc::new(Mutex::new(LimitState {
                ledger: Ledger::new(limit.window.clone(), limit.max_micros, limit.max_tokens),
                lease: Default::default(),
            }))
        };
        let entry = all.entry(limit.id.clone()).or_insert_with(fresh);
        let same = match entry.lock() {
            Ok(mut st) => {
                st.ledger.set_caps(limit.max_micros, limit.max_tokens);
                st.ledger.same_window(&limit.window)
            }
            Err(_) => false,
        };
        if !same {
            // A new window starts a new count (the old one stays with requests in flight).
            *entry = fresh();
        }
        entry.clone()
    }

    /// `/readyz`: the config's readiness, and behind a control plane with limits, not
    /// before the first leases are in (until then the limits' requests would fail closed).
    pub fn readiness(&self, live: &crate::live::LiveConfig) -> (u16, String) {
        let (status, text) = live.readiness();
        let limited = live
            .current()
            .is_some_and(|c| !c.spend_limits.is_empty() || !c.rate_limits.is_empty());
        if status == 200
            && limited
            && self.leasing.load(Ordering::Acquire)
            && !self.answered.load(Ordering::Acquire)
        {
            return (
                503,
                "not ready: waiting for the first spend-limit leases from the control plane\n"
                    .into(),
            );
        }
        (status, text)
    }

    /// Marks the first answer to a lease request.
    pub(crate) fn answered(&self) {
        self.answered.store(true, Ordering::Release);
    }

    /// This process's id as a lease holder.
    pub fn holder(&self) -> Arc<str> {
        self.holder.clone()
    }

    /// From now on, limits are spent from leases the control plane grants.
    pub fn lease_from_control(&self) {
        self.leasing.store(true, Ordering::Release);
    }

    /// Resolves when a request wanted more than a lease had left.
    pub async fn wanted(&self) {
        self.wanted.notified().await;
    }

    /// Each limit's standing: what its current window spent, what requests in flight hold,
    /// and (calendar windows) the period — for `GET /admin/v1/spend`.
    pub fn view(&self, limits: &[SpendLimit]) -> serde_json::Value {
        let now = now_ms();
        let amount = |a: Amount| serde_json::json!({"cost_micros": a.micros, "tokens": a.tokens});
        let items: Vec<_> = self
            .standings(limits)
            .into_iter()
            .map(|(limit, spent, reserved, lease)| {
                let period = limit.window.period(now);
                serde_json::json!({
                    "id": limit.id, "name": limit.name,
                    "max_cost_micros": limit.max_micros, "max_tokens": limit.max_tokens,
                    "spent": amount(spent),
                    "reserved": amount(reserved),
                    "lease": lease.map(amount),
                    "period": period.map(|(s, e)| serde_json::json!({"start": rfc3339(s), "end": rfc3339(e)})),
                })
            })
            .collect();
        serde_json::json!({ "limits": items, "leased": self.leasing.load(Ordering::Acquire) })
    }

    /// Each limit with what its window spent on this proxy, what is reserved, and the
    /// ceiling of its live lease.
    pub fn standings<'a>(&self, limits: &'a [SpendLimit]) -> Vec<Standing<'a>> {
        let (now, instant) = (now_ms(), Instant::now());
        limits
            .iter()
            .map(|limit| {
                let state = self.state(limit);
                let (spent, reserved, lease) = match state.lock() {
                    Ok(mut st) => (
                        st.ledger.spent(now),
                        st.ledger.reserved(),
                        st.lease.ceiling(limit.window_start(now), instant),
                    ),
                    Err(_) => Default::default(),
                };
                (limit, spent, reserved, lease)
            })
            .collect()
    }

    /// Reserves `estimate` in every limit `who` falls under, or none of them.
    pub fn admit(
        &self,
        limits: &[SpendLimit],
        who: &Requester<'_>,
        estimate: Amount,
    ) -> Result<Vec<Hold>, SluiceError> {
        let (now, instant) = (now_ms(), Instant::now());
        let leasing = self.leasing.load(Ordering::Acquire);
        let mut holds = Vec::new();
        for limit in limits.iter().filter(|l| l.applies(who)) {
            let state = self.state(limit);
            let outcome = {
                let mut st = state.lock().map_err(|_| SluiceError::Internal)?;
                self.reserve(&mut st, limit, (now, instant), estimate, leasing)
            };
            match outcome {
                Ok(()) => holds.push(Hold::Ledger {
                    limit: limit.id.clone(),
                    ledger: state,
                    reserved: estimate,
                }),
                Err(e) => {
                    settle(holds, Amount::default());
                    return Err(e);
                }
            }
        }
        Ok(holds)
    }

    fn reserve(
        &self,
        st: &mut LimitState,
        limit: &SpendLimit,
        (now, instant): (i64, Instant),
        estimate: Amount,
        leasing: bool,
    ) -> Result<(), SluiceError> {
        if !leasing {
            return st
                .ledger
                .reserve(now, estimate)
                .map_err(|e| exceeded(limit, &e, e.used, now));
        }
        let start = limit.window_start(now);
        st.lease.asked(estimate);
        let share = match st.lease.ceiling(start, instant) {
            Some(c) => Some(c),
            None if limit.fail_open => None,
            None => {
                self.wanted.notify_one();
                return Err(SluiceError::LimitStateUnknown {
                    limit: limit.name.clone(),
                });
            }
        };
        match st.ledger.reserve_within(now, estimate, share) {
            Ok(()) => {
                // A quarter of the lease left: renew now rather than at the next turn.
                if let Some(c) = share {
                    let used = st.ledger.used(now);
                    if used.micros.saturating_mul(4) > c.micros.saturating_mul(3)
                        || used.tokens.saturating_mul(4) > c.tokens.saturating_mul(3)
                    {
                        self.wanted.notify_one();
                    }
                }
                Ok(())
            }
            Err(e) if e.by_lease => {
                self.wanted.notify_one();
                let (used_total, _) = st.lease.totals(start, instant).unwrap_or_default();
                let pick = |a: Amount| if e.what == "cost" { a.micros } else { a.tokens };
                let used = pick(used_total).max(e.used);
                // What every proxy has used leaves no room: the limit itself is spent.
                // Otherwise room is leased to other proxies and moves at their renewals.
                if used.saturating_add(pick(estimate)) > e.max {
                    Err(exceeded(limit, &e, used, now))
                } else {
                    Err(SluiceError::LimitRebalancing {
                        limit: limit.name.clone(),
                    })
                }
            }
            Err(e) => Err(exceeded(limit, &e, e.used, now)),
        }
    }
}

/// Ends the holds of a request: what it really used replaces what was reserved.
/// Returns the spend limits it was counted in.
pub fn settle(holds: Vec<Hold>, actual: Amount) -> Vec<String> {
    if holds.is_empty() {
        // Most requests fall under no limit: no clock read for them.
        return Vec::new();
    }
    let now = now_ms();
    let mut counted = Vec::new();
    for h in holds {
        match h {
            Hold::Ledger {
                limit,
                ledger,
                reserved,
            } => {
                if let Ok(mut st) = ledger.lock() {
                    st.ledger.settle(now, reserved, actual);
                }
                if actual != Amount::default() {
                    counted.push(limit);
                }
            }
            Hold::Bucket { bucket, taken } => {
                if let Ok(mut b) = bucket.lock() {
                    b.settle(now, taken, actual.tokens);
                }
            }
        }
    }
    counted
}

fn exceeded(limit: &SpendLimit, e: &Exceeded, used: u64, now: i64) -> SluiceError {
    let (used, max) = match e.what {
        "cost" => (dollars(used), dollars(e.max)),
        _ => (format!("{used} tokens"), format!("{} tokens", e.max)),
    };
    let resets_in_secs = u64::try_from((e.resets_at_ms - now).max(0) / 1000 + 1).unwrap_or(1);
    SluiceError::SpendLimitExceeded {
        limit: limit.name.clone(),
        used,
        max,
        resets_at: rfc3339(e.resets_at_ms),
        resets_in_secs,
    }
}

fn dollars(micros: u64) -> String {
    format!("${}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

pub(crate) fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// Output tokens assumed when a request sets no cap.
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 4096;

/// What admission reserves: the prompt (about four bytes a token) plus the output cap, at
/// the model's prices; no price, no cost.
pub fn estimate(
    prices: &crate::cost::PriceTable,
    provider: Provider,
    model: Option<&str>,
    body: &[u8],
) -> Amount {
    let prompt = (body.len() as u64).div_ceil(4);
    let output = output_cap(body).unwrap_or(DEFAULT_OUTPUT_ESTIMATE);
    let usage = Usage {
        input_tokens: prompt,
        output_tokens: output,
        ..Default::default()
    };
    let micros = model
        .and_then(|m| prices.cost_micros(provider, m, &usage))
        .and_then(|c| u64::try_from(c).ok())
        .unwrap_or(0);
    Amount {
        micros,
        tokens: prompt + output,
    }
}

/// The request's own output cap, in whichever field its API uses.
fn output_cap(body: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Generation {
        #[serde(rename = "maxOutputTokens")]
        max_output_tokens: Option<u64>,
    }
    #[derive(Deserialize)]
    struct Caps {
        max_tokens: Option<u64>,
        max_completion_tokens: Option<u64>,
        max_output_tokens: Option<u64>,
        #[serde(rename = "generationConfig")]
        generation_config: Option<Generation>,
    }
    let c: Caps = serde_json::from_slice(body).ok()?;
    c.max_completion_tokens
        .or(c.max_tokens)
        .or(c.max_output_tokens)
        .or(c.generation_config.and_then(|g| g.max_output_tokens))
}

/// What a finished request used.
pub fn actual(usage: Option<&Usage>, cost_micros: Option<i64>) -> Amount {
    let u = usage.copied().unwrap_or_default();
    Amount {
        micros: cost_micros.and_then(|c| u64::try_from(c).ok()).unwrap_or(0),
        tokens: u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens,
    }
}
