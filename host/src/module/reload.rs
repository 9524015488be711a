//! Reloading one module while the daemon runs. The whole story is [`reload`]:
//!
//! 1. read the module again from disk (YAML, `.env`; SOPs are read at each delivery anyway);
//! 2. stage a new generation beside the current one: load changed plugin builds (private copies),
//!    check ABI and versions, build the new objects with the new config, carry over the unchanged
//!    ones with their state;
//! 3. any failure so far drops the staged generation: the current one serves on, untouched, and
//!    the outcome says why;
//! 4. swap the current-generation pointer: every event dispatched afterwards uses the new one;
//! 5. drain the old generation (see [`super::drain`]) and unload what only it used.
//!
//! Reloads of one module are serialized; a request that arrives while another runs is answered by
//! the next reload to read the files after it was made (a burst of saves costs one or two
//! reloads). At most two generations live at once: a swap while the previous old generation still
//! drains cuts that drain short first, and says so.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::drain;
use super::registry::{LoadError, Registry};
use super::report::{PluginBuild, PluginChange, ReloadOutcome, ReloadReport};
use super::rollout;
use super::running::{FailedReload, Module};
use crate::config::diff::ConfigDiff;
use crate::config::spec::RolloutPolicy;
use crate::config::{self, ConfigError};
use crate::metrics::{metrics, ReloadLabels};

/// What the caller asks of a reload.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReloadOptions {
    /// How long the old generation's deliveries may run on; default: the module's `drain_timeout`.
    pub drain_timeout: Option<Duration>,
    /// Cancel the old generation's deliveries at once.
    pub force: bool,
    /// Validate and compare only.
    pub dry_run: bool,
    /// Override the module's `defaults.reload` (see [`super::rollout`]).
    pub canary: Option<u32>,
    pub canary_for: Option<Duration>,
    pub auto_rollback: Option<bool>,
    pub bake: Option<Duration>,
}

impl ReloadOptions {
    /// The module's rollout policy with this request's overrides.
    fn rollout(&self, module_default: &RolloutPolicy) -> RolloutPolicy {
        let mut p = module_default.clone();
        if let Some(share) = self.canary {
            p.canary = Some(share);
        }
        if let Some(d) = self.canary_for {
            p.canary_for = d;
        }
        if let Some(a) = self.auto_rollback {
            p.auto_rollback = a;
        }
        if let Some(d) = self.bake {
            p.bake = d;
        }
        p
    }

    /// Nothing but a plain reload: such a request may be answered by another one's reload.
    fn plain(&self) -> bool {
        !self.force
            && self.drain_timeout.is_none()
            && !self.dry_run
            && self.canary.is_none()
            && self.canary_for.is_none()
            && self.auto_rollback.is_none()
            && self.bake.is_none()
    }
}

/// Reloads `module`. Never leaves the module without a serving generation.
pub async fn reload(
    registry: &Arc<Registry>,
    module: &Arc<Module>,
    opts: &ReloadOptions,
) -> ReloadOutcome {
    run(registry, module, opts, true, |_| std::future::ready(true)).await
}

/// Reloads `module` in two phases, for a cluster: once the new generation is staged and checked
/// (or refused, or found unchanged), `gate` is told how that went and answers whether to swap.
/// Only a staged generation is ever swapped; on `false` it is dropped and nothing changes.
pub async fn reload_gated<F, Fut>(
    registry: &Arc<Registry>,
    module: &Arc<Module>,
    opts: &ReloadOptions,
    gate: F,
) -> ReloadOutcome
where
    F: FnOnce(Result<&ReloadReport, &ReloadOutcome>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    run(registry, module, opts, false, gate).await
}

