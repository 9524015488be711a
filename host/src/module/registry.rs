//! The running modules: [`Module`] (a name, its current generation behind an atomic pointer, and
//! what outlives generations: statistics and source checkpoints) and [`Registry`] (all modules,
//! the global index of webhook source ids, and loading).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use orgloop_plugin_sdk::Event;

use crate::config::spec::{SourceKind, WebhookConfig};
use crate::config::{self, ConfigError, ModuleSpec};
use crate::engine::dispatch::dispatch;
use crate::engine::log::Loggers;
use crate::engine::route::RouteStats;
use crate::plugin::http_client::HttpClient;
use crate::plugin::services::Emitter;
use crate::plugin::Loader;

use super::generation::Generation;
use super::poller::spawn_pollers;
use super::stage::{stage, StageCtx};

/// Counters of one source, kept across reloads by source id.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub event_count: AtomicU64,
    /// Unix ms of the last event; 0 = never.
    pub last_event_ms: AtomicI64,
    pub error_count: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A running module.
pub struct Module {
    pub name: String,
    pub dir: PathBuf,
    pub started: Instant,
    current: ArcSwapOption<Generation>,
    source_stats: Mutex<HashMap<String, Arc<SourceStats>>>,
    checkpoints: Mutex<HashMap<String, String>>,
}

