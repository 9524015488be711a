//! [`Module`]: a running module — its name, its current generation behind an atomic pointer, and
//! what outlives generations: the dispatcher that routes its stored events, its deliveries (and
//! their retries), statistics, source checkpoints, pollers, the generation draining after a
//! reload, and the record of the last reload.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use orgloop_plugin_sdk::Event;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::executor::{CallWatch, Executor};
use super::generation::Generation;
use super::poller::Pollers;
use super::report::{DrainReport, ReloadOutcome};
use crate::config::ConfigError;
use crate::engine::dispatch::dispatch;
use crate::engine::route::RouteStats;
use crate::queue::{Connection, Queue, Refused, Stored};

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

/// A monotonic clock in ms, for instants kept in atomics: unlike the wall clock it does not
/// jump, so a clock adjustment neither fires nor delays a deadline kept this way.
pub fn mono_ms() -> i64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as i64
}

/// How long ago `ms` (Unix milliseconds, from [`now_ms`]) was; zero for a time ahead.
pub fn since(ms: i64) -> Duration {
    Duration::from_millis((now_ms() - ms).max(0) as u64)
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
    /// A rollout in progress (its previous generation still loaded), and the last one's end.
    pub rollout: Option<super::rollout::Active>,
    pub last_rollout: Option<super::rollout::RolloutReport>,
}

/// The deliveries of one actor, by state (kept across reloads by actor id).
#[derive(Debug, Default)]
pub struct ActorStats {
    /// Waiting for the actor: its `max_inflight`, or its gate while its target fails.
    pub waiting: AtomicUsize,
    /// Being attempted.
    pub inflight: AtomicUsize,
    /// Waiting out the backoff after a failed attempt.
    pub retrying: AtomicUsize,
}

/// Counts one in a counter for as long as it lives.
pub struct Count<'a>(&'a AtomicUsize);

impl<'a> Count<'a> {
    pub fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Count(counter)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a module stops, which decides what happens to its unfinished deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopping {
    /// The daemon stops: they stay stored and run again at the next start.
    Shutdown,
    /// The module is unloaded: they go to the dead letters.
    Unload,
}

/// A running module.
pub struct Module {
    pub name: String,
    pub dir: PathBuf,
    pub started: Instant,
    pub(super) current: ArcSwapOption<Generation>,
    /// During a canary: the new generation and its share of events (see [`super::rollout`]).
    canary: ArcSwapOption<super::rollout::Canary>,
    /// Counts the changes of `current` and `canary`: a delivery waiting for a failing actor's
    /// gate wakes up at one, since the generation it should go through may have changed.
    swaps: tokio::sync::watch::Sender<u64>,
    /// The highest number of a generation that served events: a new one is numbered above it,
    /// so one that was rolled back keeps its number for good.
    pub(super) numbered: AtomicU64,
    /// The daemon's queue: every event of this module is stored there before it is routed.
    pub queue: Queue,
    /// Deliveries, from their first attempt until delivered or dead-lettered.
    pub deliveries: TaskTracker,
    /// Raised when the module stops; see [`Stopping`].
    pub stopping: CancellationToken,
    stopping_for: Mutex<Option<Stopping>>,
    /// The threads its plugin code runs on.
    pub executor: Executor,
    /// The dispatcher's transform call, watched for its deadline.
    pub calls: CallWatch,
    /// The task that routes stored entries, and the switch that stops it before its channel ends.
    pub(super) dispatcher: Mutex<Option<JoinHandle<()>>>,
    /// Its registration with the queue, while it is connected.
    connection: Mutex<Option<Connection>>,
    pub(super) stop_dispatching: CancellationToken,
    source_stats: Mutex<HashMap<String, Arc<SourceStats>>>,
    actor_stats: Mutex<HashMap<String, Arc<ActorStats>>>,
    checkpoints: Mutex<HashMap<String, String>>,
    pub(super) pollers: Pollers,
    /// Serializes reloads and the unload of this module.
    pub(super) lifecycle: tokio::sync::Mutex<()>,
    /// Reload requests so far; a reload covers every request made before it read the files.
    pub(super) requests: AtomicU64,
    record: Mutex<Record>,
}

impl Module {
    pub(super) fn new(
        name: String,
        dir: PathBuf,
        queue: Queue,
        threads: usize,
    ) -> std::io::Result<Self> {
        let checkpoints = queue.checkpoints(&name).into_iter().collect();
        Ok(Module {
            executor: Executor::new(&name, threads)?,
            calls: CallWatch::default(),
            name,
            dir,
            started: Instant::now(),
            current: ArcSwapOption::empty(),
            canary: ArcSwapOption::empty(),
            swaps: tokio::sync::watch::Sender::new(0),
            numbered: AtomicU64::new(0),
            queue,
            deliveries: TaskTracker::new(),
            stopping: CancellationToken::new(),
            stopping_for: Mutex::new(None),
            dispatcher: Mutex::default(),
            connection: Mutex::default(),
            stop_dispatching: CancellationToken::new(),
            source_stats: Mutex::default(),
            actor_stats: Mutex::default(),
            checkpoints: Mutex::new(checkpoints),
            pollers: Pollers::default(),
            lifecycle: tokio::sync::Mutex::new(()),
            requests: AtomicU64::new(0),
            record: Mutex::default(),
        })
    }

