//! Spend limits across replicas: the authoritative spend of each limit (added up from the
//! proxies' journals at ingestion, per lease holder and bucket) and the leases granted
//! against it. A holder is one proxy process; its lease is a ceiling on what it may spend
//! in the limit's window. The grant never lets the holders' commitments pass the cap:
//!
//! - a holder whose lease is live commits the larger of its ceiling, what it reported
//!   using and what its journal showed;
//! - a holder whose lease lapsed commits what its journal showed.
//!
//! So what can pass the cap is what reservations under-estimated, plus what a process
//! that died had spent and not yet shipped (at most its lease): docs/cost.md.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::Serialize;
use sluice_policies::limits::{Amount, Window};
use sluice_proxy::journal::UsageRecord;
use sluice_proxy::lease::{
    LeaseAnswer, LeaseAsk, LeaseGrant, LeaseRequest, RateAsk, RateGrant, WireAmount,
};
use sqlx::Row;

use crate::auth::Principal;
use crate::documents::LimitBody;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::store::{Engine, now_ms};
use crate::usage::i;

/// How long a lease holds (`SLUICE_LEASE_TTL_MS`, default 6 s; proxies renew every third).
pub const DEFAULT_LEASE_TTL_MS: u64 = 6_000;

/// Grants are made one at a time (the database lock makes it so across control-plane
/// replicas on PostgreSQL; this one within the process, where SQLite has no such lock).
#[derive(Debug)]
pub struct LeaseDesk {
    ttl_ms: u64,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl LeaseDesk {
    /// Leases that hold `ttl_ms`.
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            ttl_ms: ttl_ms.clamp(500, 600_000),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }
}

/// A limit as the ledger needs it.
struct Terms {
    window: Window,
    cap: Amount,
}

fn terms(body: &LimitBody) -> Option<Terms> {
    let window = Window::parse(body.window.as_str(), body.time_zone.as_deref()).ok()?;
    let micros = body
        .max_cost_usd
        .filter(|c| c.is_finite() && *c >= 0.0)
        .map_or(u64::MAX, |usd| (usd * 1e6).round() as u64);
    let tokens = body.max_tokens.map_or(u64::MAX, u64::from);
    Some(Terms {
        window,
        cap: Amount { micros, tokens },
    })
}

async fn all_terms(state: &AppState) -> Result<HashMap<String, Terms>, ApiError> {
    Ok(crate::documents::all_of::<LimitBody>(&state.db)
        .await?
        .into_iter()
        .filter_map(|(id, body)| terms(&body).map(|t| (id, t)))
        .collect())
}

/// At ingestion: the spend of a batch's new records, summed per (limit, window, holder,
/// bucket), so that the batch costs one upsert per sum rather than one per record and
/// limit; written in key order, so that racing batches take their row locks in one order.
#[derive(Default)]
pub(crate) struct Tally<'a> {
    sums: std::collections::BTreeMap<(&'a str, &'a str, &'a str, i64), (i64, i64)>,
}

impl<'a> Tally<'a> {
    /// Adds a record's cost to the limits it was counted in (once per record: the caller
    /// adds only records whose row was new).
    pub(crate) fn add(
        &mut self,
        limits: &'a HashMap<String, (String, Window)>,
        proxy_id: &'a str,
        r: &'a UsageRecord,
    ) {
        let cost = r.cost_micros.unwrap_or(0).max(0);
        let tokens = i(r
            .input_tokens
            .saturating_add(r.output_tokens)
            .saturating_add(r.cache_read_tokens)
            .saturating_add(r.cache_write_tokens));
        let holder = r.holder.as_deref().unwrap_or(proxy_id);
        for id in &r.limits {
            let Some((id, (key, window))) = limits.get_key_value(id) else {
                continue;
            };
            let bucket = window.bucket_start(r.ts_ms);
            let sum = self
                .sums
                .entry((id.as_str(), key.as_str(), holder, bucket))
                .or_default();
            sum.0 = sum.0.saturating_add(cost);
            sum.1 = sum.1.saturating_add(tokens);
        }
    }

