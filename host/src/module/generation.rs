//! [`Generation`]: an immutable snapshot of a module — its config, the plugin libraries it loaded,
//! and the objects built from them. Each event dispatch and each delivery holds an `Arc` of the
//! generation it started on, so a generation lives exactly as long as work runs on it; when the
//! last `Arc` goes, its objects are dropped and then its libraries close.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::raw::OnError;
use crate::config::ModuleSpec;
use crate::engine::log::Loggers;
use crate::engine::route::Route;
use crate::plugin::{Library, PluginActor, PluginSource, PluginTransform};

/// A transform as a route sees it.
pub struct TransformSlot {
    pub obj: PluginTransform,
    /// The definition's `on_error`, used when the route sets none.
    pub on_error: Option<OnError>,
}

/// A plugin source and how often to poll it.
pub struct SourceSlot {
    pub id: String,
    pub obj: Arc<PluginSource>,
    pub interval: Duration,
}

/// One generation of a module. Field order matters: objects are dropped before `libraries`.
pub struct Generation {
    /// Counts up per daemon, across modules.
    pub number: u64,
    pub module: Arc<str>,
    pub spec: Arc<ModuleSpec>,
    pub routes: Vec<Route>,
    /// Route indexes by source id, in file order.
    pub by_source: HashMap<String, Vec<usize>>,
    pub transforms: HashMap<String, TransformSlot>,
    pub actors: HashMap<String, Arc<PluginActor>>,
    pub sources: Vec<SourceSlot>,
    pub loggers: Arc<Loggers>,
    /// Deliveries and pollers running on this generation.
    pub inflight: TaskTracker,
    /// Raised to stop this generation's source pollers.
    pub stop_sources: CancellationToken,
    /// Raised to ask this generation's deliveries to stop (their cancellation signal).
    pub cancel: CancellationToken,
    /// Raised to drop whatever still runs after the grace period.
    pub kill: CancellationToken,
    /// Plugin libraries, one per `plugins:` entry, by plugin name.
    pub libraries: Vec<(String, Arc<Library>)>,
}

impl Generation {
    /// The routes whose `when.source` is `source`.
    pub fn routes_for(&self, source: &str) -> &[usize] {
        self.by_source.get(source).map_or(&[], Vec::as_slice)
    }

    /// Stops this generation's work: asks deliveries to finish within `timeout`, then raises their
    /// cancellation signal, then drops what is left after `grace`. Returns how many were cancelled.
    pub async fn stop(&self, timeout: Duration, grace: Duration) -> usize {
        self.stop_sources.cancel();
        self.inflight.close();
        if tokio::time::timeout(timeout, self.inflight.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let cancelled = self.inflight.len();
        self.cancel.cancel();
        if tokio::time::timeout(grace, self.inflight.wait())
            .await
            .is_err()
        {
            self.kill.cancel();
            self.inflight.wait().await;
        }
        cancelled
    }
}
