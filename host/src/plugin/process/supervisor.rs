//! [`Supervisor`]: the daemon's side of one plugin process — starting it, calling into it,
//! restarting it when it dies, and stopping it when its library is retired.
//!
//! One thread per plugin process starts the child, reads everything it sends, and waits for it
//! when it ends; it is also the thread the child is forked from, so `PR_SET_PDEATHSIG` (which
//! fires when the forking *thread* ends) kills the child exactly when its supervisor is gone or
//! the daemon dies, even by SIGKILL.
//!
//! When a child dies unasked, every call in flight fails at once (a transform's route then
//! follows its `on_error`, a delivery is retried), the objects built in it are rebuilt in the
//! next child, and the next child starts after a backoff that doubles with each crash in a row.
//! [`CIRCUIT_AFTER`] crashes in a row open the circuit: no restart for a cooldown, calls fail at
//! once, and the module is `degraded` with the exit and the child's last stderr lines.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use orgloop_plugin_sdk::{Manifest, SymbolKind};
use serde::Serialize;

use super::outbox::{Outbox, Unsent};
use super::wire::{self, Down, Reply, Up};
use crate::module::running::now_ms;
use crate::plugin::load::PluginLoadError;
use crate::plugin::services::Services;
use crate::plugin::verify::UnloadReport;

/// The first restart waits this long; each crash in a row doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A child that lived this long before it died starts a new count of crashes in a row.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Crashes in a row that open the circuit, and the first cooldown (doubled while it goes on
/// crashing, up to 5 minutes).
pub const CIRCUIT_AFTER: u32 = 5;
const COOLDOWN: Duration = Duration::from_secs(30);
const MAX_COOLDOWN: Duration = Duration::from_secs(300);
/// How long a new child may take to load its library and answer; the heartbeat kills one that
/// takes longer (a restart has no caller waiting to give up).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a plugin constructor may run.
const BUILD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a retired child may take to exit after its input closed, before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// The heartbeat: a ping every [`PING_EVERY`]; a child none of whose threads sent anything for
/// [`STALLED_AFTER`] is reported, and for [`STUCK_AFTER`] it is killed and restarted — unless a
/// transform call or a constructor, which run on the thread that reads the pings, is still
/// within its deadline.
const PING_EVERY: Duration = Duration::from_secs(1);
const STALLED_AFTER: Duration = Duration::from_secs(2);
const STUCK_AFTER: Duration = Duration::from_secs(30);
/// Lines of a child's stderr kept for its status.
const STDERR_LINES: usize = 20;
/// How long the end of a dead child's stderr is waited for: a process it started may hold the
/// pipe open for ever.
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// Why a call into a plugin process did not get an answer.
#[derive(Debug)]
pub struct CallError {
    pub message: String,
    /// When the process should be able to answer again.
    pub retry_after: Option<Duration>,
    /// Trying again cannot help: the call cannot be sent at all.
    pub permanent: bool,
}

impl CallError {
    fn new(message: String) -> Self {
        CallError {
            message,
            retry_after: None,
            permanent: false,
        }
    }

    fn unsent(what: &str, why: Unsent) -> Self {
        CallError {
            message: format!("{what} could not be sent: {why}"),
            retry_after: None,
            permanent: matches!(why, Unsent::TooLarge(_)),
        }
    }
}

/// A monotonic clock in ms, for instants kept in atomics: unlike the wall clock it does not
/// jump, so a clock adjustment neither kills a healthy child nor spares a stuck one.
fn mono_ms() -> i64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as i64
}

/// `d` from now, or a year from now for a `d` too large to add.
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// How a plugin process ended.
#[derive(Clone, Debug, Serialize)]
pub struct Exit {
    /// `killed by signal 11 (SIGSEGV)` or `exited with code 1`.
    pub status: String,
    pub signal: Option<i32>,
    pub code: Option<i32>,
    /// Why, when the daemon knows: it killed the child, or the child ran out of `max_memory`.
    pub reason: Option<String>,
    /// The daemon killed it (a call past its deadline, or no heartbeat).
    pub killed: bool,
    /// The last lines it wrote to stderr.
    pub stderr: Vec<String>,
    /// Unix ms.
    pub at: i64,
    pub uptime_ms: u64,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status)?;
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        Ok(())
    }
}

/// What a plugin process is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting,
    Up,
    Restarting,
    CircuitOpen,
    Exited,
}

