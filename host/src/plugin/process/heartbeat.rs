//! The heartbeat of every plugin process: one thread pings each child every [`PING_EVERY`] and
//! kills the ones that cannot recover by themselves.
//!
//! A child is killed when it does not finish starting in time (loading its library, then each
//! rebuilt constructor in turn), or when none of its threads has answered for [`STUCK_AFTER`] —
//! unless a transform call, which runs on the thread that reads the pings, is still within its
//! deadline (past it, its caller kills the child).
//! A child silent for [`STALLED_AFTER`] is reported `degraded` meanwhile.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::supervisor::Shared;
use super::wire::Down;

pub const PING_EVERY: Duration = Duration::from_secs(1);
pub const STALLED_AFTER: Duration = Duration::from_secs(2);
pub const STUCK_AFTER: Duration = Duration::from_secs(30);

/// Puts `shared`'s children under the heartbeat, for as long as `shared` lives.
pub(super) fn watch(shared: &Arc<Shared>) {
    watched()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::downgrade(shared));
}

/// One heartbeat for one plugin process.
fn beat(s: &Shared) {
    let (link, child, boot) = {
        let st = s.state();
        (st.link.clone(), st.child, st.boot.clone())
    };
    let Some(child) = child else { return };
    let Some(link) = link else {
        if let Some(boot) = boot.filter(|b| b.until < Instant::now()) {
            s.kill(child.nth, format!("it did not {}", boot.doing), false);
        }
        return;
    };
    let silent = s.silent(&link).unwrap_or_default();
    if silent >= STUCK_AFTER {
        let why = format!(
            "none of its threads answered for {} s (a plugin call blocks them)",
            silent.as_secs()
        );
        s.kill(link.nth, why, false);
    } else {
        let _ = link.out.send(&Down::Ping { call: 0 });
    }
}

/// Every supervisor, for the heartbeat thread (started with the first).
fn watched() -> &'static Mutex<Vec<Weak<Shared>>> {
    static WATCHED: OnceLock<Mutex<Vec<Weak<Shared>>>> = OnceLock::new();
    WATCHED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("p-heartbeat".into())
            .spawn(|| loop {
                std::thread::sleep(PING_EVERY);
                let all: Vec<Arc<Shared>> = {
                    let mut w = watched().lock().unwrap_or_else(|e| e.into_inner());
                    w.retain(|s| s.strong_count() > 0);
                    w.iter().filter_map(Weak::upgrade).collect()
                };
                for s in all {
                    beat(&s);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the plugin heartbeat thread: {e}");
        }
        Mutex::default()
    })
}
