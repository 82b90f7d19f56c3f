//! Measures what a remembered request id really costs, with a counting allocator, and checks that
//! the idempotency map's byte bound charges at least that much: `--dedupe-memory` is honest.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use registro::dedupe::{Dedupe, ENTRY_OVERHEAD, Limits};
use registro::pb::StoreReply;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn reply(i: usize) -> StoreReply {
    StoreReply {
        id: format!("0193a7c4-8f1e-7d2a-9b3c-{i:012}"),
        datanode: "datanode2".into(),
        stored_at: Some(prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }),
        receipt: "Message 'Mensaje hacia el servidor' stored on datanode2.".into(),
        replicas: vec!["datanode2".into()],
    }
}

/// The bytes charged per remembered id are at least the bytes really allocated for it, at every
/// fill level of the map (hash maps grow by doubling, so the real cost per id varies).
#[test]
fn the_memory_bound_charges_at_least_what_an_id_really_costs() {
    let dedupe = Dedupe::new(Limits {
        entries: usize::MAX,
        bytes: usize::MAX,
    });
    let before = LIVE.load(Ordering::Relaxed);
    let mut worst = 0f64;
    let mut checked = 0;
    for i in 0..200_000usize {
        let key = format!("client-7f3a9c-{i:08}");
        dedupe.remember(&key, "Mensaje hacia el servidor", reply(i));
        let n = i + 1;
        // Right after each doubling of the map is where an id costs the most: just past 7/8 of
        // a power of two buckets. Sample there and every 997 ids.
        let just_grown = n > 8 && (n - 1) % 7 == 0 && ((n - 1) / 7 * 8).is_power_of_two();
        if n >= 1024 && (just_grown || n % 997 == 0) {
            let real = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
            let charged = dedupe.bytes() as f64 / n as f64;
            if just_grown || n % 49_850 == 0 {
                println!(
                    "{n:>7} ids: {real:.0} bytes allocated per id, {charged:.0} charged (overhead charged {ENTRY_OVERHEAD})"
                );
            }
            assert!(
                real <= charged,
                "at {n} ids the map allocates {real:.0} bytes an id but charges only {charged:.0}"
            );
            worst = worst.max(real);
            checked += 1;
        }
    }
    assert!(checked > 5);
    println!("worst: {worst:.0} bytes allocated per remembered id");
}
