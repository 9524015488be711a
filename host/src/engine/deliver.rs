//! Delivery: one event to one route's actor, as a task on the generation's tracker (so a drain can
//! wait for it), with the route's interpolated config and SOP prompt, and a cancellation signal.

use std::sync::Arc;
use std::time::Instant;

use abi_stable::sabi_trait::TD_Opaque;
use async_ffi::{FfiFuture, FutureExt};
use orgloop_plugin_sdk::abi::{CancelBox, CancelSignal, CancelSignal_TO};
use orgloop_plugin_sdk::{Event, Outcome};
use tokio_util::sync::CancellationToken;

use crate::module::Generation;
use crate::plugin::library::DeliveryRequest;

use super::interpolate::interpolate;
use super::log::{Detail, Phase};
use super::sop::read_prompt;

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

fn signal(token: CancellationToken) -> CancelBox {
    CancelSignal_TO::from_value(TokenSignal(token), TD_Opaque)
}

/// Starts delivering `event` along route `route` of `generation`.
pub fn deliver(generation: Arc<Generation>, route: usize, event: Event) {
    let g = generation.clone();
    generation.inflight.spawn(async move {
        let route = &g.routes[route];
        let Some(actor) = g.actors.get(&route.spec.actor) else { return };
        let detail = Detail { route: Some(&route.spec.name), target: Some(&route.spec.actor), ..Default::default() };
        // Wait for a free slot of the actor; a drain that cancels meanwhile ends the wait.
        let permit = tokio::select! {
            p = actor.limit.clone().acquire_owned() => p.ok(),
            _ = g.cancel.cancelled() => None,
        };
        let Some(_permit) = permit else {
            let error = Some("cancelled before it started (the actor was at max_inflight)");
            g.loggers.log(Phase::DeliverFailure, &event, Detail { result: Some("error"), error, ..detail });
            return;
        };
        let config = interpolate(&route.spec.config, &event);
        let prompt = match &route.spec.prompt_file {
            // Under `kill` too: a hung read (a FIFO, a stalled network file system) must not hold
            // the drain, and with it every later reload of the module.
            Some(path) => tokio::select! {
                p = read_prompt(path) => p,
                _ = g.kill.cancelled() => return,
            },
            None => None,
        };
        g.loggers.log(Phase::DeliverAttempt, &event, detail);
        let request = DeliveryRequest {
            event: event.clone(),
            config_json: serde_json::Value::Object(config).to_string(),
            prompt,
            prompt_file: route.spec.prompt_file.as_ref().map(|p| p.display().to_string()),
            route: route.spec.name.clone(),
        };
        let started = Instant::now();
        let result = tokio::select! {
            r = actor.obj.deliver(request, signal(g.cancel.child_token())) => r,
            _ = g.kill.cancelled() => Err("dropped: still running after the cancellation grace period".into()),
        };
        let duration_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        let (phase, result, error) = match &result {
            Ok(Outcome::Delivered) => (Phase::DeliverSuccess, "delivered", None),
            Ok(Outcome::Rejected(why)) => (Phase::DeliverFailure, "rejected", Some(why.as_str())),
            Err(e) => (Phase::DeliverFailure, "error", Some(e.as_str())),
        };
        if let Some(error) = error {
            let (module, route, actor) = (&g.module, &route.spec.name, &route.spec.actor);
            tracing::warn!(module = %module, route = %route, actor = %actor, event = %event.id(), "delivery failed ({result}): {error}");
        }
        g.loggers.log(phase, &event, Detail { result: Some(result), error, duration_ms, ..detail });
    });
}
