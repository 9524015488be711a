//! Raw model → [`ModuleSpec`]: resolves every reference between files (route → source, transform,
//! actor; connector → plugin) and reports each problem with its position and a suggestion.
//! Checks that need the plugin libraries themselves (symbols, ABI, versions, constructors) happen
//! when a generation is staged.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use orgloop_plugin_sdk::EventType;
use serde_json::Value as Json;

use super::error::did_you_mean;
use super::load::{Parsed, RawModule};
use super::raw::ByteSize;
use super::spec::*;
use super::{raw, ConfigError};
use orgloop_plugin_sdk::duration::parse as parse_duration;

/// Default body limit of a webhook source.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Deliveries to one actor at once, unless its `max_inflight` says otherwise.
const DEFAULT_MAX_INFLIGHT: u32 = 1024;
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// Bytes of accepted events a module may keep waiting, unless `defaults.max_queue_bytes` says
/// otherwise.
const DEFAULT_MAX_QUEUE: u64 = 256 * 1024 * 1024;
/// Threads a module's plugin code runs on, unless `defaults.threads` says otherwise.
const DEFAULT_THREADS: usize = 2;
/// A transform call's deadline, unless its `timeout_ms` says otherwise: transforms take
/// microseconds, so a call this long is stuck.
const DEFAULT_TRANSFORM_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_POLL: Duration = Duration::from_secs(300);

/// Upstream's package names for the built-in webhook source.
const WEBHOOK_CONNECTORS: [&str; 2] = ["webhook", "@orgloop/connector-webhook"];

struct Checker<'a> {
    raw: &'a RawModule,
    errors: Vec<ConfigError>,
}