    /// Why the module is not healthy now, if it is not: a transform call past its deadline,
    /// every thread of the module stuck, or a plugin process down or stuck.
    pub fn degraded(&self) -> Option<String> {
        let processes = self.generations().iter().find_map(|g| {
            g.libraries
                .iter()
                .find_map(|(_, lib)| lib.process()?.status().degraded)
        });
        if processes.is_some() {
            return processes;
        }
        if let Some((ran, deadline)) = self.calls.overrunning() {
            return Some(format!(
                "a transform call has run for {:.1} s, past its deadline of {:.1} s",
                ran.as_secs_f64(),
                deadline.as_secs_f64()
            ));
        }
        self.executor.stalled_for().map(|d| {
            format!(
                "none of the module's threads has run for {:.1} s: plugin calls block them",
                d.as_secs_f64()
            )
        })
    }

    /// Why the module stops (a shutdown unless an unload said otherwise).
    pub fn stopping_for(&self) -> Stopping {
        self.stopping_for
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(Stopping::Shutdown)
    }

    /// Disconnects the module from the queue: its dispatcher ends after what it holds.
    pub(super) fn disconnect(&self) {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(c) = connection {
            self.queue.unregister(&self.name, &c);
        }
    }

    /// Raises [`stopping`](Self::stopping) for `why`.
    pub(super) fn stop(&self, why: Stopping) {
        *self.stopping_for.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        self.stopping.cancel();
    }

    /// The delivery counters of actor `id`.
    pub fn actor_stats(&self, id: &str) -> Arc<ActorStats> {
        stats_of(&self.actor_stats, id)
    }