/// A plugin process as `module status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessStatus {
    pub state: Phase,
    pub pid: Option<u32>,
    pub restarts: u64,
    pub crashes_in_a_row: u32,
    pub max_memory: Option<u64>,
    pub last_exit: Option<Exit>,
    /// Why it is not serving, when it is not.
    pub degraded: Option<String>,
}

/// An object built in the child, kept to rebuild it in the next child.
struct Registered {
    kind: SymbolKind,
    symbol: String,
    config: String,
    services: Arc<Services>,
}

/// Who waits for the answer of a call.
enum Waiter {
    /// A transform call or a constructor: it runs on the child's reading thread, which reads no
    /// ping meanwhile, and may do so until `until`.
    Blocking {
        tx: SyncSender<Result<Reply, CallError>>,
        until: Instant,
    },
    Async(tokio::sync::oneshot::Sender<Result<Reply, CallError>>),
    /// An object rebuilt in a restarted child: no one waits, but it blocks the reading thread
    /// like any constructor, until `until` at most.
    Rebuild {
        until: Instant,
    },
}

impl Waiter {
    fn answer(self, r: Result<Reply, CallError>) {
        match self {
            Waiter::Blocking { tx, .. } => drop(tx.try_send(r)),
            Waiter::Async(tx) => drop(tx.send(r)),
            Waiter::Rebuild { .. } => {}
        }
    }

    /// Until when this call may keep the child's reading thread busy.
    fn blocks_until(&self) -> Option<Instant> {
        match self {
            Waiter::Blocking { until, .. } | Waiter::Rebuild { until } => Some(*until),
            Waiter::Async(_) => None,
        }
    }
}

/// The calls of one child waiting for an answer.
#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    /// Why no call is taken any more: the child is gone.
    closed: Option<String>,
}

/// The pipes to one running child.
pub(super) struct Link {
    pub out: Outbox,
    /// Which child of its supervisor this is (see [`State::child`]).
    nth: u64,
    pending: Mutex<Pending>,
    /// When the child last sent anything, in [`mono_ms`].
    last_heard: AtomicI64,
}

impl Link {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait(&self, call: u64, waiter: Waiter) -> Result<(), CallError> {
        let mut p = self.pending();
        if let Some(why) = &p.closed {
            return Err(CallError::new(why.clone()));
        }
        p.waiters.insert(call, waiter);
        Ok(())
    }

    /// Sends the frame of a call registered with [`Link::wait`]; gives the call up when the
    /// frame cannot be sent.
    fn send_call(&self, what: &str, call: u64, msg: &Down) -> Result<(), CallError> {
        self.out.send(msg).map_err(|why| {
            self.forget(call);
            CallError::unsent(what, why)
        })
    }

    /// Gives up waiting for `call`.
    pub fn forget(&self, call: u64) {
        self.pending().waiters.remove(&call);
    }

    /// The latest deadline of the calls that keep the child's reading thread busy.
    fn busy_until(&self) -> Option<Instant> {
        let p = self.pending();
        p.waiters.values().filter_map(Waiter::blocks_until).max()
    }

    /// A rebuilt object's constructor is past its deadline (a caller's own call is cut by the
    /// caller).
    fn rebuild_overdue(&self) -> bool {
        let now = Instant::now();
        let p = self.pending();
        p.waiters
            .values()
            .any(|w| matches!(w, Waiter::Rebuild { until } if *until < now))
    }

    /// Fails every waiting call and refuses new ones.
    fn close(&self, why: String) {
        let waiters: Vec<Waiter> = {
            let mut p = self.pending();
            p.closed = Some(why.clone());
            p.waiters.drain().map(|(_, w)| w).collect()
        };
        for w in waiters {
            w.answer(Err(CallError::new(why.clone())));
        }
    }
}

/// A child process not yet reaped: only while it is in [`State::child`] may its pid be
/// signalled (once reaped, the pid may belong to anyone).
#[derive(Clone, Copy)]
struct Spawned {
    nth: u64,
    pid: u32,
    at: Instant,
}

struct State {
    link: Option<Arc<Link>>,
    /// The current child from its spawn until just before it is reaped.
    child: Option<Spawned>,
    /// Children spawned so far.
    spawned: u64,
    /// The pid of the last child, for the report once it is gone.
    last_pid: Option<u32>,
    phase: Phase,
    /// When a restart or the end of the cooldown is due.
    due: Option<Instant>,
    started: Instant,
    restarts: u64,
    crashes_in_a_row: u32,
    last_exit: Option<Exit>,
    /// Set when the daemon kills the current child, so its exit says why.
    kill_reason: Option<String>,
    stop: bool,
}

