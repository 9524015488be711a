//! `filter` with plain (non-regex) values must not allocate per event: it runs for every event on
//! every route that lists it. Counted with a global allocator, which is fine in this test binary
//! (a plugin itself must never set one). Counting is per thread, so parallel tests don't disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use orgloop_filters::{Filter, FilterConfig};
use orgloop_plugin_sdk::serde_json::{self, json};
use orgloop_plugin_sdk::testing::{test_event, TestHost};
use orgloop_plugin_sdk::{Transform, TransformCtx, Verdict};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a plain thread-local `Cell`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn plain_equality_does_not_allocate() {
    let config: FilterConfig = serde_json::from_value(json!({
        "match": {"type": "resource.changed", "payload.pr.number": 42, "payload.draft": false},
        "match_any": {"provenance.author": ["alice", "test-author"], "payload.x": null},
        "exclude": {"provenance.author_type": "bot, system", "payload.pr.state": "closed"},
    }))
    .unwrap();
    let filter = Filter::new(Some(config), TestHost::new().host()).unwrap();
    let ctx = TransformCtx {
        source: "test-source",
        route: "r",
        actor: "a",
        module: "m",
    };
    let pass = test_event(json!({"pr": {"number": 42, "state": "open"}, "draft": false}));
    let drop = test_event(json!({"pr": {"number": 42, "state": "closed"}, "draft": false}));

    let mut verdicts = Vec::with_capacity(2);
    let n = allocations_during(|| {
        verdicts.push(filter.apply(&pass, &ctx).unwrap());
        verdicts.push(filter.apply(&drop, &ctx).unwrap());
    });
    assert_eq!(verdicts, [Verdict::Pass, Verdict::Drop]);
    assert_eq!(n, 0, "allocations while filtering");
}
