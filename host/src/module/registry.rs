//! [`Registry`]: every module of the daemon, the global index of webhook source ids, and the
//! lifecycle operations on modules — load, reload (see [`super::reload`]), unload.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::generation::{Generation, GRACE};
use super::reload::{reload, ReloadOptions};
use super::report::{DrainReport, ReloadOutcome};
use super::running::{Module, SourceStats, Stopping};
use super::stage::{stage, StageCtx};
use super::{drain, watch};
use crate::config::spec::{SourceKind, WebhookConfig};
use crate::config::{self, ConfigError, ModuleSpec};
use crate::plugin::http_client::HttpClient;
use crate::plugin::services::Emitter;
use crate::plugin::Loader;
use crate::queue::{Durability, Queue};

/// A webhook source, as the ingest path looks it up.
#[derive(Clone)]
pub struct WebhookTarget {
    pub module: Arc<Module>,
    pub config: WebhookConfig,
    pub stats: Arc<SourceStats>,
}

/// Why a lifecycle operation did not happen.
#[derive(Debug)]
pub enum LoadError {
    /// The module's configuration or plugins are invalid.
    Invalid(Vec<ConfigError>),
    /// It conflicts with a module already running (same name, or a source id already taken).
    Conflict(String),
    /// No module has that name.
    NotFound(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Invalid(errors) => f.write_str(config::error::render(errors).trim_end()),
            LoadError::Conflict(why) => f.write_str(why),
            LoadError::NotFound(name) => write!(f, "no module named {name:?} is loaded"),
        }
    }
}

/// All modules of the daemon.
pub struct Registry {
    modules: Mutex<BTreeMap<String, Arc<Module>>>,
    /// Shared, so that a webhook looks its target up with one reference count.
    webhooks: ArcSwap<HashMap<String, Arc<WebhookTarget>>>,
    loader: Loader,
    http: HttpClient,
    /// Where every module's events are stored before they are routed.
    pub queue: Queue,
    /// With `start --watch`: the debounce for watching every module, loaded now or later.
    watch: Mutex<Option<Duration>>,
}

impl Registry {
    pub fn new(loader: Loader, queue: Queue) -> Self {
        Registry {
            modules: Mutex::default(),
            webhooks: ArcSwap::default(),
            loader,
            http: HttpClient::default(),
            queue,
            watch: Mutex::default(),
        }
    }

    /// Watches the files of every module, from now on (see [`super::watch`]).
    pub fn watch_all(self: &Arc<Self>, debounce: Duration) {
        *self.watch.lock().unwrap_or_else(|e| e.into_inner()) = Some(debounce);
        for m in self.modules() {
            watch::spawn(self.clone(), m.name.clone(), debounce);
        }
    }

