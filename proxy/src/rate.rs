//! Rate limits: requests and tokens per minute per profile or virtual key, as local token
//! buckets. Tokens are taken at admission (the same estimate spend limits reserve) and
//! corrected to what was used when the request ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sluice_policies::bucket::TokenBucket;

use crate::error::SluiceError;
use crate::spend::{Hold, Requester, now_ms};

/// One rate limit as written (`[[rate_limits]]`, or from the control plane's
/// `/rate-limits`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Stable id: the buckets follow it across snapshots.
    pub id: String,
    /// What the 429 message names.
    pub name: String,
    /// `profile` or `virtual_key`.
    pub scope: String,
    /// The profile name or virtual key id.
    pub target: String,
    /// Requests a minute.
    pub requests_per_minute: Option<u64>,
    /// Tokens (input + output, estimated at admission) a minute.
    pub tokens_per_minute: Option<u64>,
}

/// A checked rate limit.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub(crate) id: String,
    name: String,
    by_key: bool,
    target: String,
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
}

impl RateLimit {
    /// The limit's name (a metric label: limits are bounded by the configuration).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks one raw rate limit.
    pub fn compile(raw: &RawRateLimit) -> Result<Self, String> {
        let what = format!("rate limit '{}'", raw.name);
        let by_key = match raw.scope.as_str() {
            "profile" => false,
            "virtual_key" => true,
            other => {
                return Err(format!(
                    "{what}: scope '{other}' is not profile or virtual_key"
                ));
            }
        };
        if raw.target.is_empty() {
            return Err(format!("{what}: needs a target"));
        }
        if raw.requests_per_minute.is_none() && raw.tokens_per_minute.is_none() {
            return Err(format!(
                "{what}: set requests_per_minute, tokens_per_minute or both"
            ));
        }
        if raw.requests_per_minute == Some(0) || raw.tokens_per_minute == Some(0) {
            return Err(format!(
                "{what}: a rate of 0 would refuse everything; delete the limit or disable the profile instead"
            ));
        }
        Ok(Self {
            id: raw.id.clone(),
            name: raw.name.clone(),
            by_key,
            target: raw.target.clone(),
            requests_per_minute: raw.requests_per_minute,
            tokens_per_minute: raw.tokens_per_minute,
        })
    }

    fn applies(&self, who: &Requester<'_>) -> bool {
        if self.by_key {
            who.key_id == Some(self.target.as_str())
        } else {
            who.profile == self.target
        }
    }
}

pub(crate) type Shared = Arc<Mutex<TokenBucket>>;

/// One rate limit's buckets on this proxy, and the demand it saw since it last renewed
/// its share of the limit (behind a control plane).
#[derive(Debug, Default)]
pub(crate) struct RateState {
    /// The limit's rates the buckets were made for (a changed limit starts afresh).
    configured: (Option<u64>, Option<u64>),
    pub(crate) requests: Option<Shared>,
    pub(crate) tokens: Option<Shared>,
    /// Requests and tokens asked for (admitted or not) since the last renewal.
    pub(crate) asked: (u64, u64),
}

/// The buckets of every rate limit, by limit id.
#[derive(Debug, Default)]
pub struct RateBook {
    pub(crate) states: Mutex<HashMap<String, RateState>>,
}

/// A limit's state, made (or made afresh, when the limit's rates changed) as needed.
pub(crate) fn state_for<'a>(
    all: &'a mut HashMap<String, RateState>,
    limit: &RateLimit,
    now: i64,
) -> &'a mut RateState {
    let st = all.entry(limit.id.clone()).or_default();
    let configured = (limit.requests_per_minute, limit.tokens_per_minute);
    if st.configured != configured {
        let fresh =
            |rate: Option<u64>| rate.map(|r| Arc::new(Mutex::new(TokenBucket::new(r, now))));
        st.configured = configured;
        st.requests = fresh(configured.0);
        st.tokens = fresh(configured.1);
    }
    st
}

/// One rate of a limit on this proxy: the limit, the unit (`requests` or `tokens`), the
/// configured rate and this proxy's share of it, per minute.
pub type RateStanding<'a> = (&'a RateLimit, &'static str, u64, u64);

impl RateBook {
    /// Each limit's rates and this proxy's current share of each (the whole rate unless a
    /// control plane shares it among replicas), for the metrics.
    pub fn standings<'a>(&self, limits: &'a [RateLimit]) -> Vec<RateStanding<'a>> {
        let now = now_ms();
        let mut all = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for limit in limits {
            let st = state_for(&mut all, limit, now);
            let share = |b: &Option<Shared>, rate: u64| {
                b.as_ref()
                    .and_then(|b| b.lock().ok().map(|b| b.per_minute()))
                    .unwrap_or(rate)
            };
            if let Some(rate) = limit.requests_per_minute {
                out.push((limit, "requests", rate, share(&st.requests, rate)));
            }
            if let Some(rate) = limit.tokens_per_minute {
                out.push((limit, "tokens", rate, share(&st.tokens, rate)));
            }
        }
        out
    }

    /// Takes a request and `tokens` from every rate limit `who` falls under, or nothing.
    /// The token takes are returned as holds to settle.
    pub fn admit(
        &self,
        limits: &[RateLimit],
        who: &Requester<'_>,
        tokens: u64,
    ) -> Result<Vec<Hold>, SluiceError> {
        let now = now_ms();
        let mut holds = Vec::new();
        let mut requests_taken: Vec<Shared> = Vec::new();
        let refuse = |limit: &RateLimit, what: &str, rate: u64, wait: Option<u64>| {
            SluiceError::RateLimitExceeded {
                limit: limit.name.clone(),
                what: format!("{rate} {what} a minute"),
                retry_after_secs: wait.map_or(60, |ms| ms.div_ceil(1000).max(1)),
            }
        };
        let undo = |holds: Vec<Hold>, requests: &[Shared]| {
            crate::spend::settle(holds, Default::default());
            for b in requests {
                if let Ok(mut b) = b.lock() {
                    b.settle(now, 1, 0);
                }
            }
        };
        for limit in limits.iter().filter(|l| l.applies(who)) {
            let (rq, tk) = {
                let mut all = self.states.lock().unwrap_or_else(|p| p.into_inner());
                let st = state_for(&mut all, limit, now);
                st.asked.0 = st.asked.0.saturating_add(1);
                st.asked.1 = st.asked.1.saturating_add(tokens);
                (st.requests.clone(), st.tokens.clone())
            };
            if let Some(b) = rq {
                let taken = b.lock().map_err(|_| SluiceError::Internal)?.take(now, 1);
                if let Err(wait) = taken {
                    undo(holds, &requests_taken);
                    return Err(refuse(
                        limit,
                        "requests",
                        limit.requests_per_minute.unwrap_or(0),
                        wait,
                    ));
                }
                requests_taken.push(b);
            }
            if let Some(b) = tk {
                let taken = b
                    .lock()
                    .map_err(|_| SluiceError::Internal)?
                    .take(now, tokens);
                if let Err(wait) = taken {
                    undo(holds, &requests_taken);
                    return Err(refuse(
                        limit,
                        "tokens",
                        limit.tokens_per_minute.unwrap_or(0),
                        wait,
                    ));
                }
                holds.push(Hold::Bucket {
                    bucket: b,
                    taken: tokens,
                });
            }
        }
        Ok(holds)
    }
}
