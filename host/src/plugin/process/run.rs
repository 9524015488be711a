//! One plugin process's life, on its supervisor's thread: spawn it with its limits, wait for
//! its library to load, rebuild the objects of the child before it, serve its frames, reap it —
//! and start the next one after a crash, with backoff, until the circuit opens or it is told to
//! stop.

use std::io::BufReader;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use orgloop_plugin_sdk::Manifest;

use super::link::{after, Link};
use super::outbox::Outbox;
use super::stderr::StderrTail;
use super::supervisor::{
    Boot, Exit, Phase, Shared, Spawned, State, BUILD_TIMEOUT, CIRCUIT_AFTER, COOLDOWN,
    FIRST_BACKOFF, MAX_BACKOFF, MAX_COOLDOWN, STABLE_AFTER, START_TIMEOUT,
};
use super::wire::{self, Down, Reply, Up};
use crate::module::running::now_ms;
use crate::plugin::load::PluginLoadError;

/// How long a child whose output ended may take to exit before it is killed.
const REAP_WITHIN: Duration = Duration::from_secs(1);

type Ready = Option<SyncSender<Result<Manifest, PluginLoadError>>>;

/// The supervisor thread: runs children one after the other until told to stop.
pub(super) fn supervise(
    shared: &Arc<Shared>,
    ready: SyncSender<Result<Manifest, PluginLoadError>>,
) {
    let mut ready = Some(ready);
    loop {
        let exit = run_child(shared, &mut ready).unwrap_or_else(|e| {
            // The child could not even be started: as if it had crashed at once.
            Exit {
                status: format!("could not be started or reaped: {e}"),
                signal: None,
                code: None,
                reason: None,
                killed: false,
                at_once: false,
                stderr: Vec::new(),
                at: now_ms(),
                uptime_ms: 0,
            }
        });
        let mut st = shared.state();
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
            return exited(shared, st);
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
        // A child killed in one call past its deadline was alive, only stuck in that call: it
        // is replaced at once, and does not count towards the circuit, which is for a plugin
        // that cannot stay up (or start, or answer at all).
        if !exit.at_once {
            st.crashes_in_a_row += 1;
        }
        let n = st.crashes_in_a_row;
        let wait = if exit.at_once {
            st.phase = Phase::Restarting;
            Duration::ZERO
        } else if n >= CIRCUIT_AFTER {
            st.phase = Phase::CircuitOpen;
            (COOLDOWN * 2u32.saturating_pow(n - CIRCUIT_AFTER)).min(MAX_COOLDOWN)
        } else {
            st.phase = Phase::Restarting;
            (FIRST_BACKOFF * 2u32.pow(n.saturating_sub(1))).min(MAX_BACKOFF)
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
            return exited(shared, st);
        }
        st.restarts += 1;
        st.phase = Phase::Starting;
    }
}

/// The supervisor ends: no child runs, and none will.
fn exited(shared: &Shared, mut st: MutexGuard<'_, State>) {
    st.phase = Phase::Exited;
    shared.changed.notify_all();
}