    /// Adds the sums to `limit_usage`.
    pub(crate) async fn write(
        self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<(), ApiError> {
        for ((id, key, holder, bucket), (cost, tokens)) in self.sums {
            sqlx::query(
                "INSERT INTO limit_usage (limit_id, window_key, holder, bucket_start, cost_micros, tokens) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (limit_id, window_key, holder, bucket_start) DO UPDATE SET \
                 cost_micros = limit_usage.cost_micros + excluded.cost_micros, \
                 tokens = limit_usage.tokens + excluded.tokens",
            )
            .bind(id)
            .bind(key)
            .bind(holder)
            .bind(bucket)
            .bind(cost)
            .bind(tokens)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// The limits' windows, for [`Tally`].
pub(crate) async fn windows(
    state: &AppState,
) -> Result<HashMap<String, (String, Window)>, ApiError> {
    Ok(all_terms(state)
        .await?
        .into_iter()
        .map(|(id, t)| (id, (t.window.key(), t.window)))
        .collect())
}

fn amount(micros: i64, tokens: i64) -> Amount {
    Amount {
        micros: u64::try_from(micros).unwrap_or(0),
        tokens: u64::try_from(tokens).unwrap_or(0),
    }
}

fn max(a: Amount, b: Amount) -> Amount {
    Amount {
        micros: a.micros.max(b.micros),
        tokens: a.tokens.max(b.tokens),
    }
}

fn min(a: Amount, b: Amount) -> Amount {
    Amount {
        micros: a.micros.min(b.micros),
        tokens: a.tokens.min(b.tokens),
    }
}

/// One holder's standing in a window.
#[derive(Debug, Default, Clone, Copy)]
struct Holding {
    /// From its journal.
    shipped: Amount,
    /// Its lease, while live: ceiling and what it reported using.
    lease: Option<(Amount, Amount)>,
}

impl Holding {
    fn committed(&self) -> Amount {
        match self.lease {
            Some((ceiling, used)) => max(max(ceiling, used), self.shipped),
            None => self.shipped,
        }
    }
    fn used(&self) -> Amount {
        match self.lease {
            Some((_, used)) => max(used, self.shipped),
            None => self.shipped,
        }
    }
}

/// Every holder's standing in one limit's window at `now`.
async fn holdings(
    conn: &mut sqlx::AnyConnection,
    limit_id: &str,
    t: &Terms,
    window_start: i64,
    now: i64,
) -> Result<HashMap<String, Holding>, ApiError> {
    let key = t.window.key();
    let mut out: HashMap<String, Holding> = HashMap::new();
    let rows = match t.window {
        Window::Calendar { .. } => {
            sqlx::query(
                "SELECT holder, bucket_start, cost_micros, tokens FROM limit_usage \
                 WHERE limit_id = $1 AND window_key = $2 AND bucket_start = $3",
            )
            .bind(limit_id)
            .bind(&key)
            .bind(window_start)
            .fetch_all(&mut *conn)
            .await?
        }
        Window::Rolling { secs } => {
            let len = i64::try_from(secs * 1000).unwrap_or(i64::MAX);
            // Buckets that started before this cannot count any more.
            let from = now.saturating_sub(len).saturating_sub(len / 60);
            let rows = sqlx::query(
                "SELECT holder, bucket_start, cost_micros, tokens FROM limit_usage \
                 WHERE limit_id = $1 AND window_key = $2 AND bucket_start >= $3",
            )
            .bind(limit_id)
            .bind(&key)
            .bind(from)
            .fetch_all(&mut *conn)
            .await?;
            rows.into_iter()
                .filter(|r| {
                    r.try_get::<i64, _>("bucket_start")
                        .is_ok_and(|s| t.window.counts(s, now))
                })
                .collect()
        }
    };
    for r in rows {
        let h = out.entry(r.try_get("holder")?).or_default();
        h.shipped
            .add(amount(r.try_get("cost_micros")?, r.try_get("tokens")?));
    }
    for r in sqlx::query(
        "SELECT holder, ceiling_micros, ceiling_tokens, used_micros, used_tokens FROM limit_leases \
         WHERE limit_id = $1 AND window_key = $2 AND window_start = $3 AND expires_at > $4",
    )
    .bind(limit_id)
    .bind(&key)
    .bind(window_start)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?
    {
        let h = out.entry(r.try_get("holder")?).or_default();
        h.lease = Some((
            amount(r.try_get("ceiling_micros")?, r.try_get("ceiling_tokens")?),
            amount(r.try_get("used_micros")?, r.try_get("used_tokens")?),
        ));
    }
    Ok(out)
}

/// What one holder gets: what it asked for, or at least its part of the room nobody holds
/// (half of it, shared among the live holders), never more than the others leave; and
/// while its lease is live, never less than what it may already have admitted.
fn decide(
    t: &Terms,
    all: &HashMap<String, Holding>,
    holder: &str,
    ask: &LeaseAsk,
) -> (Amount, Amount, Amount) {
    let mine = all.get(holder).copied().unwrap_or_default();
    let mut others = Amount::default();
    let mut used_total = Amount::default();
    let mut live = 1u64;
    for (h, holding) in all {
        if h != holder {
            others.add(holding.committed());
            used_total.add(holding.used());
            live += u64::from(holding.lease.is_some());
        }
    }
    let used = max(ask.used.into(), mine.shipped);
    used_total.add(used);
    let mut room = t.cap;
    room.sub(others);
    let mut free = room;
    free.sub(used);
    let mut fair = used;
    fair.add(Amount {
        micros: free.micros / (2 * live),
        tokens: free.tokens / (2 * live),
    });
    let mut ceiling = min(max(ask.want.into(), fair), room);
    // Room for less than the holder's next request admits nothing: leave it to others.
    let need: Amount = ask.need.into();
    let mut extra = ceiling;
    extra.sub(used);
    if extra.micros < need.micros || extra.tokens < need.tokens {
        ceiling = used;
    }
    if let Some((previous, _)) = mine.lease {
        // What it kept while asking, it may have admitted already.
        ceiling = max(ceiling, min(previous, ask.holding.into()));
    }
    (ceiling, used_total, others)
}

/// `POST /proxy/leases`
pub async fn grant(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LeaseRequest>,
) -> Result<Json<LeaseAnswer>, ApiError> {
    for (what, v) in [("proxy_id", &req.proxy_id), ("holder", &req.holder)] {
        if v.is_empty() || v.len() > 128 {
            return Err(ApiError::Unprocessable(format!(
                "{what} must be 1-128 characters"
            )));
        }
    }
    if req.leases.len() > 10_000 {
        return Err(ApiError::Unprocessable(
            "at most 10000 leases per request".into(),
        ));
    }
    let all = all_terms(&state).await?;
    let ttl = state.leases.ttl_ms;
    let _one = state.leases.one_at_a_time.lock().await;
    let mut tx = state.db.pool.begin().await?;
    if state.db.engine == Engine::Postgres {
        // Control-plane replicas grant one at a time too.
        sqlx::query("SELECT pg_advisory_xact_lock(7420911)")
            .execute(&mut *tx)
            .await?;
    }
    let now = now_ms();
    let mut leases = Vec::with_capacity(req.leases.len());
    for ask in &req.leases {
        let Some(t) = all.get(&ask.limit_id) else {
            continue;
        };
        if t.window.key() != ask.window {
            // The proxy's snapshot is older than the limit: no share until it catches up.
            continue;
        }
        let holdings = holdings(&mut tx, &ask.limit_id, t, ask.window_start, now).await?;
        let (ceiling, used_total, others) = decide(t, &holdings, &req.holder, ask);
        let used: Amount = ask.used.into();
        sqlx::query(
            "INSERT INTO limit_leases (limit_id, window_key, window_start, holder, proxy_id, \
             ceiling_micros, ceiling_tokens, used_micros, used_tokens, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (limit_id, window_key, window_start, holder) DO UPDATE SET \
             ceiling_micros = excluded.ceiling_micros, ceiling_tokens = excluded.ceiling_tokens, \
             used_micros = excluded.used_micros, used_tokens = excluded.used_tokens, \
             expires_at = excluded.expires_at",
        )
        .bind(&ask.limit_id)
        .bind(&ask.window)
        .bind(ask.window_start)
        .bind(&req.holder)
        .bind(&req.proxy_id)
        .bind(i(ceiling.micros))
        .bind(i(ceiling.tokens))
        .bind(i(used.micros))
        .bind(i(used.tokens))
        .bind(now.saturating_add(i(ttl)))
        .execute(&mut *tx)
        .await?;
        leases.push(LeaseGrant {
            limit_id: ask.limit_id.clone(),
            window_start: ask.window_start,
            ceiling: ceiling.into(),
            used_total: used_total.into(),
            others_committed: others.into(),
        });
    }
    let rates = if req.rates.is_empty() {
        Vec::new()
    } else {
        share_rates(&state, &mut tx, &req.holder, &req.rates, now, ttl).await?
    };
    // Leases an hour past their end tell nothing any more.
    sqlx::query("DELETE FROM limit_leases WHERE expires_at < $1")
        .bind(now - 3_600_000)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    state.metrics.lease_grants.inc_by(leases.len() as u64);
    Ok(Json(LeaseAnswer {
        ttl_ms: ttl,
        leases,
        rates,
    }))
}

/// A holder's target share of a rate shared by `n` live holders whose demands sum to
/// `total`: half the rate split evenly (room for whoever is idle), half by demand. The
/// targets sum to the rate; a grant is the target within what the others hold.
fn share(rate: u64, n: u64, mine: u64, total: u64) -> u64 {
    let n = u128::from(n.max(1));
    let rate = u128::from(rate);
    let s = if total == 0 {
        rate / n
    } else {
        let (mine, total) = (u128::from(mine), u128::from(total));
        rate * (total + n * mine) / (2 * n * total)
    };
    u64::try_from(s).unwrap_or(u64::MAX).max(1)
}

/// Records each rate limit's demand from this holder and answers with its shares.
async fn share_rates(
    state: &AppState,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    holder: &str,
    asks: &[RateAsk],
    now: i64,
    ttl: u64,
) -> Result<Vec<RateGrant>, ApiError> {
    let limits: HashMap<String, crate::documents::RateLimitBody> =
        crate::documents::all_of(&state.db)
            .await?
            .into_iter()
            .collect();
    let mut out = Vec::with_capacity(asks.len());
    for ask in asks {
        let Some(limit) = limits.get(&ask.limit_id) else {
            continue;
        };
        // The other live holders: their demand and what they hold.
        let (mut n, mut requests, mut tokens) = (1u64, ask.requests, ask.tokens);
        let (mut held_requests, mut held_tokens) = (0u64, 0u64);
        for r in sqlx::query(
            "SELECT demand_requests, demand_tokens, granted_requests, granted_tokens FROM rate_shares \
             WHERE limit_id = $1 AND expires_at > $2 AND holder <> $3",
        )
        .bind(&ask.limit_id)
        .bind(now)
        .bind(holder)
        .fetch_all(&mut **tx)
        .await?
        {
            let get = |c: &str| r.try_get::<i64, _>(c).map(|v| u64::try_from(v).unwrap_or(0));
            n += 1;
            requests = requests.saturating_add(get("demand_requests")?);
            tokens = tokens.saturating_add(get("demand_tokens")?);
            held_requests = held_requests.saturating_add(get("granted_requests")?);
            held_tokens = held_tokens.saturating_add(get("granted_tokens")?);
        }
        // Its part, within what the others hold now (they give back at their renewals).
        let grant = |rate: Option<u32>, mine: u64, total: u64, held: u64| {
            rate.map(|r| {
                let r = u64::from(r);
                share(r, n, mine, total).min(r.saturating_sub(held)).max(1)
            })
        };
        let g = RateGrant {
            limit_id: ask.limit_id.clone(),
            requests_per_minute: grant(
                limit.requests_per_minute,
                ask.requests,
                requests,
                held_requests,
            ),
            tokens_per_minute: grant(limit.tokens_per_minute, ask.tokens, tokens, held_tokens),
        };
        sqlx::query(
            "INSERT INTO rate_shares (limit_id, holder, demand_requests, demand_tokens, \
             granted_requests, granted_tokens, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (limit_id, holder) DO UPDATE SET \
             demand_requests = excluded.demand_requests, demand_tokens = excluded.demand_tokens, \
             granted_requests = excluded.granted_requests, granted_tokens = excluded.granted_tokens, \
             expires_at = excluded.expires_at",
        )
        .bind(&ask.limit_id)
        .bind(holder)
        .bind(i(ask.requests))
        .bind(i(ask.tokens))
        .bind(i(g.requests_per_minute.unwrap_or(0)))
        .bind(i(g.tokens_per_minute.unwrap_or(0)))
        .bind(now.saturating_add(i(ttl)))
        .execute(&mut **tx)
        .await?;
        out.push(g);
    }
    sqlx::query("DELETE FROM rate_shares WHERE expires_at < $1")
        .bind(now - 3_600_000)
        .execute(&mut **tx)
        .await?;
    Ok(out)
}

/// A limit's current window as the control plane counts it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LimitStanding {
    /// The limit.
    pub limit_id: String,
    /// The window's key.
    pub window: String,
    /// The calendar period's start (ms since the epoch); 0 for a rolling window.
    pub window_start: i64,
    /// The caps (absent: not capped).
    pub max: Caps,
    /// Spent in the window, from the proxies' journals: the authoritative figure.
    pub spent: WireAmount,
    /// What every holder may spend (spent, or leased while its lease is live): never more
    /// than the caps, but for under-estimated reservations.
    pub committed: WireAmount,
    /// Proxy processes holding a live lease.
    pub live_holders: u64,
}

/// A limit's caps.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Caps {
    /// Millionths of a dollar.
    pub cost_micros: Option<u64>,
    /// Tokens.
    pub tokens: Option<u64>,
}

/// `GET /limits/{id}/standing`
pub async fn standing(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<LimitStanding>, ApiError> {
    let doc = crate::documents::load::<LimitBody>(&state, &p, &id).await?;
    let t = terms(&doc.body)
        .ok_or_else(|| ApiError::Internal("the stored limit has no valid window".into()))?;
    let now = now_ms();
    let window_start = t.window.period(now).map_or(0, |p| p.0);
    let mut conn = state.db.pool.acquire().await?;
    let all = holdings(&mut conn, &id, &t, window_start, now).await?;
    let (mut spent, mut committed) = (Amount::default(), Amount::default());
    for h in all.values() {
        spent.add(h.shipped);
        committed.add(h.committed());
    }
    let cap = |v: u64| (v != u64::MAX).then_some(v);
    Ok(Json(LimitStanding {
        limit_id: id,
        window: t.window.key(),
        window_start,
        max: Caps {
            cost_micros: cap(t.cap.micros),
            tokens: cap(t.cap.tokens),
        },
        spent: spent.into(),
        committed: committed.into(),
        live_holders: all.values().filter(|h| h.lease.is_some()).count() as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(micros: u64) -> Terms {
        Terms {
            window: Window::parse("day", None).expect("window"),
            cap: Amount {
                micros,
                tokens: u64::MAX,
            },
        }
    }

    fn ask(used: u64, want: u64, holding: u64) -> LeaseAsk {
        LeaseAsk {
            limit_id: "l".into(),
            window: "day@UTC".into(),
            window_start: 0,
            used: Amount {
                micros: used,
                tokens: 0,
            }
            .into(),
            want: Amount {
                micros: want,
                tokens: 0,
            }
            .into(),
            need: Amount::default().into(),
            holding: Amount {
                micros: holding,
                tokens: 0,
            }
            .into(),
        }
    }

    fn live(ceiling: u64, used: u64, shipped: u64) -> Holding {
        Holding {
            shipped: Amount {
                micros: shipped,
                tokens: 0,
            },
            lease: Some((
                Amount {
                    micros: ceiling,
                    tokens: 0,
                },
                Amount {
                    micros: used,
                    tokens: 0,
                },
            )),
        }
    }

    #[test]
    fn rate_shares_follow_demand_and_sum_to_the_rate() {
        // Three holders, demands 0, 10 and 30 requests: 600 a minute between them.
        let shares: Vec<u64> = [0, 10, 30].iter().map(|&d| share(600, 3, d, 40)).collect();
        assert_eq!(shares, vec![100, 175, 325]);
        assert_eq!(shares.iter().sum::<u64>(), 600);
        assert_eq!(share(600, 2, 0, 0), 300, "no demand anywhere: even shares");
        assert_eq!(share(1, 5, 0, 3), 1, "never a share of nothing");
    }

    #[test]
    fn grants_never_let_the_holders_pass_the_cap() {
        let t = terms(1000);
        let mut all = HashMap::new();
        all.insert("a".to_owned(), live(600, 100, 50));
        // A lapsed holder commits what its journal showed.
        all.insert(
            "dead".to_owned(),
            Holding {
                shipped: Amount {
                    micros: 300,
                    tokens: 0,
                },
                lease: None,
            },
        );
        let (ceiling, used_total, others) = decide(&t, &all, "b", &ask(0, 500, 0));
        assert_eq!(others.micros, 900);
        assert_eq!(ceiling.micros, 100, "only what a and the dead holder leave");
        assert_eq!(used_total.micros, 400);
    }

    #[test]
    fn an_idle_holder_gets_part_of_the_free_room_and_keeps_what_it_may_have_admitted() {
        let t = terms(1000);
        let mut all = HashMap::new();
        all.insert("a".to_owned(), live(200, 0, 0));
        // b is new and asks for nothing: half the free room shared by two live holders.
        let (ceiling, _, _) = decide(&t, &all, "b", &ask(0, 0, 0));
        assert_eq!(ceiling.micros, 200);
        // a lowered itself to 150 before asking and b holds 700: a keeps its 150.
        all.insert("b".to_owned(), live(700, 0, 0));
        let (ceiling, _, _) = decide(&t, &all, "a", &ask(100, 120, 150));
        assert_eq!(
            ceiling.micros, 150,
            "asked 120, but it may have admitted up to 150"
        );
        // Had it given its share up, the room would go: nothing above what it used.
        let mut need = ask(100, 1000, 100);
        need.need = Amount {
            micros: 400,
            tokens: 0,
        }
        .into();
        let (ceiling, _, _) = decide(&t, &all, "a", &need);
        assert_eq!(
            ceiling.micros, 100,
            "300 of room is less than the 400 it needs"
        );
    }
}
