//! Spend and token limits: windows (rolling, or calendar periods in a time zone) and the
//! ledger one limit keeps. Pure: the caller passes the time, and keeps one ledger per limit
//! behind whatever lock it likes.
//!
//! Admission **reserves** an estimate; the end of the request **settles** it, replacing
//! the estimate with what was really used. Reservations are held apart from the window's
//! spend, so a request admitted in one window and settled in the next releases exactly its
//! reservation and adds exactly its cost (to the window it settled in): nothing is lost or
//! counted twice at a rollover, and concurrent requests cannot all pass the last dollar.

use std::collections::VecDeque;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// A rolling window is kept as this many buckets; usage leaves it a bucket at a time.
const ROLLING_BUCKETS: u64 = 60;

/// The window a limit counts over.
#[derive(Debug, Clone, PartialEq)]
pub enum Window {
    /// The last `secs` seconds.
    Rolling {
        /// Its length.
        secs: u64,
    },
    /// The current calendar period in a time zone.
    Calendar {
        /// Day, week (from Monday) or month.
        unit: CalendarUnit,
        /// Where the period's boundaries are midnights.
        tz: TimeZone,
    },
}

/// A calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalendarUnit {
    /// From midnight to midnight.
    Day,
    /// From Monday midnight to the next Monday midnight.
    Week,
    /// From the first of the month at midnight to the next first.
    Month,
}

/// Why a window could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    /// The window's name is not one of ours.
    #[error(
        "window '{0}' is not one of minute, hour, rolling_24h, rolling_7d, rolling_30d, day, week, month"
    )]
    Unknown(String),
    /// The time zone is not in the IANA database.
    #[error("time zone '{0}' is not an IANA time zone name such as Europe/Berlin")]
    TimeZone(String),
}

impl Window {
    /// `minute`, `hour`, `rolling_24h`, `rolling_7d`, `rolling_30d` (rolling), or `day`,
    /// `week`, `month` (calendar, in `time_zone`; UTC when absent).
    pub fn parse(name: &str, time_zone: Option<&str>) -> Result<Self, WindowError> {
        let rolling = |secs| Ok(Window::Rolling { secs });
        let tz = || match time_zone {
            None | Some("UTC") => Ok(TimeZone::UTC),
            Some(name) => TimeZone::get(name).map_err(|_| WindowError::TimeZone(name.to_owned())),
        };
        match name {
            "minute" => rolling(60),
            "hour" | "rolling_1h" => rolling(3600),
            "rolling_24h" => rolling(86_400),
            "rolling_7d" => rolling(7 * 86_400),
            "rolling_30d" => rolling(30 * 86_400),
            "day" => Ok(Window::Calendar {
                unit: CalendarUnit::Day,
                tz: tz()?,
            }),
            "week" => Ok(Window::Calendar {
                unit: CalendarUnit::Week,
                tz: tz()?,
            }),
            "month" => Ok(Window::Calendar {
                unit: CalendarUnit::Month,
                tz: tz()?,
            }),
            other => Err(WindowError::Unknown(other.to_owned())),
        }
    }

    /// A stable name for this window (`rolling:3600`, `day@Europe/Berlin`): usage counted
    /// under one name is not counted under another.
    pub fn key(&self) -> String {
        match self {
            Window::Rolling { secs } => format!("rolling:{secs}"),
            Window::Calendar { unit, tz } => {
                let unit = match unit {
                    CalendarUnit::Day => "day",
                    CalendarUnit::Week => "week",
                    CalendarUnit::Month => "month",
                };
                format!("{unit}@{}", tz.iana_name().unwrap_or("UTC"))
            }
        }
    }

    /// Where usage at `ts_ms` is counted: the start of its rolling bucket, or of its
    /// calendar period.
    pub fn bucket_start(&self, ts_ms: i64) -> i64 {
        match self {
            Window::Rolling { .. } => {
                let width = i64::try_from(self.bucket_ms()).unwrap_or(i64::MAX);
                ts_ms - ts_ms.rem_euclid(width)
            }
            Window::Calendar { .. } => self.period(ts_ms).map_or(ts_ms, |p| p.0),
        }
    }

    /// Whether usage counted in the bucket starting at `start` is still in the window at
    /// `now_ms`.
    pub fn counts(&self, start: i64, now_ms: i64) -> bool {
        match self {
            Window::Rolling { secs } => {
                let horizon = now_ms - i64::try_from(secs * 1000).unwrap_or(i64::MAX);
                let width = i64::try_from(self.bucket_ms()).unwrap_or(i64::MAX);
                start.saturating_add(width) > horizon
            }
            Window::Calendar { .. } => start >= self.period(now_ms).map_or(i64::MIN, |p| p.0),
        }
    }

