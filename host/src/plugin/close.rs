//! Closing a library a moment after its last user let go, on a thread of its own.
//!
//! When the last `Arc` of a [`Library`](super::Library) goes, code of that library may still be
//! on the stack of another thread for a few instructions: a waker a plugin handed to a host
//! future is woken on the thread that completes the future (an HTTP response, a timer), and that
//! thread runs the plugin's wake function while, on another core, the delivery it woke finishes
//! and drops the last reference. Unmapping the library in that window crashed the daemon (a jump
//! into an unmapped page; about once in 900 reloads under 5 000 ev/s). So the library is closed
//! [`QUIET`] later, which no wake function takes, then checked and reported as before.
//!
//! The grace is a bound on time, not a proof: a thread descheduled inside plugin code for longer
//! would still fault. [`super::load::Loader`] never hands out a library that is waiting here; a
//! new load of the same build maps a copy of its own.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use abi_stable::library::RawLibrary;

use super::store::Lease;
use super::verify::{verify_unloaded, UnloadReport};

/// How long a library stays mapped after its last user let go.
pub const QUIET: Duration = Duration::from_millis(100);

type UnloadHook = Box<dyn FnOnce(&UnloadReport) + Send>;

/// A library to close: its handle, what to say about it, and who waits for the report.
pub struct Closing {
    pub raw: RawLibrary,
    pub path: PathBuf,
    pub plugin: String,
    pub version: String,
    /// The first digits of its content hash.
    pub hash: String,
    pub hooks: Vec<UnloadHook>,
    /// Deletes the private copy once the library is closed (when no one else uses it).
    pub lease: Option<Lease>,
}

/// Hands `closing` to the closer thread, which closes it [`QUIET`] from now.
pub fn close_later(closing: Closing) {
    let due = Instant::now() + QUIET;
    if let Err(e) = closer().send((due, closing)) {
        // No closer thread: close right here rather than never.
        let (_, closing) = e.0;
        close(closing);
    }
}

fn closer() -> Sender<(Instant, Closing)> {
    static CLOSER: OnceLock<Mutex<Sender<(Instant, Closing)>>> = OnceLock::new();
    CLOSER
        .get_or_init(|| {
            let (tx, rx) = channel::<(Instant, Closing)>();
            let spawned = std::thread::Builder::new()
                .name("orgloop-unload".into())
                .spawn(move || {
                    // In order of their last release, so each wait is until its own due time.
                    for (due, closing) in rx {
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        close(closing);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start the library closer thread: {e}");
            }
            Mutex::new(tx)
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

fn close(c: Closing) {
    drop(c.raw); // dlclose
    let report = verify_unloaded(&c.path);
    let (plugin, version, hash) = (&c.plugin, &c.version, &c.hash);
    match &report {
        UnloadReport::Unloaded => {
            tracing::info!(plugin = %plugin, version = %version, hash = %hash, "plugin library unloaded")
        }
        UnloadReport::Pinned { reason } => {
            tracing::warn!(plugin = %plugin, version = %version, hash = %hash, "plugin library pinned: {reason}")
        }
        UnloadReport::ProcessExited { .. } => {}
    }
    for hook in c.hooks {
        hook(&report);
    }
    drop(c.lease);
}
