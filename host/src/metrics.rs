//! `GET /metrics`: the daemon's counters and gauges in the Prometheus text format
//! (`prometheus-client`).
//!
//! Counters on the event path are handles made once — when a route, transform or actor is built —
//! and only incremented per event (one atomic add); what is state rather than a count (queue
//! depth, generations, dead letters) is read when the metrics are scraped. Labels are module,
//! source, route, transform, actor and outcome: never an event id, so their number stays bounded.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::module::Registry as Modules;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub source: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub module: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransformLabels {
    pub module: String,
    pub transform: String,
    /// `pass`, `drop` or `error`.
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabels {
    pub module: String,
    pub actor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub module: String,
    pub actor: String,
    /// `delivered`, `failed`, `rejected` or `interrupted`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleLabels {
    pub module: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub module: String,
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub module: String,
    /// `swapped`, `unchanged` or `rejected`.
    pub result: &'static str,
}

fn latency() -> Histogram {
    // 0.5 ms to about 8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// Every metric of the daemon.
pub struct Metrics {
    pub webhooks: Family<WebhookLabels, Counter>,
    pub route_matches: Family<RouteLabels, Counter>,
    pub transforms: Family<TransformLabels, Counter>,
    pub transform_overruns: Family<ModuleLabels, Counter>,
    pub deliveries: Family<OutcomeLabels, Counter>,
    pub delivery_seconds: Family<ActorLabels, Histogram, fn() -> Histogram>,
    pub retries: Family<ActorLabels, Counter>,
    pub dead_letters_added: Family<ActorLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub swap_seconds: Histogram,
    pub stage_seconds: Histogram,
    pub libraries_pinned: Counter,
    pub plugin_process_exits: Family<PluginLabels, Counter>,
    queue_entries: Family<ModuleLabels, Gauge>,
    queue_bytes: Family<ModuleLabels, Gauge>,
    queue_oldest_seconds: Family<ModuleLabels, Gauge>,
    generation: Family<ModuleLabels, Gauge>,
    dead_letters: Family<ModuleLabels, Gauge>,
    registry: Registry,
}

/// The daemon's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            webhooks: Family::default(),
            route_matches: Family::default(),
            transforms: Family::default(),
            transform_overruns: Family::default(),
            deliveries: Family::default(),
            delivery_seconds: Family::new_with_constructor(latency),
            retries: Family::default(),
            dead_letters_added: Family::default(),
            reloads: Family::default(),
            swap_seconds: Histogram::new(exponential_buckets(0.000_001, 4.0, 12)),
            stage_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            libraries_pinned: Counter::default(),
            plugin_process_exits: Family::default(),
            queue_entries: Family::default(),
            queue_bytes: Family::default(),
            queue_oldest_seconds: Family::default(),
            generation: Family::default(),
            dead_letters: Family::default(),
            registry: Registry::with_prefix("orgloop"),
        };
        let r = &mut m.registry;
        r.register(
            "webhooks",
            "Webhook requests by source and answer code",
            m.webhooks.clone(),
        );
        r.register(
            "route_matches",
            "Events a route matched",
            m.route_matches.clone(),
        );
        r.register(
            "transform_calls",
            "Transform calls by verdict",
            m.transforms.clone(),
        );
        r.register(
            "transform_overruns",
            "Transform calls past their deadline",
            m.transform_overruns.clone(),
        );
        r.register(
            "deliveries",
            "Delivery attempts by actor and outcome",
            m.deliveries.clone(),
        );
        r.register(
            "delivery_seconds",
            "Time of one delivery attempt",
            m.delivery_seconds.clone(),
        );
        r.register(
            "retries",
            "Delivery attempts scheduled again after a failure",
            m.retries.clone(),
        );
        r.register(
            "dead_lettered",
            "Deliveries put in the dead letters",
            m.dead_letters_added.clone(),
        );
        r.register("reloads", "Module reloads by result", m.reloads.clone());
        r.register(
            "reload_swap_seconds",
            "Time of a reload's swap",
            m.swap_seconds.clone(),
        );
        r.register(
            "reload_stage_seconds",
            "Time of a reload's staging",
            m.stage_seconds.clone(),
        );
        r.register(
            "libraries_pinned",
            "Retired plugin libraries that stayed mapped",
            m.libraries_pinned.clone(),
        );
        r.register(
            "plugin_process_exits",
            "Plugin processes (isolation: process) that died unasked: crashes, kills, running out of memory",
            m.plugin_process_exits.clone(),
        );
        r.register(
            "queue_entries",
            "Events and deliveries not finished",
            m.queue_entries.clone(),
        );
        r.register(
            "queue_bytes",
            "Bytes the unfinished entries count against the limits",
            m.queue_bytes.clone(),
        );
        r.register(
            "queue_oldest_seconds",
            "Age of the oldest unfinished entry",
            m.queue_oldest_seconds.clone(),
        );
        r.register(
            "generation",
            "A module's current generation",
            m.generation.clone(),
        );
        r.register(
            "dead_letters",
            "Dead letters waiting for a replay or a purge",
            m.dead_letters.clone(),
        );
        m
    }

    /// The text exposition, with the state-like gauges read from `modules` now.
    pub fn render(&self, modules: &Modules) -> String {
        for m in modules.modules() {
            let labels = ModuleLabels {
                module: m.name.clone(),
            };
            if let Some(q) = m.queue.stats(&m.name) {
                self.queue_entries
                    .get_or_create(&labels)
                    .set(q.entries as i64);
                self.queue_bytes.get_or_create(&labels).set(q.bytes as i64);
                let oldest = q.oldest_ms.unwrap_or(0) / 1000;
                self.queue_oldest_seconds
                    .get_or_create(&labels)
                    .set(oldest as i64);
            }
            if let Some(g) = m.current() {
                self.generation.get_or_create(&labels).set(g.number as i64);
            }
            let dead = m.queue.dead.count(&m.name);
            self.dead_letters.get_or_create(&labels).set(dead as i64);
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!("encoding the metrics failed: {e}");
        }
        text
    }
}