    /// Starts routing what the queue hands this module: each entry through the generation that
    /// is current when its turn comes.
    pub(super) fn start_dispatcher(self: &Arc<Self>, mut connection: Connection) {
        let Some(mut rx) = connection.entries.take() else {
            return;
        };
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection);
        let module = Arc::downgrade(self);
        let stop = self.stop_dispatching.clone();
        let task = self.executor.spawn(async move {
            loop {
                let entry = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    e = rx.recv() => e,
                };
                let (Some(entry), Some(m)) = (entry, module.upgrade()) else {
                    return;
                };
                // Without a generation (the module is being unloaded) the entry stays stored.
                let bucket = m.canary_bucket(entry.event.id());
                if let Some(g) = m.generation_for(bucket) {
                    dispatch(&m, &g, entry, bucket);
                }
            }
        });
        *self.dispatcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// The generation new events go to (during a canary: those not in its share).
    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current.load_full()
    }

    /// Makes `g` the current generation (the pointer swap of a reload), and numbers the next
    /// generation above it.
    pub(super) fn serve(&self, g: &Arc<Generation>) {
        self.numbered.fetch_max(g.number, Ordering::Relaxed);
        self.current.store(Some(g.clone()));
        self.swaps.send_modify(|n| *n += 1);
    }

    /// Starts or ends a canary (see [`super::rollout`]); a new one numbers the next generation
    /// above its own.
    pub(super) fn set_canary(&self, canary: Option<super::rollout::Canary>) {
        if let Some(c) = &canary {
            self.numbered
                .fetch_max(c.generation.number, Ordering::Relaxed);
        }
        self.canary.store(canary.map(Arc::new));
        self.swaps.send_modify(|n| *n += 1);
    }

    /// Changes when the generation events go through may have (a swap, a canary's start or
    /// end).
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swaps.subscribe()
    }

    /// The generations that serve events or may again: the current one, a canary's, and the
    /// two a rollout keeps loaded (also while a rollout begins or ends, when one of these is
    /// already or still set and the other not yet or no more).
    pub fn generations(&self) -> Vec<Arc<Generation>> {
        let mut all = super::rollout::loaded(self);
        all.extend(self.current());
        all.extend(self.canary.load().as_ref().map(|c| c.generation.clone()));
        let mut unique: Vec<Arc<Generation>> = Vec::with_capacity(all.len());
        for g in all {
            if !unique.iter().any(|u| Arc::ptr_eq(u, &g)) {
                unique.push(g);
            }
        }
        unique
    }

    /// The rollout bucket of an event being dispatched, while a canary runs: its deliveries
    /// follow it (see [`generation_for`](Self::generation_for)). `None` otherwise, so that an
    /// event routed before a canary never joins one halfway through its retries.
    pub fn canary_bucket(&self, event_id: &str) -> Option<u32> {
        self.canary
            .load()
            .as_ref()
            .map(|_| super::rollout::bucket(event_id))
    }

    /// The generation an event goes through: the canary's for an event dispatched during it in
    /// its share (the same every time for one event), else the current one.
    pub fn generation_for(&self, bucket: Option<u32>) -> Option<Arc<Generation>> {
        if let (Some(c), Some(b)) = (self.canary.load().as_ref(), bucket) {
            if b < c.share {
                return Some(c.generation.clone());
            }
        }
        self.current()
    }

    /// The lifecycle record (draining generation, last reload, last failure).
    pub fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The statistics of source `id`.
    pub fn source_stats(&self, id: &str) -> Arc<SourceStats> {
        stats_of(&self.source_stats, id)
    }

    /// Takes an event from one of this module's sources (or emitted by one of its plugins) into
    /// the queue; it is routed once stored. Await the result before promising anything to whoever
    /// sent it.
    pub fn accept(&self, event: Event, stats: Option<&SourceStats>) -> Result<Stored, Refused> {
        if self.current.load().is_none() {
            return Err(Refused::Unknown(format!(
                "module {} is not running",
                self.name
            )));
        }
        let stored = self.queue.append(&self.name, event)?;
        if let Some(s) = stats {
            s.event_count.fetch_add(1, Ordering::Relaxed);
            s.last_event_ms.store(now_ms(), Ordering::Relaxed);
        }
        Ok(stored)
    }

    pub fn checkpoint(&self, source: &str) -> Option<String> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .cloned()
    }

    /// Records a source's checkpoint in memory only (as the cluster kept it, when another node
    /// polled last; [`set_checkpoint`](Self::set_checkpoint) also stores it).
    pub(super) fn adopt_checkpoint(&self, source: &str, checkpoint: String) {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_owned(), checkpoint);
    }

    /// Records a source's checkpoint, in memory and in the store (after the events polled with
    /// it, so that it never runs ahead of what was stored).
    pub fn set_checkpoint(&self, source: &str, checkpoint: String) {
        self.queue.checkpoint(&self.name, source, &checkpoint);
        self.adopt_checkpoint(source, checkpoint);
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

/// The statistics of `id` in `map`, made on first use: they outlive generations, by id.
fn stats_of<T: Default>(map: &Mutex<HashMap<String, Arc<T>>>, id: &str) -> Arc<T> {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(id.to_owned())
        .or_default()
        .clone()
}