async fn run<F, Fut>(
    registry: &Arc<Registry>,
    module: &Arc<Module>,
    opts: &ReloadOptions,
    coalesce: bool,
    gate: F,
) -> ReloadOutcome
where
    F: FnOnce(Result<&ReloadReport, &ReloadOutcome>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let request = module.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let _serial = module.lifecycle.lock().await;
    // A request with options of its own (force, a drain timeout, a dry run, a rollout) is never
    // answered by a reload made with other options.
    let plain = coalesce && opts.plain();
    if let Some((covered, outcome)) = module.record().last_reload.as_ref().filter(|_| plain) {
        if *covered >= request {
            let mut outcome = outcome.clone();
            if let ReloadOutcome::Swapped(r) | ReloadOutcome::Unchanged(r) = &mut outcome {
                r.coalesced = true;
            }
            return outcome;
        }
    }
    let covered = module.requests.load(Ordering::SeqCst);
    let outcome = match prepare(registry, module, opts).await {
        Ok(staged) => {
            if gate(Ok(&staged.report)).await {
                commit(registry, module, opts, staged).await
            } else {
                let why = "not applied: the reload was refused elsewhere in the cluster";
                rejected(module, vec![ConfigError::new(&module.dir, None, "", why)])
            }
        }
        Err(outcome) => {
            gate(Err(&outcome)).await;
            outcome
        }
    };
    count(&module.name, &outcome);
    let mut record = module.record();
    if let ReloadOutcome::Rejected { errors, .. } = &outcome {
        record.last_failure = Some(FailedReload {
            at: orgloop_plugin_sdk::format_timestamp(std::time::SystemTime::now()),
            errors: errors.clone(),
        });
    }
    if !opts.dry_run {
        record.last_reload = Some((covered, outcome.clone()));
    }
    outcome
}

fn rejected(module: &Module, errors: Vec<ConfigError>) -> ReloadOutcome {
    ReloadOutcome::Rejected {
        module: module.name.clone(),
        errors,
    }
}

/// A refusal that is not about one file's content: a conflict, or a plugin that would not load.
fn refused(module: &Module, e: LoadError) -> ReloadOutcome {
    let error = ConfigError::new("orgloop.yaml", None, "", e.to_string());
    rejected(module, vec![error])
}

fn unloading(module: &Module) -> ReloadOutcome {
    let error = ConfigError::new(&module.dir, None, "", "the module is being unloaded");
    rejected(module, vec![error])
}

/// A new generation staged and checked, not yet swapped in.
struct Staged {
    /// The generation it was staged against.
    base: Arc<super::Generation>,
    staged: Arc<super::Generation>,
    report: ReloadReport,
}

/// Steps 1–3: reads, stages and checks the new generation; the outcome instead when there is
/// nothing to swap (refused, unchanged, a dry run).
async fn prepare(
    registry: &Arc<Registry>,
    module: &Arc<Module>,
    opts: &ReloadOptions,
) -> Result<Staged, ReloadOutcome> {
    // During a rollout, the new generation is staged beside the one that would win it now; the
    // rollout ends, on the figures of that moment, only once the new one is good to swap in.
    let Some(base) = rollout::winner(module).or_else(|| module.current()) else {
        return Err(unloading(module));
    };
    let started = Instant::now();

    // 1. Read.
    let spec = match config::load_module(&module.dir) {
        Ok(spec) => spec,
        Err(errors) => return Err(rejected(module, errors)),
    };
    if spec.name != module.name {
        let message = format!(
            "metadata.name changed from {:?} to {:?}; load it as a new module instead",
            module.name, spec.name
        );
        let error = ConfigError::new("orgloop.yaml", None, "metadata.name", message);
        return Err(rejected(module, vec![error]));
    }
    if let Err(e) = registry.check_conflicts(&spec, Some(&module.name)) {
        return Err(refused(module, e));
    }

    // 2–3. Stage beside the current generation.
    let staged = match registry
        .stage(module, Arc::new(spec), Some(base.clone()))
        .await
    {
        Ok(g) => g,
        Err(LoadError::Invalid(errors)) => return Err(rejected(module, errors)),
        Err(e) => return Err(refused(module, e)),
    };
    let (plugins, diff) = changes(&base, &staged);
    let report = ReloadReport {
        module: module.name.clone(),
        from_generation: base.number,
        to_generation: base.number,
        stage_ms: started.elapsed().as_secs_f64() * 1000.0,
        swap_us: 0.0,
        draining: None,
        forced_previous_drain: None,
        ended_rollout: None,
        rollout: None,
        coalesced: false,
        plugins,
        diff,
    };
    if opts.dry_run {
        return Err(ReloadOutcome::DryRun(report));
    }
    if report.diff.is_empty() && !report.plugins.iter().any(PluginChange::changed) {
        return Err(ReloadOutcome::Unchanged(report));
    }

    Ok(Staged {
        base,
        staged,
        report,
    })
}

