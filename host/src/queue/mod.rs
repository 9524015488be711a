//! The queue every accepted event goes through before it is routed: stored first, so that a
//! `202` is a promise, then handed to its module's dispatcher.
//!
//! - [`Queue::append`] stores an event (or, for a replayed dead letter, a delivery along one
//!   route) and hands it to the module once it is durable. With `durability: disk` (the default)
//!   that is after the log's group-committed `fdatasync` ([`log`]); with `memory` at once.
//! - Each entry carries a [`Ticket`]. A delivery that finishes (delivered or dead-lettered)
//!   acknowledges its route; when the last delivery of a dispatched entry is gone, the entry is
//!   done and compaction may reclaim it. An entry that was never dispatched, or whose deliveries
//!   were abandoned at shutdown, stays stored and is dispatched again at the next start.
//! - The queue is bounded: by bytes per module and in total, counting each entry's stored size
//!   plus what it holds in memory (`RESIDENT`). What does not fit is refused, so a webhook
//!   answers `503` instead of accepting what nothing can store.
//! - Entries of a module that is not loaded wait ("parked") until it is.
//!
//! [`dead`] holds the dead letters; [`record`] is the log's format.

pub mod dead;
mod inbox;
pub mod log;
pub mod record;
pub mod segment;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use orgloop_plugin_sdk::Event;
use tokio::sync::{mpsc, oneshot};

use self::dead::DeadLetters;
use self::log::{Log, Op};
use self::record::{encode, Put, Record};
use crate::cluster::Cluster;

/// How the queue keeps what it accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// On local disk, synced before a webhook is answered; survives a crash.
    #[default]
    Disk,
    /// In memory only: faster, and everything waiting is lost when the daemon stops or dies.
    Memory,
}

/// How to open the queue.
#[derive(Clone, Debug)]
pub struct Options {
    pub durability: Durability,
    /// The data directory (`queue/`, `dead/` and a lock file go in it).
    pub dir: PathBuf,
    /// Bytes all modules together may keep waiting.
    pub max_bytes: u64,
    /// Size at which the log starts a new segment file.
    pub segment_bytes: u64,
    /// Cluster mode: the cluster's stream takes the place of the local log (see
    /// [`crate::cluster`]).
    pub cluster: Option<Arc<Cluster>>,
}

/// Why an entry was not accepted.
#[derive(Debug)]
pub enum Refused {
    /// No room: the module's or the daemon's limit is reached. Try again later.
    Full(String),
    /// The store could not write it (disk full, I/O error).
    Failed(String),
    /// The module is not loaded.
    Unknown(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Full(why) | Refused::Failed(why) | Refused::Unknown(why) => f.write_str(why),
        }
    }
}

/// One accepted entry, as its module's dispatcher receives it.
pub struct Entry {
    pub ticket: Ticket,
    pub accepted_ms: i64,
    /// `Some(route)`: deliver along this route only, without routing or transforms.
    pub route: Option<String>,
    /// Routes already finished before a restart: not delivered again.
    pub done: Vec<String>,
    /// Routes whose attempt had started when the daemon died (only recorded for actors with
    /// `interrupted: dead_letter`).
    pub started: Vec<String>,
    pub event: Event,
}

/// An entry's claim on the queue; see the [module docs](self).
#[derive(Clone)]
pub struct Ticket(Arc<TicketInner>);

struct TicketInner {
    seq: u64,
    module: String,
    bytes: u64,
    queue: Weak<Shared>,
    dispatched: AtomicBool,
    abandoned: AtomicBool,
    /// Counted against the daemon's total: from acceptance, or (read back at start) from when
    /// its module is loaded, so that a module no longer configured holds no one else's room.
    counted: AtomicBool,
}

impl Ticket {
    pub fn seq(&self) -> u64 {
        self.0.seq
    }

    /// Route `route` is finished (delivered or dead-lettered): not delivered again after a
    /// restart.
    pub fn ack(&self, route: &str) {
        // The last delivery of a dispatched entry: its `Done` follows when this ticket drops, and
        // says as much (no ticket is cloned after dispatch).
        let last = Arc::strong_count(&self.0) == 1
            && self.0.dispatched.load(Ordering::Acquire)
            && !self.0.abandoned.load(Ordering::Acquire);
        if !last {
            self.send(Op::Ack {
                seq: self.0.seq,
                route: route.to_owned(),
            });
        }
    }