/// Starts one child, serves it until it ends, and reaps it.
fn run_child(shared: &Arc<Shared>, ready: &mut Ready) -> std::io::Result<Exit> {
    let mut child = spawn(shared)?;
    let started = Instant::now();
    let pid = child.id();
    let nth = {
        let mut st = shared.state();
        st.spawned += 1;
        st.child = Some(Spawned {
            nth: st.spawned,
            pid,
        });
        st.started = started;
        st.last_pid = Some(pid);
        st.kill = None;
        st.boot = Some(Boot {
            until: after(START_TIMEOUT),
            doing: format!("load its library within {} s", START_TIMEOUT.as_secs()),
        });
        st.spawned
    };
    let stderr = StderrTail::start(&shared.label, child.stderr.take());
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    // Without a writer the child's input closes at once, and it exits by itself.
    let link = Outbox::start(&format!("p>{}", shared.plugin), stdin)
        .map(|out| Arc::new(Link::new(out, nth)));
    if let Ok(link) = &link {
        let mut reader = Reader {
            stdout: BufReader::with_capacity(64 << 10, stdout),
            buf: Vec::new(),
        };
        if boot(shared, ready, link, &mut reader) {
            serve(shared, link, &mut reader);
        }
    }
    // From here on the child is the reaper's: no one may signal its pid any more.
    let killed = {
        let mut st = shared.state();
        st.link = None;
        st.child = None;
        st.boot = None;
        if !st.stop {
            st.phase = Phase::Restarting;
        }
        st.kill.take()
    };
    shared.changed.notify_all();
    let status = reap(&mut child);
    let stderr = stderr.finish();
    let exit = status.map(|status| {
        let reason = killed.as_ref().map(|k| k.reason.clone()).or_else(|| {
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
            at_once: killed.is_some_and(|k| k.at_once),
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

/// The child's output, read one frame at a time.
struct Reader {
    stdout: BufReader<ChildStdout>,
    buf: Vec<u8>,
}

impl Reader {
    /// The next frame; `None` once the output ended (or broke, which is logged).
    fn next(&mut self, label: &str) -> Option<Up> {
        match wire::read::<Up>(&mut self.stdout, &mut self.buf) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!(plugin = %label, "bad output from the plugin process: {e}");
                None
            }
        }
    }
}

/// Waits for the child to load its library, rebuilds the objects of the child before it, one
/// at a time (each constructor with its own deadline, kept by the heartbeat), and publishes
/// it. `false` when the child did not get that far.
fn boot(shared: &Arc<Shared>, ready: &mut Ready, link: &Arc<Link>, reader: &mut Reader) -> bool {
    match reader.next(&shared.label) {
        Some(Up::Ready { manifest }) => {
            if let Some(tx) = ready.take() {
                let _ = tx.send(Ok(manifest));
            }
        }
        Some(Up::Refused { error }) => {
            match ready.take() {
                Some(tx) => {
                    let _ = tx.send(Err(error));
                    shared.state().stop = true;
                }
                // A restart that cannot load the library any more is a crash like any other:
                // it counts towards the circuit, and status says why.
                None => {
                    tracing::error!(plugin = %shared.label, "the restarted plugin process could not load its library: {error}")
                }
            }
            return false;
        }
        // It died, or wrote something else: the exit will say.
        _ => return false,
    }
    let rebuilds: Vec<(u64, Down)> = {
        let objects = shared.objects();
        let mut ids: Vec<_> = objects.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|object| {
                let r = &objects[&object];
                let rebuild = Down::New {
                    call: shared.next_id(),
                    object,
                    kind: r.kind,
                    symbol: r.symbol.clone(),
                    config: r.config.clone(),
                };
                (object, rebuild)
            })
            .collect()
    };
    for (object, rebuild) in &rebuilds {
        let Down::New { call, symbol, .. } = rebuild else {
            unreachable!()
        };
        shared.state().boot = Some(Boot {
            until: after(BUILD_TIMEOUT),
            doing: format!(
                "rebuild object {object} ({symbol}) within {} s",
                BUILD_TIMEOUT.as_secs()
            ),
        });
        if let Err(e) = link.out.send(rebuild) {
            tracing::error!(plugin = %shared.label, "cannot rebuild object {object} in the restarted plugin process: {e}");
            return false;
        }
        loop {
            match reader.next(&shared.label) {
                None => return false,
                Some(Up::Reply {
                    call: c,
                    reply: Reply::Built(built),
                }) if c == *call => {
                    if let Err(e) = built {
                        tracing::error!(plugin = %shared.label, "object {object} ({symbol}) could not be rebuilt in the restarted plugin process: {e}");
                    }
                    break;
                }
                Some(other) => handle(shared, link, other),
            }
        }
    }
    // Published under the objects lock: an object forgotten during the rebuilds is dropped in
    // the child here, one forgotten from now on by `Supervisor::forget` on this link.
    let objects = shared.objects();
    for (object, _) in &rebuilds {
        if !objects.contains_key(object) {
            let _ = link.out.send(&Down::Drop { object: *object });
        }
    }
    let mut st = shared.state();
    st.boot = None;
    if st.stop {
        link.out.close();
    } else {
        st.phase = Phase::Up;
    }
    link.heard();
    st.link = Some(link.clone());
    shared.changed.notify_all();
    true
}

/// Waits for a child whose output ended: it is exiting, or it wrote something we could not
/// read, and is killed if it lingers.
fn reap(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    let until = Instant::now() + REAP_WITHIN;
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
fn serve(shared: &Shared, link: &Link, reader: &mut Reader) {
    while let Some(frame) = reader.next(&shared.label) {
        handle(shared, link, frame);
    }
}

/// One frame from the child.
fn handle(shared: &Shared, link: &Link, frame: Up) {
    match frame {
        Up::Reply { call, reply } => {
            // An answer proves one of its threads free (a pong: one of its runtime's). A log
            // line or an event proves nothing: a thread of the plugin's own may send them
            // while every other one is stuck.
            link.heard();
            // None: a pong, or a call given up (dropped, or past its deadline).
            if let Some(w) = link.take(call) {
                w.answer(Ok(reply));
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
            // Right here, before the frames after it: an event is stored before the reply of
            // the delivery that emitted it is read.
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
