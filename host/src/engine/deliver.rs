//! Delivery: one event along one route, from its first attempt until it is delivered or in the
//! dead letters.
//!
//! A delivery ([`Job`]) is a task of its module, not of a generation: waiting for the actor
//! (its `max_inflight`, its [`Gate`](super::gate::Gate)) and waiting between retries are not part
//! of any drain, and each attempt looks the route up again in the module's *current* generation
//! — after a reload, queued deliveries and retries go through the new version. Only the attempt
//! itself runs on a generation's tracker, so that a drain waits for it (and can cancel it).
//!
//! How an attempt ends decides what happens next:
//! - delivered: the route is acknowledged in the queue;
//! - refused for good (a permanent failure, or the actor rejected it), out of attempts or time,
//!   or its route or actor removed by a reload: into the dead letters, then acknowledged;
//! - failed in a way that may heal: retried after a backoff, through the actor's gate;
//! - interrupted by the host (a drain's timeout, a shutdown): tried again at once through the
//!   current generation, or dead-lettered if the actor says `interrupted: dead_letter`; at
//!   shutdown the delivery stays stored for the next start. For such an actor each attempt's
//!   start is stored first, so that an attempt a crash cut short is dead-lettered too.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use abi_stable::sabi_trait::TD_Opaque;
use async_ffi::{FfiFuture, FutureExt};
use futures_util::FutureExt as _;
use orgloop_plugin_sdk::abi::{CancelBox, CancelSignal, CancelSignal_TO};
use orgloop_plugin_sdk::{format_timestamp, Event, Outcome};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::config::raw::Interrupted;
use crate::metrics::{metrics, ActorLabels};
use crate::module::running::{since, Count, Stopping};
use crate::module::{Generation, Module};
use crate::plugin::library::{DeliveryRequest, Failure};
use crate::queue::dead::DeadLetter;
use crate::queue::Ticket;

use super::gate::{Health, Pass};
use super::interpolate::interpolate;
use super::log::{Detail, Phase};
use super::retry::{delay, exhausted};
use super::sop::read_prompt;

/// One delivery of an event along a route.
pub struct Job {
    pub ticket: Ticket,
    pub route: String,
    /// The event after the route's transforms.
    pub event: Event,
    /// The rollout bucket of the event as it was stored, when it was dispatched during a
    /// canary: every attempt goes through the generation that routed it, even when a transform
    /// gave the event a new id.
    pub bucket: Option<u32>,
    pub accepted_ms: i64,
    /// An attempt had started when the daemon died (known for `interrupted: dead_letter` actors).
    pub crashed: bool,
}

/// Starts delivering `job` as a task of `module`.
pub fn start(module: &Arc<Module>, job: Job) {
    let m = module.clone();
    module
        .deliveries
        .spawn_on(run(m, job), module.executor.handle());
}

/// How waiting for the actor's gate and limit ended.
enum Admitted {
    Yes(Pass, OwnedSemaphorePermit),
    /// The generations changed: resolve again.
    Swapped,
    Stopping,
}

/// How one attempt ended.
enum Attempted {
    Delivered,
    Rejected(String),
    Failed(Failure),
    /// The host cancelled or dropped it (a drain's timeout, `--force`, a shutdown).
    Interrupted(String),
}

/// What a delivery knows about its own history.
struct Progress {
    attempts: u32,
    last_error: Option<String>,
}