/// Steps 4–5: swaps the staged generation in and drains the one it replaces.
async fn commit(
    registry: &Arc<Registry>,
    module: &Arc<Module>,
    opts: &ReloadOptions,
    staged: Staged,
) -> ReloadOutcome {
    let Staged {
        base,
        staged,
        mut report,
    } = staged;
    // 4. Swap (after ending a rollout and cutting short an older drain: at most two generations
    // live). Checked first: a reload that is refused changes nothing, a rollout included.
    if let Err(e) = registry.check_conflicts(&staged.spec, Some(&module.name)) {
        return refused(module, e);
    }
    report.ended_rollout = rollout::end(registry, module);
    let Some(old) = module.current() else {
        return unloading(module);
    };
    if !Arc::ptr_eq(&old, &base) {
        // The rollout ended the other way than it looked while this one was staged.
        (report.plugins, report.diff) = changes(&old, &staged);
        report.from_generation = old.number;
    }
    report.forced_previous_drain = drain::force_current(module).await;
    let policy = opts.rollout(&staged.spec.reload);
    let timeout = if opts.force {
        Duration::ZERO
    } else {
        opts.drain_timeout.unwrap_or(staged.spec.drain_timeout)
    };
    if rollout::wanted(&policy) {
        let swap = Instant::now();
        let begun = rollout::begin(registry, module, old, staged.clone(), policy, timeout);
        report.rollout = Some(match begun {
            Ok(r) => r,
            Err(e) => return refused(module, e),
        });
        report.swap_us = swap.elapsed().as_secs_f64() * 1e6;
        report.to_generation = staged.number;
        tracing::info!(module = %module.name, from = report.from_generation, to = report.to_generation, stage_ms = report.stage_ms, "module reloaded with a rollout");
        return ReloadOutcome::Swapped(report);
    }
    let swap = Instant::now();
    // Checked again atomically with the swap: another module may have loaded meanwhile.
    let stored =
        registry.swap_unless_conflict(&staged.spec, &module.name, || module.serve(&staged));
    if let Err(e) = stored {
        return refused(module, e);
    }
    rollout::settle(registry, module, &staged);
    report.swap_us = swap.elapsed().as_secs_f64() * 1e6;
    report.to_generation = staged.number;

    // 5. Drain the old generation.
    let still_used: Vec<_> = staged.libraries.iter().map(|(_, l)| l.clone()).collect();
    report.draining = Some(drain::start(module, old, &still_used, timeout, opts.force).0);
    tracing::info!(
        module = %module.name,
        from = report.from_generation,
        to = report.to_generation,
        swap_us = report.swap_us,
        stage_ms = report.stage_ms,
        "module reloaded"
    );
    ReloadOutcome::Swapped(report)
}

/// `orgloop_reloads_total` by result, and the swap's and staging's times.
fn count(module: &str, outcome: &ReloadOutcome) {
    let m = metrics();
    let result = match outcome {
        ReloadOutcome::Swapped(r) => {
            m.swap_seconds.observe(r.swap_us / 1e6);
            m.stage_seconds.observe(r.stage_ms / 1e3);
            "swapped"
        }
        ReloadOutcome::Unchanged(_) => "unchanged",
        ReloadOutcome::DryRun(_) => return,
        ReloadOutcome::Rejected { .. } => "rejected",
    };
    let labels = ReloadLabels {
        module: module.to_owned(),
        result,
    };
    m.reloads.get_or_create(&labels).inc();
}

/// What changes from `old` to `new`: plugin builds and configuration.
fn changes(old: &super::Generation, new: &super::Generation) -> (Vec<PluginChange>, ConfigDiff) {
    let plugins = plugin_changes(old, new);
    let rebuilt = |name: &str| plugins.iter().any(|p| p.name == name && p.changed());
    let diff = ConfigDiff::between(&old.spec, &new.spec, rebuilt);
    (plugins, diff)
}

/// Each plugin of either generation, with its build before and after.
fn plugin_changes(old: &super::Generation, new: &super::Generation) -> Vec<PluginChange> {
    let build = |g: &super::Generation, name: &str| {
        g.libraries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| PluginBuild::of(l))
    };
    let mut names: Vec<&str> = old
        .libraries
        .iter()
        .chain(&new.libraries)
        .map(|(n, _)| n.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| PluginChange {
            name: n.to_owned(),
            old: build(old, n),
            new: build(new, n),
        })
        .collect()
}
