//! [`ModuleSpec`]: a module's configuration after validation — every reference resolved, every
//! path absolute, every duration parsed. What the engine builds a generation from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orgloop_plugin_sdk::EventType;
use serde_json::{Map, Value as Json};

use super::raw::{Interrupted, OnError};
use super::yaml::Pos;
use super::ConfigError;

/// Where an item was declared, so that errors found later (while loading plugins, building
/// objects) still point at the right line.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    pub file: PathBuf,
    pub pos: Option<Pos>,
    pub field: String,
}

impl Origin {
    /// An error about this item.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file.clone(), self.pos, self.field.clone(), message)
    }

    /// An error about one of this item's fields.
    pub fn error_at(
        &self,
        field: &str,
        pos: Option<Pos>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::new(
            self.file.clone(),
            pos.or(self.pos),
            format!("{}.{field}", self.field),
            message,
        )
    }
}

/// A whole module.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleSpec {
    pub name: String,
    pub dir: PathBuf,
    pub description: Option<String>,
    pub plugins: Vec<PluginSpec>,
    pub sources: Vec<SourceSpec>,
    pub actors: Vec<ActorSpec>,
    pub transforms: Vec<TransformSpec>,
    pub routes: Vec<RouteSpec>,
    pub loggers: Vec<LoggerSpec>,
    /// How long in-flight deliveries of an old generation may run on after a reload.
    pub drain_timeout: Duration,
    /// Bytes of accepted events the module may keep waiting; beyond, its webhooks answer 503.
    pub max_queue_bytes: u64,
    /// Threads its plugin code runs on (read when the module is loaded).
    pub threads: usize,
    /// How its reloads roll out, unless the reload request says otherwise.
    pub reload: RolloutPolicy,
}

/// How a reload rolls out: all at once (the default), or first to a share of new events (a
/// canary), with or without comparing the new generation against the previous one.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutPolicy {
    /// The share of new events the new generation gets first, in basis points (1/100 of a
    /// percent); `None`: every event at once.
    pub canary: Option<u32>,
    pub canary_for: Duration,
    pub auto_rollback: bool,
    /// With `auto_rollback`, how long the comparison goes on after the full swap.
    pub bake: Duration,
    pub thresholds: Thresholds,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            canary: None,
            canary_for: Duration::from_secs(60),
            auto_rollback: false,
            bake: Duration::from_secs(30),
            thresholds: Thresholds::default(),
        }
    }
}

/// When a new generation counts as worse than the previous one.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// Transform error rate (errors per call) up by more than this.
    pub max_error_rate_increase: f64,
    /// Delivery failure rate (failed attempts per attempt) up by more than this.
    pub max_failure_rate_increase: f64,
    /// p99 delivery latency more than this many times the previous one (and 50 ms more).
    pub max_latency_ratio: f64,
    /// Samples of a figure the new generation needs before it can count as worse by it.
    pub min_samples: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_error_rate_increase: 0.05,
            max_failure_rate_increase: 0.05,
            max_latency_ratio: 2.0,
            min_samples: 20,
        }
    }
}

/// `10%`, `2.5%` or `10`: a share of events in basis points, more than 0 and at most 100%.
pub fn parse_share(text: &str) -> Result<u32, String> {
    let number = text.trim().trim_end_matches('%').trim();
    let percent: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a share (expected e.g. 10%)"))?;
    let bp = (percent * 100.0).round();
    if !(1.0..=10_000.0).contains(&bp) {
        return Err(format!("{text:?} must be more than 0% and at most 100%"));
    }
    Ok(bp as u32)
}

/// A plugin library the module uses.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginSpec {
    pub name: String,
    /// Absolute path of the built library (the user's file; the daemon loads a private copy).
    pub path: PathBuf,
    pub version: Option<semver::VersionReq>,
    /// `None`: the daemon's default (`orgloop start --isolation`).
    pub isolation: Option<Isolation>,
    /// The memory limit of its child process (`isolation: process` only).
    pub max_memory: Option<u64>,
    pub origin: Origin,
}