impl Module {
    /// The generation new events go to.
    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current.load_full()
    }

    /// The statistics of source `id`.
    pub fn source_stats(&self, id: &str) -> Arc<SourceStats> {
        self.source_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Takes an event from one of this module's sources (or emitted by one of its plugins) and
    /// routes it through the current generation.
    pub fn accept(&self, event: Event, stats: Option<&SourceStats>) -> Result<(), String> {
        let generation = self
            .current()
            .ok_or_else(|| format!("module {} is not running", self.name))?;
        if let Some(s) = stats {
            s.event_count.fetch_add(1, Ordering::Relaxed);
            s.last_event_ms.store(now_ms(), Ordering::Relaxed);
        }
        dispatch(&generation, event);
        Ok(())
    }

    pub fn checkpoint(&self, source: &str) -> Option<String> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .cloned()
    }

    pub fn set_checkpoint(&self, source: &str, checkpoint: String) {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_owned(), checkpoint);
    }

    fn route_stats(&self) -> HashMap<String, Arc<RouteStats>> {
        self.current()
            .map(|g| {
                g.routes
                    .iter()
                    .map(|r| (r.spec.name.clone(), r.stats.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A webhook source, as the ingest path looks it up.
#[derive(Clone)]
pub struct WebhookTarget {
    pub module: Arc<Module>,
    pub config: WebhookConfig,
    pub stats: Arc<SourceStats>,
}

/// Why a module could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// Its configuration or plugins are invalid.
    Invalid(Vec<ConfigError>),
    /// It conflicts with a module already running (same name, or a source id already taken).
    Conflict(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Invalid(errors) => f.write_str(config::error::render(errors).trim_end()),
            LoadError::Conflict(why) => f.write_str(why),
        }
    }
}

/// All modules of the daemon.
pub struct Registry {
    modules: Mutex<BTreeMap<String, Arc<Module>>>,
    webhooks: ArcSwap<HashMap<String, WebhookTarget>>,
    loader: Loader,
    http: HttpClient,
    generations: AtomicU64,
}

impl Registry {
    pub fn new(loader: Loader) -> Self {
        Registry {
            modules: Mutex::default(),
            webhooks: ArcSwap::default(),
            loader,
            http: HttpClient::default(),
            generations: AtomicU64::new(0),
        }
    }

    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// The modules, by name.
    pub fn modules(&self) -> Vec<Arc<Module>> {
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The webhook source with this id, in any module.
    pub fn webhook(&self, source: &str) -> Option<WebhookTarget> {
        self.webhooks.load().get(source).cloned()
    }

    /// Reads, validates and starts the module in `dir`. Nothing changes when it fails.
    pub async fn load(&self, dir: &Path) -> Result<Arc<Module>, LoadError> {
        let spec = Arc::new(config::load_module(dir).map_err(LoadError::Invalid)?);
        self.check_conflicts(&spec)?;
        let module = Arc::new(Module {
            name: spec.name.clone(),
            dir: spec.dir.clone(),
            started: Instant::now(),
            current: ArcSwapOption::empty(),
            source_stats: Mutex::default(),
            checkpoints: Mutex::default(),
        });
        let generation = self.stage(&module, spec).await?;
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        // Checked again under the lock: another load may have finished meanwhile.
        if modules.contains_key(&module.name) {
            return Err(LoadError::Conflict(format!(
                "a module named {:?} is already loaded",
                module.name
            )));
        }
        module.current.store(Some(generation.clone()));
        modules.insert(module.name.clone(), module.clone());
        self.rebuild_webhooks(&modules);
        drop(modules);
        spawn_pollers(&module, &generation);
        tracing::info!(module = %module.name, generation = generation.number, routes = generation.routes.len(), "module loaded");
        Ok(module)
    }

    fn check_conflicts(&self, spec: &ModuleSpec) -> Result<(), LoadError> {
        let modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if modules.contains_key(&spec.name) {
            return Err(LoadError::Conflict(format!(
                "a module named {:?} is already loaded",
                spec.name
            )));
        }
        for s in &spec.sources {
            for other in modules.values() {
                if other
                    .current()
                    .is_some_and(|g| g.spec.sources.iter().any(|o| o.id == s.id))
                {
                    return Err(LoadError::Conflict(format!("source id {:?} is already used by module {:?}; source ids are unique across modules", s.id, other.name)));
                }
            }
        }
        Ok(())
    }

    /// Stages a generation of `module` from `spec` on a blocking thread (loading libraries and
    /// running plugin constructors must not stall the event path).
    async fn stage(
        &self,
        module: &Arc<Module>,
        spec: Arc<ModuleSpec>,
    ) -> Result<Arc<Generation>, LoadError> {
        let weak: Weak<Module> = Arc::downgrade(module);
        let emitter: Emitter = Arc::new(move |event| match weak.upgrade() {
            Some(m) => m.accept(event, None),
            None => Err("the module was unloaded".into()),
        });
        let loader = self.loader.clone();
        let http = self.http.clone();
        let route_stats = module.route_stats();
        let number = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let name = spec.name.clone();
        let staged = tokio::task::spawn_blocking(move || {
            let loggers = Loggers::start(&name, &spec.loggers).map_err(|e| {
                vec![ConfigError::new(
                    spec.dir.join("orgloop.yaml"),
                    None,
                    "loggers",
                    e,
                )]
            })?;
            let ctx = StageCtx {
                loader: &loader,
                http: &http,
                emitter,
                route_stats: &route_stats,
                number,
            };
            stage(spec, &ctx, Arc::new(loggers))
        })
        .await
        .map_err(|e| {
            LoadError::Invalid(vec![ConfigError::new(
                module.dir.clone(),
                None,
                "",
                format!("staging crashed: {e}"),
            )])
        })?;
        staged.map(Arc::new).map_err(LoadError::Invalid)
    }

    fn rebuild_webhooks(&self, modules: &BTreeMap<String, Arc<Module>>) {
        let mut index = HashMap::new();
        for m in modules.values() {
            let Some(g) = m.current() else { continue };
            for s in &g.spec.sources {
                if let SourceKind::Webhook(config) = &s.kind {
                    index.insert(
                        s.id.clone(),
                        WebhookTarget {
                            module: m.clone(),
                            config: config.clone(),
                            stats: m.source_stats(&s.id),
                        },
                    );
                }
            }
        }
        self.webhooks.store(Arc::new(index));
    }

    /// Stops every module: sources stop at once, deliveries get `timeout` to finish, then are
    /// cancelled, then dropped.
    pub async fn shutdown(&self, timeout: Duration) {
        let modules: Vec<Arc<Module>> =
            std::mem::take(&mut *self.modules.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .collect();
        self.webhooks.store(Arc::default());
        let mut stops = tokio::task::JoinSet::new();
        for g in modules.iter().filter_map(|m| m.current.swap(None)) {
            stops.spawn(async move {
                let cancelled = g.stop(timeout, Duration::from_secs(2)).await;
                if cancelled > 0 {
                    tracing::warn!(module = %g.module, cancelled, "deliveries cancelled at shutdown");
                }
            });
        }
        while stops.join_next().await.is_some() {}
    }
}
