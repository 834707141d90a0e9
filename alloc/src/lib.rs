//! A global-allocator wrapper that counts the heap bytes the process has in use, so that
//! the proxy's memory budget measures live memory rather than resident memory.
//!
//! Why not resident memory: allocators keep freed memory for reuse (mimalloc does), so after
//! a burst the resident set stays high while little is in use, and a budget read from it
//! stays latched; under sustained load such a proxy refused nearly every request
//! (docs/hardening.md, "L4 at length").
//!
//! Why this shape: one shared counter updated on every allocation would bounce its cache
//! line between cores many times per request. Each thread keeps its own running delta and
//! adds it to the shared counter only once it passes [`FLUSH_BYTES`] either way, so the
//! request path costs a thread-local add per allocation and the shared count is off by at
//! most `FLUSH_BYTES` per thread.
//!
//! Counted: the sizes asked for (not the allocator's size classes or its own metadata), so
//! resident memory runs somewhat above the count; the budget's default leaves room for it.
//!
//! Implementing [`GlobalAlloc`] is unsafe by definition (the workspace allows `unsafe` here
//! and in one descriptor borrow in `proxy/src/cork.rs`, nowhere else). Each method passes
//! its arguments unchanged to the wrapped allocator.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// How far a thread's running delta may drift before it is added to the shared count.
pub const FLUSH_BYTES: i64 = 256 * 1024;

static IN_USE: AtomicI64 = AtomicI64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    // `const` and without a destructor: reading it never allocates and never fails while
    // the thread is alive, which an allocator needs.
    static DELTA: Cell<i64> = const { Cell::new(0) };
}

/// Wraps an allocator (`Counting::new(mimalloc::MiMalloc)`) and counts what it hands out.
#[derive(Debug, Default)]
pub struct Counting<A> {
    inner: A,
}

impl<A> Counting<A> {
    /// The wrapper, for a `#[global_allocator]` static.
    pub const fn new(inner: A) -> Self {
        Self { inner }
    }
}

/// Heap bytes in use by the process, within [`FLUSH_BYTES`] per thread; `None` when no
/// [`Counting`] allocator is installed (nothing has been counted).
pub fn heap_in_use() -> Option<u64> {
    if !COUNTING.load(Ordering::Relaxed) {
        return None;
    }
    Some(u64::try_from(IN_USE.load(Ordering::Relaxed)).unwrap_or(0))
}

#[inline]
fn note(bytes: i64) {
    // A load of a line every core keeps shared: the store happens once.
    if !COUNTING.load(Ordering::Relaxed) {
        COUNTING.store(true, Ordering::Relaxed);
    }
    let flushed = DELTA.try_with(|delta| {
        let now = delta.get() + bytes;
        if now.abs() >= FLUSH_BYTES {
            delta.set(0);
            flush(now);
        } else {
            delta.set(now);
        }
    });
    // The thread is being torn down: count directly.
    if flushed.is_err() {
        flush(bytes);
    }
}

#[cold]
fn flush(bytes: i64) {
    IN_USE.fetch_add(bytes, Ordering::Relaxed);
}

fn signed(size: usize) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

// SAFETY: every method forwards its arguments unchanged to `inner`, which upholds the
// `GlobalAlloc` contract; the bookkeeping neither allocates nor touches the memory.
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let ptr = unsafe { self.inner.alloc(layout) };
        if !ptr.is_null() {
            note(signed(layout.size()));
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        if !ptr.is_null() {
            note(signed(layout.size()));
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on unchanged.
        unsafe { self.inner.dealloc(ptr, layout) };
        note(-signed(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        let moved = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            note(signed(new_size) - signed(layout.size()));
        }
        moved
    }
}
