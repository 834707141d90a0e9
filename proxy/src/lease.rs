//! Spend limits shared by several proxies. The control plane keeps the authoritative spend
//! of each limit (from the usage journals) and grants each proxy process a **lease**: a
//! ceiling on what that process may spend in the limit's current window. The proxy admits
//! against its own count and its lease alone — the request path never waits on the
//! network — and renews its leases in the background (every third of their life, and at
//! once when a request wanted more than its lease had left).
//!
//! Two rules keep the sum of what proxies spend within the limit:
//! - the control plane never grants more than the cap minus what every other holder may
//!   still spend (their live leases, or what their journals showed once a lease lapsed);
//! - a proxy lowers its own ceiling *before* it asks for less, and never admits past a
//!   lease its own clock says has lapsed (it counts the life from when it asked, so it
//!   lapses here before it lapses at the control plane).
//!
//! So the overspend is bounded by what reservations under-estimate, plus the leases of
//! processes that died with usage not yet shipped (docs/cost.md).

use std::time::{Duration, Instant};

use crate::spend::{SpendLimit, now_ms};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_policies::limits::Amount;

/// Cost and tokens on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WireAmount {
    /// Millionths of a dollar.
    pub cost_micros: u64,
    /// Tokens.
    pub tokens: u64,
}

impl From<Amount> for WireAmount {
    fn from(a: Amount) -> Self {
        Self {
            cost_micros: a.micros,
            tokens: a.tokens,
        }
    }
}

impl From<WireAmount> for Amount {
    fn from(a: WireAmount) -> Self {
        Self {
            micros: a.cost_micros,
            tokens: a.tokens,
        }
    }
}

/// `POST /api/v1/proxy/leases`: one proxy process asks for its shares.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// The proxy's stable id.
    pub proxy_id: String,
    /// This process (a restarted proxy is a new holder; its old leases lapse).
    pub holder: String,
    /// One per limit and window.
    pub leases: Vec<LeaseAsk>,
    /// One per rate limit: the demand this process saw since it last asked.
    #[serde(default)]
    pub rates: Vec<RateAsk>,
}

/// A rate limit's demand on one process since its last renewal.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateAsk {
    /// The rate limit.
    pub limit_id: String,
    /// Requests asked for (admitted or not).
    pub requests: u64,
    /// Tokens asked for (estimated at admission).
    pub tokens: u64,
}

/// A process's share of a rate limit: its buckets refill at these rates.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateGrant {
    /// The rate limit.
    pub limit_id: String,
    /// Requests a minute for this process.
    pub requests_per_minute: Option<u64>,
    /// Tokens a minute for this process.
    pub tokens_per_minute: Option<u64>,
}

/// A share asked for.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseAsk {
    /// The limit.
    pub limit_id: String,
    /// Its window's key (`rolling:3600`, `day@Europe/Berlin`): a proxy on an older
    /// snapshot is not granted a share of a window that changed.
    pub window: String,
    /// The calendar period's start (ms since the epoch); 0 for a rolling window.
    pub window_start: i64,
    /// What this process has spent in the window, plus what its requests in flight hold.
    pub used: WireAmount,
    /// The ceiling it would like.
    pub want: WireAmount,
    /// The least room above `used` worth holding (its largest recent request): a smaller
    /// share admits nothing and would only keep the room from other holders.
    #[serde(default)]
    pub need: WireAmount,
    /// The ceiling this process keeps until the answer arrives (what it may admit
    /// meanwhile); zero without a live lease. A grant is never below it.
    #[serde(default)]
    pub holding: WireAmount,
}

/// The control plane's answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseAnswer {
    /// How long the grants hold from when they were asked for, ms.
    pub ttl_ms: u64,
    /// One per ask the control plane knows (a limit it no longer has is left out).
    pub leases: Vec<LeaseGrant>,
    /// One per rate limit asked about that the control plane knows.
    #[serde(default)]
    pub rates: Vec<RateGrant>,
}

/// A share granted.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseGrant {
    /// The limit.
    pub limit_id: String,
    /// The period, as asked.
    pub window_start: i64,
    /// This process's ceiling in the window.
    pub ceiling: WireAmount,
    /// Spent in the window by every proxy, as far as the control plane knows (for the 402
    /// message).
    pub used_total: WireAmount,
    /// What the other holders may spend in the window (spent, or leased to them): when
    /// that leaves no room, a request refused by its lease is refused by the limit.
    pub others_committed: WireAmount,
}

