//! [`Module`]: a running module — its name, its current generation behind an atomic pointer, and
//! what outlives generations: statistics, source checkpoints, pollers, the generation draining
//! after a reload, and the record of the last reload.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use orgloop_plugin_sdk::Event;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::generation::Generation;
use super::poller::Pollers;
use super::report::{DrainReport, ReloadOutcome};
use crate::config::ConfigError;
use crate::engine::dispatch::dispatch;
use crate::engine::route::RouteStats;

/// Counters of one source, kept across reloads by source id.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub event_count: AtomicU64,
    /// Unix ms of the last event; 0 = never.
    pub last_event_ms: AtomicI64,
    pub error_count: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A generation that was replaced and is finishing its deliveries.
pub struct Draining {
    pub generation: u64,
    pub started: Instant,
    pub timeout: Duration,
    pub(super) gen: Weak<Generation>,
    /// Raising it cuts the drain short (cancel now, drop after the grace).
    pub(super) force: CancellationToken,
    pub(super) finished: super::drain::Finished,
}

impl Draining {
    /// Deliveries still running on the draining generation.
    pub fn inflight(&self) -> usize {
        self.gen.upgrade().map_or(0, |g| g.inflight.len())
    }
}

/// A reload that was refused, kept for `module status`.
#[derive(Clone, Debug, Serialize)]
pub struct FailedReload {
    pub at: String,
    pub errors: Vec<ConfigError>,
}

/// Lifecycle bookkeeping, behind one lock (never held across an await).
#[derive(Default)]
pub struct Record {
    pub draining: Option<Draining>,
    pub last_drain: Option<DrainReport>,
    /// The last reload outcome, with the last request number it covered.
    pub last_reload: Option<(u64, ReloadOutcome)>,
    pub last_failure: Option<FailedReload>,
}

/// A running module.
pub struct Module {
    pub name: String,
    pub dir: PathBuf,
    pub started: Instant,
    pub(super) current: ArcSwapOption<Generation>,
    source_stats: Mutex<HashMap<String, Arc<SourceStats>>>,
    checkpoints: Mutex<HashMap<String, String>>,
    pub(super) pollers: Pollers,
    /// Serializes reloads and the unload of this module.
    pub(super) lifecycle: tokio::sync::Mutex<()>,
    /// Reload requests so far; a reload covers every request made before it read the files.
    pub(super) requests: AtomicU64,
    record: Mutex<Record>,
}

impl Module {
    pub(super) fn new(name: String, dir: PathBuf) -> Self {
        Module {
            name,
            dir,
            started: Instant::now(),
            current: ArcSwapOption::empty(),
            source_stats: Mutex::default(),
            checkpoints: Mutex::default(),
            pollers: Pollers::default(),
            lifecycle: tokio::sync::Mutex::new(()),
            requests: AtomicU64::new(0),
            record: Mutex::default(),
        }
    }

    /// The generation new events go to.
    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current.load_full()
    }

    /// The lifecycle record (draining generation, last reload, last failure).
    pub fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The statistics of source `id`.
    pub fn source_stats(&self, id: &str) -> Arc<SourceStats> {
        self.source_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Takes an event from one of this module's sources (or emitted by one of its plugins) and
    /// routes it through the current generation.
    pub fn accept(&self, event: Event, stats: Option<&SourceStats>) -> Result<(), String> {
        let generation = self
            .current()
            .ok_or_else(|| format!("module {} is not running", self.name))?;
        if let Some(s) = stats {
            s.event_count.fetch_add(1, Ordering::Relaxed);
            s.last_event_ms.store(now_ms(), Ordering::Relaxed);
        }
        dispatch(&generation, event);
        Ok(())
    }

    pub fn checkpoint(&self, source: &str) -> Option<String> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .cloned()
    }

    pub fn set_checkpoint(&self, source: &str, checkpoint: String) {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_owned(), checkpoint);
    }

    /// Route statistics of the current generation, to carry into the next.
    pub(super) fn route_stats(&self) -> HashMap<String, Arc<RouteStats>> {
        self.current()
            .map(|g| {
                g.routes
                    .iter()
                    .map(|r| (r.spec.name.clone(), r.stats.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}
