//! The plugin process itself: `orgloop plugin-host <library>`, started by a
//! [`super::Supervisor`]. It maps the library exactly as the daemon would, builds the objects the
//! daemon asks for, and runs their calls on a small runtime of its own; log lines and emitted
//! events go back to the daemon, HTTP requests it makes itself.
//!
//! Its stdin and stdout carry the protocol, so both are moved to other descriptors first and the
//! standard ones pointed elsewhere: a plugin's `println!` lands in stderr (which the daemon
//! logs) instead of corrupting a frame.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orgloop_plugin_sdk::{Outcome, SymbolKind, TransformCtx, Verdict};
use tokio_util::sync::CancellationToken;

use super::outbox::{Outbox, Unsent};
use super::wire::{self, Down, Reply, Up};
use crate::plugin::http_client::HttpClient;
use crate::plugin::library::Library;
use crate::plugin::services::Services;
use crate::plugin::{PluginActor, PluginSource, PluginTransform};

/// Threads the child's calls run on.
const THREADS: usize = 2;

thread_local! {
    /// Set on the thread that reads the daemon's frames: an `emit` there (from a transform)
    /// cannot wait for the daemon's answer, which this very thread would read.
    static READING: Cell<bool> = const { Cell::new(false) };
}

enum Object {
    Transform(Arc<PluginTransform>),
    Actor(Arc<PluginActor>),
    Source(Arc<PluginSource>),
}