/// A limit's leases and demand, kept beside its ledger under the same lock.
#[derive(Debug, Default)]
pub struct LeaseState {
    grants: Vec<Held>,
    /// What admissions asked for since the last renewal.
    asked: Amount,
    /// The largest single estimate lately (what the next request will probably need).
    peak: Amount,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    window_start: i64,
    ceiling: Amount,
    until: Instant,
    used_total: Amount,
    others_committed: Amount,
}

impl LeaseState {
    /// The ceiling for `window_start` while its lease holds.
    pub fn ceiling(&self, window_start: i64, now: Instant) -> Option<Amount> {
        self.live(window_start, now).map(|h| h.ceiling)
    }

    /// What every proxy spent in the window, and what the other holders may spend, as of
    /// the last grant.
    pub fn totals(&self, window_start: i64, now: Instant) -> Option<(Amount, Amount)> {
        self.live(window_start, now)
            .map(|h| (h.used_total, h.others_committed))
    }

    fn live(&self, window_start: i64, now: Instant) -> Option<&Held> {
        self.grants
            .iter()
            .find(|h| h.window_start == window_start && h.until > now)
    }

    /// Counts an admission's estimate as demand.
    pub fn asked(&mut self, estimate: Amount) {
        self.asked.add(estimate);
        self.peak.micros = self.peak.micros.max(estimate.micros);
        self.peak.tokens = self.peak.tokens.max(estimate.tokens);
    }

    /// The ceiling to ask for — what is used plus twice the demand since the last renewal,
    /// and at least room for the largest recent request — and the least room worth
    /// holding. Lowers the current ceiling to what it asks for first when that is less (so
    /// a smaller grant cannot be overtaken by admissions made while the answer travels),
    /// and gives up a share too small for the largest recent request (so small shares
    /// spread over several proxies cannot together keep every request out).
    pub fn want(&mut self, window_start: i64, used: Amount, now: Instant) -> Want {
        let mut want = used;
        want.add(Amount {
            micros: self.asked.micros.saturating_mul(2).max(self.peak.micros),
            tokens: self.asked.tokens.saturating_mul(2).max(self.peak.tokens),
        });
        let need = self.peak;
        let mut holding = Amount::default();
        // Demand fades: half of the peak is forgotten at each renewal.
        self.asked = Amount::default();
        self.peak = Amount {
            micros: self.peak.micros / 2,
            tokens: self.peak.tokens / 2,
        };
        for h in &mut self.grants {
            if h.window_start == window_start && h.until > now {
                h.ceiling.micros = h.ceiling.micros.min(want.micros);
                h.ceiling.tokens = h.ceiling.tokens.min(want.tokens);
                let mut room = h.ceiling;
                room.sub(used);
                if room.micros < need.micros || room.tokens < need.tokens {
                    h.ceiling = used;
                }
                holding = h.ceiling;
            }
        }
        Want {
            want,
            need,
            holding,
        }
    }

    /// Takes a grant asked for at `asked_at`, for `ttl`.
    pub fn grant(&mut self, g: &LeaseGrant, asked_at: Instant, ttl: Duration) {
        let now = Instant::now();
        self.grants
            .retain(|h| h.until > now && h.window_start != g.window_start);
        self.grants.push(Held {
            window_start: g.window_start,
            ceiling: g.ceiling.into(),
            until: asked_at + ttl,
            used_total: g.used_total.into(),
            others_committed: g.others_committed.into(),
        });
    }
}

impl crate::rate::RateBook {
    /// Each rate limit's demand since the last call (and resets it).
    pub fn rate_asks(&self, limits: &[crate::rate::RateLimit]) -> Vec<RateAsk> {
        let now = now_ms();
        let mut all = self.states.lock().unwrap_or_else(|p| p.into_inner());
        limits
            .iter()
            .map(|l| {
                let st = crate::rate::state_for(&mut all, l, now);
                let asked = std::mem::take(&mut st.asked);
                RateAsk {
                    limit_id: l.id.clone(),
                    requests: asked.0,
                    tokens: asked.1,
                }
            })
            .collect()
    }

    /// Sets each bucket to this process's share of its rate.
    pub fn take_rate_grants(&self, grants: &[RateGrant]) {
        let now = now_ms();
        let all = self.states.lock().unwrap_or_else(|p| p.into_inner());
        for g in grants {
            let Some(st) = all.get(&g.limit_id) else {
                continue;
            };
            for (bucket, rate) in [
                (&st.requests, g.requests_per_minute),
                (&st.tokens, g.tokens_per_minute),
            ] {
                if let (Some(b), Some(r)) = (bucket, rate)
                    && let Ok(mut b) = b.lock()
                {
                    b.set_rate(now, r.max(1));
                }
            }
        }
    }
}

