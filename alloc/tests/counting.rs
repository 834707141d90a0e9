//! The count follows what the process holds: up with an allocation, down again when it is
//! freed (whatever the allocator keeps), across threads and through `realloc`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use sluice_alloc::{Counting, FLUSH_BYTES, heap_in_use};

#[global_allocator]
static GLOBAL: Counting<std::alloc::System> = Counting::new(std::alloc::System);

const MIB: u64 = 1 << 20;

/// Whether `got` is within the drift the per-thread deltas allow of `want` (a few threads
/// run in a test binary: the harness's and this test's).
fn near(got: u64, want: u64) -> bool {
    got.abs_diff(want) <= 8 * FLUSH_BYTES as u64
}

#[test]
fn the_count_rises_with_allocations_and_falls_when_they_are_freed() {
    // The harness has allocated well past one flush by now.
    let base = heap_in_use().expect("the counting allocator is installed");

    let held: Vec<Vec<u8>> = (0..64)
        .map(|_| black_box(vec![1u8; MIB as usize]))
        .collect();
    let with = heap_in_use().unwrap();
    assert!(
        near(with, base + 64 * MIB),
        "base {base}, with 64 MiB held {with}"
    );

    // Freed on another thread than the one that allocated.
    std::thread::spawn(move || drop(held)).join().unwrap();
    let after = heap_in_use().unwrap();
    assert!(near(after, base), "base {base}, after freeing {after}");

    // Grown and shrunk in place or moved: the count follows the size.
    let mut v: Vec<u8> = vec![1; MIB as usize];
    v.reserve_exact(31 * MIB as usize);
    let grown = heap_in_use().unwrap();
    assert!(
        near(grown, base + 32 * MIB),
        "base {base}, grown to 32 MiB {grown}"
    );
    v.shrink_to(MIB as usize);
    let shrunk = heap_in_use().unwrap();
    assert!(
        near(shrunk, base + MIB),
        "base {base}, shrunk to 1 MiB {shrunk}"
    );
    drop(black_box(v));
}
