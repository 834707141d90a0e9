//! Spend and token limits on the request path: which limits a request falls under, the
//! reservation admission makes, and the settlement at its end. The arithmetic and the
//! windows are `sluice_policies::limits`; this file holds the ledgers (which outlive
//! snapshots: a new snapshot with the same terms keeps counting) and the estimate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    id: String,
    name: String,
    scope: Scope,
    model: Option<String>,
    window: Window,
    max_micros: Option<u64>,
    max_tokens: Option<u64>,
}

impl SpendLimit {
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
        scoped
            && match (&self.model, who.model) {
                (None, _) => true,
                (Some(m), Some(model)) => match m.strip_suffix('*') {
                    Some(prefix) => model.starts_with(prefix),
                    None => model == m,
                },
                (Some(_), None) => false,
            }
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
        /// The ledger.
        ledger: Arc<Mutex<Ledger>>,
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

/// The ledgers of every limit this proxy enforces, by limit id.
#[derive(Debug, Default)]
pub struct SpendBook {
    ledgers: Mutex<HashMap<String, Arc<Mutex<Ledger>>>>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl SpendBook {
    fn ledger(&self, limit: &SpendLimit) -> Arc<Mutex<Ledger>> {
        let mut all = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        let entry = all.entry(limit.id.clone()).or_insert_with(|| {
            Arc::new(Mutex::new(Ledger::new(
                limit.window.clone(),
                limit.max_micros,
                limit.max_tokens,
            )))
        });
        let same = entry
            .lock()
            .map(|l| l.same_terms(&limit.window, limit.max_micros, limit.max_tokens))
            .unwrap_or(false);
        if !same {
            // New terms start a new count (the old one stays with requests in flight).
            *entry = Arc::new(Mutex::new(Ledger::new(
                limit.window.clone(),
                limit.max_micros,
                limit.max_tokens,
            )));
        }
        entry.clone()
    }

    /// Each limit's standing: what its current window spent, what requests in flight hold,
    /// and (calendar windows) the period — for `GET /admin/v1/spend`.
    pub fn view(&self, limits: &[SpendLimit]) -> serde_json::Value {
        let now = now_ms();
        let items: Vec<_> = self
            .standings(limits)
            .into_iter()
            .map(|(limit, spent, reserved)| {
                let period = limit.window.period(now);
                serde_json::json!({
                    "id": limit.id, "name": limit.name,
                    "max_cost_micros": limit.max_micros, "max_tokens": limit.max_tokens,
                    "spent": {"cost_micros": spent.micros, "tokens": spent.tokens},
                    "reserved": {"cost_micros": reserved.micros, "tokens": reserved.tokens},
                    "period": period.map(|(s, e)| serde_json::json!({"start": rfc3339(s), "end": rfc3339(e)})),
                })
            })
            .collect();
        serde_json::json!({ "limits": items })
    }

    /// Each limit with what its window spent and what is reserved.
    pub fn standings<'a>(&self, limits: &'a [SpendLimit]) -> Vec<(&'a SpendLimit, Amount, Amount)> {
        let now = now_ms();
        limits
            .iter()
            .map(|limit| {
                let ledger = self.ledger(limit);
                let (spent, reserved) = match ledger.lock() {
                    Ok(mut l) => (l.spent(now), l.reserved()),
                    Err(_) => Default::default(),
                };
                (limit, spent, reserved)
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
        let now = now_ms();
        let mut holds = Vec::new();
        for limit in limits.iter().filter(|l| l.applies(who)) {
            let ledger = self.ledger(limit);
            let reserved = ledger
                .lock()
                .map_err(|_| SluiceError::Internal)?
                .reserve(now, estimate);
            match reserved {
                Ok(()) => holds.push(Hold::Ledger {
                    ledger,
                    reserved: estimate,
                }),
                Err(e) => {
                    settle(holds, Amount::default());
                    return Err(exceeded(limit, &e, now));
                }
            }
        }
        Ok(holds)
    }
}

/// Ends the holds of a request: what it really used replaces what was reserved.
pub fn settle(holds: Vec<Hold>, actual: Amount) {
    let now = now_ms();
    for h in holds {
        match h {
            Hold::Ledger { ledger, reserved } => {
                if let Ok(mut l) = ledger.lock() {
                    l.settle(now, reserved, actual);
                }
            }
            Hold::Bucket { bucket, taken } => {
                if let Ok(mut b) = bucket.lock() {
                    b.settle(now, taken, actual.tokens);
                }
            }
        }
    }
}

fn exceeded(limit: &SpendLimit, e: &Exceeded, now: i64) -> SluiceError {
    let (used, max) = match e.what {
        "cost" => (dollars(e.used), dollars(e.max)),
        _ => (format!("{} tokens", e.used), format!("{} tokens", e.max)),
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
