//! A token bucket for per-minute rate limits, in integer arithmetic: the level is kept in
//! units of 1/60000 of a token, so a bucket refilling `per_minute` tokens a minute gains
//! exactly `per_minute` of those units every millisecond.

const SCALE: u128 = 60_000;

/// One bucket: at most `per_minute` tokens, refilled continuously.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_minute: u64,
    // Scaled level; may go below zero when a settlement charges more than was taken.
    level: i128,
    last_ms: i64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_minute: u64, now_ms: i64) -> Self {
        Self {
            per_minute,
            level: (u128::from(per_minute) * SCALE) as i128,
            last_ms: now_ms,
        }
    }

    /// The bucket's rate.
    pub fn per_minute(&self) -> u64 {
        self.per_minute
    }

    /// A new rate (this replica's share of a rate shared by several): the bucket refills
    /// at it from now on and holds at most a minute of it.
    pub fn set_rate(&mut self, now_ms: i64, per_minute: u64) {
        self.refill(now_ms);
        self.per_minute = per_minute;
        let full = (u128::from(per_minute) * SCALE) as i128;
        self.level = self.level.min(full);
    }

    fn refill(&mut self, now_ms: i64) {
        if now_ms > self.last_ms {
            let gained = i128::from(now_ms - self.last_ms) * i128::from(self.per_minute);
            let full = (u128::from(self.per_minute) * SCALE) as i128;
            self.level = (self.level.saturating_add(gained)).min(full);
            self.last_ms = now_ms;
        }
    }

    /// Takes `n` tokens, or says in how many ms `n` will be there (`None`: never, as `n` is
    /// more than the bucket holds).
    pub fn take(&mut self, now_ms: i64, n: u64) -> Result<(), Option<u64>> {
        self.refill(now_ms);
        let need = (u128::from(n) * SCALE) as i128;
        if need <= self.level {
            self.level -= need;
            return Ok(());
        }
        if n > self.per_minute || self.per_minute == 0 {
            return Err(None);
        }
        let missing = need - self.level;
        let per_ms = i128::from(self.per_minute);
        Err(Some(
            u64::try_from((missing + per_ms - 1) / per_ms).unwrap_or(u64::MAX),
        ))
    }

    /// Corrects an earlier `take` of `taken` to what was really used: gives back the
    /// difference, or charges the excess (the level may go negative, which delays the next
    /// requests).
    pub fn settle(&mut self, now_ms: i64, taken: u64, used: u64) {
        self.refill(now_ms);
        let diff = (i128::from(taken) - i128::from(used)) * SCALE as i128;
        let full = (u128::from(self.per_minute) * SCALE) as i128;
        self.level = self.level.saturating_add(diff).min(full);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let mut b = TokenBucket::new(60, 0);
        for _ in 0..60 {
            b.take(0, 1).expect("a full bucket");
        }
        // One token a second.
        assert_eq!(b.take(0, 1), Err(Some(1000)));
        assert_eq!(b.take(999, 1), Err(Some(1)));
        b.take(1000, 1).expect("refilled");
        assert_eq!(b.take(1000, 61), Err(None), "more than it can ever hold");
        // Never above full, however long it waits.
        let mut b = TokenBucket::new(10, 0);
        b.take(10 * 60_000, 10).expect("full");
        assert!(b.take(10 * 60_000, 1).is_err());
    }

    #[test]
    fn settlement_gives_back_or_charges() {
        let mut b = TokenBucket::new(1000, 0);
        b.take(0, 800).expect("room");
        b.settle(0, 800, 100);
        b.take(0, 900).expect("700 came back");
        b.settle(0, 900, 1900);
        // 1000 over: a minute until one token is back, then some.
        assert_eq!(b.take(0, 1), Err(Some(60_060)));
    }

    #[test]
    fn a_smaller_share_caps_the_level_and_the_refill() {
        let mut b = TokenBucket::new(600, 0);
        b.set_rate(0, 60);
        b.take(0, 60).expect("a minute of the new rate");
        assert_eq!(b.take(0, 1), Err(Some(1000)), "refills at 60 a minute");
        b.set_rate(1000, 6000);
        b.take(1000, 1)
            .expect("refilled one before the rate went up");
        assert_eq!(b.per_minute(), 6000);
    }

    proptest::proptest! {
        /// Over any sequence, what was taken never exceeds the initial fill plus the refill.
        #[test]
        fn never_more_than_the_rate(steps in proptest::collection::vec((0i64..5000, 1u64..50), 1..300)) {
            let mut b = TokenBucket::new(100, 0);
            let (mut now, mut taken) = (0i64, 0u64);
            for (dt, n) in steps {
                now += dt;
                if b.take(now, n).is_ok() {
                    taken += n;
                }
                let allowed = 100 + (now as u64) * 100 / 60_000;
                proptest::prop_assert!(taken <= allowed, "{taken} > {allowed}");
            }
        }
    }
}
