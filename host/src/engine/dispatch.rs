//! Dispatch: one stored entry through one generation — match routes (fan-out to every match, in
//! file order), run each route's transforms in order under its `on_error` policy, and start a
//! delivery to each route's actor. Synchronous up to the hand-off: no lock, no copy of the
//! config, no blocking call; the deliveries run as tasks of their own.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use orgloop_plugin_sdk::{Event, TransformCtx, Verdict};

use crate::config::raw::OnError;
use crate::metrics::{metrics, ModuleLabels};
use crate::module::{Generation, Module};
use crate::queue::Entry;

use super::deliver::{start, Job};
use super::log::{Detail, Phase};
use super::route::Route;

/// Routes `entry` through `generation` (the module's current one, or a canary's for the entry's
/// `bucket`, which its deliveries keep). Routes the entry already finished before a restart are
/// skipped; a replayed delivery goes to its one route as it is.
pub fn dispatch(
    module: &Arc<Module>,
    generation: &Arc<Generation>,
    entry: Entry,
    bucket: Option<u32>,
) {
    let Entry {
        ticket,
        accepted_ms,
        route,
        done,
        started,
        event,
    } = entry;
    let job = |route: &str, event: Event| Job {
        ticket: ticket.clone(),
        route: route.to_owned(),
        event,
        bucket,
        accepted_ms,
        crashed: started.iter().any(|r| r == route),
    };
    if let Some(route) = route {
        // Finished before a restart (the crash fell between its acknowledgement and `Done`).
        if !done.contains(&route) {
            start(module, job(&route, event));
        }
        ticket.dispatched();
        return;
    }
    let log = &generation.loggers;
    log.log(Phase::SourceEmit, &event, Detail::default());
    let mut matched = false;
    let event_type = event.event_type();
    for &i in generation.routes_for(event.source()) {
        let route = &generation.routes[i];
        if !route.matches(&event, event_type) {
            continue;
        }
        matched = true;
        if done.contains(&route.spec.name) {
            continue;
        }
        route.stats.fired();
        route.matches.inc();
        log.log(
            Phase::RouteMatch,
            &event,
            Detail {
                route: Some(&route.spec.name),
                target: Some(&route.spec.actor),
                ..Default::default()
            },
        );
        if let Some(out) = run_transforms(module, generation, route, &event) {
            start(module, job(&route.spec.name, out.into_owned()));
        }
    }
    if !matched {
        log.log(Phase::RouteNoMatch, &event, Detail::default());
    }
    // The entry is done when the last delivery started here is.
    ticket.dispatched();
}

/// Runs a route's transforms. `None` when the event was dropped or the route halted. A call
/// that returns after its deadline counts as an error (under `on_error`), whatever it returned:
/// the module was stuck meanwhile, and that is what the route's policy is for.
fn run_transforms<'e>(
    module: &Module,
    generation: &Generation,
    route: &Route,
    event: &'e Event,
) -> Option<Cow<'e, Event>> {
    let log = &generation.loggers;
    let mut current = Cow::Borrowed(event);
    for t in &route.spec.transforms {
        let detail = Detail {
            route: Some(&route.spec.name),
            target: Some(&route.spec.actor),
            transform: Some(&t.name),
            ..Default::default()
        };
        let Some(slot) = generation.transforms.get(&t.name) else {
            continue;
        };
        log.log(Phase::TransformStart, &current, detail);
        let ctx = TransformCtx {
            source: event.source(),
            route: &route.spec.name,
            actor: &route.spec.actor,
            module: &generation.module,
        };
        module.calls.begin(slot.timeout);
        let started = Instant::now();
        let result = slot.obj.apply(&current, &ctx, slot.timeout);
        module.calls.end();
        let took = started.elapsed();
        let result = if took > slot.timeout {
            module.calls.overruns.fetch_add(1, Ordering::Relaxed);
            let labels = ModuleLabels {
                module: module.name.clone(),
            };
            metrics().transform_overruns.get_or_create(&labels).inc();
            tracing::warn!(module = %generation.module, route = %route.spec.name, transform = %t.name, event = %event.id(), "transform call took {took:?}, past its deadline of {:?}", slot.timeout);
            Err(format!(
                "the call took {:.1} s, past its deadline of {:.1} s (timeout_ms)",
                took.as_secs_f64(),
                slot.timeout.as_secs_f64()
            ))
        } else {
            result
        };
        generation.health.transform_call(result.is_err());
        match result {
            Ok(Verdict::Pass) => {
                slot.counters.pass.inc();
                log.log(Phase::TransformPass, &current, detail)
            }
            Ok(Verdict::Replace(e)) => {
                slot.counters.pass.inc();
                current = Cow::Owned(e);
                log.log(Phase::TransformPass, &current, detail);
            }
            Ok(Verdict::Drop) => {
                slot.counters.drop.inc();
                log.log(Phase::TransformDrop, &current, detail);
                return None;
            }
            Err(error) => {
                slot.counters.error.inc();
                let policy = t.on_error.or(slot.on_error).unwrap_or_default();
                let detail = Detail {
                    error: Some(&error),
                    ..detail
                };
                match policy {
                    OnError::Pass => log.log(Phase::TransformError, &current, detail),
                    OnError::Drop => {
                        log.log(Phase::TransformErrorDrop, &current, detail);
                        return None;
                    }
                    OnError::Halt => {
                        log.log(Phase::TransformErrorHalt, &current, detail);
                        tracing::error!(module = %generation.module, route = %route.spec.name, transform = %t.name, "route halted: {error}");
                        return None;
                    }
                }
            }
        }
    }
    Some(current)
}