    fn send(&self, op: Op) {
        if let Some(q) = self.0.queue.upgrade() {
            q.send(op);
        }
    }

    /// An attempt along `route` starts, for an actor that must not run a delivery twice;
    /// resolves once that is durable, so that a crash during the attempt is known afterwards.
    pub async fn started(&self, route: &str) {
        self.durably(Op::Started {
            seq: self.0.seq,
            route: route.to_owned(),
        })
        .await
    }

    /// The attempt that [`started`](Self::started) ended without finishing the route (it waits
    /// for a retry).
    pub fn ended(&self, route: &str) {
        self.send(Op::Ended {
            seq: self.0.seq,
            route: route.to_owned(),
        });
    }

    /// Like [`ack`](Self::ack), and waits until the acknowledgement is durable (for a route whose
    /// start was stored: after a crash, the start alone would count as interrupted).
    pub async fn ack_durably(&self, route: &str) {
        self.durably(Op::Ack {
            seq: self.0.seq,
            route: route.to_owned(),
        })
        .await
    }

    /// Sends `op` to the log and waits until it is durable (at once without a log).
    async fn durably(&self, op: Op) {
        if let Some(q) = self.0.queue.upgrade() {
            q.send(op);
            let synced = q.synced();
            drop(q);
            let _ = synced.await;
        }
    }

    /// Routing is over: the entry is done once the last clone of this ticket is dropped.
    pub fn dispatched(&self) {
        self.0.dispatched.store(true, Ordering::Release);
    }

    /// Leaves the entry stored (the daemon stops with a delivery unfinished): it is dispatched
    /// again at the next start.
    pub fn abandon(&self) {
        self.0.abandoned.store(true, Ordering::Release);
    }
}