    fn bucket_ms(&self) -> u64 {
        match self {
            Window::Rolling { secs } => (secs * 1000 / ROLLING_BUCKETS).max(1),
            Window::Calendar { .. } => u64::MAX,
        }
    }

    /// The calendar period holding `now_ms`: `[start, end)` in ms since the epoch.
    pub fn period(&self, now_ms: i64) -> Option<(i64, i64)> {
        let Window::Calendar { unit, tz } = self else {
            return None;
        };
        let now = Timestamp::from_millisecond(now_ms)
            .ok()?
            .to_zoned(tz.clone());
        let start: Zoned = match unit {
            CalendarUnit::Day => now.start_of_day().ok()?,
            CalendarUnit::Week => {
                let back = i64::from(now.weekday().to_monday_zero_offset());
                now.checked_sub(back.days()).ok()?.start_of_day().ok()?
            }
            CalendarUnit::Month => now.first_of_month().ok()?.start_of_day().ok()?,
        };
        let next = match unit {
            CalendarUnit::Day => start.checked_add(1.day()).ok()?,
            CalendarUnit::Week => start.checked_add(1.week()).ok()?,
            CalendarUnit::Month => start.checked_add(1.month()).ok()?,
        };
        // A DST change at midnight can make "midnight" ambiguous; start_of_day already
        // resolved it, and the next period starts at the next day's start.
        let end = next.start_of_day().ok()?;
        Some((
            start.timestamp().as_millisecond(),
            end.timestamp().as_millisecond(),
        ))
    }
}

/// Cost (µ$) and tokens together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    /// Millionths of a dollar.
    pub micros: u64,
    /// Tokens, input and output.
    pub tokens: u64,
}

impl Amount {
    /// Adds `o`, saturating.
    pub fn add(&mut self, o: Amount) {
        self.micros = self.micros.saturating_add(o.micros);
        self.tokens = self.tokens.saturating_add(o.tokens);
    }
    /// Takes `o` away, saturating at zero.
    pub fn sub(&mut self, o: Amount) {
        self.micros = self.micros.saturating_sub(o.micros);
        self.tokens = self.tokens.saturating_sub(o.tokens);
    }
}

/// A refused admission: what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// `cost` or `tokens`: which cap would be passed.
    pub what: &'static str,
    /// Used in the window, plus what is reserved by requests in flight.
    pub used: u64,
    /// The cap.
    pub max: u64,
    /// When enough of the window frees up for anything to pass (ms since the epoch): the
    /// next period for a calendar window, the oldest usage leaving a rolling one.
    pub resets_at_ms: i64,
    /// The cap had room, but this replica's share of it (its lease) did not.
    pub by_lease: bool,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start_ms: i64,
    used: Amount,
}

/// One limit's state: what was spent in its window and what is reserved.
#[derive(Debug, Clone)]
pub struct Ledger {
    window: Window,
    max: Amount,
    // Rolling: buckets oldest first. Calendar: one bucket, the current period.
    buckets: VecDeque<Bucket>,
    reserved: Amount,
}

impl Ledger {
    /// A ledger; a cap of `None` is not enforced.
    pub fn new(window: Window, max_micros: Option<u64>, max_tokens: Option<u64>) -> Self {
        Self {
            window,
            max: Amount {
                micros: max_micros.unwrap_or(u64::MAX),
                tokens: max_tokens.unwrap_or(u64::MAX),
            },
            buckets: VecDeque::new(),
            reserved: Amount::default(),
        }
    }

    /// Whether this ledger counts over `window` (a limit whose window changed starts
    /// afresh; one whose caps changed keeps its count under the new caps).
    pub fn same_window(&self, window: &Window) -> bool {
        self.window == *window
    }

    /// New caps for the same window.
    pub fn set_caps(&mut self, max_micros: Option<u64>, max_tokens: Option<u64>) {
        self.max = Amount {
            micros: max_micros.unwrap_or(u64::MAX),
            tokens: max_tokens.unwrap_or(u64::MAX),
        };
    }

    fn expire(&mut self, now_ms: i64) {
        let window = &self.window;
        self.buckets.retain(|b| window.counts(b.start_ms, now_ms));
    }

    /// Spent in the current window (settled requests only).
    pub fn spent(&mut self, now_ms: i64) -> Amount {
        self.expire(now_ms);
        let mut total = Amount::default();
        for b in &self.buckets {
            total.add(b.used);
        }
        total
    }

    /// Held by requests in flight.
    pub fn reserved(&self) -> Amount {
        self.reserved
    }

