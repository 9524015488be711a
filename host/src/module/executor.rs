//! [`Executor`]: the threads a module's plugin code runs on.
//!
//! Every module has a small runtime of its own (`defaults.threads`, default 2) for its
//! dispatcher, its deliveries and its pollers — everything that calls into its plugins. The
//! daemon's own runtime accepts webhooks, stores them and serves the control API, and never runs
//! plugin code. So a plugin that blocks its thread (a synchronous HTTP call, a runaway regex, a
//! lock) stalls at most its own module: other modules, and the webhooks of this one, go on. The
//! plugins' HTTP requests run on the daemon's runtime too, so a stalled module cannot hold a
//! connection another module needs.
//!
//! A heartbeat task on the module's runtime tells whether its threads still get to run; when all
//! of them are stuck, the module is reported `degraded` until they recover.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

use super::running::{now_ms, since};

/// How often the heartbeat beats; a module whose heartbeat is [`STALLED_AFTER`] old is stalled.
const BEAT: Duration = Duration::from_millis(100);
const STALLED_AFTER: Duration = Duration::from_secs(1);

/// A module's runtime.
pub struct Executor {
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
    /// Unix ms of the last heartbeat.
    beat: Arc<AtomicI64>,
}

impl Executor {
    /// Starts `threads` worker threads named after `module`.
    pub fn new(module: &str, threads: usize) -> std::io::Result<Executor> {
        // Linux keeps 15 bytes of a thread's name.
        let name: String = format!("m-{module}").chars().take(15).collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .max_blocking_threads(threads.max(1) * 2)
            .thread_name(name)
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let beat = Arc::new(AtomicI64::new(now_ms()));
        let b = beat.clone();
        handle.spawn(async move {
            loop {
                b.store(now_ms(), Ordering::Relaxed);
                tokio::time::sleep(BEAT).await;
            }
        });
        Ok(Executor {
            runtime: Mutex::new(Some(runtime)),
            handle,
            beat,
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// How long no thread of the module got to run, when that is long enough to matter.
    pub fn stalled_for(&self) -> Option<Duration> {
        let silent = since(self.beat.load(Ordering::Relaxed));
        (silent >= STALLED_AFTER).then_some(silent)
    }

    /// Stops the threads without waiting for them (a thread stuck in plugin code cannot be
    /// waited for); what still runs on them is dropped.
    pub fn shutdown(&self) {
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rt) = runtime {
            rt.shutdown_background();
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The transform call a module's dispatcher is in, if any, and how many calls overran their
/// deadline: what `module status` reports while a call is stuck.
#[derive(Default)]
pub struct CallWatch {
    /// Unix ms when the current call started; 0 when there is none.
    started_ms: AtomicI64,
    deadline_ms: AtomicI64,
    pub overruns: std::sync::atomic::AtomicU64,
}

impl CallWatch {
    pub fn begin(&self, deadline: Duration) {
        self.deadline_ms
            .store(deadline.as_millis() as i64, Ordering::Relaxed);
        self.started_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.started_ms.store(0, Ordering::Relaxed);
    }

    /// How long the current call has run, and its deadline, once it is past the deadline.
    pub fn overrunning(&self) -> Option<(Duration, Duration)> {
        let started = self.started_ms.load(Ordering::Relaxed);
        if started == 0 {
            return None;
        }
        let ran = since(started);
        let deadline = Duration::from_millis(self.deadline_ms.load(Ordering::Relaxed) as u64);
        (ran > deadline).then_some((ran, deadline))
    }
}