impl Drop for TicketInner {
    fn drop(&mut self) {
        let Some(q) = self.queue.upgrade() else {
            return;
        };
        let done =
            self.dispatched.load(Ordering::Acquire) && !self.abandoned.load(Ordering::Acquire);
        q.release(
            &self.module,
            self.seq,
            self.bytes,
            self.counted.load(Ordering::Acquire),
        );
        if let Some(cluster) = &q.cluster {
            cluster.finish(self.seq, done);
        } else if done {
            q.send(Op::Done { seq: self.seq });
        } else {
            q.unfinished.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A module's part of the queue.
struct Lane {
    /// The module's dispatcher; `None` while it is not loaded.
    tx: Option<mpsc::UnboundedSender<Entry>>,
    parked: Vec<Entry>,
    used: u64,
    max: u64,
    /// Accepted time of each entry still waiting, by sequence number.
    waiting: BTreeMap<u64, i64>,
}

impl Lane {
    fn new() -> Lane {
        Lane {
            tx: None,
            parked: Vec::new(),
            used: 0,
            max: u64::MAX,
            waiting: BTreeMap::new(),
        }
    }
}

pub(crate) struct Shared {
    /// `None` with `durability: memory`, and in cluster mode.
    log: Option<Log>,
    cluster: Option<Arc<Cluster>>,
    pub(crate) next_seq: AtomicU64,
    max_total: u64,
    used_total: AtomicU64,
    /// Entries let go without being finished (left for the next start).
    unfinished: AtomicU64,
    lanes: Mutex<HashMap<String, Lane>>,
    checkpoints: Mutex<HashMap<(String, String), String>>,
    /// Held for as long as the daemon runs: one daemon per data directory.
    _lock: Option<std::fs::File>,
}

impl Shared {
    fn lanes(&self) -> MutexGuard<'_, HashMap<String, Lane>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, op: Op) {
        if let Some(log) = &self.log {
            log.send(op);
        }
    }

    /// Resolves once everything sent to the log so far is durable.
    fn synced(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let done = move || {
            let _ = tx.send(());
        };
        match &self.log {
            Some(log) => log.send(Op::Sync(Box::new(done))),
            None => done(),
        }
        rx
    }

    /// Whether `module`'s lane can take `bytes` more (its `max_queue_bytes`, and the daemon's).
    pub(crate) fn has_room(&self, module: &str, bytes: u64) -> bool {
        let lanes = self.lanes();
        let used = lanes.get(module).map_or(0, |l| l.used);
        let max = lanes.get(module).map_or(u64::MAX, |l| l.max);
        // Always room for one: an event larger than the limit still goes through, alone.
        used == 0
            || (used + bytes <= max
                && self.used_total.load(Ordering::Relaxed) + bytes <= self.max_total)
    }

    /// Counts an entry taken from the cluster's stream, for `module status` and the limits.
    pub(crate) fn track(&self, module: &str, seq: u64, accepted_ms: i64, bytes: u64) {
        let mut lanes = self.lanes();
        let lane = lanes.entry(module.to_owned()).or_insert_with(Lane::new);
        lane.used += bytes;
        lane.waiting.insert(seq, accepted_ms);
        self.used_total.fetch_add(bytes, Ordering::Relaxed);
    }

    fn release(&self, module: &str, seq: u64, bytes: u64, counted: bool) {
        if let Some(lane) = self.lanes().get_mut(module) {
            lane.used = lane.used.saturating_sub(bytes);
            lane.waiting.remove(&seq);
        }
        if counted {
            self.used_total.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Gives a stored entry to its module's dispatcher, or parks it until the module is loaded.
    pub(crate) fn hand_off(&self, entry: Entry) {
        let mut lanes = self.lanes();
        let lane = lanes
            .entry(entry.ticket.0.module.clone())
            .or_insert_with(Lane::new);
        let entry = match &lane.tx {
            Some(tx) => match tx.send(entry) {
                Ok(()) => return,
                Err(mpsc::error::SendError(entry)) => entry,
            },
            None => entry,
        };
        if self.cluster.is_some() {
            // Not kept here for a module this node no longer runs: dropped undispatched (after
            // the lock, which its ticket takes), its message goes back to the stream for
            // another node.
            drop(lanes);
            drop(entry);
            return;
        }
        lane.parked.push(entry);
    }
}

/// What the queue holds for one module, for `module status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LaneStats {
    /// Entries accepted and not yet finished.
    pub entries: usize,
    pub bytes: u64,
    pub max_bytes: u64,
    /// Age of the oldest unfinished entry, in milliseconds.
    pub oldest_ms: Option<u64>,
}

/// The daemon's queue and dead letters. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
    pub dead: DeadLetters,
    pub durability: Durability,
}

impl Queue {
    /// Opens the queue; with `durability: disk`, locks the data directory and reads back every
    /// entry a previous run left unfinished (they wait until their module is loaded).
    pub fn open(opts: &Options) -> io::Result<Queue> {
        let (log, dead, lock, recovered) = match (&opts.cluster, opts.durability) {
            // The cluster's streams keep the events and the dead letters.
            (Some(cluster), _) => (None, DeadLetters::cluster(cluster.clone()), None, None),
            (None, Durability::Memory) => (None, DeadLetters::memory(), None, None),
            (None, Durability::Disk) => {
                std::fs::create_dir_all(&opts.dir)?;
                let lock = lock_dir(&opts.dir)?;
                let (log, recovered) = Log::open(&opts.dir.join("queue"), opts.segment_bytes)?;
                let dead = DeadLetters::open(opts.dir.join("dead"))?;
                (Some(log), dead, Some(lock), Some(recovered))
            }
        };
        let shared = Arc::new(Shared {
            log,
            cluster: opts.cluster.clone(),
            next_seq: AtomicU64::new(recovered.as_ref().map_or(1, |r| r.next_seq)),
            max_total: opts.max_bytes,
            used_total: AtomicU64::new(0),
            unfinished: AtomicU64::new(0),
            lanes: Mutex::default(),
            checkpoints: Mutex::default(),
            _lock: lock,
        });
        if let Some(r) = recovered {
            let count = r.entries.len();
            for put in r.entries {
                restore(&shared, put);
            }
            let mut checkpoints = shared.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
            for (module, source, value) in r.checkpoints {
                checkpoints.insert((module, source), value);
            }
            if count > 0 {
                tracing::info!(
                    entries = count,
                    "store: {count} accepted entries were not finished; they are dispatched again"
                );
            }
        }
        Ok(Queue {
            shared,
            dead,
            durability: opts.durability,
        })
    }

    /// Stores an event of `module` and hands it to the module's dispatcher once it is stored.
    /// Await the result before promising anything to whoever sent the event.
    pub fn append(&self, module: &str, event: Event) -> Result<Stored, Refused> {
        self.store(module, None, event, false)
    }

    /// Stores a dead letter's delivery again: along `route` only, or (`None`) the whole event
    /// through its routes. Unlike a new event, it is never taken for a client's retry of one
    /// already stored.
    pub fn replay(
        &self,
        module: &str,
        route: Option<String>,
        event: Event,
    ) -> Result<Stored, Refused> {
        self.store(module, route, event, true)
    }

    fn store(
        &self,
        module: &str,
        route: Option<String>,
        event: Event,
        again: bool,
    ) -> Result<Stored, Refused> {
        let accepted_ms = crate::module::running::now_ms();
        if let Some(cluster) = &self.shared.cluster {
            if self
                .shared
                .lanes()
                .get(module)
                .is_none_or(|l| l.tx.is_none())
            {
                return Err(Refused::Unknown(format!("module {module} is not loaded")));
            }
            // Handed to a dispatcher when a node takes it from the stream, this one or another.
            return cluster.publish(module, route.as_deref(), &event, accepted_ms, again);
        }
        let json = serde_json::to_vec(&event).map_err(|e| Refused::Failed(e.to_string()))?;
        let mut record = Vec::with_capacity(json.len() + 64 + module.len());
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        encode(
            &Record::Put(Put {
                seq,
                accepted_ms,
                module: module.to_owned(),
                route: route.clone(),
                done: Vec::new(),
                started: Vec::new(),
                event: json,
            }),
            &mut record,
        );
        let bytes = record.len() as u64 + RESIDENT;
        self.reserve(module, seq, accepted_ms, bytes)?;
        let entry = Entry {
            ticket: self.ticket(seq, module, bytes),
            accepted_ms,
            route,
            done: Vec::new(),
            started: Vec::new(),
            event,
        };
        let (tx, rx) = oneshot::channel();
        match &self.shared.log {
            None => {
                self.shared.hand_off(entry);
                let _ = tx.send(Ok(()));
            }
            Some(log) => {
                let shared = Arc::downgrade(&self.shared);
                log.send(Op::Put {
                    seq,
                    record,
                    then: Box::new(move |result| {
                        if result.is_ok() {
                            if let Some(s) = shared.upgrade() {
                                s.hand_off(entry);
                            }
                        }
                        let _ = tx.send(result);
                    }),
                });
            }
        }
        Ok(Stored(rx))
    }

    /// Counts `bytes` against the module's and the daemon's limits, or refuses them.
    fn reserve(&self, module: &str, seq: u64, accepted_ms: i64, bytes: u64) -> Result<(), Refused> {
        let mut lanes = self.shared.lanes();
        let Some(lane) = lanes.get_mut(module).filter(|l| l.tx.is_some()) else {
            return Err(Refused::Unknown(format!("module {module} is not loaded")));
        };
        if lane.used + bytes > lane.max {
            return Err(Refused::Full(format!(
                "module {module} has {} bytes waiting, its limit (defaults.max_queue_bytes) is {}",
                lane.used, lane.max
            )));
        }
        let total = self.shared.used_total.load(Ordering::Relaxed);
        if total + bytes > self.shared.max_total {
            return Err(Refused::Full(format!(
                "the daemon has {total} bytes waiting, its limit (--max-store-bytes) is {}",
                self.shared.max_total
            )));
        }
        self.shared.used_total.fetch_add(bytes, Ordering::Relaxed);
        lane.used += bytes;
        lane.waiting.insert(seq, accepted_ms);
        Ok(())
    }

    fn ticket(&self, seq: u64, module: &str, bytes: u64) -> Ticket {
        new_ticket(&self.shared, seq, module, bytes, true)
    }

    /// Connects module `module`'s dispatcher, with its byte limit; the entries waiting for it
    /// come first, in the order they were accepted. The [`Connection`] disconnects it again.
    pub fn register(&self, module: &str, max_bytes: u64) -> Connection {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut lanes = self.shared.lanes();
        let lane = lanes.entry(module.to_owned()).or_insert_with(Lane::new);
        lane.max = max_bytes;
        let mut parked = std::mem::take(&mut lane.parked);
        parked.sort_by_key(|e| e.ticket.seq());
        for entry in parked {
            if !entry.ticket.0.counted.swap(true, Ordering::AcqRel) {
                self.shared
                    .used_total
                    .fetch_add(entry.ticket.0.bytes, Ordering::Relaxed);
            }
            let _ = tx.send(entry);
        }
        let sender = tx.downgrade();
        lane.tx = Some(tx);
        drop(lanes);
        if let Some(cluster) = &self.shared.cluster {
            cluster.pump(&self.shared, module);
        }
        Connection {
            entries: Some(rx),
            sender,
        }
    }

    /// Changes a module's byte limit (after a reload).
    pub fn set_limit(&self, module: &str, max_bytes: u64) {
        if let Some(lane) = self.shared.lanes().get_mut(module) {
            lane.max = max_bytes;
        }
    }

    /// Disconnects a module's dispatcher: its channel ends after what it holds. Only `connection`'s
    /// own: a module of the same name loaded meanwhile stays connected.
    pub fn unregister(&self, module: &str, connection: &Connection) {
        let Some(ours) = connection.sender.upgrade() else {
            return;
        };
        if let Some(lane) = self.shared.lanes().get_mut(module) {
            if lane.tx.as_ref().is_some_and(|tx| tx.same_channel(&ours)) {
                lane.tx = None;
                if let Some(cluster) = &self.shared.cluster {
                    cluster.stop_pump(module);
                }
            }
        }
    }

    /// Stores the latest checkpoint of a polled source. It is written after every event sent to
    /// the queue before it, so it never runs ahead of what was stored. (In a cluster the poller
    /// stores it in the cluster as well.)
    pub fn checkpoint(&self, module: &str, source: &str, value: &str) {
        self.shared
            .checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((module.to_owned(), source.to_owned()), value.to_owned());
        self.shared.send(Op::Checkpoint {
            module: module.to_owned(),
            source: source.to_owned(),
            value: value.to_owned(),
        });
    }

    /// The stored checkpoints of `module`'s sources.
    pub fn checkpoints(&self, module: &str) -> Vec<(String, String)> {
        self.shared
            .checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((m, _), _)| m == module)
            .map(|((_, s), v)| (s.clone(), v.clone()))
            .collect()
    }

    pub fn stats(&self, module: &str) -> Option<LaneStats> {
        let lanes = self.shared.lanes();
        let lane = lanes.get(module)?;
        Some(LaneStats {
            entries: lane.waiting.len(),
            bytes: lane.used,
            max_bytes: lane.max,
            oldest_ms: lane
                .waiting
                .values()
                .next()
                .map(|&at| crate::module::running::since(at).as_millis() as u64),
        })
    }

    /// The cluster this node joined (`None` without `--cluster`).
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.shared.cluster.clone()
    }

