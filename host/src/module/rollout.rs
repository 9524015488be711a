//! Reloads that protect themselves: a canary share, a health-gated promotion and an automatic
//! rollback.
//!
//! A reload with a rollout keeps the previous generation loaded instead of draining it at once:
//!
//! - **canary** (`--canary 10%`): the new generation gets that share of new events, chosen by a
//!   stable hash of the event id ([`bucket`]), so every attempt of one event dispatched during
//!   the canary — its retries too — goes through the same generation; the rest stay on the
//!   previous one. After `canary_for` the
//!   new generation gets every event.
//! - **bake** (`--auto-rollback`, `--bake 30s`): after the full swap, the comparison goes on.
//!
//! With `auto_rollback`, a task compares the two generations every 50 ms (`EVERY`) on their live
//! traffic, or for the previous one on what it served before when it gets too little
//! ([`super::health`]); when the new one does worse beyond the thresholds it swaps back at
//! once — one pointer — and drains the new one, saying why with the figures of both. Deliveries
//! the new generation failed are retried (durable delivery) and, after the swap back, go through
//! the previous generation. Otherwise the new generation is promoted and the previous one
//! drains as after any reload. At most two generations exist throughout: a new reload during a
//! rollout ends it first (promoting or rolling back on the figures so far), and reports that.
//!
//! Every transition — the watcher's, a reload's, a rollback by hand, a stop — happens under the
//! module's lifecycle lock, so they never interleave; the watcher skips its turn while another
//! holds the lock.
//!
//! Only routing follows the canary: webhook sources and pollers are the current generation's,
//! so a source the new generation adds starts at its promotion.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::drain;
use super::generation::Generation;
use super::health::{compare, Comparison, Snapshot};
use super::registry::{LoadError, Registry};
use super::running::Module;
use crate::config::spec::RolloutPolicy;

/// How often a rollout compares the two generations.
const EVERY: Duration = Duration::from_millis(50);

/// Buckets of [`bucket`]: a share is a number of them (basis points).
pub const BUCKETS: u32 = 10_000;

/// The stable bucket of an event id, `0..BUCKETS` (FNV-1a).
pub fn bucket(event_id: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in event_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % BUCKETS as u64) as u32
}

/// The new generation of a canary, and its share in basis points: what routing reads.
pub struct Canary {
    pub generation: Arc<Generation>,
    pub share: u32,
}

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The new generation gets a share of new events.
    Canary,
    /// It gets every event, and is still compared with the previous one.
    Baking,
    /// It won: the previous generation drains.
    Promoted,
    /// It lost: the previous generation serves again and the new one drains.
    RolledBack,
}

/// A rollout, as `module status` and the reload report show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RolloutReport {
    pub phase: Phase,
    /// While in canary: the new generation's share of new events, in percent.
    pub share_percent: Option<f64>,
    pub previous_generation: u64,
    pub new_generation: u64,
    pub auto_rollback: bool,
    /// How long the current phase lasts, from its start.
    pub phase_ms: Option<u64>,
    pub elapsed_ms: u64,
    /// The two generations' figures, as compared (with `auto_rollback`; see
    /// `Active::comparison`).
    pub comparison: Option<Comparison>,
    /// Why it ended as it did.
    pub reason: Option<String>,
}

/// A rollout in progress: the previous generation is still loaded.
pub struct Active {
    previous: Arc<Generation>,
    new: Arc<Generation>,
    policy: RolloutPolicy,
    drain_timeout: Duration,
    /// The previous generation's counters when the rollout began.
    baseline: Snapshot,
    phase: Phase,
    started: Instant,
    phase_started: Instant,
    /// Ends the task that watches this rollout.
    watcher: CancellationToken,
}

impl Active {
    /// The new generation against the previous one: on the same live traffic during a canary;
    /// per figure, when that is too little to compare with (a bake after a full swap leaves the
    /// previous generation no traffic), against all the traffic the previous generation served.
    fn comparison(&self) -> Comparison {
        let lifetime = self.previous.health.snapshot();
        let live = lifetime.since(&self.baseline);
        let previous = Snapshot::baseline(live, lifetime, self.policy.thresholds.min_samples);
        compare(
            &previous,
            &self.new.health.snapshot(),
            &self.policy.thresholds,
        )
    }

    /// Why the new generation does worse, when it does and `auto_rollback` is on.
    fn worse(&self) -> Option<String> {
        self.policy
            .auto_rollback
            .then(|| self.comparison().worse)
            .flatten()
    }