async fn run(module: Arc<Module>, job: Job) {
    let key = idempotency_key(job.event.id(), &job.route);
    let mut p = Progress {
        attempts: 0,
        last_error: None,
    };
    let mut held = false;
    loop {
        let mut swaps = module.swaps();
        let Some(g) = module.generation_for(job.bucket) else {
            return stopped(&module, &job, &p).await;
        };
        let Some(i) = g.route_index(&job.route) else {
            let why = "its route was removed by a reload";
            return dead(&module, &g, &job, "", why, &p).await;
        };
        let actor_id = g.routes[i].spec.actor.clone();
        let Some(actor) = g.actors.get(&actor_id).cloned() else {
            let why = "its actor was removed by a reload";
            return dead(&module, &g, &job, &actor_id, why, &p).await;
        };
        if job.crashed && p.attempts == 0 && actor.interrupted == Interrupted::DeadLetter {
            let why = "interrupted (the daemon stopped during its attempt) and its actor says interrupted: dead_letter";
            return dead(&module, &g, &job, &actor_id, why, &p).await;
        }
        let stats = module.actor_stats(&actor_id);
        // Waiting holds only the actor's gate and limit, not its generation: a reload meanwhile
        // drains and unloads the old one, and this delivery then goes through the new one —
        // at once, not at the old gate's next probe (a rollback away from a dead target).
        let (gate, limit) = (actor.gate.clone(), actor.limit.clone());
        if p.attempts == 0 && !held && gate.is_failing() {
            // Held back before its first attempt: a sample for a rollout's comparison, which
            // would otherwise see only the gate's few probes of a dead target. Once per
            // delivery.
            held = true;
            g.health.held();
        }
        drop((g, actor));
        let admitted = {
            let _waiting = Count::new(&stats.waiting);
            let admit = async {
                let pass = gate.pass().await;
                let permit = limit.acquire_owned().await.ok()?;
                Some((pass, permit))
            };
            tokio::select! {
                biased;
                _ = module.stopping.cancelled() => Admitted::Stopping,
                _ = swaps.changed() => Admitted::Swapped,
                a = admit => a.map_or(Admitted::Stopping, |(pass, permit)| Admitted::Yes(pass, permit)),
            }
        };
        let (pass, permit) = match admitted {
            Admitted::Yes(pass, permit) => (pass, permit),
            Admitted::Swapped => continue,
            Admitted::Stopping => return stopped(&module, &job, &p).await,
        };
        let Some((g, i, actor)) = module.generation_for(job.bucket).and_then(|g| {
            let i = g.route_index(&job.route)?;
            let actor = g.actors.get(&g.routes[i].spec.actor)?.clone();
            Some((g, i, actor))
        }) else {
            continue; // the module stops, or a reload removed the route: the loop says which
        };
        if !Arc::ptr_eq(&actor.gate, &gate) {
            continue; // a reload changed the actor: wait for the new one
        }
        let dead_letter_if_interrupted = actor.interrupted == Interrupted::DeadLetter;
        if dead_letter_if_interrupted {
            job.ticket.started(&job.route).await;
        }
        p.attempts += 1;
        let result = {
            let _inflight = Count::new(&stats.inflight);
            attempt(&g, i, &job, &key, p.attempts).await
        };
        drop(permit);
        let failure = match result {
            Attempted::Delivered => {
                pass.report(Health::Up, &actor.retry);
                if dead_letter_if_interrupted {
                    // Durable at once: after a crash, its stored start alone would dead-letter it.
                    job.ticket.ack_durably(&job.route).await;
                } else {
                    job.ticket.ack(&job.route);
                }
                return;
            }
            Attempted::Rejected(why) => {
                pass.report(Health::Up, &actor.retry);
                let why = format!("rejected by the actor: {why}");
                return dead(&module, &g, &job, &actor_id, &why, &p).await;
            }
            Attempted::Interrupted(why) => {
                pass.report(Health::Unknown, &actor.retry);
                p.last_error = Some(why.clone());
                if dead_letter_if_interrupted {
                    let why =
                        format!("interrupted ({why}) and its actor says interrupted: dead_letter");
                    return dead(&module, &g, &job, &actor_id, &why, &p).await;
                }
                if module.stopping.is_cancelled() {
                    return stopped(&module, &job, &p).await;
                }
                continue;
            }
            Attempted::Failed(f) => f,
        };
        if dead_letter_if_interrupted {
            // It ended: a crash while it waits for its retry interrupts nothing.
            job.ticket.ended(&job.route);
        }
        p.last_error = Some(failure.message.clone());
        if failure.permanent {
            pass.report(Health::Up, &actor.retry);
            return dead(&module, &g, &job, &actor_id, "failed permanently", &p).await;
        }
        let retry_after = failure.retry_after;
        pass.report(Health::Down { retry_after }, &actor.retry);
        if let Some(why) = exhausted(&actor.retry, p.attempts, since(job.accepted_ms)) {
            return dead(&module, &g, &job, &actor_id, &why, &p).await;
        }
        let wait = delay(&actor.retry, p.attempts, retry_after);
        actor.counters.retries.inc();
        log_retry(&g, &job, &actor_id, &p, wait);
        drop((g, actor));
        let _retrying = Count::new(&stats.retrying);
        tokio::select! {
            biased;
            _ = module.stopping.cancelled() => return stopped(&module, &job, &p).await,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs one attempt tracked by `g`'s tracker, so that `g`'s drain waits for it. Inside the
/// delivery's own task (on the module's threads): a task of its own per attempt cost a spawn, a
/// wake-up and a copy of the event for every delivery.
async fn attempt(g: &Arc<Generation>, i: usize, job: &Job, key: &str, n: u32) -> Attempted {
    let event = &job.event;
    let run = async move {
        let route = &g.routes[i];
        let Some(actor) = g.actors.get(&route.spec.actor) else {
            return Attempted::Interrupted("the actor is gone".into());
        };
        let detail = Detail {
            route: Some(&route.spec.name),
            target: Some(&route.spec.actor),
            attempt: Some(n),
            ..Default::default()
        };
        let config = interpolate(&route.spec.config, event);
        let prompt = match &route.spec.prompt_file {
            // Under `kill` too: a hung read (a FIFO, a stalled network file system) must not hold
            // the drain, and with it every later reload of the module.
            Some(path) => tokio::select! {
                p = read_prompt(path) => p,
                _ = g.kill.cancelled() => return Attempted::Interrupted("dropped while reading its SOP".into()),
            },
            None => None,
        };
        g.loggers.log(Phase::DeliverAttempt, event, detail);
        let request = DeliveryRequest {
            event: event.clone(),
            config_json: serde_json::Value::Object(config).to_string(),
            prompt,
            prompt_file: route
                .spec
                .prompt_file
                .as_ref()
                .map(|p| p.display().to_string()),
            route: route.spec.name.clone(),
            idempotency_key: key.to_owned(),
            attempt: n,
        };
        let started = Instant::now();
        let result = tokio::select! {
            r = actor.obj.deliver(request, signal(g.cancel.child_token())) => r,
            _ = g.kill.cancelled() => {
                return Attempted::Interrupted("dropped: still running after the cancellation grace period".into())
            }
        };
        let took = started.elapsed();
        let duration_ms = Some(took.as_secs_f64() * 1000.0);
        let attempted = match result {
            Ok(Outcome::Delivered) => Attempted::Delivered,
            Ok(Outcome::Rejected(why)) => Attempted::Rejected(why),
            Err(f) if g.cancel.is_cancelled() => {
                Attempted::Interrupted(format!("cancelled: {}", f.message))
            }
            Err(f) => Attempted::Failed(f),
        };
        let counters = &actor.counters;
        counters.seconds.observe(took.as_secs_f64());
        if !matches!(attempted, Attempted::Interrupted(_)) {
            g.health
                .attempt(matches!(attempted, Attempted::Failed(_)), took);
        }
        match &attempted {
            Attempted::Delivered => counters.delivered.inc(),
            Attempted::Rejected(_) => counters.rejected.inc(),
            Attempted::Failed(_) => counters.failed.inc(),
            Attempted::Interrupted(_) => counters.interrupted.inc(),
        };
        let (phase, result, error) = match &attempted {
            Attempted::Delivered => (Phase::DeliverSuccess, "delivered", None),
            Attempted::Rejected(why) => (Phase::DeliverFailure, "rejected", Some(why.as_str())),
            Attempted::Failed(f) => (Phase::DeliverFailure, "error", Some(f.message.as_str())),
            Attempted::Interrupted(why) => {
                (Phase::DeliverFailure, "interrupted", Some(why.as_str()))
            }
        };
        if let Some(error) = error {
            let (module, route, actor) = (&g.module, &route.spec.name, &route.spec.actor);
            tracing::warn!(module = %module, route = %route, actor = %actor, event = %event.id(), attempt = n, "delivery failed ({result}): {error}");
        }
        g.loggers.log(
            phase,
            event,
            Detail {
                result: Some(result),
                error,
                duration_ms,
                ..detail
            },
        );
        attempted
    };
    // A panic of the host's own code: a failure like any other (retried with backoff), so that
    // a deterministic one cannot loop at full speed.
    g.inflight
        .track_future(AssertUnwindSafe(run).catch_unwind())
        .await
        .unwrap_or_else(|_| {
            Attempted::Failed(Failure::new("the attempt panicked (a bug of the daemon)"))
        })
}

fn log_retry(g: &Generation, job: &Job, actor: &str, p: &Progress, wait: Duration) {
    let detail = Detail {
        route: Some(&job.route),
        target: Some(actor),
        error: p.last_error.as_deref(),
        attempt: Some(p.attempts),
        retry_in_ms: Some(wait.as_millis() as u64),
        ..Default::default()
    };
    g.loggers.log(Phase::DeliverRetry, &job.event, detail);
}

/// The module stops: at shutdown the delivery stays stored for the next start; at an unload it
/// goes to the dead letters — except in a cluster, where the other nodes may still run the
/// module: there it goes back to the stream either way.
async fn stopped(module: &Arc<Module>, job: &Job, p: &Progress) {
    if module.queue.clustered() {
        return job.ticket.abandon();
    }
    match module.stopping_for() {
        Stopping::Shutdown => job.ticket.abandon(),
        Stopping::Unload => {
            let why = "the module was unloaded before the delivery finished";
            let g = module.current();
            let actor = g
                .as_ref()
                .and_then(|g| {
                    g.route_index(&job.route)
                        .map(|i| g.routes[i].spec.actor.clone())
                })
                .unwrap_or_default();
            store_dead(module, g.as_deref(), job, &actor, why, p).await
        }
    }
}

async fn dead(
    module: &Arc<Module>,
    g: &Generation,
    job: &Job,
    actor: &str,
    why: &str,
    p: &Progress,
) {
    store_dead(module, Some(g), job, actor, why, p).await
}

/// Puts the delivery into the dead letters, then acknowledges its route. A dead letter that
/// cannot be written leaves the delivery stored: it is tried again at the next start.
async fn store_dead(
    module: &Arc<Module>,
    g: Option<&Generation>,
    job: &Job,
    actor: &str,
    why: &str,
    p: &Progress,
) {
    let letter = DeadLetter {
        id: crate::queue::dead::new_id(),
        module: module.name.clone(),
        route: Some(job.route.clone()),
        actor: Some(actor.to_owned()),
        event_id: job.event.id().to_owned(),
        event: job.event.to_json(),
        reason: why.to_owned(),
        last_error: p.last_error.clone(),
        attempts: p.attempts,
        accepted_at: format_timestamp(
            UNIX_EPOCH + Duration::from_millis(job.accepted_ms.max(0) as u64),
        ),
        dead_at: format_timestamp(SystemTime::now()),
    };
    let id = letter.id.clone();
    match module.queue.dead.add(letter).await {
        Ok(()) => job.ticket.ack(&job.route),
        Err(e) => {
            tracing::error!(module = %module.name, route = %job.route, event = %job.event.id(), "cannot store a dead letter ({e}); the delivery stays queued and is tried again at the next start");
            job.ticket.abandon();
            return;
        }
    }
    let labels = ActorLabels {
        module: module.name.clone(),
        actor: actor.to_owned(),
    };
    metrics().dead_letters_added.get_or_create(&labels).inc();
    tracing::warn!(module = %module.name, route = %job.route, actor, event = %job.event.id(), dead_letter = %id, attempts = p.attempts, "delivery dead-lettered: {why}");
    if let Some(g) = g {
        let error = format!("{why} [{id}]");
        let detail = Detail {
            route: Some(&job.route),
            target: Some(actor),
            result: Some("dead"),
            error: Some(&error),
            attempt: Some(p.attempts),
            ..Default::default()
        };
        g.loggers.log(Phase::DeliverDead, &job.event, detail);
    }
}

/// `<event id>:<route>`, with every byte outside visible ASCII of the route percent-encoded, so
/// that it is a valid header value.
pub fn idempotency_key(event_id: &str, route: &str) -> String {
    let mut key = String::with_capacity(event_id.len() + 1 + route.len());
    key.push_str(event_id);
    key.push(':');
    for b in route.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            key.push(b as char);
        } else {
            key.push_str(&format!("%{b:02X}"));
        }
    }
    key
}

/// The host side of an actor's cancellation signal.
struct TokenSignal(CancellationToken);

impl CancelSignal for TokenSignal {
    fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
    fn cancelled(&self) -> FfiFuture<()> {
        self.0.clone().cancelled_owned().into_ffi()
    }
}

/// An actor's cancellation signal, raised when `token` is cancelled.
pub fn signal(token: CancellationToken) -> CancelBox {
    CancelSignal_TO::from_value(TokenSignal(token), TD_Opaque)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_header_safe_and_stable() {
        assert_eq!(idempotency_key("evt_1", "notify"), "evt_1:notify");
        assert_eq!(
            idempotency_key("evt_1", "to team é"),
            "evt_1:to%20team%20%C3%A9"
        );
        assert_eq!(idempotency_key("evt_1", "50%"), "evt_1:50%25");
    }
}