    /// Whether the events go through a cluster's stream (see [`crate::cluster`]).
    pub fn clustered(&self) -> bool {
        self.shared.cluster.is_some()
    }

    /// Why the store cannot write, while that is so.
    pub fn write_error(&self) -> Option<String> {
        if let Some(c) = self.shared.cluster.as_ref().filter(|c| !c.connected()) {
            return Some(format!("not connected to the cluster at {}", c.url()));
        }
        self.shared.log.as_ref().and_then(Log::failing)
    }

    /// Entries let go unfinished so far, plus those waiting for a module that is not loaded:
    /// what the next start finds stored.
    pub fn unfinished(&self) -> u64 {
        let parked: usize = self.shared.lanes().values().map(|l| l.parked.len()).sum();
        self.shared.unfinished.load(Ordering::Relaxed) + parked as u64
    }

    /// Waits until everything sent to the log so far is durable (at shutdown).
    pub async fn sync(&self) {
        let _ = self.shared.synced().await;
    }
}

/// A module's connection to the queue: the entries for its dispatcher, and what tells its own
/// registration apart from a later one under the same name.
pub struct Connection {
    pub entries: Option<mpsc::UnboundedReceiver<Entry>>,
    sender: mpsc::WeakUnboundedSender<Entry>,
}

/// The answer to one [`Queue::append`]: resolves once the entry is stored.
pub struct Stored(pub(crate) oneshot::Receiver<io::Result<()>>);

