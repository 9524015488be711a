//! [`Gate`]: whether an actor's target looks healthy, and while it does not, who may try it.
//!
//! A healthy actor takes deliveries freely (up to its `max_inflight`). After a retryable failure
//! it is *failing*: from then on one attempt at a time may run — the probe — and only once the
//! probe's backoff has passed; every other delivery waits. A probe that succeeds makes the actor
//! healthy again and lets everything waiting go; one that fails doubles the wait before the next
//! probe. So an actor whose target is down costs one request per backoff period, not a hot loop,
//! and a single delivery that keeps failing (a poison event) does not hold the others: the next
//! probe may be any delivery that is due, and its success reopens the gate.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::spec::RetryPolicy;

use super::retry::delay;

#[derive(Default)]
struct State {
    failing: bool,
    probing: bool,
    next_probe: Option<Instant>,
    /// Failed probes in a row (the exponent of the backoff).
    failures: u32,
}

/// The health of one actor; shared by every delivery to it.
#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
    changed: Notify,
}

/// How an attempt that passed the gate ended, as far as the target's health goes.
pub enum Health {
    /// The target answered: it is up (even if it refused this one delivery).
    Up,
    /// The target failed in a way that may heal: connection error, timeout, 5xx, 429.
    Down { retry_after: Option<Duration> },
    /// Says nothing about the target (the attempt was cancelled).
    Unknown,
}

/// Leave to make one attempt. Dropping it without [`report`](Pass::report) counts as
/// [`Health::Unknown`].
pub struct Pass {
    gate: Arc<Gate>,
    probe: bool,
    reported: bool,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the actor is failing (for `module status`).
    pub fn is_failing(&self) -> bool {
        self.lock().failing
    }

    fn pass_as(self: &Arc<Self>, probe: bool) -> Pass {
        Pass {
            gate: self.clone(),
            probe,
            reported: false,
        }
    }

    /// Waits until an attempt may start.
    pub async fn pass(self: &Arc<Self>) -> Pass {
        loop {
            let changed = self.changed.notified();
            let wait = {
                let mut s = self.lock();
                if !s.failing {
                    return self.pass_as(false);
                }
                let due = s.next_probe.is_none_or(|t| t <= Instant::now());
                if !s.probing && due {
                    s.probing = true;
                    return self.pass_as(true);
                }
                s.next_probe.filter(|_| !s.probing)
            };
            match wait {
                Some(at) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

impl Pass {
    /// Records how the attempt went.
    pub fn report(mut self, health: Health, policy: &RetryPolicy) {
        self.reported = true;
        self.settle(health, policy);
    }

    fn settle(&self, health: Health, policy: &RetryPolicy) {
        let mut s = self.gate.lock();
        match health {
            Health::Up => {
                let reopened = s.failing;
                *s = State::default();
                if reopened {
                    self.gate.changed.notify_waiters();
                }
            }
            Health::Down { retry_after } if self.probe || !s.failing => {
                s.failures = if s.failing { s.failures + 1 } else { 1 };
                s.failing = true;
                s.next_probe = Some(Instant::now() + delay(policy, s.failures, retry_after));
                if self.probe {
                    s.probing = false;
                }
                self.gate.changed.notify_waiters();
            }
            // A delivery admitted before the gate closed failed too: nothing new.
            Health::Down { .. } => {}
            Health::Unknown => {
                if self.probe {
                    s.probing = false;
                    self.gate.changed.notify_waiters();
                }
            }
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if !self.reported {
            self.settle(Health::Unknown, &RetryPolicy::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(10),
            ..RetryPolicy::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_actor_lets_one_probe_through_per_backoff() {
        let gate = Arc::new(Gate::default());
        let p = policy();
        gate.pass()
            .await
            .report(Health::Down { retry_after: None }, &p);
        assert!(gate.is_failing());
        let started = Instant::now();
        let probe = gate.pass().await;
        assert!(
            started.elapsed() >= Duration::from_secs(5),
            "waited for the backoff"
        );
        // While the probe runs, nobody else passes.
        let other = tokio::time::timeout(Duration::from_secs(60), gate.pass()).await;
        assert!(other.is_err(), "a second attempt passed during the probe");
        probe.report(Health::Up, &p);
        assert!(!gate.is_failing());
        let free = tokio::time::timeout(Duration::from_millis(1), gate.pass()).await;
        assert!(free.is_ok(), "a healthy actor admits at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_frees_the_gate() {
        let gate = Arc::new(Gate::default());
        let p = policy();
        gate.pass()
            .await
            .report(Health::Down { retry_after: None }, &p);
        drop(gate.pass().await);
        let next = tokio::time::timeout(Duration::from_millis(1), gate.pass()).await;
        assert!(next.is_ok(), "the next probe may start at once");
    }
}