struct Shared {
    /// `module/plugin`, for log lines.
    label: String,
    module: String,
    plugin: String,
    library: PathBuf,
    max_memory: Option<u64>,
    state: Mutex<State>,
    changed: Condvar,
    objects: Mutex<HashMap<u64, Registered>>,
    next_id: AtomicU64,
}

impl Shared {
    /// How long the child has sent nothing, unless a blocking call within its deadline
    /// explains it.
    fn silent(&self, link: &Link) -> Option<Duration> {
        if link
            .busy_until()
            .is_some_and(|until| Instant::now() < until)
        {
            return None;
        }
        let ms = mono_ms() - link.last_heard.load(Ordering::Relaxed);
        Some(Duration::from_millis(ms.max(0) as u64))
    }

    /// A number no other object or call of this process uses.
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `left` for the state to change.
    fn wait<'a>(&self, st: MutexGuard<'a, State>, left: Duration) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(st, left)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    fn objects(&self) -> MutexGuard<'_, HashMap<u64, Registered>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn services(&self, object: u64) -> Option<Arc<Services>> {
        self.objects().get(&object).map(|r| r.services.clone())
    }

    /// Kills the `nth` child if it is still the current one (not a newer one), saying why.
    fn kill(&self, nth: u64, reason: String) {
        let mut st = self.state();
        let Some(child) = st.child.filter(|c| c.nth == nth) else {
            return;
        };
        if st.kill_reason.is_none() {
            tracing::warn!(plugin = %self.label, pid = child.pid, "killing the plugin process: {reason}");
            st.kill_reason = Some(reason);
            // SAFETY: plain syscall; the pid is our unreaped child's: the supervisor thread
            // takes it out of `st.child`, under this lock, before it reaps it.
            unsafe { libc::kill(child.pid as i32, libc::SIGKILL) };
        }
    }
}

