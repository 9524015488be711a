//! Staging: building a complete [`Generation`] from a validated [`ModuleSpec`] — load each plugin
//! library (a private copy, beside any version already loaded), check its name and version, and
//! build every transform, actor and source with its config. Nothing is started and nothing
//! running is touched: a failure anywhere returns every error found, and the staged pieces are
//! dropped.
//!
//! With a previous generation, every object whose definition and plugin build are unchanged is
//! carried over instead of rebuilt, so it keeps its state (a dedup window, a source's cadence).

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::diff::{same_actor, same_source, same_transform};
use crate::config::spec::{SourceKind, SymbolRef};
use crate::config::{ConfigError, ModuleSpec};
use crate::engine::log::Loggers;
use crate::engine::route::{Route, RouteStats};
use crate::metrics::{route_matches, ActorCounters, TransformCounters};
use crate::plugin::http_client::HttpClient;
use crate::plugin::services::{Emitter, Services};
use crate::plugin::{Library, Loader};

use tokio::sync::Semaphore;

use super::generation::{ActorSlot, Generation, SourceSlot, TransformSlot};
use super::health::Health;

/// What staging needs from the daemon.
pub struct StageCtx<'a> {
    pub loader: &'a Loader,
    pub http: &'a HttpClient,
    /// Where plugin objects' emitted events go.
    pub emitter: Emitter,
    /// Route statistics to carry over, by route name.
    pub route_stats: &'a HashMap<String, Arc<RouteStats>>,
    pub number: u64,
    /// The generation being replaced, whose unchanged objects carry over.
    pub previous: Option<&'a Generation>,
    /// Whether to open the module's loggers (validation does not).
    pub start_loggers: bool,
}

