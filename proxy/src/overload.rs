//! The memory budget: past it, new requests are refused with 503 and `Retry-After` while
//! the requests already running (streams included) go on, so an overloaded proxy sheds load
//! instead of being killed for running out of memory.
//!
//! What is measured is the heap in use, counted by `sluice-alloc`'s allocator wrapper (the
//! `sluice` binary installs it): an atomic load per request. Resident memory would latch:
//! the allocator keeps freed memory, so after a burst a proxy stayed over its budget while
//! little was in use (docs/hardening.md, "L4 at length"). A program that embeds the proxy
//! without the wrapper falls back to resident memory, read from `/proc/self/status` at most
//! every 100 ms. The default budget is 80% of the container's memory limit (cgroup v2
//! `memory.max`) when there is one, else none: resident memory runs above the heap count
//! (allocator slack, stacks, the binary), and the rest is that margin.
//!
//! Requests are refused from 95% of the budget, and each admitted request holds a
//! reservation (64 KiB plus twice its declared body) until its response starts: a burst of
//! admissions lands before the memory it will take shows in the count, and without the
//! reservations a 64 MiB budget was overrun by 45% in the overload soak.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::SluiceError;

const REFRESH_MS: u64 = 100;

/// What an admitted request is assumed to need before its response starts, besides twice
/// its declared body (the body as read, and as the inspector holds it).
pub const RESERVED_PER_REQUEST: u64 = 64 * 1024;

/// Reservations of admitted requests whose responses have not started, process-wide (as the
/// heap count is).
static RESERVED: AtomicU64 = AtomicU64::new(0);

/// An admitted request's reservation, given back when dropped.
#[derive(Debug)]
pub struct Reservation(u64);

impl Drop for Reservation {
    fn drop(&mut self) {
        RESERVED.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Bytes reserved by admitted requests whose responses have not started.
pub fn reserved() -> u64 {
    RESERVED.load(Ordering::Relaxed)
}

/// The process's memory in use: the counted heap, else resident memory refreshed lazily.
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
    /// Bytes in use: the counted heap when the counting allocator is installed, else
    /// resident bytes at most 100 ms old.
    pub fn in_use(&self) -> u64 {
        // No refresh needed: an atomic load.
        if let Some(heap) = sluice_alloc::heap_in_use() {
            return heap;
        }
        self.resident()
    }

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

    /// `Err(Overloaded)` when the memory in use and reserved is past 95% of `budget`, else
    /// a reservation for a request declaring `body_bytes` (none without a budget).
    pub fn admit(&self, budget: u64, body_bytes: u64) -> Result<Option<Reservation>, SluiceError> {
        if budget == 0 {
            return Ok(None);
        }
        let in_use = self.in_use().saturating_add(reserved());
        if in_use > budget / 20 * 19 {
            return Err(SluiceError::Overloaded {
                in_use_mib: in_use >> 20,
                budget_mib: budget >> 20,
            });
        }
        Ok(Some(Self::reserve(body_bytes)))
    }

    /// A reservation for a request declaring `body_bytes`, whatever the budget says.
    pub fn reserve(body_bytes: u64) -> Reservation {
        let bytes = RESERVED_PER_REQUEST.saturating_add(body_bytes.saturating_mul(2));
        RESERVED.fetch_add(bytes, Ordering::Relaxed);
        Reservation(bytes)
    }
}

/// The memory in use now: the counted heap, else resident memory (read afresh).
pub fn in_use_now() -> u64 {
    sluice_alloc::heap_in_use()
        .or_else(resident_bytes)
        .unwrap_or(0)
}

/// VmRSS of this process, from `/proc/self/status`.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// 80% of the cgroup v2 memory limit of this process's container, if it has one. Read
/// once per process: every `Limits::default()` asks (per MCP call and per accepted
/// connection, among others), and reading the file each time cost a system call or three
/// on the request path.
pub fn default_budget() -> u64 {
    static BUDGET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::fs::read_to_string("/sys/fs/cgroup/memory.max")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or(0, |max| max / 10 * 8)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_gauge_reads_this_process_and_the_budget_refuses_past_it() {
        let g = MemoryGauge::default();
        let rss = g.in_use();
        assert!(rss > 1 << 20, "a test process uses more than 1 MiB: {rss}");
        assert!(g.admit(0, 0).unwrap().is_none(), "no budget");
        assert!(matches!(
            g.admit(1 << 20, 0),
            Err(SluiceError::Overloaded { budget_mib: 1, .. })
        ));
        // Past 95% of the budget: refused.
        assert!(g.admit(g.in_use() + 1024, 0).is_err());
    }

    #[test]
    fn admitted_requests_hold_reservations_until_dropped() {
        let g = MemoryGauge::default();
        let budget = (g.in_use() + (64 << 20)) / 19 * 20;
        let base = reserved();
        let a = g.admit(budget, 1 << 20).unwrap().unwrap();
        assert!(reserved() - base >= RESERVED_PER_REQUEST + (2 << 20));
        // Reservations count against the budget: 40 requests of 1 MiB fill 64 MiB.
        let held: Vec<_> = (0..40)
            .map_while(|_| g.admit(budget, 1 << 20).ok())
            .collect();
        assert!(held.len() < 35, "{} admitted", held.len());
        assert!(g.admit(budget, 0).is_err());
        drop(held);
        drop(a);
        assert!(g.admit(budget, 0).is_ok(), "given back");
    }
}