/// The daemon's side of one plugin process.
pub struct Supervisor {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Supervisor {
    /// Starts a child that loads `library`, and waits until it has loaded it.
    pub fn start(
        module: &str,
        plugin: &str,
        library: PathBuf,
        max_memory: Option<u64>,
    ) -> Result<(Supervisor, Manifest), PluginLoadError> {
        let shared = Arc::new(Shared {
            label: format!("{module}/{plugin}"),
            module: module.to_owned(),
            plugin: plugin.to_owned(),
            library,
            max_memory,
            state: Mutex::new(State {
                link: None,
                child: None,
                spawned: 0,
                last_pid: None,
                phase: Phase::Starting,
                due: None,
                started: Instant::now(),
                restarts: 0,
                crashes_in_a_row: 0,
                last_exit: None,
                kill_reason: None,
                stop: false,
            }),
            changed: Condvar::new(),
            objects: Mutex::default(),
            next_id: AtomicU64::new(1),
        });
        // Watched from the start: the heartbeat is what kills a child that hangs while loading.
        watchdog()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&shared));
        let (ready, loaded) = sync_channel(1);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("p-{plugin}").chars().take(15).collect())
            .spawn(move || supervise(&s, ready))
            .map_err(|e| PluginLoadError::Io(format!("cannot start a supervisor thread: {e}")))?;
        let manifest = match loaded.recv_timeout(START_TIMEOUT + 2 * PING_EVERY) {
            Ok(r) => r,
            Err(_) => Err(PluginLoadError::Init(format!(
                "the plugin process did not load the library within {} s",
                START_TIMEOUT.as_secs()
            ))),
        };
        let sup = Supervisor {
            shared,
            thread: Mutex::new(Some(thread)),
        };
        match manifest {
            Ok(m) => Ok((sup, m)),
            Err(e) => {
                sup.stop();
                Err(e)
            }
        }
    }

    fn next_id(&self) -> u64 {
        self.shared.next_id()
    }

    /// The running child, or why there is none.
    fn link(&self) -> Result<Arc<Link>, CallError> {
        self.link_within(Duration::ZERO)
    }

    /// The running child; while one is (re)starting, waits for it up to `patience`.
    fn link_within(&self, patience: Duration) -> Result<Arc<Link>, CallError> {
        let until = after(patience);
        let mut st = self.shared.state();
        loop {
            if let Some(l) = &st.link {
                return Ok(l.clone());
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || !matches!(st.phase, Phase::Starting | Phase::Restarting) {
                break;
            }
            st = self.shared.wait(st, left);
        }
        let wait = st.due.map(|d| d.saturating_duration_since(Instant::now()));
        let last = st
            .last_exit
            .as_ref()
            .map_or(String::new(), |e| format!(" ({e})"));
        let message = match st.phase {
            Phase::Restarting => format!("the plugin process died{last} and is restarting"),
            Phase::CircuitOpen => format!(
                "the plugin process crashed {} times in a row{last}; it is not restarted for {:.0} s more",
                st.crashes_in_a_row,
                wait.unwrap_or_default().as_secs_f64()
            ),
            Phase::Starting => "the plugin process is starting".to_owned(),
            Phase::Up | Phase::Exited => "the plugin process has exited".to_owned(),
        };
        Err(CallError {
            message,
            retry_after: wait.or(Some(FIRST_BACKOFF)),
            permanent: false,
        })
    }

    /// Builds an object in the child (and in every child after it) and returns its id.
    pub fn build(
        &self,
        kind: SymbolKind,
        symbol: &str,
        config: &str,
        services: Services,
    ) -> Result<u64, String> {
        let object = self.next_id();
        self.shared.objects().insert(
            object,
            Registered {
                kind,
                symbol: symbol.to_owned(),
                config: config.to_owned(),
                services: Arc::new(services),
            },
        );
        let built = self.call_blocking("a constructor", BUILD_TIMEOUT, |call| Down::New {
            call,
            object,
            kind,
            symbol: symbol.to_owned(),
            config: config.to_owned(),
        });
        match built {
            Ok(Reply::Built(Ok(()))) => Ok(object),
            Ok(Reply::Built(Err(e))) => Err(self.forget_with(object, e)),
            Ok(other) => Err(self.forget_with(object, format!("unexpected answer {other:?}"))),
            Err(e) => Err(self.forget_with(object, e.message)),
        }
    }

    fn forget_with(&self, object: u64, error: String) -> String {
        self.forget(object);
        error
    }

    /// The object is no longer used: it is dropped in the child and not rebuilt.
    pub fn forget(&self, object: u64) {
        self.shared.objects().remove(&object);
        if let Ok(link) = self.link() {
            // A child that is gone has dropped it anyway.
            let _ = link.out.send(&Down::Drop { object });
        }
    }

    /// A call from a thread that may block (a transform's). The call has `deadline` once it is
    /// sent; past it, the child is killed (its reading thread is stuck in the call) and
    /// restarted. Waiting for a child that is restarting, before, is bounded by `deadline` too:
    /// the restarted child must not be killed for time it did not have.
    pub fn call_blocking(
        &self,
        what: &str,
        deadline: Duration,
        make: impl FnOnce(u64) -> Down,
    ) -> Result<Reply, CallError> {
        let link = self.link_within(deadline)?;
        let call = self.next_id();
        let (tx, rx) = sync_channel(1);
        let until = after(deadline);
        link.wait(call, Waiter::Blocking { tx, until })?;
        link.send_call(what, call, &make(call))?;
        match rx.recv_timeout(deadline) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                link.forget(call);
                let why = format!(
                    "{what} ran past its deadline of {:.1} s",
                    deadline.as_secs_f64()
                );
                self.shared.kill(link.nth, why.clone());
                Err(CallError::new(why))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(CallError::new("the plugin process went away".into()))
            }
        }
    }

    /// Starts a call from async code; its answer is [`Call::answer`].
    pub(super) fn call(&self, make: impl FnOnce(u64) -> Down) -> Result<Call, CallError> {
        let link = self.link()?;
        let call = self.next_id();
        let (tx, rx) = tokio::sync::oneshot::channel();
        link.wait(call, Waiter::Async(tx))?;
        link.send_call("the call", call, &make(call))?;
        Ok(Call {
            link,
            call,
            rx,
            answered: false,
        })
    }

    pub fn status(&self) -> ProcessStatus {
        let st = self.shared.state();
        let link = st.link.as_ref();
        let silent = link.and_then(|l| self.shared.silent(l));
        let last = st.last_exit.as_ref();
        let degraded = match st.phase {
            Phase::Up => silent.filter(|s| *s >= STALLED_AFTER).map(|s| {
                format!(
                    "no thread of plugin {}'s process has answered for {:.1} s: plugin calls block them",
                    self.shared.plugin,
                    s.as_secs_f64()
                )
            }),
            Phase::Restarting | Phase::CircuitOpen => Some(format!(
                "plugin {}'s process {}{}{}",
                self.shared.plugin,
                last.map_or("died".to_owned(), |e| e.to_string()),
                if st.phase == Phase::CircuitOpen {
                    format!(
                        "; it crashed {} times in a row, so it is not restarted for {:.0} s",
                        st.crashes_in_a_row,
                        st.due
                            .map_or(Duration::ZERO, |d| d.saturating_duration_since(Instant::now()))
                            .as_secs_f64()
                    )
                } else {
                    "; restarting".to_owned()
                },
                last.and_then(|e| e.stderr.last())
                    .map_or(String::new(), |l| format!("; its last stderr line: {l}"))
            )),
            Phase::Starting | Phase::Exited => None,
        };
        ProcessStatus {
            state: st.phase,
            pid: st.child.map(|c| c.pid),
            restarts: st.restarts,
            crashes_in_a_row: st.crashes_in_a_row,
            max_memory: self.shared.max_memory,
            last_exit: st.last_exit.clone(),
            degraded,
        }
    }

    /// Stops the child for good: its input closes, it exits (or is killed after
    /// 5 s (`EXIT_GRACE`)), and it is reaped. Returns how it ended.
    pub fn stop(&self) -> UnloadReport {
        {
            let mut st = self.shared.state();
            st.stop = true;
            if let Some(l) = &st.link {
                l.out.close();
            }
            self.shared.changed.notify_all();
        }
        let deadline = Instant::now() + EXIT_GRACE;
        {
            let mut st = self.shared.state();
            while st.phase != Phase::Exited {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    if let Some(child) = st.child {
                        drop(st);
                        self.shared.kill(
                            child.nth,
                            format!(
                                "it did not exit within {} s of being retired",
                                EXIT_GRACE.as_secs()
                            ),
                        );
                    }
                    break;
                }
                st = self.shared.wait(st, left);
            }
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        let st = self.shared.state();
        UnloadReport::ProcessExited {
            pid: st.last_pid.unwrap_or(0),
            status: st
                .last_exit
                .as_ref()
                .map_or_else(|| "not running".to_owned(), ToString::to_string),
        }
    }
}