    fn resets_at(&self, now_ms: i64) -> i64 {
        match &self.window {
            Window::Rolling { secs } => {
                let width = i64::try_from(self.window.bucket_ms()).unwrap_or(i64::MAX);
                let len = i64::try_from(secs * 1000).unwrap_or(i64::MAX);
                self.buckets
                    .front()
                    .map_or(now_ms, |b| b.start_ms + width + len)
            }
            Window::Calendar { .. } => self.window.period(now_ms).map_or(now_ms, |p| p.1),
        }
    }

    /// Reserves `estimate` if spent + reserved + estimate stays within the caps.
    pub fn reserve(&mut self, now_ms: i64, estimate: Amount) -> Result<(), Exceeded> {
        self.reserve_within(now_ms, estimate, None)
    }

    /// Spent in the window plus what requests in flight hold.
    pub fn used(&mut self, now_ms: i64) -> Amount {
        let mut used = self.spent(now_ms);
        used.add(self.reserved);
        used
    }

    /// Reserves `estimate` if spent + reserved + estimate stays within the caps and within
    /// `share`, this replica's part of them (its lease), when there is one.
    pub fn reserve_within(
        &mut self,
        now_ms: i64,
        estimate: Amount,
        share: Option<Amount>,
    ) -> Result<(), Exceeded> {
        let used = self.used(now_ms);
        let resets_at_ms = self.resets_at(now_ms);
        let check = |what, used: u64, est: u64, max: u64, share: Option<u64>| {
            let after = used.saturating_add(est);
            if after > max {
                return Err(Exceeded {
                    what,
                    used,
                    max,
                    resets_at_ms,
                    by_lease: false,
                });
            }
            match share {
                Some(s) if after > s => Err(Exceeded {
                    what,
                    used,
                    max,
                    resets_at_ms,
                    by_lease: true,
                }),
                _ => Ok(()),
            }
        };
        check(
            "cost",
            used.micros,
            estimate.micros,
            self.max.micros,
            share.map(|s| s.micros),
        )?;
        check(
            "tokens",
            used.tokens,
            estimate.tokens,
            self.max.tokens,
            share.map(|s| s.tokens),
        )?;
        self.reserved.add(estimate);
        Ok(())
    }

    /// Ends a reservation: releases `reserved` and counts `actual` at `now_ms`.
    pub fn settle(&mut self, now_ms: i64, reserved: Amount, actual: Amount) {
        self.reserved.sub(reserved);
        self.record(now_ms, actual);
    }