    /// Whether the daemon reloads its modules when their files change (`--watch`).
    pub fn watching(&self) -> bool {
        self.watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Module>>> {
        self.modules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The modules, by name.
    pub fn modules(&self) -> Vec<Arc<Module>> {
        self.lock().values().cloned().collect()
    }

    pub fn module(&self, name: &str) -> Option<Arc<Module>> {
        self.lock().get(name).cloned()
    }

    /// The webhook source with this id, in any module.
    pub fn webhook(&self, source: &str) -> Option<Arc<WebhookTarget>> {
        self.webhooks.load().get(source).cloned()
    }

    /// Reads, validates and starts the module in `dir`. Nothing changes when it fails.
    pub async fn load(self: &Arc<Self>, dir: &Path) -> Result<Arc<Module>, LoadError> {
        let spec = Arc::new(config::load_module(dir).map_err(LoadError::Invalid)?);
        self.check_conflicts(&spec, None)?;
        let module = Module::new(
            spec.name.clone(),
            spec.dir.clone(),
            self.queue.clone(),
            spec.threads,
        )
        .map_err(|e| {
            let why = format!("cannot start the module's threads: {e}");
            LoadError::Invalid(vec![ConfigError::new(&spec.dir, None, "", why)])
        })?;
        let module = Arc::new(module);
        let generation = self.stage(&module, spec, None).await?;
        {
            let mut modules = self.lock();
            // Checked again under the lock: another load may have finished meanwhile.
            conflicts(&modules, &generation.spec, None)?;
            module.serve(&generation);
            modules.insert(module.name.clone(), module.clone());
        }
        // Entries stored for this module before (by an earlier run) are routed first.
        let connection = self
            .queue
            .register(&module.name, generation.spec.max_queue_bytes);
        module.start_dispatcher(connection);
        self.rebuild_webhooks();
        module.pollers.reconcile(&module, &generation);
        if let Some(debounce) = *self.watch.lock().unwrap_or_else(|e| e.into_inner()) {
            watch::spawn(self.clone(), module.name.clone(), debounce);
        }
        tracing::info!(module = %module.name, generation = generation.number, routes = generation.routes.len(), "module loaded");
        Ok(module)
    }

    /// Reloads module `name`; see [`super::reload`].
    pub async fn reload(
        self: &Arc<Self>,
        name: &str,
        opts: &ReloadOptions,
    ) -> Result<ReloadOutcome, LoadError> {
        let module = self
            .module(name)
            .ok_or_else(|| LoadError::NotFound(name.to_owned()))?;
        Ok(reload(self, &module, opts).await)
    }

    /// `orgloop module rollback`: ends the rollout in progress of module `name` by swapping
    /// back to its previous generation; see [`super::rollout`].
    pub async fn roll_back(
        &self,
        name: &str,
    ) -> Result<Result<super::rollout::RolloutReport, String>, LoadError> {
        let module = self
            .module(name)
            .ok_or_else(|| LoadError::NotFound(name.to_owned()))?;
        let _serial = module.lifecycle.lock().await;
        Ok(super::rollout::roll_back_by_hand(self, &module))
    }

    /// Stops module `name`: it takes no more events, its sources stop, the events it stored are
    /// routed, its deliveries in flight get `timeout` (default: its `drain_timeout`; none with
    /// `force`) to finish, everything still waiting goes to the dead letters, and its libraries
    /// unload. Returns when all of that is over.
    pub async fn unload(
        &self,
        name: &str,
        timeout: Option<Duration>,
        force: bool,
    ) -> Result<DrainReport, LoadError> {
        self.stop(name, Stopping::Unload, timeout, force).await
    }

    /// Stops module `name` for `why` (see [`unload`](Self::unload); at a shutdown, what is
    /// unfinished stays stored for the next start instead).
    async fn stop(
        &self,
        name: &str,
        why: Stopping,
        timeout: Option<Duration>,
        force: bool,
    ) -> Result<DrainReport, LoadError> {
        let module = self
            .lock()
            .remove(name)
            .ok_or_else(|| LoadError::NotFound(name.to_owned()))?;
        self.rebuild_webhooks();
        let _serial = module.lifecycle.lock().await;
        module.pollers.stop_all().await;
        // No more entries: at an unload the dispatcher routes what it holds, at a shutdown it
        // stops at once and the rest stays stored.
        module.disconnect();
        if why == Stopping::Shutdown {
            module.stop_dispatching.cancel();
        }
        let Some(serving) = module.current() else {
            return Err(LoadError::NotFound(name.to_owned()));
        };
        let timeout = if force {
            Duration::ZERO
        } else {
            timeout.unwrap_or(serving.spec.drain_timeout)
        };
        drop(serving);
        // Bounded: a dispatcher stuck in a plugin call that never returns is left behind (its
        // entries stay stored), and the stop goes on.
        let dispatcher = module
            .dispatcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = dispatcher {
            if tokio::time::timeout(timeout + GRACE, task).await.is_err() {
                tracing::warn!(module = %module.name, "the dispatcher is stuck in a plugin call; the module stops without it");
            }
        }
        // Deliveries not in an attempt end now; attempts get the drain.
        module.stop(why);
        // A generation still draining from an earlier reload ends with this one: at once with
        // `force`, else within this stop's own timeout (not the earlier reload's, which may be
        // longer); the stop waits for both.
        let earlier = drain::current(&module);
        if let Some((_, earlier_force, _)) = &earlier {
            let earlier_force = earlier_force.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                earlier_force.cancel();
            });
        }
        let other = super::rollout::abandon(&module);
        let Some(current) = module.current.swap(None) else {
            return Err(LoadError::NotFound(name.to_owned()));
        };
        // The other generation of a rollout drains beside the current one; the libraries they
        // share are reported by the current one's drain.
        let other = other.map(|g| {
            let shared: Vec<_> = current.libraries.iter().map(|(_, l)| l.clone()).collect();
            drain::start(&module, g, &shared, timeout, force).1
        });
        let (_, finished) = drain::start(&module, current, &[], timeout, force);
        let mut report = drain::report(finished).await;
        if let (Some(report), Some(other)) = (&mut report, other) {
            if let Some(other) = drain::report(other).await {
                report.cancelled += other.cancelled;
                report.libraries.extend(other.libraries);
            }
        }
        if let Some((_, _, earlier_finished)) = earlier {
            drain::report(earlier_finished).await;
        }
        module.deliveries.close();
        if tokio::time::timeout(GRACE, module.deliveries.wait())
            .await
            .is_err()
        {
            tracing::warn!(module = %module.name, "deliveries blocked in plugin calls are left behind");
        }
        module.executor.shutdown();
        tracing::info!(module = %module.name, "module stopped");
        report.ok_or_else(|| LoadError::NotFound(name.to_owned()))
    }

    /// Refuses a module whose name (unless it is `except`, the module being reloaded) or whose
    /// source ids are taken by another module.
    pub(super) fn check_conflicts(
        &self,
        spec: &ModuleSpec,
        except: Option<&str>,
    ) -> Result<(), LoadError> {
        conflicts(&self.lock(), spec, except)
    }

    /// Runs `swap` unless `spec` now conflicts with another module, atomically with the check
    /// (under the modules lock, which `load` also holds while it checks and inserts).
    pub(super) fn swap_unless_conflict(
        &self,
        spec: &ModuleSpec,
        module: &str,
        swap: impl FnOnce(),
    ) -> Result<(), LoadError> {
        let modules = self.lock();
        conflicts(&modules, spec, Some(module))?;
        swap();
        Ok(())
    }