/// A call in flight from async code.
pub(super) struct Call {
    link: Arc<Link>,
    pub call: u64,
    rx: tokio::sync::oneshot::Receiver<Result<Reply, CallError>>,
    answered: bool,
}

impl Call {
    /// Asks the child to cancel the call (the plugin sees its cancellation signal).
    pub fn cancel(&self) {
        // A child that is gone has no call to cancel.
        let _ = self.link.out.send(&Down::Cancel { call: self.call });
    }

    pub async fn answer(&mut self) -> Result<Reply, CallError> {
        let r = (&mut self.rx)
            .await
            .unwrap_or_else(|_| Err(CallError::new("the plugin process went away".into())));
        self.answered = true;
        r
    }
}

impl Drop for Call {
    /// A call given up (its delivery was dropped) is cancelled in the child too.
    fn drop(&mut self) {
        if !self.answered {
            self.link.forget(self.call);
            self.cancel();
        }
    }
}

/// The supervisor thread: runs children one after the other until told to stop.
fn supervise(shared: &Arc<Shared>, ready: SyncSender<Result<Manifest, PluginLoadError>>) {
    let mut ready = Some(ready);
    loop {
        let ended = run_child(shared, &mut ready);
        let mut st = shared.state();
        let exit = match ended {
            Ok(exit) => exit,
            Err(e) => {
                // The child could not even be started: as if it had crashed at once.
                Exit {
                    status: format!("could not be started or reaped: {e}"),
                    signal: None,
                    code: None,
                    reason: None,
                    killed: false,
                    stderr: Vec::new(),
                    at: now_ms(),
                    uptime_ms: 0,
                }
            }
        };
        if let Some(tx) = ready.take() {
            // It died before it loaded the library: a load error, not a crash to restart.
            let stderr = exit.stderr.join("\n");
            let _ = tx.send(Err(PluginLoadError::Init(format!(
                "the plugin process {exit}{}",
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!("; its stderr:\n{stderr}")
                }
            ))));
            st.stop = true;
        }
        st.last_exit = Some(exit.clone());
        if st.stop {
            st.phase = Phase::Exited;
            shared.changed.notify_all();
            return;
        }
        crate::metrics::metrics()
            .plugin_process_exits
            .get_or_create(&crate::metrics::PluginLabels {
                module: shared.module.clone(),
                plugin: shared.plugin.clone(),
            })
            .inc();
        if st.started.elapsed() >= STABLE_AFTER {
            st.crashes_in_a_row = 0;
        }
        // A child the daemon killed was alive, only stuck in one call: it is replaced at once,
        // and does not count towards the circuit, which is for a plugin that cannot stay up.
        if !exit.killed {
            st.crashes_in_a_row += 1;
        }
        let n = st.crashes_in_a_row;
        let wait = if exit.killed {
            st.phase = Phase::Restarting;
            Duration::ZERO
        } else if n >= CIRCUIT_AFTER {
            st.phase = Phase::CircuitOpen;
            (COOLDOWN * 2u32.saturating_pow(n - CIRCUIT_AFTER)).min(MAX_COOLDOWN)
        } else {
            st.phase = Phase::Restarting;
            (FIRST_BACKOFF * 2u32.pow(n - 1)).min(MAX_BACKOFF)
        };
        let last_line = exit
            .stderr
            .last()
            .map_or(String::new(), |l| format!("; its last stderr line: {l}"));
        tracing::error!(plugin = %shared.label, "the plugin process {exit}; {n} crashes in a row, restarting in {wait:?}{last_line}");
        let due = Instant::now() + wait;
        st.due = Some(due);
        shared.changed.notify_all();
        while !st.stop && Instant::now() < due {
            let left = due.saturating_duration_since(Instant::now());
            st = shared.wait(st, left);
        }
        st.due = None;
        if st.stop {
            st.phase = Phase::Exited;
            shared.changed.notify_all();
            return;
        }
        st.restarts += 1;
        st.phase = Phase::Starting;
    }
}