/// Validates a module read by [`super::load::read_module`].
pub fn validate(raw: &RawModule) -> Result<ModuleSpec, Vec<ConfigError>> {
    let mut c = Checker {
        raw,
        errors: Vec::new(),
    };
    let project = &raw.project;
    let name = project.value.metadata.name.clone().unwrap_or_else(|| {
        raw.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    if !valid_name(&name) {
        c.errors.push(project.error(
            "metadata.name",
            format!("module name {name:?} must be 1-64 letters, digits, '-', '_' or '.'"),
        ));
    }
    let drain_timeout = c.duration(
        project,
        "defaults.drain_timeout",
        project.value.defaults.drain_timeout.as_deref(),
        DEFAULT_DRAIN,
    );
    let poll_default = c.duration(
        project,
        "defaults.poll_interval",
        project.value.defaults.poll_interval.as_deref(),
        DEFAULT_POLL,
    );

    let retry_default = c.retry(
        project,
        "defaults.retry",
        project.value.defaults.retry.as_ref(),
        &RetryPolicy::default(),
    );
    let max_queue_bytes = match project.value.defaults.max_queue_bytes {
        Some(0) => {
            c.errors
                .push(project.error("defaults.max_queue_bytes", "must be at least 1"));
            DEFAULT_MAX_QUEUE
        }
        Some(n) => n,
        None => DEFAULT_MAX_QUEUE,
    };

    let threads = match project.value.defaults.threads {
        Some(n @ 1..=64) => n as usize,
        Some(_) => {
            c.errors
                .push(project.error("defaults.threads", "must be from 1 to 64"));
            DEFAULT_THREADS
        }
        None => DEFAULT_THREADS,
    };

    let reload = c.rollout(project, project.value.defaults.reload.as_ref());
    let plugins = c.plugins();
    let plugin_names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
    let (sources, actors) = c.connectors(&plugin_names, poll_default, &retry_default);
    let transforms = c.transforms(&plugin_names);
    let loggers = c.loggers();
    let routes = c.routes(&sources, &actors, &transforms);

    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(ModuleSpec {
        name,
        dir: raw.dir.clone(),
        description: project.value.metadata.description.clone(),
        plugins,
        sources,
        actors,
        transforms,
        routes,
        loggers,
        drain_timeout,
        max_queue_bytes,
        threads,
        reload,
    })
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Flags the second and later uses of each name.
fn check_unique<'n>(
    seen: &mut HashMap<&'n str, String>,
    name: &'n str,
    kind: &str,
    here: &Origin,
    errors: &mut Vec<ConfigError>,
) {
    if let Some(first) = seen.get(name) {
        errors.push(here.error(format!(
            "duplicate {kind} {name:?} (first defined at {first})"
        )));
    } else {
        let at = match here.pos {
            Some(p) => format!("{}:{}", here.file.display(), p.line),
            None => here.file.display().to_string(),
        };
        seen.insert(name, at);
    }
}

impl Checker<'_> {
    /// `defaults.reload`.
    fn rollout<T>(&mut self, file: &Parsed<T>, def: Option<&raw::ReloadDef>) -> RolloutPolicy {
        let fallback = RolloutPolicy::default();
        let Some(def) = def else { return fallback };
        let canary = def.canary.as_deref().and_then(|text| {
            parse_share(text)
                .map_err(|e| self.errors.push(file.error("defaults.reload.canary", e)))
                .ok()
        });
        let canary_for = self.duration(
            file,
            "defaults.reload.canary_for",
            def.canary_for.as_deref(),
            fallback.canary_for,
        );
        let bake = self.duration(
            file,
            "defaults.reload.bake",
            def.bake.as_deref(),
            fallback.bake,
        );
        let t = fallback.thresholds;
        let mut rate = |field: &str, value: Option<f64>, default: f64, range: (f64, f64)| {
            let v = value.unwrap_or(default);
            if !(range.0..=range.1).contains(&v) {
                self.errors.push(file.error(
                    &format!("defaults.reload.{field}"),
                    format!("must be from {} to {}", range.0, range.1),
                ));
                return default;
            }
            v
        };
        let thresholds = Thresholds {
            max_error_rate_increase: rate(
                "max_error_rate_increase",
                def.max_error_rate_increase,
                t.max_error_rate_increase,
                (0.0, 1.0),
            ),
            max_failure_rate_increase: rate(
                "max_failure_rate_increase",
                def.max_failure_rate_increase,
                t.max_failure_rate_increase,
                (0.0, 1.0),
            ),
            max_latency_ratio: rate(
                "max_latency_ratio",
                def.max_latency_ratio,
                t.max_latency_ratio,
                (1.0, 1000.0),
            ),
            min_samples: def.min_samples.unwrap_or(t.min_samples).max(1),
        };
        RolloutPolicy {
            canary,
            canary_for,
            auto_rollback: def.auto_rollback.unwrap_or(false),
            bake,
            thresholds,
        }
    }

    fn duration<T>(
        &mut self,
        file: &Parsed<T>,
        field: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Duration {
        match text.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.errors.push(file.error(field, e));
                default
            }
        }
    }

    fn plugins(&mut self) -> Vec<PluginSpec> {
        let project = &self.raw.project;
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (i, p) in project.value.plugins.iter().enumerate() {
            let origin = project.origin(format!("plugins[{i}]"));
            check_unique(&mut seen, &p.name, "plugin", &origin, &mut self.errors);
            if p.name.is_empty() || p.name.contains("::") {
                self.errors.push(origin.error_at(
                    "name",
                    project.doc.pos(&format!("plugins[{i}].name")),
                    "a plugin name is a non-empty word without \"::\"",
                ));
            }
            let path = self.raw.dir.join(&p.path);
            if !path.is_file() {
                let field = format!("plugins[{i}].path");
                self.errors.push(project.error(
                    &field,
                    format!(
                        "plugin file {} does not exist (build the plugin first)",
                        path.display()
                    ),
                ));
            }
            let version = match p.version.as_deref().map(semver::VersionReq::parse) {
                None => None,
                Some(Ok(v)) => Some(v),
                Some(Err(e)) => {
                    self.errors.push(project.error(
                        &format!("plugins[{i}].version"),
                        format!("not a semver requirement: {e} (expected e.g. \"^0.1\")"),
                    ));
                    None
                }
            };
            let isolation = p.isolation.as_deref().and_then(|text| {
                text.parse::<Isolation>()
                    .map_err(|e| {
                        self.errors
                            .push(project.error(&format!("plugins[{i}].isolation"), e))
                    })
                    .ok()
            });
            let max_memory = p.max_memory.as_ref().and_then(|size| {
                let field = format!("plugins[{i}].max_memory");
                if isolation != Some(Isolation::Process) {
                    self.errors.push(project.error(
                        &field,
                        "max_memory needs isolation: process (a plugin in the daemon's process shares its memory)",
                    ));
                    return None;
                }
                parse_byte_size(size)
                    .map_err(|e| self.errors.push(project.error(&field, e)))
                    .ok()
            });
            out.push(PluginSpec {
                name: p.name.clone(),
                path,
                version,
                isolation,
                max_memory,
                origin,
            });
        }
        out
    }

    /// Parses `plugin::symbol`, checking the plugin is declared.
    fn symbol(
        &mut self,
        text: &str,
        plugins: &[&str],
        origin: &Origin,
        field: &str,
        pos: Option<super::yaml::Pos>,
    ) -> Option<SymbolRef> {
        let Some((plugin, symbol)) = text.split_once("::") else {
            self.errors.push(origin.error_at(
                field,
                pos,
                format!("expected \"<plugin>::<symbol>\", found {text:?}"),
            ));
            return None;
        };
        if !plugins.contains(&plugin) {
            let hint = did_you_mean(plugin, plugins.iter().copied());
            let known = if plugins.is_empty() {
                " (orgloop.yaml lists no plugins:)".to_owned()
            } else {
                hint
            };
            self.errors.push(origin.error_at(
                field,
                pos,
                format!("unknown plugin \"{plugin}\"{known}"),
            ));
            return None;
        }
        Some(SymbolRef {
            plugin: plugin.to_owned(),
            symbol: symbol.to_owned(),
        })
    }

    /// A retry policy: `def`'s fields over `fallback`'s.
    fn retry<T>(
        &mut self,
        file: &Parsed<T>,
        field: &str,
        def: Option<&raw::RetryDef>,
        fallback: &RetryPolicy,
    ) -> RetryPolicy {
        let Some(def) = def else {
            return fallback.clone();
        };
        let initial = self.duration(
            file,
            &format!("{field}.initial"),
            def.initial.as_deref(),
            fallback.initial,
        );
        let max = self.duration(
            file,
            &format!("{field}.max"),
            def.max.as_deref(),
            fallback.max,
        );
        let max_age = self.duration(
            file,
            &format!("{field}.max_age"),
            def.max_age.as_deref(),
            fallback.max_age,
        );
        if initial.is_zero() {
            self.errors.push(file.error(
                &format!("{field}.initial"),
                "must be more than 0 (a retry without a wait is a hot loop)",
            ));
        }
        if max < initial {
            self.errors.push(file.error(
                &format!("{field}.max"),
                format!("must be at least initial ({initial:?})"),
            ));
        }
        if def.max_attempts == Some(0) {
            self.errors.push(file.error(
                &format!("{field}.max_attempts"),
                "must be at least 1 (1 means: never retry)",
            ));
        }
        RetryPolicy {
            max_attempts: def.max_attempts.or(fallback.max_attempts),
            initial,
            max,
            max_age,
        }
    }

    fn connectors(
        &mut self,
        plugins: &[&str],
        poll_default: Duration,
        retry_default: &RetryPolicy,
    ) -> (Vec<SourceSpec>, Vec<ActorSpec>) {
        let raw = self.raw;
        let (mut sources, mut actors) = (Vec::new(), Vec::new());
        let (mut seen_s, mut seen_a) = (HashMap::new(), HashMap::new());
        for group in &raw.connectors {
            for (i, s) in group.value.sources.iter().enumerate() {
                let origin = group.origin(format!("sources[{i}]"));
                check_unique(&mut seen_s, &s.id, "source id", &origin, &mut self.errors);
                let cpos = group.doc.pos(&format!("sources[{i}].connector"));
                let config = s
                    .config
                    .clone()
                    .unwrap_or_else(|| Json::Object(Default::default()));
                let kind = if WEBHOOK_CONNECTORS.contains(&s.connector.as_str()) {
                    self.webhook_config(group, i, &config)
                        .map(SourceKind::Webhook)
                } else if s.connector.contains("::") {
                    let interval = match &s.poll {
                        Some(p) => self.duration(
                            group,
                            &format!("sources[{i}].poll.interval"),
                            Some(&p.interval),
                            poll_default,
                        ),
                        None => poll_default,
                    };
                    self.symbol(&s.connector, plugins, &origin, "connector", cpos)
                        .map(|symbol| SourceKind::Plugin {
                            symbol,
                            config,
                            interval,
                        })
                } else {
                    self.errors.push(origin.error_at(
                        "connector",
                        cpos,
                        foreign_connector(&s.connector),
                    ));
                    None
                };
                if let Some(kind) = kind {
                    sources.push(SourceSpec {
                        id: s.id.clone(),
                        kind,
                        origin: group.origin(format!("sources[{i}].connector")),
                    });
                }
            }
            for (i, a) in group.value.actors.iter().enumerate() {
                let origin = group.origin(format!("actors[{i}]"));
                check_unique(&mut seen_a, &a.id, "actor id", &origin, &mut self.errors);
                let cpos = group.doc.pos(&format!("actors[{i}].connector"));
                if !a.connector.contains("::") {
                    self.errors.push(origin.error_at(
                        "connector",
                        cpos,
                        foreign_connector(&a.connector),
                    ));
                    continue;
                }
                if let Some(symbol) = self.symbol(&a.connector, plugins, &origin, "connector", cpos)
                {
                    let config = a
                        .config
                        .clone()
                        .unwrap_or_else(|| Json::Object(Default::default()));
                    let max_inflight = a.max_inflight.unwrap_or(DEFAULT_MAX_INFLIGHT) as usize;
                    if max_inflight == 0 {
                        let pos = group.doc.pos(&format!("actors[{i}].max_inflight"));
                        self.errors.push(origin.error_at(
                            "max_inflight",
                            pos,
                            "must be at least 1",
                        ));
                    }
                    let retry = self.retry(
                        group,
                        &format!("actors[{i}].retry"),
                        a.retry.as_ref(),
                        retry_default,
                    );
                    actors.push(ActorSpec {
                        id: a.id.clone(),
                        symbol,
                        config,
                        max_inflight: max_inflight.max(1),
                        retry,
                        interrupted: a.interrupted.unwrap_or_default(),
                        origin: group.origin(format!("actors[{i}].connector")),
                    });
                }
            }
        }
        for a in actors
            .iter()
            .filter(|a| sources.iter().any(|s| s.id == a.id))
        {
            let message = format!("actor id {:?} is also a source id; routes name both in when.source, so they must differ", a.id);
            self.errors.push(a.origin.error(message));
        }
        (sources, actors)
    }

    fn webhook_config(
        &mut self,
        group: &Parsed<raw::ConnectorGroup>,
        i: usize,
        config: &Json,
    ) -> Option<WebhookConfig> {
        let mut cfg = WebhookConfig {
            secret: None,
            event_type_field: None,
            max_body_bytes: DEFAULT_MAX_BODY,
        };
        let Some(map) = config.as_object() else {
            self.errors
                .push(group.error(&format!("sources[{i}].config"), "expected a map"));
            return None;
        };
        for (k, v) in map {
            let field = format!("sources[{i}].config.{k}");
            match (k.as_str(), v) {
                ("secret", Json::String(s)) => cfg.secret = Some(s.clone()),
                ("event_type_field", Json::String(s)) => cfg.event_type_field = Some(s.clone()),
                ("max_body_bytes", v) if v.as_u64().is_some() => {
                    cfg.max_body_bytes = v.as_u64().unwrap_or_default() as usize
                }
                // Upstream keys with no meaning here: the path is always /webhook/<id>.
                ("path" | "buffer_dir" | "max_buffer_size", _) => {}
                ("secret" | "event_type_field", _) => {
                    self.errors.push(group.error(&field, "expected a string"))
                }
                ("max_body_bytes", _) => self
                    .errors
                    .push(group.error(&field, "expected a number of bytes")),
                (other, _) => {
                    let hint = did_you_mean(
                        other,
                        ["secret", "event_type_field", "max_body_bytes", "path"],
                    );
                    self.errors.push(
                        group.error(&field, format!("unknown webhook setting \"{other}\"{hint}")),
                    );
                }
            }
        }
        Some(cfg)
    }

    fn transforms(&mut self, plugins: &[&str]) -> Vec<TransformSpec> {
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for group in &self.raw.transforms {
            for (i, t) in group.value.transforms.iter().enumerate() {
                let origin = group.origin(format!("transforms[{i}]"));
                check_unique(&mut seen, &t.name, "transform", &origin, &mut self.errors);
                let tpos = group.doc.pos(&format!("transforms[{i}].type"));
                match (t.kind.as_str(), &t.symbol) {
                    ("plugin", Some(symbol)) => {
                        let spos = group.doc.pos(&format!("transforms[{i}].symbol"));
                        if let Some(symbol) = self.symbol(symbol, plugins, &origin, "symbol", spos) {
                            let config = t.config.clone().unwrap_or_else(|| Json::Object(Default::default()));
                            let timeout = match t.timeout_ms {
                                Some(0) => {
                                    self.errors.push(origin.error_at("timeout_ms", group.doc.pos(&format!("transforms[{i}].timeout_ms")), "must be at least 1"));
                                    DEFAULT_TRANSFORM_TIMEOUT
                                }
                                Some(ms) => Duration::from_millis(ms),
                                None => DEFAULT_TRANSFORM_TIMEOUT,
                            };
                            out.push(TransformSpec { name: t.name.clone(), symbol, config, on_error: t.on_error, timeout, origin: group.origin(format!("transforms[{i}].symbol")) });
                        }
                    }
                    ("plugin", None) => self.errors.push(origin.error("type: plugin needs symbol: <plugin>::<transform>")),
                    ("package", _) => self.errors.push(origin.error_at(
                        "type",
                        tpos,
                        format!(
                            "npm package transforms ({}) are not loaded by orgloop; use type: plugin with e.g. symbol: filters::filter",
                            t.package.as_deref().unwrap_or("no package")
                        ),
                    )),
                    ("script", _) => self.errors.push(origin.error_at("type", tpos, "script transforms are not supported yet; write a plugin transform")),
                    (other, _) => self.errors.push(origin.error_at("type", tpos, format!("unknown transform type {other:?}; expected \"plugin\""))),
                }
            }
        }
        out
    }

    fn loggers(&mut self) -> Vec<LoggerSpec> {
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for group in &self.raw.loggers {
            for (i, l) in group.value.loggers.iter().enumerate() {
                let origin = group.origin(format!("loggers[{i}]"));
                check_unique(&mut seen, &l.name, "logger", &origin, &mut self.errors);
                let config = l
                    .config
                    .clone()
                    .unwrap_or_else(|| Json::Object(Default::default()));
                let level = match config.get("level").and_then(Json::as_str).unwrap_or("info") {
                    "trace" => tracing::Level::TRACE,
                    "debug" => tracing::Level::DEBUG,
                    "info" => tracing::Level::INFO,
                    "warn" => tracing::Level::WARN,
                    "error" => tracing::Level::ERROR,
                    other => {
                        self.errors.push(group.error(
                            &format!("loggers[{i}].config.level"),
                            format!("unknown level {other:?}; expected debug, info, warn or error"),
                        ));
                        tracing::Level::INFO
                    }
                };
                let kind = match l.kind.as_str() {
                    "console" | "@orgloop/logger-console" => LoggerKind::Console {
                        show_payload: config
                            .get("show_payload")
                            .and_then(Json::as_bool)
                            .unwrap_or(false),
                    },
                    "file" | "@orgloop/logger-file" => {
                        let path = config
                            .get("path")
                            .and_then(Json::as_str)
                            .unwrap_or("~/.orgloop/logs/orgloop.log");
                        LoggerKind::File {
                            path: expand_path(&self.raw.dir, path),
                        }
                    }
                    other => {
                        self.errors.push(group.error(
                            &format!("loggers[{i}].type"),
                            format!(
                                "unknown logger type {other:?}; expected \"console\" or \"file\"{}",
                                did_you_mean(other, ["console", "file"])
                            ),
                        ));
                        continue;
                    }
                };
                out.push(LoggerSpec {
                    name: l.name.clone(),
                    kind,
                    level,
                });
            }
        }
        out
    }

    fn routes(
        &mut self,
        sources: &[SourceSpec],
        actors: &[ActorSpec],
        transforms: &[TransformSpec],
    ) -> Vec<RouteSpec> {
        let source_ids: Vec<&str> = sources.iter().map(|s| s.id.as_str()).collect();
        let actor_ids: Vec<&str> = actors.iter().map(|a| a.id.as_str()).collect();
        let transform_names: HashSet<&str> = transforms.iter().map(|t| t.name.as_str()).collect();
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for group in &self.raw.routes {
            for (i, r) in group.value.routes.iter().enumerate() {
                let at = |f: &str| format!("routes[{i}].{f}");
                let origin = group.origin(format!("routes[{i}]"));
                check_unique(&mut seen, &r.name, "route", &origin, &mut self.errors);
                // Events an actor emits (e.g. `actor.stopped`) carry the actor's id as source.
                let src = r.when.source.as_str();
                if !source_ids.contains(&src) && !actor_ids.contains(&src) {
                    let hint = did_you_mean(src, source_ids.iter().chain(&actor_ids).copied());
                    let message = format!(
                        "unknown source \"{src}\" (neither a source nor an actor id){hint}"
                    );
                    self.errors.push(group.error(&at("when.source"), message));
                }
                let mut events = Vec::new();
                for (j, e) in r.when.events.iter().enumerate() {
                    match EventType::parse(e) {
                        Some(t) => events.push(t),
                        None => {
                            let hint = did_you_mean(e, EventType::ALL.iter().map(|t| t.as_str()));
                            self.errors.push(group.error(
                                &at(&format!("when.events[{j}]")),
                                format!("unknown event type \"{e}\"{hint}"),
                            ));
                        }
                    }
                }
                if r.when.events.is_empty() {
                    self.errors
                        .push(group.error(&at("when.events"), "list at least one event type"));
                }
                let mut route_transforms = Vec::new();
                for (j, t) in r.transforms.iter().enumerate() {
                    if !transform_names.contains(t.name.as_str()) {
                        let hint = did_you_mean(&t.name, transform_names.iter().copied());
                        self.errors.push(group.error(
                            &at(&format!("transforms[{j}].ref")),
                            format!("unknown transform \"{}\"{hint}", t.name),
                        ));
                    }
                    if t.config.is_some() {
                        self.errors.push(group.error(
                            &at(&format!("transforms[{j}].config")),
                            "per-route transform config is not supported (upstream ignores it too); set config on the transform definition",
                        ));
                    }
                    route_transforms.push(RouteTransformSpec {
                        name: t.name.clone(),
                        on_error: t.on_error,
                    });
                }
                if !actor_ids.contains(&r.then.actor.as_str()) {
                    let hint = did_you_mean(&r.then.actor, actor_ids.iter().copied());
                    self.errors.push(group.error(
                        &at("then.actor"),
                        format!("unknown actor \"{}\"{hint}", r.then.actor),
                    ));
                }
                let prompt_file = r
                    .with
                    .as_ref()
                    .and_then(|w| w.prompt_file.as_deref())
                    .map(|p| {
                        let path = self
                            .raw
                            .dir
                            .join(group.rel.parent().unwrap_or(Path::new("")))
                            .join(p);
                        if !path.is_file() {
                            self.errors.push(group.error(
                                &at("with.prompt_file"),
                                format!("SOP file {} does not exist", path.display()),
                            ));
                        } else if let Err(e) = super::load::read_text(&path) {
                            self.errors.push(group.error(
                                &at("with.prompt_file"),
                                format!("SOP file {}: {e}", path.display()),
                            ));
                        }
                        path
                    });
                out.push(RouteSpec {
                    name: r.name.clone(),
                    source: r.when.source.clone(),
                    events,
                    filter: r
                        .when
                        .filter
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                    transforms: route_transforms,
                    actor: r.then.actor.clone(),
                    config: r.then.config.clone().unwrap_or_default(),
                    prompt_file,
                    origin,
                });
            }
        }
        out
    }
}