    /// Stages a generation of `module` from `spec` on a blocking thread: loading libraries and
    /// running plugin constructors must not stall the event path.
    pub(super) async fn stage(
        &self,
        module: &Arc<Module>,
        spec: Arc<ModuleSpec>,
        previous: Option<Arc<Generation>>,
    ) -> Result<Arc<Generation>, LoadError> {
        let weak: Weak<Module> = Arc::downgrade(module);
        // An emitted event is queued like any other and routed by the dispatcher, never inside
        // the plugin call that emitted it (a transform that emits from `apply` would otherwise
        // recurse into itself). It is stored before anything the actor does after
        // emitting (the log keeps the order), so it is not lost with the delivery that made it.
        // In a cluster there is no such order between the stream and the acknowledgement of
        // the delivery, so the emit waits until the stream has the event.
        let emitter: Emitter = Arc::new(move |event| {
            let m = weak.upgrade().ok_or("the module was unloaded")?;
            let stored = m.accept(event, None).map_err(|e| e.to_string())?;
            if m.queue.clustered() {
                stored.wait_blocking().map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        let (loader, http) = (self.loader.clone(), self.http.clone());
        let route_stats = module.route_stats();
        // Numbered per module; a staged generation that is never swapped in uses no number, one
        // that was rolled back keeps its own.
        let number = module.numbered.load(std::sync::atomic::Ordering::Relaxed) + 1;
        let dir = module.dir.clone();
        tokio::task::spawn_blocking(move || {
            let ctx = StageCtx {
                loader: &loader,
                http: &http,
                emitter,
                route_stats: &route_stats,
                number,
                previous: previous.as_deref(),
                start_loggers: true,
            };
            stage(spec, &ctx).map(Arc::new).map_err(LoadError::Invalid)
        })
        .await
        .unwrap_or_else(|e| {
            Err(LoadError::Invalid(vec![ConfigError::new(
                dir,
                None,
                "",
                format!("staging crashed: {e}"),
            )]))
        })
    }

    /// Rebuilds the webhook index from the modules' current generations. Under the modules lock
    /// from reading to storing: two modules swapped at once each rebuild, and a rebuild that read
    /// the older state must not store last.
    pub(super) fn rebuild_webhooks(&self) {
        let modules = self.lock();
        let mut index = HashMap::new();
        for m in modules.values() {
            let Some(g) = m.current() else { continue };
            for s in &g.spec.sources {
                if let SourceKind::Webhook(config) = &s.kind {
                    let target = Arc::new(WebhookTarget {
                        module: m.clone(),
                        config: config.clone(),
                        stats: m.source_stats(&s.id),
                    });
                    index.insert(s.id.clone(), target);
                }
            }
        }
        self.webhooks.store(Arc::new(index));
    }

    /// Stops every module at once, each with `timeout` for its deliveries in flight; what is
    /// unfinished stays stored (with `durability: memory`, it is lost, and said so).
    pub async fn shutdown(self: &Arc<Self>, timeout: Duration) {
        let mut stops = tokio::task::JoinSet::new();
        for m in self.modules() {
            let registry = self.clone();
            stops.spawn(async move {
                let stopped = registry
                    .stop(&m.name, Stopping::Shutdown, Some(timeout), false)
                    .await;
                if let Ok(report) = stopped {
                    if report.cancelled > 0 {
                        tracing::warn!(module = %m.name, cancelled = report.cancelled, "deliveries cancelled at shutdown");
                    }
                }
            });
        }
        while stops.join_next().await.is_some() {}
        self.queue.sync().await;
        let left = self.queue.unfinished();
        if left > 0 {
            match self.queue.durability {
                Durability::Disk => tracing::info!(entries = left, "{left} accepted events are not finished; they stay stored and go on at the next start"),
                Durability::Memory => tracing::warn!(entries = left, "{left} accepted events are not finished and are lost (durability: memory)"),
            }
        }
    }
}

/// Whether `spec` may run beside `modules` (all but `except`, the module being reloaded): its name
/// and its source ids must be free.
fn conflicts(
    modules: &BTreeMap<String, Arc<Module>>,
    spec: &ModuleSpec,
    except: Option<&str>,
) -> Result<(), LoadError> {
    if except.is_none() && modules.contains_key(&spec.name) {
        return Err(LoadError::Conflict(format!(
            "a module named {:?} is already loaded",
            spec.name
        )));
    }
    // Against every generation that serves: a rollout's other one may serve again.
    for other in modules.values().filter(|m| Some(m.name.as_str()) != except) {
        for g in other.generations() {
            let Some(s) = spec
                .sources
                .iter()
                .find(|s| g.spec.sources.iter().any(|o| o.id == s.id))
            else {
                continue;
            };
            return Err(LoadError::Conflict(format!(
                    "source id {:?} is already used by module {:?}; source ids are unique across modules",
                    s.id, other.name
                )));
        }
    }
    Ok(())
}
