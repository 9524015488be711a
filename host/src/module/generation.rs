//! [`Generation`]: an immutable snapshot of a module — its config, the plugin libraries it loaded,
//! and the objects built from them. Each event dispatch and each delivery holds an `Arc` of the
//! generation it started on, so a generation lives exactly as long as work runs on it; when the
//! last `Arc` goes, its objects are dropped and then its libraries close.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::raw::{Interrupted, OnError};
use crate::config::spec::RetryPolicy;
use crate::config::ModuleSpec;
use crate::engine::gate::Gate;
use crate::engine::log::Loggers;
use crate::engine::route::Route;
use crate::metrics::{ActorCounters, TransformCounters};
use crate::plugin::{Library, PluginActor, PluginSource, PluginTransform};

use super::health::Health;

/// How long a cancelled delivery may take to stop before it is dropped.
pub const GRACE: Duration = Duration::from_secs(2);

/// A transform as a route sees it.
pub struct TransformSlot {
    pub obj: PluginTransform,
    /// The definition's `on_error`, used when the route sets none.
    pub on_error: Option<OnError>,
    /// The deadline of one call.
    pub timeout: Duration,
    pub counters: TransformCounters,
}

/// An actor, the bound on its concurrent deliveries, and how its failures are retried.
pub struct ActorSlot {
    pub obj: PluginActor,
    /// Permits for deliveries in flight (the actor's `max_inflight`): beyond it, deliveries wait
    /// their turn instead of piling up connections or sessions.
    pub limit: Arc<Semaphore>,
    pub retry: RetryPolicy,
    pub interrupted: Interrupted,
    /// Whether its target looks healthy; kept while the actor carries over.
    pub gate: Arc<Gate>,
    pub counters: ActorCounters,
}

/// A plugin source and how often to poll it.
pub struct SourceSlot {
    pub id: String,
    pub obj: Arc<PluginSource>,
    pub interval: Duration,
}

/// One generation of a module. Field order matters: objects are dropped before `libraries`.
pub struct Generation {
    /// Counts up per module: 1 when loaded, one more at each swap.
    pub number: u64,
    pub module: Arc<str>,
    pub spec: Arc<ModuleSpec>,
    pub routes: Vec<Route>,
    /// Route indexes by source id, in file order.
    pub by_source: HashMap<String, Vec<usize>>,
    /// Shared with the next generation when carried over (same definition, same library).
    pub transforms: HashMap<String, Arc<TransformSlot>>,
    pub actors: HashMap<String, Arc<ActorSlot>>,
    pub sources: Vec<SourceSlot>,
    pub loggers: Arc<Loggers>,
    /// Deliveries running on this generation.
    pub inflight: TaskTracker,
    /// Raised to ask this generation's deliveries to stop (their cancellation signal).
    pub cancel: CancellationToken,
    /// Raised to drop whatever still runs after the grace period.
    pub kill: CancellationToken,
    /// How this generation does on live traffic, for a rollout's comparison.
    pub health: Health,
    /// Plugin libraries, one per `plugins:` entry, by plugin name.
    pub libraries: Vec<(String, Arc<Library>)>,
}

impl Generation {
    /// The index of the route named `name`.
    pub fn route_index(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.spec.name == name)
    }

    /// The routes whose `when.source` is `source`.
    pub fn routes_for(&self, source: &str) -> &[usize] {
        self.by_source.get(source).map_or(&[], Vec::as_slice)
    }

    /// Lets this generation's deliveries finish within `timeout` (or until `force` is raised),
    /// then raises their cancellation signal, then drops what still runs after [`GRACE`]. Returns
    /// how many deliveries had to be cancelled.
    pub async fn stop(&self, timeout: Duration, force: &CancellationToken) -> usize {
        self.inflight.close();
        let drained = tokio::select! {
            r = tokio::time::timeout(timeout, self.inflight.wait()) => r.is_ok(),
            _ = force.cancelled() => false,
        };
        if drained || self.inflight.is_empty() {
            return 0;
        }
        let cancelled = self.inflight.len();
        self.cancel.cancel();
        if tokio::time::timeout(GRACE, self.inflight.wait())
            .await
            .is_err()
        {
            self.kill.cancel();
            // A delivery that blocks its thread never sees `kill`: give up on it after one more
            // grace (its generation then outlives the drain; see `drain`).
            let _ = tokio::time::timeout(GRACE, self.inflight.wait()).await;
        }
        cancelled
    }
}