fn foreign_connector(name: &str) -> String {
    format!(
        "connector {name:?} is not a plugin symbol; write \"<plugin>::<symbol>\" (e.g. \"http::webhook\") with the plugin listed under plugins: in orgloop.yaml, or \"webhook\" for the built-in webhook source"
    )
}

/// `~/x` → home, relative → module directory.
fn expand_path(dir: &Path, p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(rest),
        None => dir.join(p),
    }
}

/// The smallest `max_memory` that leaves a plugin process room to start.
const MIN_MAX_MEMORY: u64 = 16 << 20;

/// `512MB`, `1GiB`, `1048576`: decimal (kB, MB, GB) and binary (KiB, MiB, GiB) units.
fn parse_byte_size(size: &ByteSize) -> Result<u64, String> {
    let text = match size {
        ByteSize::Bytes(n) => return check_min(*n),
        ByteSize::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?} is not a size (expected e.g. 512MB or 1GiB)"
            ))
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (expected e.g. 512MB or 1GiB)"))?;
    check_min(n.saturating_mul(unit_bytes))
}

fn check_min(bytes: u64) -> Result<u64, String> {
    if bytes < MIN_MAX_MEMORY {
        return Err(format!(
            "{bytes} bytes is too little for a plugin process (at least 16MiB)"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_take_decimal_and_binary_units() {
        let parse = |t: &str| parse_byte_size(&ByteSize::Text(t.into()));
        assert_eq!(parse("512MB"), Ok(512_000_000));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("64 mib"), Ok(64 << 20));
        assert_eq!(parse_byte_size(&ByteSize::Bytes(20 << 20)), Ok(20 << 20));
        assert!(parse("12 parsecs").is_err());
        assert!(parse("MB").is_err());
        assert!(parse("1MB").unwrap_err().contains("too little"));
    }
}
