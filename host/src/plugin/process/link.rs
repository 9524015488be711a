//! [`Link`]: the pipes to one running plugin process, and the calls waiting for its answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::outbox::{Outbox, Unsent};
use super::wire::{Down, Reply};
use crate::module::running::mono_ms;

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
    pub(super) fn new(message: String) -> Self {
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

/// `d` from now, or a year from now for a `d` too large to add.
pub(super) fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// Who waits for the answer of a call.
pub(super) enum Waiter {
    /// A transform call or a constructor (a transform runs on the child's reading thread, which
    /// reads no ping meanwhile), which may run until `until`.
    Blocking {
        tx: SyncSender<Result<Reply, CallError>>,
        until: Instant,
    },
    Async(tokio::sync::oneshot::Sender<Result<Reply, CallError>>),
}

impl Waiter {
    pub fn answer(self, r: Result<Reply, CallError>) {
        match self {
            Waiter::Blocking { tx, .. } => drop(tx.try_send(r)),
            Waiter::Async(tx) => drop(tx.send(r)),
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
    /// Which child of its supervisor this is (see `State::child`).
    pub nth: u64,
    pending: Mutex<Pending>,
    /// When the child last answered (a pong or a reply), in [`mono_ms`].
    last_heard: AtomicI64,
}

impl Link {
    pub fn new(out: Outbox, nth: u64) -> Link {
        Link {
            out,
            nth,
            pending: Mutex::default(),
            last_heard: AtomicI64::new(mono_ms()),
        }
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The child answered: a thread of its runtime, or its reading thread, is free.
    pub fn heard(&self) {
        self.last_heard.store(mono_ms(), Ordering::Relaxed);
    }

    /// How long the child has not answered.
    pub fn silent_for(&self) -> Duration {
        let ms = mono_ms() - self.last_heard.load(Ordering::Relaxed);
        Duration::from_millis(ms.max(0) as u64)
    }

    pub fn wait(&self, call: u64, waiter: Waiter) -> Result<(), CallError> {
        let mut p = self.pending();
        if let Some(why) = &p.closed {
            return Err(CallError::new(why.clone()));
        }
        p.waiters.insert(call, waiter);
        Ok(())
    }

    /// Sends the frame of a call registered with [`Link::wait`]; gives the call up when the
    /// frame cannot be sent.
    pub fn send_call(&self, what: &str, call: u64, msg: &Down) -> Result<(), CallError> {
        self.out.send(msg).map_err(|why| {
            self.forget(call);
            CallError::unsent(what, why)
        })
    }

    /// The waiter of `call`, which the child answered.
    pub fn take(&self, call: u64) -> Option<Waiter> {
        self.pending().waiters.remove(&call)
    }

    /// Gives up waiting for `call`.
    pub fn forget(&self, call: u64) {
        self.pending().waiters.remove(&call);
    }

    /// The latest deadline of the blocking calls in flight, which may keep the child's reading
    /// thread busy.
    pub fn busy_until(&self) -> Option<Instant> {
        let p = self.pending();
        p.waiters
            .values()
            .filter_map(|w| match w {
                Waiter::Blocking { until, .. } => Some(*until),
                Waiter::Async(_) => None,
            })
            .max()
    }

    /// Fails every waiting call and refuses new ones.
    pub fn close(&self, why: String) {
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