/// Loads the plugins of `spec` and builds (or carries over) every object.
pub fn stage(spec: Arc<ModuleSpec>, ctx: &StageCtx<'_>) -> Result<Generation, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let module: Arc<str> = Arc::from(spec.name.as_str());
    let libraries = load_libraries(&spec, ctx.loader, &mut errors);
    let library = |s: &SymbolRef| {
        libraries
            .iter()
            .find(|(n, _)| *n == s.plugin)
            .map(|(_, l)| l.clone())
    };
    let services = |object: String, source: Option<&String>| Services {
        module: module.clone(),
        object,
        source: source.cloned(),
        emitter: ctx.emitter.clone(),
        http: ctx.http.clone(),
        log_to: None,
    };
    let prev = ctx.previous;

    let mut transforms = HashMap::new();
    for t in &spec.transforms {
        let Some(lib) = library(&t.symbol) else {
            continue;
        };
        let kept = prev.and_then(|p| {
            let old = p.spec.transforms.iter().find(|o| o.name == t.name)?;
            let slot = p.transforms.get(&t.name)?;
            (same_transform(old, t) && Arc::ptr_eq(slot.obj.library(), &lib)).then(|| slot.clone())
        });
        let slot = match kept {
            Some(slot) => slot,
            None => match lib.new_transform(
                &t.symbol.symbol,
                &t.config.to_string(),
                services(format!("{}/{}", t.symbol, t.name), None),
            ) {
                Ok(obj) => Arc::new(TransformSlot {
                    obj,
                    on_error: t.on_error,
                    timeout: t.timeout,
                    counters: TransformCounters::new(&spec.name, &t.name),
                }),
                Err(e) => {
                    errors.push(
                        t.origin
                            .error(format!("transform {} ({}): {e}", t.name, t.symbol)),
                    );
                    continue;
                }
            },
        };
        transforms.insert(t.name.clone(), slot);
    }

    let mut actors = HashMap::new();
    for a in &spec.actors {
        let Some(lib) = library(&a.symbol) else {
            continue;
        };
        let kept = prev.and_then(|p| {
            let old = p.spec.actors.iter().find(|o| o.id == a.id)?;
            let slot = p.actors.get(&a.id)?;
            (same_actor(old, a) && Arc::ptr_eq(slot.obj.library(), &lib)).then(|| slot.clone())
        });
        let obj = match kept {
            Some(obj) => obj,
            None => match lib.new_actor(
                &a.symbol.symbol,
                &a.config.to_string(),
                services(format!("{}/{}", a.symbol, a.id), Some(&a.id)),
            ) {
                Ok(obj) => Arc::new(ActorSlot {
                    obj,
                    limit: Arc::new(Semaphore::new(a.max_inflight)),
                    retry: a.retry.clone(),
                    interrupted: a.interrupted,
                    gate: Arc::default(),
                    counters: ActorCounters::new(&spec.name, &a.id),
                }),
                Err(e) => {
                    errors.push(
                        a.origin
                            .error(format!("actor {} ({}): {e}", a.id, a.symbol)),
                    );
                    continue;
                }
            },
        };
        actors.insert(a.id.clone(), obj);
    }

    let mut sources = Vec::new();
    for s in &spec.sources {
        let SourceKind::Plugin {
            symbol,
            config,
            interval,
        } = &s.kind
        else {
            continue;
        };
        let Some(lib) = library(symbol) else { continue };
        let kept = prev.and_then(|p| {
            let old = p.spec.sources.iter().find(|o| o.id == s.id)?;
            let slot = p.sources.iter().find(|o| o.id == s.id)?;
            (same_source(old, s) && Arc::ptr_eq(slot.obj.library(), &lib)).then(|| slot.obj.clone())
        });
        let obj = match kept {
            Some(obj) => obj,
            None => match lib.new_source(
                &symbol.symbol,
                &config.to_string(),
                services(format!("{symbol}/{}", s.id), Some(&s.id)),
            ) {
                Ok(obj) => Arc::new(obj),
                Err(e) => {
                    errors.push(s.origin.error(format!("source {} ({symbol}): {e}", s.id)));
                    continue;
                }
            },
        };
        sources.push(SourceSlot {
            id: s.id.clone(),
            obj,
            interval: *interval,
        });
    }

    let loggers = match prev.filter(|p| p.spec.loggers == spec.loggers) {
        Some(p) => Ok(p.loggers.clone()),
        None if ctx.start_loggers => Loggers::start(&spec.name, &spec.loggers).map(Arc::new),
        None => Loggers::start(&spec.name, &[]).map(Arc::new),
    };
    let loggers = loggers
        .map_err(|e| errors.push(ConfigError::new("orgloop.yaml", None, "loggers", e)))
        .ok();
    let (Some(loggers), true) = (loggers, errors.is_empty()) else {
        return Err(errors);
    };

    let mut by_source: HashMap<String, Vec<usize>> = HashMap::new();
    let routes: Vec<Route> = spec
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            by_source.entry(r.source.clone()).or_default().push(i);
            let stats = ctx.route_stats.get(&r.name).cloned().unwrap_or_default();
            Route::new(r.clone(), stats, route_matches(&spec.name, &r.name))
        })
        .collect();

    Ok(Generation {
        number: ctx.number,
        module,
        spec,
        routes,
        by_source,
        transforms,
        actors,
        sources,
        loggers,
        inflight: TaskTracker::new(),
        cancel: CancellationToken::new(),
        kill: CancellationToken::new(),
        health: Health::default(),
        libraries,
    })
}

/// Loads every plugin of `spec`, checking its name and version.
fn load_libraries(
    spec: &ModuleSpec,
    loader: &Loader,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, Arc<Library>)> {
    let mut libraries = Vec::new();
    for p in &spec.plugins {
        let lib = match loader.load(&spec.name, p) {
            Ok(lib) => lib,
            Err(e) => {
                errors.push(p.origin.error(format!("plugin {}: {e}", p.name)));
                continue;
            }
        };
        let m = lib.manifest();
        if m.name != p.name {
            let path = p.path.display();
            errors.push(p.origin.error(format!(
                "{path} is plugin \"{}\", not \"{}\" (name the entry after the plugin)",
                m.name, p.name
            )));
            continue;
        }
        match (&p.version, semver::Version::parse(&m.version)) {
            (_, Err(e)) => errors.push(p.origin.error(format!(
                "plugin {} has an invalid version {:?}: {e}",
                m.name, m.version
            ))),
            (Some(req), Ok(v)) if !req.matches(&v) => errors.push(p.origin.error(format!(
                "plugin {} is version {v}, which does not satisfy \"{req}\"",
                m.name
            ))),
            _ => libraries.push((p.name.clone(), lib)),
        }
    }
    libraries
}
