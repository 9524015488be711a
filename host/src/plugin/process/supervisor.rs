//! [`Supervisor`]: the daemon's side of one plugin process — starting it, calling into it,
//! restarting it when it dies, and stopping it when its library is retired.
//!
//! One thread per plugin process starts the child, reads everything it sends, and waits for it
//! when it ends (see `run.rs`); it is also the thread the child is forked from, so
//! `PR_SET_PDEATHSIG` (which fires when the forking *thread* ends) kills the child exactly when
//! its supervisor is gone or the daemon dies, even by SIGKILL. The heartbeat
//! (`heartbeat.rs`) kills a child that hangs.
//!
//! When a child dies unasked, every call in flight fails at once (a transform's route then
//! follows its `on_error`, a delivery is retried), the objects built in it are rebuilt in the
//! next child, and the next child starts after a backoff that doubles with each crash in a row.
//! [`CIRCUIT_AFTER`] crashes in a row open the circuit: no restart for a cooldown, calls fail at
//! once, and the module is `degraded` with the exit and the child's last stderr lines.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use orgloop_plugin_sdk::{Manifest, SymbolKind};
use serde::Serialize;

use super::heartbeat::{self, PING_EVERY, STALLED_AFTER};
pub use super::link::CallError;
use super::link::{after, Link, Waiter};
use super::wire::{Down, Reply};
use crate::plugin::load::PluginLoadError;
use crate::plugin::services::Services;
use crate::plugin::verify::UnloadReport;

/// The first restart waits this long; each crash in a row doubles it, up to [`MAX_BACKOFF`].
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A child that lived this long before it died starts a new count of crashes in a row.
pub(super) const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Crashes in a row that open the circuit, and the first cooldown (doubled while it goes on
/// crashing, up to 5 minutes).
pub const CIRCUIT_AFTER: u32 = 5;
pub(super) const COOLDOWN: Duration = Duration::from_secs(30);
pub(super) const MAX_COOLDOWN: Duration = Duration::from_secs(300);
/// How long a new child may take to load its library and answer.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a plugin constructor may run.
pub(super) const BUILD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a retired child may take to exit after its input closed, before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// How a plugin process ended.
#[derive(Clone, Debug, Serialize)]
pub struct Exit {
    /// `killed by signal 11 (SIGSEGV)` or `exited with code 1`.
    pub status: String,
    pub signal: Option<i32>,
    pub code: Option<i32>,
    /// Why, when the daemon knows: it killed the child, or the child ran out of `max_memory`.
    pub reason: Option<String>,
    /// The daemon killed it (a call past its deadline, no heartbeat, a start that hung).
    pub killed: bool,
    /// It was killed in one call past its deadline: replaced at once, not a crash.
    #[serde(skip)]
    pub at_once: bool,
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
pub(super) struct Registered {
    pub kind: SymbolKind,
    pub symbol: String,
    pub config: String,
    pub services: Arc<Services>,
}

/// A child process not yet reaped: only while it is in [`State::child`] may its pid be
/// signalled (once reaped, the pid may belong to anyone).
#[derive(Clone, Copy)]
pub(super) struct Spawned {
    pub nth: u64,
    pub pid: u32,
}

/// What a starting child is doing, and until when it may.
#[derive(Clone)]
pub(super) struct Boot {
    pub until: Instant,
    /// "load its library within 60 s".
    pub doing: String,
}

/// Why the daemon killed the current child.
pub(super) struct Kill {
    pub reason: String,
    /// Stuck in one call past its deadline: replace it at once, and not as a crash.
    pub at_once: bool,
}

pub(super) struct State {
    pub link: Option<Arc<Link>>,
    /// The current child from its spawn until just before it is reaped.
    pub child: Option<Spawned>,
    /// While the current child starts: until when it may, doing what.
    pub boot: Option<Boot>,
    /// Children spawned so far.
    pub spawned: u64,
    /// The pid of the last child, for the report once it is gone.
    pub last_pid: Option<u32>,
    pub phase: Phase,
    /// When a restart or the end of the cooldown is due.
    pub due: Option<Instant>,
    /// When the current child was spawned.
    pub started: Instant,
    pub restarts: u64,
    pub crashes_in_a_row: u32,
    pub last_exit: Option<Exit>,
    /// Set when the daemon kills the current child, so its exit says why.
    pub kill: Option<Kill>,
    pub stop: bool,
}

/// What a supervisor shares with its thread and the heartbeat.
pub(super) struct Shared {
    /// `module/plugin`, for log lines.
    pub label: String,
    pub module: String,
    pub plugin: String,
    pub library: PathBuf,
    pub max_memory: Option<u64>,
    state: Mutex<State>,
    pub changed: Condvar,
    objects: Mutex<HashMap<u64, Registered>>,
    next_id: AtomicU64,
}

impl Shared {
    /// How long the child has not answered, unless a blocking call within its deadline
    /// explains it.
    pub fn silent(&self, link: &Link) -> Option<Duration> {
        if link
            .busy_until()
            .is_some_and(|until| Instant::now() < until)
        {
            return None;
        }
        Some(link.silent_for())
    }

    /// A number no other object or call of this process uses.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `left` for the state to change.
    pub fn wait<'a>(&self, st: MutexGuard<'a, State>, left: Duration) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(st, left)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// The objects to rebuild in a restarted child. Taken before `state` when both are.
    pub fn objects(&self) -> MutexGuard<'_, HashMap<u64, Registered>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn services(&self, object: u64) -> Option<Arc<Services>> {
        self.objects().get(&object).map(|r| r.services.clone())
    }

    /// Kills the `nth` child if it is still the current one (not a newer one), saying why;
    /// `at_once` when it is only stuck in one call (see [`Kill`]).
    pub fn kill(&self, nth: u64, reason: String, at_once: bool) {
        let mut st = self.state();
        let Some(child) = st.child.filter(|c| c.nth == nth) else {
            return;
        };
        if st.kill.is_none() {
            tracing::warn!(plugin = %self.label, pid = child.pid, "killing the plugin process: {reason}");
            st.kill = Some(Kill { reason, at_once });
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
                boot: None,
                spawned: 0,
                last_pid: None,
                phase: Phase::Starting,
                due: None,
                started: Instant::now(),
                restarts: 0,
                crashes_in_a_row: 0,
                last_exit: None,
                kill: None,
                stop: false,
            }),
            changed: Condvar::new(),
            objects: Mutex::default(),
            next_id: AtomicU64::new(1),
        });
        // Watched from the start: the heartbeat is what kills a child that hangs while loading.
        heartbeat::watch(&shared);
        let (ready, loaded) = sync_channel(1);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("p-{plugin}").chars().take(15).collect())
            .spawn(move || super::run::supervise(&s, ready))
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
    /// replaced. Waiting for a child that is restarting, before, is bounded by `deadline` too,
    /// so the caller waits twice its deadline at most: a restarted child is never killed for
    /// time it did not have, and no later call is sent to a child stuck in this one.
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
                self.shared.kill(link.nth, why.clone(), true);
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

    /// Stops the child for good: its input closes, it exits (or is killed after 5 s), and it
    /// is reaped. Returns how it ended.
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
                            false,
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