    /// Counts usage that had no reservation (e.g. reported by another replica).
    pub fn record(&mut self, now_ms: i64, actual: Amount) {
        if actual == Amount::default() {
            return;
        }
        self.expire(now_ms);
        let start = self.window.bucket_start(now_ms);
        match self.buckets.back_mut() {
            Some(b) if b.start_ms == start => b.used.add(actual),
            _ => self.buckets.push_back(Bucket {
                start_ms: start,
                used: actual,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().expect("timestamp").as_millisecond()
    }

    fn amt(micros: u64) -> Amount {
        Amount { micros, tokens: 0 }
    }

    #[test]
    fn calendar_periods_follow_the_time_zone() {
        let berlin = Window::parse("day", Some("Europe/Berlin")).expect("window");
        // 23:30 UTC on 1 March is 00:30 on 2 March in Berlin (UTC+1).
        let (start, end) = berlin.period(ms("2026-03-01T23:30:00Z")).expect("period");
        assert_eq!(start, ms("2026-03-01T23:00:00Z"));
        assert_eq!(end, ms("2026-03-02T23:00:00Z"));
        // The day summer time starts is 23 hours long.
        let (start, end) = berlin.period(ms("2026-03-29T12:00:00Z")).expect("period");
        assert_eq!(end - start, 23 * HOUR);
        let week = Window::parse("week", Some("America/New_York")).expect("window");
        // Wednesday 2026-12-02 10:00 New York: the week began Monday 30 November, 05:00 UTC.
        let (start, end) = week.period(ms("2026-12-02T15:00:00Z")).expect("period");
        assert_eq!(start, ms("2026-11-30T05:00:00Z"));
        assert_eq!(end, ms("2026-12-07T05:00:00Z"));
        let month = Window::parse("month", Some("Asia/Tokyo")).expect("window");
        // 16:00 UTC on 31 January is 1 February in Tokyo.
        let (start, end) = month.period(ms("2026-01-31T16:00:00Z")).expect("period");
        assert_eq!(start, ms("2026-01-31T15:00:00Z"));
        assert_eq!(end, ms("2026-02-28T15:00:00Z"));
        assert!(matches!(
            Window::parse("day", Some("Mars/Olympus")),
            Err(WindowError::TimeZone(_))
        ));
        assert!(matches!(
            Window::parse("fortnight", None),
            Err(WindowError::Unknown(_))
        ));
    }

    #[test]
    fn a_calendar_limit_resets_at_local_midnight() {
        let w = Window::parse("day", Some("Europe/Berlin")).expect("window");
        let mut l = Ledger::new(w, Some(100), None);
        let t = ms("2026-06-10T21:00:00Z"); // 23:00 in Berlin (UTC+2)
        l.reserve(t, amt(100)).expect("room");
        l.settle(t, amt(100), amt(100));
        let refused = l.reserve(t + 1000, amt(1)).expect_err("full");
        assert_eq!(refused.what, "cost");
        assert_eq!(refused.used, 100);
        assert_eq!(refused.resets_at_ms, ms("2026-06-10T22:00:00Z"));
        // One minute past midnight in Berlin: a new day.
        l.reserve(ms("2026-06-10T22:01:00Z"), amt(100))
            .expect("a new period");
    }

    #[test]
    fn every_rolling_window_forgets_usage_after_its_length() {
        for (name, secs) in [
            ("minute", 60),
            ("hour", 3600),
            ("rolling_24h", 86_400),
            ("rolling_7d", 604_800),
            ("rolling_30d", 2_592_000),
        ] {
            let mut l = Ledger::new(Window::parse(name, None).expect("w"), Some(10), None);
            let t0 = 1_700_000_000_000;
            l.record(t0, amt(10));
            let e = l.reserve(t0 + 1, amt(1)).expect_err("full");
            let len = secs * 1000;
            assert!(e.resets_at_ms > t0 + len - len / 60 && e.resets_at_ms <= t0 + len + len / 60);
            assert!(l.reserve(e.resets_at_ms - 1, amt(1)).is_err(), "{name}");
            l.reserve(e.resets_at_ms, amt(1)).expect("forgotten");
        }
    }

    #[test]
    fn reservations_hold_room_until_settled() {
        let mut l = Ledger::new(
            Window::parse("month", None).expect("w"),
            Some(1000),
            Some(50),
        );
        let t = 1_800_000_000_000;
        let est = Amount {
            micros: 600,
            tokens: 10,
        };
        l.reserve(t, est).expect("first");
        assert!(l.reserve(t, est).is_err(), "the first holds 600 of 1000");
        // It cost less than estimated: the rest is free again.
        l.settle(
            t,
            est,
            Amount {
                micros: 100,
                tokens: 5,
            },
        );
        l.reserve(t, est).expect("room again");
        let e = l
            .reserve(
                t,
                Amount {
                    micros: 0,
                    tokens: 40,
                },
            )
            .expect_err("tokens");
        assert_eq!(e.what, "tokens");
        assert_eq!(e.used, 15);
    }

    #[test]
    fn a_request_settling_after_the_rollover_counts_once_in_the_new_period() {
        let w = Window::parse("day", None).expect("w");
        let mut l = Ledger::new(w, Some(1_000_000), None);
        let before = ms("2026-12-02T23:59:59Z");
        let after = ms("2026-12-03T00:00:01Z");
        for _ in 0..50 {
            l.reserve(before, amt(500)).expect("room");
        }
        for _ in 0..50 {
            l.settle(after, amt(500), amt(300));
        }
        assert_eq!(l.reserved(), Amount::default());
        assert_eq!(l.spent(after).micros, 50 * 300);
        assert_eq!(
            l.spent(ms("2026-12-04T00:00:01Z")).micros,
            0,
            "and leaves with that day"
        );
    }

    proptest::proptest! {
        /// Whatever the order of reservations and settlements, the caps hold for what is
        /// admitted, and the spend is exactly the sum of what was settled.
        #[test]
        fn caps_hold_and_spend_is_the_sum_settled(
            ops in proptest::collection::vec((0u64..400, 0u64..400, proptest::bool::ANY), 1..200)
        ) {
            let mut l = Ledger::new(Window::parse("week", Some("Europe/Paris")).expect("w"), Some(5000), None);
            let t = 1_800_000_000_000;
            let mut open: Vec<u64> = Vec::new();
            let mut settled = 0u64;
            for (est, actual, settle_one) in ops {
                if settle_one && !open.is_empty() {
                    let r = open.remove(0);
                    let used = actual.min(r);
                    l.settle(t, amt(r), amt(used));
                    settled += used;
                } else if l.reserve(t, amt(est)).is_ok() {
                    open.push(est);
                }
                let spent = l.spent(t).micros;
                proptest::prop_assert!(spent + l.reserved().micros <= 5000);
                proptest::prop_assert_eq!(spent, settled);
            }
        }
    }
}