    fn report(&self, phase: Phase, reason: Option<String>) -> RolloutReport {
        let (share, phase_ms) = match phase {
            Phase::Canary => (self.policy.canary, Some(self.policy.canary_for)),
            Phase::Baking => (None, Some(self.policy.bake)),
            Phase::Promoted | Phase::RolledBack => (None, None),
        };
        RolloutReport {
            phase,
            share_percent: share.map(|bp| bp as f64 / 100.0),
            previous_generation: self.previous.number,
            new_generation: self.new.number,
            auto_rollback: self.policy.auto_rollback,
            phase_ms: phase_ms.map(|d| d.as_millis() as u64),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            comparison: self.policy.auto_rollback.then(|| self.comparison()),
            reason,
        }
    }
}

/// Whether `policy` asks for a rollout rather than a plain swap.
pub fn wanted(policy: &RolloutPolicy) -> bool {
    policy.canary.is_some() || policy.auto_rollback
}

/// Starts a rollout from `previous` (the current generation) to `new`, which is staged and
/// checked. With a canary, `new` gets its share at once; without one, it takes every event now
/// and bakes. Refused, changing nothing, when another module took one of `new`'s source ids
/// meanwhile: checked atomically with the pointer change.
pub fn begin(
    registry: &Arc<Registry>,
    module: &Arc<Module>,
    previous: Arc<Generation>,
    new: Arc<Generation>,
    policy: RolloutPolicy,
    drain_timeout: Duration,
) -> Result<RolloutReport, LoadError> {
    registry.swap_unless_conflict(&new.spec, &module.name, || match policy.canary {
        Some(share) => module.set_canary(Some(Canary {
            generation: new.clone(),
            share,
        })),
        None => module.serve(&new),
    })?;
    let phase = if policy.canary.is_some() {
        Phase::Canary
    } else {
        settle(registry, module, &new);
        Phase::Baking
    };
    let watcher = CancellationToken::new();
    let active = Active {
        baseline: previous.health.snapshot(),
        previous,
        new,
        policy,
        drain_timeout,
        phase,
        started: Instant::now(),
        phase_started: Instant::now(),
        watcher: watcher.clone(),
    };
    let report = active.report(phase, None);
    tracing::info!(module = %module.name, from = report.previous_generation, to = report.new_generation, "rollout started: {phase:?}{}", report.share_percent.map_or(String::new(), |s| format!(" at {s}%")));
    module.record().rollout = Some(active);
    tokio::spawn(watch(
        Arc::downgrade(registry),
        Arc::downgrade(module),
        watcher,
    ));
    Ok(report)
}

/// Makes `g` the generation that takes every event: routing, webhooks, pollers, queue limit.
/// The current generation changes before the canary ends, so an event of the canary's share
/// never goes through the generation a promotion just left behind.
fn serve(registry: &Registry, module: &Arc<Module>, g: &Arc<Generation>) {
    module.serve(g);
    module.set_canary(None);
    settle(registry, module, g);
}

/// What follows a change of the generation that takes every event: its webhooks, its queue
/// limit, its pollers.
pub(super) fn settle(registry: &Registry, module: &Arc<Module>, g: &Arc<Generation>) {
    registry.rebuild_webhooks();
    registry
        .queue
        .set_limit(&module.name, g.spec.max_queue_bytes);
    module.pollers.reconcile(module, g);
}

/// The rollout's task: compares, promotes at the end of each phase, rolls back when worse.
async fn watch(registry: Weak<Registry>, module: Weak<Module>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let (Some(registry), Some(module)) = (registry.upgrade(), module.upgrade()) else {
            return;
        };
        // A reload, a rollback by hand or a stop is under way: it ends this rollout itself.
        let Ok(_serial) = module.lifecycle.try_lock() else {
            continue;
        };
        if stop.is_cancelled() || module.stopping.is_cancelled() {
            return;
        }
        let mut record = module.record();
        let Some(active) = record.rollout.as_mut() else {
            return;
        };
        let auto = active.policy.auto_rollback;
        if let Some(why) = active.worse() {
            drop(record);
            let why = format!("the new generation did worse: {why}");
            conclude(&registry, &module, false, why);
            return;
        }
        let (phase, ran) = (active.phase, active.phase_started.elapsed());
        match phase {
            Phase::Canary if ran >= active.policy.canary_for => {
                let bake = auto && !active.policy.bake.is_zero();
                if bake {
                    active.phase = Phase::Baking;
                    active.phase_started = Instant::now();
                    let new = active.new.clone();
                    drop(record);
                    serve(&registry, &module, &new);
                    tracing::info!(module = %module.name, generation = new.number, "canary over: the new generation takes every event and bakes");
                } else {
                    drop(record);
                    conclude(&registry, &module, true, "the canary ran its time".into());
                    return;
                }
            }
            Phase::Baking if ran >= active.policy.bake => {
                drop(record);
                let why = if auto {
                    "it did no worse than the previous generation for the whole rollout"
                } else {
                    "the rollout ran its time"
                };
                conclude(&registry, &module, true, why.into());
                return;
            }
            _ => {}
        }
    }
}