impl PluginSpec {
    /// An entry for the build at `path` that no file declared (for tools that load a library by
    /// itself, such as benchmarks).
    pub fn for_library(name: &str, path: &Path, isolation: Isolation) -> Self {
        PluginSpec {
            name: name.to_owned(),
            path: path.to_path_buf(),
            version: None,
            isolation: Some(isolation),
            max_memory: None,
            origin: Origin {
                file: path.to_path_buf(),
                pos: None,
                field: "plugins".into(),
            },
        }
    }
}

/// Where a plugin's code runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// Mapped into the daemon: the fastest way, but a crash of the plugin is a crash of the
    /// daemon.
    #[default]
    InProcess,
    /// In a child process of its own, supervised by the daemon (see `crate::plugin::process`).
    Process,
}

impl Isolation {
    /// The names YAML and the command line use.
    pub const NAMES: [&'static str; 2] = ["in_process", "process"];

    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::InProcess => "in_process",
            Isolation::Process => "process",
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "in_process" => Ok(Isolation::InProcess),
            "process" => Ok(Isolation::Process),
            _ => Err(format!(
                "unknown isolation {s:?}{} (expected one of: {})",
                super::error::did_you_mean(s, Isolation::NAMES),
                Isolation::NAMES.join(", ")
            )),
        }
    }
}

/// `plugin::symbol`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SymbolRef {
    pub plugin: String,
    pub symbol: String,
}

impl std::fmt::Display for SymbolRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}", self.plugin, self.symbol)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SourceSpec {
    pub id: String,
    pub kind: SourceKind,
    pub origin: Origin,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SourceKind {
    /// The built-in webhook source: `POST /webhook/<id>`.
    Webhook(WebhookConfig),
    /// A plugin source, polled every `interval`.
    Plugin {
        symbol: SymbolRef,
        config: Json,
        interval: Duration,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct WebhookConfig {
    /// HMAC-SHA256 secret; when set, `x-hub-signature-256` (or `x-signature`) must match.
    pub secret: Option<String>,
    /// Body field whose value becomes `provenance.platform_event`.
    pub event_type_field: Option<String>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ActorSpec {
    pub id: String,
    pub symbol: SymbolRef,
    pub config: Json,
    /// Deliveries to this actor at once; more wait their turn.
    pub max_inflight: usize,
    pub retry: RetryPolicy,
    pub interrupted: Interrupted,
    pub origin: Origin,
}

/// How a failed delivery is tried again: exponential backoff with jitter from `initial` up to
/// `max` between attempts, until `max_attempts` attempts were made or `max_age` has passed since
/// the event was accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// `None`: no limit on the count.
    pub max_attempts: Option<u32>,
    pub initial: Duration,
    pub max: Duration,
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    /// Heals short outages within a second or two and keeps trying for a day, as webhook
    /// providers do.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: None,
            initial: Duration::from_millis(500),
            max: Duration::from_secs(300),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TransformSpec {
    pub name: String,
    pub symbol: SymbolRef,
    pub config: Json,
    pub on_error: Option<OnError>,
    /// A call that takes longer is an error under the route's `on_error` (`timeout_ms`).
    pub timeout: Duration,
    pub origin: Origin,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteSpec {
    pub name: String,
    pub source: String,
    pub events: Vec<EventType>,
    /// Dot path → value, all of which must be strictly equal.
    pub filter: Vec<(String, Json)>,
    pub transforms: Vec<RouteTransformSpec>,
    pub actor: String,
    pub config: Map<String, Json>,
    pub prompt_file: Option<PathBuf>,
    pub origin: Origin,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteTransformSpec {
    pub name: String,
    /// The route's own policy; falls back to the transform's, then to `pass`.
    pub on_error: Option<OnError>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoggerSpec {
    pub name: String,
    pub kind: LoggerKind,
    pub level: tracing::Level,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LoggerKind {
    /// Human-readable lines on stderr.
    Console { show_payload: bool },
    /// JSON lines appended to a file.
    File { path: PathBuf },
}