/// Starts one child, serves it until it ends, and reaps it.
fn run_child(
    shared: &Arc<Shared>,
    ready: &mut Option<SyncSender<Result<Manifest, PluginLoadError>>>,
) -> std::io::Result<Exit> {
    let mut child = spawn(shared)?;
    let started = Instant::now();
    let pid = child.id();
    let nth = {
        let mut st = shared.state();
        st.spawned += 1;
        st.child = Some(Spawned {
            nth: st.spawned,
            pid,
            at: started,
        });
        st.last_pid = Some(pid);
        st.kill_reason = None;
        st.spawned
    };
    let stderr = StderrTail::start(&shared.label, child.stderr.take());
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    // Without a writer the child's input closes at once, and it exits by itself.
    let link = Outbox::start(&format!("p>{}", shared.plugin), stdin).map(|out| {
        Arc::new(Link {
            out,
            nth,
            pending: Mutex::default(),
            last_heard: AtomicI64::new(mono_ms()),
        })
    });
    if let Ok(link) = &link {
        talk(shared, ready, link, stdout);
    }
    // From here on the child is the reaper's: no one may signal its pid any more.
    let killed = {
        let mut st = shared.state();
        st.link = None;
        st.child = None;
        if !st.stop {
            st.phase = Phase::Restarting;
        }
        st.kill_reason.take()
    };
    shared.changed.notify_all();
    let status = reap(&mut child);
    let stderr = stderr.finish();
    let exit = status.map(|status| {
        let reason = killed.clone().or_else(|| {
            let oom = stderr.iter().any(|l| l.contains("memory allocation of"));
            shared
                .max_memory
                .filter(|_| oom)
                .map(|m| format!("it ran out of memory (max_memory is {} MiB)", m >> 20))
        });
        Exit {
            status: describe(status),
            signal: status.signal(),
            code: status.code(),
            reason,
            killed: killed.is_some(),
            stderr,
            at: now_ms(),
            uptime_ms: started.elapsed().as_millis() as u64,
        }
    });
    if let Ok(link) = &link {
        link.close(match &exit {
            Ok(exit) => format!("the plugin process {exit} during the call"),
            Err(e) => format!("the plugin process was lost during the call: {e}"),
        });
    }
    link?;
    exit
}

