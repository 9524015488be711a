//! Staging: building a complete [`Generation`] from a validated [`ModuleSpec`] — load each plugin
//! library (a private copy, beside any version already loaded), check its name and version, and
//! build every transform, actor and source with its config. Nothing is started and nothing
//! running is touched: a failure anywhere returns every error found and the staged pieces are
//! dropped.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::spec::{SourceKind, SymbolRef};
use crate::config::{ConfigError, ModuleSpec};
use crate::engine::log::Loggers;
use crate::engine::route::{Route, RouteStats};
use crate::plugin::http_client::HttpClient;
use crate::plugin::services::{Emitter, Services};
use crate::plugin::{Library, Loader};

use super::generation::{Generation, SourceSlot, TransformSlot};

/// What staging needs from the daemon.
pub struct StageCtx<'a> {
    pub loader: &'a Loader,
    pub http: &'a HttpClient,
    /// Where plugin objects' emitted events go.
    pub emitter: Emitter,
    /// Route statistics to carry over, by route name.
    pub route_stats: &'a HashMap<String, Arc<RouteStats>>,
    pub number: u64,
}

/// Loads the plugins of `spec` and builds every object. `loggers` are started by the caller
/// (validation stages without them).
pub fn stage(
    spec: Arc<ModuleSpec>,
    ctx: &StageCtx<'_>,
    loggers: Arc<Loggers>,
) -> Result<Generation, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let module: Arc<str> = Arc::from(spec.name.as_str());
    let mut libraries: Vec<(String, Arc<Library>)> = Vec::new();
    for p in &spec.plugins {
        match ctx.loader.load(&spec.name, &p.path) {
            Err(e) => errors.push(p.origin.error(format!("plugin {}: {e}", p.name))),
            Ok(lib) => {
                let m = lib.manifest();
                if m.name != p.name {
                    errors.push(p.origin.error(format!(
                        "{} is plugin \"{}\", not \"{}\" (name the entry after the plugin)",
                        p.path.display(),
                        m.name,
                        p.name
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
        }
    }
    let library = |s: &SymbolRef| {
        libraries
            .iter()
            .find(|(n, _)| *n == s.plugin)
            .map(|(_, l)| l.clone())
    };
    let services = |object: String, source: Option<&String>| {
        Services {
            module: module.clone(),
            object,
            source: source.cloned(),
            emitter: ctx.emitter.clone(),
            http: ctx.http.clone(),
        }
        .into_box()
    };

    let mut transforms = HashMap::new();
    for t in &spec.transforms {
        let Some(lib) = library(&t.symbol) else {
            continue;
        };
        match lib.new_transform(
            &t.symbol.symbol,
            &t.config.to_string(),
            services(format!("{}/{}", t.symbol, t.name), None),
        ) {
            Ok(obj) => {
                transforms.insert(
                    t.name.clone(),
                    TransformSlot {
                        obj,
                        on_error: t.on_error,
                    },
                );
            }
            Err(e) => errors.push(
                t.origin
                    .error(format!("transform {} ({}): {e}", t.name, t.symbol)),
            ),
        }
    }
    let mut actors = HashMap::new();
    for a in &spec.actors {
        let Some(lib) = library(&a.symbol) else {
            continue;
        };
        match lib.new_actor(
            &a.symbol.symbol,
            &a.config.to_string(),
            services(format!("{}/{}", a.symbol, a.id), Some(&a.id)),
        ) {
            Ok(obj) => {
                actors.insert(a.id.clone(), Arc::new(obj));
            }
            Err(e) => errors.push(
                a.origin
                    .error(format!("actor {} ({}): {e}", a.id, a.symbol)),
            ),
        }
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
        match lib.new_source(
            &symbol.symbol,
            &config.to_string(),
            services(format!("{symbol}/{}", s.id), Some(&s.id)),
        ) {
            Ok(obj) => sources.push(SourceSlot {
                id: s.id.clone(),
                obj: Arc::new(obj),
                interval: *interval,
            }),
            Err(e) => errors.push(s.origin.error(format!("source {} ({symbol}): {e}", s.id))),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut by_source: HashMap<String, Vec<usize>> = HashMap::new();
    let routes: Vec<Route> = spec
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            by_source.entry(r.source.clone()).or_default().push(i);
            let stats = ctx.route_stats.get(&r.name).cloned().unwrap_or_default();
            Route::new(r.clone(), stats)
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
        stop_sources: CancellationToken::new(),
        cancel: CancellationToken::new(),
        kill: CancellationToken::new(),
        libraries,
    })
}