/// Runs the plugin process until its input ends.
pub fn run(library: &Path) -> ExitCode {
    let (input, output) = match take_stdio() {
        Ok(io) => io,
        Err(e) => {
            eprintln!("orgloop plugin-host: cannot set up its pipes: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::WARN)
        .try_init();
    let out = match Outbox::start("host-out", output) {
        Ok(out) => Arc::new(out),
        Err(e) => {
            eprintln!("orgloop plugin-host: cannot start its writer: {e}");
            return ExitCode::from(2);
        }
    };
    let lib = match Library::open_here(library) {
        Ok(lib) => Arc::new(lib),
        Err(error) => {
            // Also on stderr: for a restart, the daemon shows the last stderr lines.
            eprintln!("orgloop plugin-host: {error}");
            let _ = out.send(&Up::Refused { error });
            out.close();
            // Give the writer a moment to flush before the process ends.
            std::thread::sleep(Duration::from_millis(50));
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .thread_name("plugin")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orgloop plugin-host: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = out.send(&Up::Ready {
        manifest: lib.manifest().clone(),
    });
    let host = Arc::new(Host {
        lib,
        out,
        http: runtime.block_on(async { HttpClient::default() }),
        objects: Mutex::default(),
        cancels: Arc::default(),
        emits: Arc::default(),
    });
    READING.with(|r| r.set(true));
    let mut input = BufReader::with_capacity(64 << 10, input);
    let mut buf = Vec::new();
    loop {
        match wire::read::<Down>(&mut input, &mut buf) {
            Ok(Some(msg)) => host.handle(msg, runtime.handle()),
            Ok(None) => break,
            Err(e) => {
                eprintln!("orgloop plugin-host: bad input from the daemon: {e}");
                break;
            }
        }
    }
    // The daemon retired this process (or is gone): leave without unmapping anything and
    // without the exit handlers, so that no plugin destructor runs on the way out.
    host.out.close();
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: ends the process at once; nothing after it runs.
    unsafe { libc::_exit(0) }
}

/// Moves the protocol off descriptors 0 and 1: returns them as files and points 0 at
/// `/dev/null` and 1 at stderr.
fn take_stdio() -> std::io::Result<(File, File)> {
    // SAFETY: dup/dup2/open on descriptors this process owns; each new descriptor is owned by
    // exactly one `File`.
    unsafe {
        let input = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        let output = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if input < 0 || output < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null < 0 || libc::dup2(null, 0) < 0 || libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::close(null);
        Ok((File::from_raw_fd(input), File::from_raw_fd(output)))
    }
}

struct Host {
    lib: Arc<Library>,
    out: Arc<Outbox>,
    http: HttpClient,
    objects: Mutex<HashMap<u64, Object>>,
    /// The cancellation signals of deliveries in flight, by call.
    cancels: Arc<Mutex<HashMap<u64, CancellationToken>>>,
    /// The `emit` calls waiting for the daemon's answer.
    emits: Arc<Emits>,
}

/// The `emit` calls of a plugin process waiting for the daemon to take their event.
#[derive(Default)]
struct Emits {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, SyncSender<Result<(), String>>>>,
}

impl Emits {
    /// Sends `event` and waits until the daemon took (or refused) it, as an `emit` in the
    /// daemon itself does. The daemon answers every one it reads (and stores the event first);
    /// the answer waits only while this process's reading thread runs a transform — bounded by
    /// the transform's deadline, past which the daemon kills this process. On the reading
    /// thread itself the event is sent without waiting, and taken as taken.
    fn emit(
        &self,
        out: &Outbox,
        object: u64,
        event: orgloop_plugin_sdk::Event,
    ) -> Result<(), String> {
        if READING.with(Cell::get) {
            return out
                .send(&Up::Emit {
                    call: 0,
                    object,
                    event,
                })
                .map_err(|e| e.to_string());
        }
        let call = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = sync_channel(1);
        lock(&self.waiting).insert(call, tx);
        let sent = out.send(&Up::Emit {
            call,
            object,
            event,
        });
        let taken = match sent {
            Ok(()) => rx
                .recv()
                .unwrap_or_else(|_| Err("the daemon did not answer".into())),
            Err(e) => Err(e.to_string()),
        };
        lock(&self.waiting).remove(&call);
        taken
    }

    fn answer(&self, call: u64, taken: Result<(), String>) {
        if let Some(tx) = lock(&self.waiting).remove(&call) {
            let _ = tx.try_send(taken);
        }
    }
}

impl Host {
    fn object(&self, id: u64) -> Option<Object> {
        let objects = lock(&self.objects);
        objects.get(&id).map(|o| match o {
            Object::Transform(t) => Object::Transform(t.clone()),
            Object::Actor(a) => Object::Actor(a.clone()),
            Object::Source(s) => Object::Source(s.clone()),
        })
    }

    /// Sends the answer to `call`; one too long to send becomes a failure of the call.
    fn reply(out: &Outbox, call: u64, reply: Reply) {
        let msg = Up::Reply { call, reply };
        if let Err(Unsent::TooLarge(e)) = out.send(&msg) {
            let Up::Reply { reply, .. } = msg else {
                unreachable!()
            };
            let _ = out.send(&Up::Reply {
                call,
                reply: reply.failed(e.to_string()),
            });
        }
    }

    fn handle(self: &Arc<Self>, msg: Down, rt: &tokio::runtime::Handle) {
        let out = self.out.clone();
        match msg {
            Down::New {
                call,
                object,
                kind,
                symbol,
                config,
            } => {
                // Off this thread: a slow constructor must not hold up the transforms, pings
                // and answers behind it. The daemon sends no call to the object before it has
                // the answer.
                let host = self.clone();
                rt.spawn_blocking(move || {
                    let built = host.build(object, kind, &symbol, &config);
                    Self::reply(&host.out, call, Reply::Built(built));
                });
            }
            Down::Emitted { call, taken } => self.emits.answer(call, taken),
            Down::Drop { object } => {
                lock(&self.objects).remove(&object);
            }
            Down::Apply {
                call,
                object,
                event,
                ctx,
            } => {
                let Some(Object::Transform(t)) = self.object(object) else {
                    return Self::reply(&out, call, Reply::Verdict(Err(missing(object))));
                };
                let ctx = TransformCtx {
                    source: &ctx.source,
                    route: &ctx.route,
                    actor: &ctx.actor,
                    module: &ctx.module,
                };
                // Right here, on the reading thread: a transform is synchronous, and a hand-off
                // to the runtime would cost a thread wake-up per call. The daemon keeps the
                // deadline (it kills this process past it, and its heartbeat allows for it).
                let _guard = rt.enter();
                let verdict = t.apply(&event, &ctx, Duration::MAX).map(|v| match v {
                    Verdict::Pass => wire::Verdict::Pass,
                    Verdict::Drop => wire::Verdict::Drop,
                    Verdict::Replace(e) => wire::Verdict::Replace(e),
                });
                Self::reply(&out, call, Reply::Verdict(verdict));
            }
            Down::Deliver {
                call,
                object,
                delivery,
            } => {
                let Some(Object::Actor(a)) = self.object(object) else {
                    return Self::reply(
                        &out,
                        call,
                        Reply::Outcome(Err(wire::Failure {
                            message: missing(object),
                            permanent: false,
                            retry_after_ms: None,
                        })),
                    );
                };
                let token = CancellationToken::new();
                let cancels = self.cancels.clone();
                lock(&cancels).insert(call, token.clone());
                rt.spawn(async move {
                    let outcome = a
                        .deliver(delivery, crate::engine::deliver::signal(token))
                        .await;
                    lock(&cancels).remove(&call);
                    let outcome = match outcome {
                        Ok(Outcome::Delivered) => Ok(wire::Outcome::Delivered),
                        Ok(Outcome::Rejected(why)) => Ok(wire::Outcome::Rejected(why)),
                        Err(f) => Err(wire::Failure {
                            message: f.message,
                            permanent: f.permanent,
                            retry_after_ms: f.retry_after.map(|d| d.as_millis() as u64),
                        }),
                    };
                    Self::reply(&out, call, Reply::Outcome(outcome));
                });
            }
            Down::Cancel { call } => {
                if let Some(token) = lock(&self.cancels).get(&call) {
                    token.cancel();
                }
            }
            Down::Poll {
                call,
                object,
                checkpoint,
            } => {
                let Some(Object::Source(s)) = self.object(object) else {
                    return Self::reply(&out, call, Reply::Polled(Err(missing(object))));
                };
                rt.spawn(async move {
                    let polled = s.poll(checkpoint).await.map(|p| wire::Polled {
                        events: p.events,
                        checkpoint: p.checkpoint,
                    });
                    Self::reply(&out, call, Reply::Polled(polled));
                });
            }
            // Answered from the runtime: proof that one of its threads is free.
            Down::Ping { call } => {
                rt.spawn(async move { Self::reply(&out, call, Reply::Pong) });
            }
        }
    }

    fn build(
        &self,
        object: u64,
        kind: SymbolKind,
        symbol: &str,
        config: &str,
    ) -> Result<(), String> {
        // Built once: a daemon that restarted this process sends the objects of the one before
        // again, and a `build` racing that restart may send one a second time.
        if self.object(object).is_some() {
            return Ok(());
        }
        let (log_out, emit_out, emits) = (self.out.clone(), self.out.clone(), self.emits.clone());
        let services = Services {
            module: Arc::from(""),
            object: String::new(),
            source: None,
            emitter: Arc::new(move |event| emits.emit(&emit_out, object, event)),
            http: self.http.clone(),
            log_to: Some(Arc::new(move |level, message| {
                let _ = log_out.send(&Up::Log {
                    object,
                    level,
                    message: message.to_owned(),
                });
            })),
        };
        // On a thread of the runtime: constructors may use the host's timer or HTTP client.
        let built = match kind {
            SymbolKind::Transform => self
                .lib
                .new_transform(symbol, config, services)
                .map(|t| Object::Transform(Arc::new(t))),
            SymbolKind::Actor => self
                .lib
                .new_actor(symbol, config, services)
                .map(|a| Object::Actor(Arc::new(a))),
            SymbolKind::Source => self
                .lib
                .new_source(symbol, config, services)
                .map(|s| Object::Source(Arc::new(s))),
        }?;
        lock(&self.objects).insert(object, built);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn missing(object: u64) -> String {
    format!("the plugin process has no object {object}")
}
