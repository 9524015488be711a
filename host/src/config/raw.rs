//! The YAML files of a module as written, field for field (the upstream schema plus `plugins:`).
//! Unknown fields are refused, so that a typo is an error instead of a silently ignored setting.
//! Checked, resolved form: [`super::spec`].

use serde::Deserialize;
use serde_json::Value as Json;

/// `orgloop.yaml`, kind `Project`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Project {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub connectors: Vec<String>,
    #[serde(default)]
    pub transforms: Vec<String>,
    #[serde(default)]
    pub loggers: Vec<String>,
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// `defaults:`. Upstream's `event_retention`, `log_level` and `checkpoint` are accepted for
/// compatibility.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub poll_interval: Option<String>,
    pub drain_timeout: Option<String>,
    pub event_retention: Option<Json>,
    pub log_level: Option<String>,
    pub checkpoint: Option<Json>,
    /// The retry policy of every actor that sets none of its own.
    pub retry: Option<RetryDef>,
    /// Bytes of accepted events this module may keep waiting (default 256 MiB).
    pub max_queue_bytes: Option<u64>,
    /// Threads the module's plugin code runs on (default 2).
    pub threads: Option<u32>,
    /// How reloads of this module roll out (canary, automatic rollback).
    pub reload: Option<ReloadDef>,
}

/// `defaults.reload:`: how a reload rolls out unless `orgloop module reload` says otherwise.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadDef {
    /// The share of new events the new generation gets first, e.g. `10%`.
    pub canary: Option<String>,
    /// How long the canary lasts before the new generation gets every event (default `60s`).
    pub canary_for: Option<String>,
    /// Compare the new generation with the previous one and swap back when it does worse.
    pub auto_rollback: Option<bool>,
    /// With `auto_rollback`: how long the comparison goes on after the full swap (default `30s`).
    pub bake: Option<String>,
    /// Worse means: transform error rate up by more than this (default 0.05, 5 points)...
    pub max_error_rate_increase: Option<f64>,
    /// ... or delivery failure rate up by more than this (default 0.05) ...
    pub max_failure_rate_increase: Option<f64>,
    /// ... or p99 delivery latency more than this many times the previous one (default 2.0,
    /// and at least 50 ms more) ...
    pub max_latency_ratio: Option<f64>,
    /// ... each once the new generation has this many samples of it (default 20).
    pub min_samples: Option<u64>,
}

/// `retry:` of an actor (or of `defaults:`): how a failed delivery is tried again.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryDef {
    /// Attempts in all, the first included (default: no limit; `max_age` ends it).
    pub max_attempts: Option<u32>,
    /// The wait before the first retry (default `500ms`); doubled after each failure.
    pub initial: Option<String>,
    /// The longest wait between two attempts (default `5m`).
    pub max: Option<String>,
    /// Give up this long after the event was accepted (default `24h`).
    pub max_age: Option<String>,
}

/// What happens to a delivery that was interrupted — by a drain's timeout, a shutdown, or the
/// daemon dying — before its actor answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interrupted {
    /// Deliver it again (through the current generation; after a restart, once the module is
    /// loaded). The default: at least once.
    #[default]
    Redeliver,
    /// Put it in the dead letters, for a person to replay (for agent sessions that must not
    /// start twice).
    DeadLetter,
}

/// One entry of `plugins:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    pub name: String,
    /// The built library, relative to `orgloop.yaml`.
    pub path: String,
    /// A semver requirement on the plugin's version, e.g. `^0.1`.
    #[serde(default)]
    pub version: Option<String>,
    /// Where its code runs: `in_process` (the default) or `process` (a child process of its own).
    #[serde(default)]
    pub isolation: Option<String>,
    /// With `isolation: process`: the most memory the child may allocate, in bytes or as text
    /// such as `512MB` or `1GiB`.
    #[serde(default)]
    pub max_memory: Option<ByteSize>,
}

/// A size in bytes, written as a number or as text with a unit (`512MB`, `1GiB`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(u64),
    Text(String),
}

/// `connectors/*.yaml`, kind `ConnectorGroup`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectorGroup {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub sources: Vec<SourceDef>,
    #[serde(default)]
    pub actors: Vec<ActorDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDef {
    pub id: String,
    pub connector: String,
    #[serde(default)]
    pub config: Option<Json>,
    #[serde(default)]
    pub poll: Option<Poll>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: Option<Json>,
    #[serde(default)]
    pub emits: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poll {
    pub interval: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorDef {
    pub id: String,
    pub connector: String,
    #[serde(default)]
    pub config: Option<Json>,
    /// How many deliveries may run at once (default 1024); more wait their turn.
    #[serde(default)]
    pub max_inflight: Option<u32>,
    /// How failed deliveries are retried (default: `defaults.retry`, else the built-in policy).
    #[serde(default)]
    pub retry: Option<RetryDef>,
    /// What happens to a delivery that was interrupted (default `redeliver`).
    #[serde(default)]
    pub interrupted: Option<Interrupted>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: Option<Json>,
}

/// `transforms/*.yaml`, kind `TransformGroup`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransformGroup {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub transforms: Vec<TransformDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformDef {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub symbol: Option<String>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub package: Option<String>,
    #[serde(default)]
    pub config: Option<Json>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub on_error: Option<OnError>,
    #[serde(default)]
    pub description: Option<String>,
}

/// What a route does when a transform fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Go on with the event as it was (fail-open). The default, as upstream.
    #[default]
    Pass,
    /// Drop the event for this route.
    Drop,
    /// Stop this route for this event and report an error.
    Halt,
}

/// `routes/*.yaml`, kind `RouteGroup`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteGroup {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub routes: Vec<RouteDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDef {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub when: When,
    #[serde(default)]
    pub transforms: Vec<RouteTransform>,
    pub then: Then,
    #[serde(default, rename = "with")]
    pub with: Option<With>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    pub source: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub filter: Option<serde_json::Map<String, Json>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTransform {
    #[serde(rename = "ref")]
    pub name: String,
    #[serde(default)]
    pub config: Option<Json>,
    #[serde(default)]
    pub on_error: Option<OnError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Then {
    pub actor: String,
    #[serde(default)]
    pub config: Option<serde_json::Map<String, Json>>,
    /// Upstream declares retry, rate and breaker settings here but implements none; accepted.
    #[serde(default)]
    pub delivery: Option<Json>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct With {
    pub prompt_file: Option<String>,
}

/// `loggers/*.yaml`, kind `LoggerGroup`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoggerGroup {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub loggers: Vec<LoggerDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerDef {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub config: Option<Json>,
}