/// The counters of one actor, made when the actor is built.
pub struct ActorCounters {
    pub delivered: Counter,
    pub failed: Counter,
    pub rejected: Counter,
    pub interrupted: Counter,
    pub retries: Counter,
    pub seconds: Histogram,
}

impl ActorCounters {
    pub fn new(module: &str, actor: &str) -> Self {
        let m = metrics();
        let outcome = |outcome| {
            m.deliveries
                .get_or_create(&OutcomeLabels {
                    module: module.to_owned(),
                    actor: actor.to_owned(),
                    outcome,
                })
                .clone()
        };
        let labels = ActorLabels {
            module: module.to_owned(),
            actor: actor.to_owned(),
        };
        ActorCounters {
            delivered: outcome("delivered"),
            failed: outcome("failed"),
            rejected: outcome("rejected"),
            interrupted: outcome("interrupted"),
            retries: m.retries.get_or_create(&labels).clone(),
            seconds: m.delivery_seconds.get_or_create(&labels).clone(),
        }
    }
}

/// The counters of one transform, made when the transform is built.
pub struct TransformCounters {
    pub pass: Counter,
    pub drop: Counter,
    pub error: Counter,
}

impl TransformCounters {
    pub fn new(module: &str, transform: &str) -> Self {
        let verdict = |verdict| {
            metrics()
                .transforms
                .get_or_create(&TransformLabels {
                    module: module.to_owned(),
                    transform: transform.to_owned(),
                    verdict,
                })
                .clone()
        };
        TransformCounters {
            pass: verdict("pass"),
            drop: verdict("drop"),
            error: verdict("error"),
        }
    }
}

/// The match counter of one route.
pub fn route_matches(module: &str, route: &str) -> Counter {
    metrics()
        .route_matches
        .get_or_create(&RouteLabels {
            module: module.to_owned(),
            route: route.to_owned(),
        })
        .clone()
}
