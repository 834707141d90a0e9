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
    id: String,
    name: String,
    by_key: bool,
    target: String,
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
}

impl RateLimit {
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

type Shared = Arc<Mutex<TokenBucket>>;

/// A limit's two buckets: requests, tokens.
type Buckets = (Option<Shared>, Option<Shared>);

/// The buckets of every rate limit, by limit id: (requests, tokens).
#[derive(Debug, Default)]
pub struct RateBook {
    buckets: Mutex<HashMap<String, Buckets>>,
}

fn bucket(slot: &mut Option<Shared>, per_minute: Option<u64>, now: i64) -> Option<Shared> {
    match per_minute {
        None => {
            *slot = None;
            None
        }
        Some(rate) => {
            let same = slot
                .as_ref()
                .and_then(|b| b.lock().ok().map(|b| b.per_minute() == rate))
                .unwrap_or(false);
            if !same {
                *slot = Some(Arc::new(Mutex::new(TokenBucket::new(rate, now))));
            }
            slot.clone()
        }
    }
}

impl RateBook {
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
                let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
                let slots = all.entry(limit.id.clone()).or_default();
                (
                    bucket(&mut slots.0, limit.requests_per_minute, now),
                    bucket(&mut slots.1, limit.tokens_per_minute, now),
                )
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