impl Stored {
    /// Like [`wait`](Self::wait), from a thread that may block (a plugin's `emit`), which must
    /// not be the one that would resolve it.
    pub fn wait_blocking(self) -> Result<(), Refused> {
        // Unconstrained: on a task that spent its budget (a dispatcher after a burst), tokio
        // would defer the wake-up to the end of a turn that never ends while this thread waits.
        block_on(tokio::task::unconstrained(self.wait()))
    }

    pub async fn wait(self) -> Result<(), Refused> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Refused::Failed(format!("the store could not write: {e}"))),
            Err(_) => Err(Refused::Failed("the store is closed".into())),
        }
    }
}

/// Runs `future` to its end on this thread, parked while it waits.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

pub(crate) fn new_ticket(
    shared: &Arc<Shared>,
    seq: u64,
    module: &str,
    bytes: u64,
    counted: bool,
) -> Ticket {
    Ticket(Arc::new(TicketInner {
        seq,
        module: module.to_owned(),
        bytes,
        queue: Arc::downgrade(shared),
        dispatched: AtomicBool::new(false),
        abandoned: AtomicBool::new(false),
        counted: AtomicBool::new(counted),
    }))
}

/// What an unfinished entry costs in memory beyond its stored size, as the limits count it: its
/// event, its ticket and the task of each of its deliveries (measured: about 2.6 KB in all for a
/// small event waiting on a failing actor; BENCHMARKS.md).
pub(crate) const RESIDENT: u64 = 2048;