/// Waits for the child to load its library, rebuilds the objects of the child before it,
/// publishes it, and serves it until its output ends.
fn talk(
    shared: &Arc<Shared>,
    ready: &mut Option<SyncSender<Result<Manifest, PluginLoadError>>>,
    link: &Arc<Link>,
    stdout: ChildStdout,
) {
    let mut stdout = BufReader::with_capacity(64 << 10, stdout);
    let mut buf = Vec::new();
    match wire::read::<Up>(&mut stdout, &mut buf) {
        Ok(Some(Up::Ready { manifest })) => {
            if let Some(tx) = ready.take() {
                let _ = tx.send(Ok(manifest));
            }
        }
        Ok(Some(Up::Refused { error })) => {
            if let Some(tx) = ready.take() {
                let _ = tx.send(Err(error));
            }
            shared.state().stop = true;
            return;
        }
        // It died, or wrote something else: the exit will say.
        _ => return,
    }
    // Calls can only be queued behind these frames, so the child has every object before the
    // first call; the objects lock keeps a concurrent `build` out of the way meanwhile.
    {
        let objects = shared.objects();
        let mut ids: Vec<_> = objects.keys().copied().collect();
        ids.sort_unstable();
        for object in ids {
            let r = &objects[&object];
            let call = shared.next_id();
            let until = after(BUILD_TIMEOUT);
            let _ = link.wait(call, Waiter::Rebuild { until });
            let rebuild = Down::New {
                call,
                object,
                kind: r.kind,
                symbol: r.symbol.clone(),
                config: r.config.clone(),
            };
            if let Err(e) = link.send_call("an object's rebuild", call, &rebuild) {
                tracing::error!(plugin = %shared.label, "{}", e.message);
            }
        }
    }
    {
        let mut st = shared.state();
        st.started = Instant::now();
        if st.stop {
            link.out.close();
        } else {
            st.phase = Phase::Up;
        }
        st.link = Some(link.clone());
        shared.changed.notify_all();
    }
    serve(shared, link, &mut stdout, &mut buf);
}

/// Waits for a child whose output ended: it is exiting, or it wrote something we could not
/// read, and is killed if it lingers.
fn reap(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill()?;
    child.wait()
}

/// Reads the child's frames until its output ends.
fn serve(shared: &Shared, link: &Link, stdout: &mut BufReader<ChildStdout>, buf: &mut Vec<u8>) {
    loop {
        let frame = match wire::read::<Up>(stdout, buf) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(plugin = %shared.label, "bad output from the plugin process: {e}");
                return;
            }
        };
        // Anything it sends proves one of its threads alive (a pong answers from a free one).
        link.last_heard.store(mono_ms(), Ordering::Relaxed);
        match frame {
            Up::Reply { call, reply } => {
                let waiter = link.pending().waiters.remove(&call);
                match (waiter, reply) {
                    (Some(Waiter::Rebuild { .. }), Reply::Built(Err(e))) => {
                        tracing::error!(plugin = %shared.label, "an object could not be rebuilt in the restarted plugin process: {e}")
                    }
                    (Some(w), reply) => w.answer(Ok(reply)),
                    // A pong, or a call given up (past its deadline, or dropped).
                    (None, _) => {}
                }
            }
            Up::Log {
                object,
                level,
                message,
            } => {
                if let Some(s) = shared.services(object) {
                    s.write_log(level, &message);
                }
            }
            Up::Emit {
                call,
                object,
                event,
            } => {
                // Right here, before the frames after it: an event is stored before the reply
                // of the delivery that emitted it is read.
                let taken = match shared.services(object) {
                    Some(s) => s.emit_event(event),
                    None => Err("the object that emitted it was dropped".to_owned()),
                };
                if let Err(e) = &taken {
                    tracing::warn!(plugin = %shared.label, "an event the plugin emitted was refused: {e}");
                }
                if call != 0 {
                    let _ = link.out.send(&Down::Emitted { call, taken });
                }
            }
            Up::Ready { .. } | Up::Refused { .. } => {}
        }
    }
}

