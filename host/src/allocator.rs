//! The daemon's allocator: mimalloc instead of glibc's malloc.
//!
//! Measured (BENCHMARKS.md, "The allocator"): at saturation glibc's malloc took about a fifth
//! of the daemon's CPU, much of it waiting on an arena's lock, because memory allocated on the
//! threads that accept webhooks is freed on a module's threads and the other way round.
//! mimalloc frees across threads without a lock.
//!
//! With its defaults mimalloc keeps freed memory committed for a while, which doubled the idle
//! and the peak RSS; [`tune`] sets the two options that keep RSS where glibc kept it. Plugins
//! are not affected: each `.so` allocates with the allocator it was built with, and everything
//! that crosses the plugin boundary is freed by the side that allocated it (`abi_stable` types
//! carry their own deallocation).

use libmimalloc_sys::{mi_option_set_default, mi_option_t};

/// `mi_option_arena_eager_commit` in mimalloc v3's `mimalloc.h` (the numbers differ in v2,
/// hence the exact version in `Cargo.toml`).
const ARENA_EAGER_COMMIT: mi_option_t = 4;
/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h`.
const PURGE_DELAY: mi_option_t = 15;

/// Commits arena memory as it is used, and gives freed pages back at once. These are defaults:
/// `MIMALLOC_ARENA_EAGER_COMMIT` and `MIMALLOC_PURGE_DELAY` in the environment still win.
///
/// It must run before the first allocation: mimalloc reserves its first arena then, with the
/// options of that moment, and the standard library's start-up allocates before the program's
/// `main` (setting the options first thing in `main` was measured to be too late). So the
/// binary runs it as an ELF constructor (`.init_array`), before the standard library's
/// start-up. Whether mimalloc's own constructor runs before or after it makes no difference:
/// options given a default are read from the environment, or take that default, when first
/// used.
pub extern "C" fn tune() {
    // SAFETY: mimalloc's options are plain integers set through its own API, and constructors
    // run on one thread before any other starts.
    unsafe {
        mi_option_set_default(ARENA_EAGER_COMMIT, 0);
        mi_option_set_default(PURGE_DELAY, 0);
    }
}