/// Parks an entry read back at startup: counted against its module's limit, and against the
/// daemon's once its module is loaded.
fn restore(shared: &Arc<Shared>, put: Put) {
    let bytes = (put.event.len() + record::HEADER + 64) as u64 + RESIDENT;
    let event = match Event::parse(&put.event) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(seq = put.seq, module = %put.module, "store: a stored event does not parse ({e}); dropped");
            shared.send(Op::Done { seq: put.seq });
            return;
        }
    };
    {
        let mut lanes = shared.lanes();
        let lane = lanes.entry(put.module.clone()).or_insert_with(Lane::new);
        lane.used += bytes;
        lane.waiting.insert(put.seq, put.accepted_ms);
    }
    let entry = Entry {
        ticket: new_ticket(shared, put.seq, &put.module, bytes, false),
        accepted_ms: put.accepted_ms,
        route: put.route,
        done: put.done,
        started: put.started,
        event,
    };
    shared.hand_off(entry);
}

/// Takes the data directory's lock, or says which daemon holds it.
fn lock_dir(dir: &Path) -> io::Result<std::fs::File> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    if file.try_lock().is_err() {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "the data directory {} is in use by another orgloop daemon{}; give this one its own with --data-dir or ORGLOOP_HOME",
                dir.display(),
                match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                }
            ),
        ));
    }
    file.set_len(0)?;
    std::io::Write::write_all(&mut &file, std::process::id().to_string().as_bytes())?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orgloop_plugin_sdk::EventType;

    fn options(dir: &Path, max_bytes: u64) -> Options {
        Options {
            durability: Durability::Disk,
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes: 1 << 20,
            cluster: None,
        }
    }

    fn event(n: u64) -> Event {
        Event::builder("in", EventType::ResourceChanged)
            .payload(serde_json::json!({ "n": n }))
            .build()
    }

    #[tokio::test]
    async fn entries_of_a_module_not_loaded_take_no_room_from_the_others() {
        let dir = std::env::temp_dir().join(format!("orgloop-queue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let q = Queue::open(&options(&dir, u64::MAX)).unwrap();
            let _old = q.register("old", u64::MAX);
            for n in 0..20 {
                q.append("old", event(n)).unwrap().wait().await.unwrap();
            }
        }
        // Room for a few events only: the 20 stored ones of "old" wait without counting.
        let q = Queue::open(&options(&dir, 4 * (RESIDENT + 600))).unwrap();
        assert_eq!(q.unfinished(), 20);
        let _new = q.register("new", u64::MAX);
        q.append("new", event(1)).unwrap().wait().await.unwrap();
        // Once "old" is loaded, its entries count, and the daemon is full.
        let mut old = q.register("old", u64::MAX);
        assert!(matches!(q.append("new", event(2)), Err(Refused::Full(_))));
        let first = old.entries.as_mut().unwrap().recv().await.unwrap();
        assert_eq!(
            first.event.payload().get("n").and_then(|n| n.as_u64()),
            Some(0)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
