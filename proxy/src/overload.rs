//! The memory budget: past it, new requests are refused with 503 and `Retry-After` while
//! the requests already running (streams included) go on, so an overloaded proxy sheds load
//! instead of being killed for running out of memory.
//!
//! Resident memory is read from `/proc/self/status` at most every 100 ms (a read costs a few
//! microseconds; the request path otherwise only loads an atomic). The default budget is 90%
//! of the container's memory limit (cgroup v2 `memory.max`) when there is one, else none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::SluiceError;

const REFRESH_MS: u64 = 100;

/// The process's resident memory, refreshed lazily.
#[derive(Debug)]
pub struct MemoryGauge {
    started: Instant,
    read_at_ms: AtomicU64,
    rss: AtomicU64,
}

impl Default for MemoryGauge {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            read_at_ms: AtomicU64::new(0),
            rss: AtomicU64::new(resident_bytes().unwrap_or(0)),
        }
    }
}

impl MemoryGauge {
    /// Resident bytes, at most 100 ms old.
    pub fn resident(&self) -> u64 {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let at = self.read_at_ms.load(Ordering::Relaxed);
        if now.saturating_sub(at) >= REFRESH_MS
            && self
                .read_at_ms
                .compare_exchange(at, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            && let Some(rss) = resident_bytes()
        {
            self.rss.store(rss, Ordering::Relaxed);
        }
        self.rss.load(Ordering::Relaxed)
    }

    /// `Err(Overloaded)` when resident memory is over `budget` (0: no budget).
    pub fn admit(&self, budget: u64) -> Result<(), SluiceError> {
        if budget == 0 {
            return Ok(());
        }
        let resident = self.resident();
        if resident > budget {
            return Err(SluiceError::Overloaded {
                resident_mib: resident >> 20,
                budget_mib: budget >> 20,
            });
        }
        Ok(())
    }
}

/// VmRSS of this process, from `/proc/self/status`.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// 90% of the cgroup v2 memory limit of this process's container, if it has one.
pub fn default_budget() -> u64 {
    std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(0, |max| max / 10 * 9)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_gauge_reads_this_process_and_the_budget_refuses_past_it() {
        let g = MemoryGauge::default();
        let rss = g.resident();
        assert!(rss > 1 << 20, "a test process uses more than 1 MiB: {rss}");
        assert!(g.admit(0).is_ok(), "no budget");
        assert!(g.admit(rss * 4).is_ok());
        assert!(matches!(
            g.admit(1 << 20),
            Err(SluiceError::Overloaded { budget_mib: 1, .. })
        ));
    }
}