/// What a renewal asks for (see [`LeaseState::want`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// The ceiling wanted.
    pub want: Amount,
    /// The least room worth holding.
    pub need: Amount,
    /// The ceiling kept until the answer.
    pub holding: Amount,
}

impl crate::spend::SpendBook {
    /// What to ask the control plane for: each limit's current window (and the next
    /// calendar period when it starts within `lookahead`), with what this process used and
    /// would like.
    pub fn lease_asks(&self, limits: &[SpendLimit], lookahead: Duration) -> Vec<LeaseAsk> {
        let (now, instant) = (now_ms(), Instant::now());
        let mut asks = Vec::with_capacity(limits.len());
        for limit in limits {
            let state = self.state(limit);
            let Ok(mut st) = state.lock() else { continue };
            let start = limit.window_start(now);
            let used = st.ledger.used(now);
            let w = st.lease.want(start, used, instant);
            let key = limit.window.key();
            asks.push(LeaseAsk {
                limit_id: limit.id.clone(),
                window: key.clone(),
                window_start: start,
                used: used.into(),
                want: w.want.into(),
                need: w.need.into(),
                holding: w.holding.into(),
            });
            let soon = now.saturating_add(i64::try_from(lookahead.as_millis()).unwrap_or(0));
            if let Some((_, end)) = limit.window.period(now)
                && end <= soon
            {
                // The next period's share is in hand before midnight.
                let mut next = w.want;
                next.sub(used);
                asks.push(LeaseAsk {
                    limit_id: limit.id.clone(),
                    window: key,
                    window_start: end,
                    used: Amount::default().into(),
                    want: next.into(),
                    need: w.need.into(),
                    holding: Amount::default().into(),
                });
            }
        }
        asks
    }

    /// Takes the control plane's grants, asked for at `asked_at`.
    pub fn take_grants(&self, answer: &LeaseAnswer, asked_at: Instant) {
        let ttl = Duration::from_millis(answer.ttl_ms);
        self.answered();
        let all = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        for g in &answer.leases {
            if let Some(state) = all.get(&g.limit_id)
                && let Ok(mut st) = state.lock()
            {
                st.lease.grant(g, asked_at, ttl);
            }
        }
    }
}

/// When to renew: a third of a lease's life after asking.
pub fn renew_after(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amt(micros: u64) -> Amount {
        Amount { micros, tokens: 0 }
    }

    fn grant(ceiling: u64) -> LeaseGrant {
        LeaseGrant {
            limit_id: "l".into(),
            window_start: 0,
            ceiling: amt(ceiling).into(),
            used_total: amt(0).into(),
            others_committed: amt(0).into(),
        }
    }

    #[test]
    fn a_lease_lapses_a_ttl_after_it_was_asked_for() {
        let mut s = LeaseState::default();
        let asked = Instant::now();
        s.grant(&grant(500), asked, Duration::from_secs(6));
        assert_eq!(s.ceiling(0, asked), Some(amt(500)));
        assert_eq!(s.ceiling(1, asked), None, "another period has no lease");
        assert_eq!(s.ceiling(0, asked + Duration::from_secs(6)), None);
    }

    #[test]
    fn asking_for_less_lowers_the_ceiling_before_the_answer() {
        let mut s = LeaseState::default();
        let now = Instant::now();
        s.grant(&grant(1000), now, Duration::from_secs(6));
        s.asked(amt(100));
        // Used 300, asked 100 since: wants 300 + 200, and holds at most that meanwhile.
        let w = s.want(0, amt(300), now);
        assert_eq!((w.want, w.need, w.holding), (amt(500), amt(100), amt(500)));
        assert_eq!(s.ceiling(0, now), Some(amt(500)));
        // Idle: room for half the largest recent request stays.
        assert_eq!(s.want(0, amt(300), now).want, amt(350));
    }

    #[test]
    fn a_share_too_small_for_the_largest_request_is_given_up() {
        let mut s = LeaseState::default();
        let now = Instant::now();
        s.grant(&grant(450), now, Duration::from_secs(6));
        s.asked(amt(400));
        // 300 used: 150 left, less than the 400 a request needs.
        let w = s.want(0, amt(300), now);
        assert_eq!((w.want, w.need), (amt(1100), amt(400)));
        assert_eq!(w.holding, amt(300), "held back to what is used");
        assert_eq!(s.ceiling(0, now), Some(amt(300)));
    }
}
