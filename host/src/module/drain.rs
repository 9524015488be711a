//! Draining a replaced generation: its deliveries run to completion on the old code until the
//! drain timeout, then get their cancellation signal, then are dropped after a short grace. When
//! the last reference is gone its objects drop, the libraries no newer generation uses close, and
//! each close is verified; the [`DrainReport`] records it all.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::generation::{Generation, GRACE};
use super::report::{DrainReport, DrainStart, ForcedDrain, LibraryUnload, PluginBuild};
use super::running::{Draining, Module};
use crate::plugin::{Library, UnloadReport};

/// Starts draining `old`, which `module` no longer routes to. `still_used` are the libraries of
/// the generations that remain; the others are reported as they close. `force` cancels at once.
pub fn start(
    module: &Arc<Module>,
    old: Arc<Generation>,
    still_used: &[Arc<Library>],
    timeout: Duration,
    force: bool,
) -> (DrainStart, Finished) {
    let unloads: Arc<Mutex<Vec<LibraryUnload>>> = Arc::default();
    let mut retired = Vec::new();
    for (name, lib) in &old.libraries {
        if still_used.iter().any(|l| Arc::ptr_eq(l, lib)) {
            continue;
        }
        let build = PluginBuild::of(lib);
        retired.push((name.clone(), build.clone()));
        let (unloads, plugin) = (unloads.clone(), name.clone());
        lib.on_unload(move |result| {
            let unload = LibraryUnload {
                plugin,
                build,
                result: result.clone(),
            };
            unloads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(unload);
        });
    }
    let force_token = CancellationToken::new();
    if force {
        force_token.cancel();
    }
    let (done, finished) = tokio::sync::watch::channel(None);
    let start = DrainStart {
        generation: old.number,
        inflight: old.inflight.len(),
        drain_timeout_ms: timeout.as_millis() as u64,
    };
    module.record().draining = Some(Draining {
        generation: old.number,
        started: Instant::now(),
        timeout,
        gen: Arc::downgrade(&old),
        force: force_token.clone(),
        finished: finished.clone(),
    });
    let module = module.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let deadline = started + timeout;
        let number = old.number;
        let weak = Arc::downgrade(&old);
        drop(old);
        let mut cancelled = 0;
        // Loop, because a dispatch that read the old generation just before the swap may still
        // hand it a delivery; the deadline still bounds the whole drain. Past it (and the grace),
        // only a plugin call that does not return can hold the generation: the drain ends and
        // reports its libraries as pinned, and they close whenever the call returns.
        let give_up = deadline + GRACE * 2;
        while let Some(g) = weak.upgrade() {
            if Instant::now() > give_up {
                tracing::warn!(module = %module.name, generation = number, "generation {number} is still in use by a plugin call that does not return; its libraries stay loaded until it does");
                break;
            }
            if !g.inflight.is_empty() || !g.inflight.is_closed() {
                cancelled += g
                    .stop(
                        deadline.saturating_duration_since(Instant::now()),
                        &force_token,
                    )
                    .await;
            }
            drop(g);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A stopped poller of a replaced or removed source may hold its library a moment longer
        // than the generation; wait (briefly) for every retiring library to report.
        let reported = || unloads.lock().unwrap_or_else(|e| e.into_inner()).len();
        let settle = Instant::now() + Duration::from_secs(2);
        while reported() < retired.len() && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if reported() < retired.len() {
            tracing::warn!(module = %module.name, generation = number, "a retired plugin library is still in use 2 s after its generation ended");
        }
        let mut libraries = std::mem::take(&mut *unloads.lock().unwrap_or_else(|e| e.into_inner()));
        for (plugin, build) in &retired {
            if !libraries
                .iter()
                .any(|l| &l.plugin == plugin && &l.build == build)
            {
                libraries.push(LibraryUnload {
                    plugin: plugin.clone(),
                    build: build.clone(),
                    result: UnloadReport::Pinned {
                        reason: "still in use when the drain ended (a plugin call that has not returned)".into(),
                    },
                });
            }
        }
        let pinned = libraries
            .iter()
            .filter(|l| matches!(l.result, UnloadReport::Pinned { .. }))
            .count();
        crate::metrics::metrics()
            .libraries_pinned
            .inc_by(pinned as u64);
        let report = DrainReport {
            generation: number,
            cancelled,
            forced: force_token.is_cancelled(),
            duration_ms: started.elapsed().as_millis() as u64,
            libraries,
        };
        let libraries: Vec<String> = report.libraries.iter().map(ToString::to_string).collect();
        tracing::info!(module = %module.name, generation = number, cancelled, "generation drained; {}", libraries.join(", "));
        let mut record = module.record();
        if record
            .draining
            .as_ref()
            .is_some_and(|d| d.generation == number)
        {
            record.draining = None;
        }
        record.last_drain = Some(report.clone());
        drop(record);
        let _ = done.send(Some(report));
    });
    (start, finished)
}

/// Tells, once, how a drain ended.
pub type Finished = tokio::sync::watch::Receiver<Option<DrainReport>>;

/// The report of the drain `finished` belongs to, once it is over.
pub async fn report(mut finished: Finished) -> Option<DrainReport> {
    finished
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|r| r.clone())
}

/// The current drain of `module`, if there is one: its generation, its force switch and its end.
pub fn current(module: &Module) -> Option<(u64, CancellationToken, Finished)> {
    let record = module.record();
    let d = record.draining.as_ref()?;
    Some((d.generation, d.force.clone(), d.finished.clone()))
}

/// Cuts the current drain of `module` short, if there is one, and waits until it is over.
pub async fn force_current(module: &Module) -> Option<ForcedDrain> {
    let (generation, force, finished) = current(module)?;
    force.cancel();
    let cancelled = report(finished).await.map_or(0, |d| d.cancelled);
    Some(ForcedDrain {
        generation,
        cancelled,
    })
}