/// `orgloop plugin-host <library>`, with its limits.
fn spawn(shared: &Shared) -> std::io::Result<Child> {
    // The running binary itself, even if a newer one was installed over it since: the child
    // must speak this daemon's protocol.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("orgloop")
        .arg("plugin-host")
        .arg(&shared.library)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at the terminal is the daemon's to handle (it stops
        // gracefully, and retires its children itself).
        .process_group(0);
    let max_memory = shared.max_memory;
    // SAFETY: between fork and exec only async-signal-safe calls: prctl and setrlimit.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A crashing plugin should not fill the disk with core files.
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            if let Some(bytes) = max_memory {
                // RLIMIT_DATA counts the heap and private writable mappings (Linux ≥ 4.7): an
                // allocation past it fails, and the child aborts instead of growing.
                let limit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// `killed by signal 11 (SIGSEGV)`, `exited with code 1`.
fn describe(status: std::process::ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let name = match sig {
            libc::SIGABRT => "SIGABRT",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGBUS => "SIGBUS",
            libc::SIGILL => "SIGILL",
            libc::SIGFPE => "SIGFPE",
            libc::SIGKILL => "SIGKILL",
            libc::SIGTERM => "SIGTERM",
            libc::SIGXCPU => "SIGXCPU",
            _ => "",
        };
        if name.is_empty() {
            return format!("was killed by signal {sig}");
        }
        return format!("was killed by signal {sig} ({name})");
    }
    match status.code() {
        Some(0) => "exited".to_owned(),
        Some(c) => format!("exited with code {c}"),
        None => "ended".to_owned(),
    }
}

/// The last lines a child wrote to stderr; each line is also logged.
struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    /// Disconnected when the reading thread ends.
    ended: Option<Receiver<()>>,
}

impl StderrTail {
    fn start(label: &str, stderr: Option<std::process::ChildStderr>) -> StderrTail {
        let lines: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (l, label) = (lines.clone(), label.to_owned());
        let (ending, ended) = sync_channel::<()>(0);
        let started = stderr.and_then(|stderr| {
            std::thread::Builder::new()
                .name("p-stderr".into())
                .spawn(move || {
                    let _ending = ending;
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { return };
                        tracing::warn!(plugin = %label, "plugin process stderr: {line}");
                        let mut l = l.lock().unwrap_or_else(|e| e.into_inner());
                        if l.len() == STDERR_LINES {
                            l.pop_front();
                        }
                        l.push_back(line);
                    }
                })
                .ok()
        });
        StderrTail {
            lines,
            ended: started.map(|_| ended),
        }
    }

    /// Waits for the end of the stream (the child is gone), for [`STDERR_GRACE`] at most, and
    /// returns the last lines.
    fn finish(self) -> Vec<String> {
        if let Some(ended) = &self.ended {
            let _ = ended.recv_timeout(STDERR_GRACE);
        }
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// One heartbeat for one plugin process: kills it if it hangs while loading, in a rebuilt
/// constructor, or with all its threads; else pings it.
fn beat(s: &Shared) {
    let (link, child, phase) = {
        let st = s.state();
        (st.link.clone(), st.child, st.phase)
    };
    let Some(child) = child else { return };
    let Some(link) = link else {
        if phase == Phase::Starting && child.at.elapsed() >= START_TIMEOUT {
            let why = format!(
                "it did not load its library within {} s",
                START_TIMEOUT.as_secs()
            );
            s.kill(child.nth, why);
        }
        return;
    };
    if link.rebuild_overdue() {
        let why = format!(
            "a constructor ran past its deadline of {} s while the process restarted",
            BUILD_TIMEOUT.as_secs()
        );
        return s.kill(link.nth, why);
    }
    let silent = s.silent(&link).unwrap_or_default();
    if silent >= STUCK_AFTER {
        let why = format!(
            "none of its threads answered for {} s (a plugin call blocks them)",
            silent.as_secs()
        );
        s.kill(link.nth, why);
    } else {
        let _ = link.out.send(&Down::Ping { call: 0 });
    }
}

/// Every running plugin process, for the heartbeat thread.
fn watchdog() -> &'static Mutex<Vec<Weak<Shared>>> {
    static WATCHED: OnceLock<Mutex<Vec<Weak<Shared>>>> = OnceLock::new();
    WATCHED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("p-heartbeat".into())
            .spawn(|| loop {
                std::thread::sleep(PING_EVERY);
                let watched: Vec<Arc<Shared>> = {
                    let mut w = watchdog().lock().unwrap_or_else(|e| e.into_inner());
                    w.retain(|s| s.strong_count() > 0);
                    w.iter().filter_map(Weak::upgrade).collect()
                };
                for s in watched {
                    beat(&s);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the plugin heartbeat thread: {e}");
        }
        Mutex::default()
    })
}