/// Ends the rollout: `promoted`, the new generation takes every event and the previous one
/// drains; else the previous one takes every event again and the new one drains.
fn conclude(
    registry: &Registry,
    module: &Arc<Module>,
    promoted: bool,
    why: String,
) -> Option<RolloutReport> {
    // Served before the rollout is taken out of the record: until then the record keeps both
    // generations' source ids reserved (see `Module::generations`).
    let winner = {
        let record = module.record();
        let active = record.rollout.as_ref()?;
        if promoted {
            active.new.clone()
        } else {
            active.previous.clone()
        }
    };
    serve(registry, module, &winner);
    let active = module.record().rollout.take()?;
    active.watcher.cancel();
    let phase = if promoted {
        Phase::Promoted
    } else {
        Phase::RolledBack
    };
    let report = active.report(phase, Some(why));
    let reason = report.reason.as_deref().unwrap_or_default();
    if promoted {
        tracing::info!(module = %module.name, generation = active.new.number, "rollout promoted: {reason}");
    } else {
        tracing::warn!(module = %module.name, from = active.new.number, to = active.previous.number, "rolled back: {reason}");
    }
    finish(module, active, report.clone(), promoted);
    Some(report)
}

/// Drains the losing generation and records the report.
fn finish(module: &Arc<Module>, active: Active, report: RolloutReport, promoted: bool) {
    let (winner, loser) = if promoted {
        (active.new, active.previous)
    } else {
        (active.previous, active.new)
    };
    let still_used: Vec<_> = winner.libraries.iter().map(|(_, l)| l.clone()).collect();
    drop(winner);
    drain::start(module, loser, &still_used, active.drain_timeout, false);
    module.record().last_rollout = Some(report);
}

/// The generation a rollout in progress would leave serving if it ended now: the one a new
/// reload is staged against (it ends the rollout afresh once staged, see [`end`]).
pub fn winner(module: &Module) -> Option<Arc<Generation>> {
    let record = module.record();
    let active = record.rollout.as_ref()?;
    Some(if active.worse().is_some() {
        active.previous.clone()
    } else {
        active.new.clone()
    })
}

/// Ends the rollout in progress, if there is one, on the figures of this moment (promoting it,
/// or rolling it back when it does worse): for a new reload, which must not make a third
/// generation.
pub fn end(registry: &Registry, module: &Arc<Module>) -> Option<RolloutReport> {
    let worse = module.record().rollout.as_ref()?.worse();
    match worse {
        None => conclude(
            registry,
            module,
            true,
            "a new reload ended the rollout".into(),
        ),
        Some(why) => {
            let why = format!(
                "a new reload ended the rollout, and the new generation was doing worse: {why}"
            );
            conclude(registry, module, false, why)
        }
    }
}

/// `orgloop module rollback`: swaps back while the previous generation is still loaded.
pub fn roll_back_by_hand(
    registry: &Registry,
    module: &Arc<Module>,
) -> Result<RolloutReport, String> {
    conclude(registry, module, false, "rolled back by hand".into()).ok_or_else(|| {
        "no rollout is in progress: the previous generation is unloaded once a reload is promoted (reload with --canary or --auto-rollback to keep it)".to_owned()
    })
}

/// Ends a rollout without a decision (the module stops), and returns the generation of the two
/// that is not the current one, for the stop to drain it too.
pub fn abandon(module: &Module) -> Option<Arc<Generation>> {
    module.set_canary(None);
    let active = module.record().rollout.take()?;
    active.watcher.cancel();
    let current = module.current();
    let other = if current.is_some_and(|c| Arc::ptr_eq(&c, &active.new)) {
        active.previous
    } else {
        active.new
    };
    Some(other)
}

/// The generations a rollout in progress keeps loaded (none without one).
pub fn loaded(module: &Module) -> Vec<Arc<Generation>> {
    let record = module.record();
    record
        .rollout
        .iter()
        .flat_map(|a| [a.previous.clone(), a.new.clone()])
        .collect()
}

/// The rollout in progress, or the last one.
pub fn status(module: &Module) -> Option<RolloutReport> {
    let record = module.record();
    match &record.rollout {
        Some(a) => Some(a.report(a.phase, None)),
        None => record.last_rollout.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(
            bucket("evt_0123456789abcdef"),
            bucket("evt_0123456789abcdef")
        );
        let n = 20_000;
        let under_20 = (0..n)
            .filter(|i| bucket(&format!("evt_{i:016x}")) < 2_000)
            .count();
        let share = under_20 as f64 / n as f64;
        assert!((0.18..0.22).contains(&share), "{share}");
    }
}
