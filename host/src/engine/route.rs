//! A route, compiled for matching: `when.source`, `when.events` and a strict dot-path `filter`,
//! with upstream's semantics (strict equality, no coercion). The statistics shown by
//! `GET /api/routes` live here too.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use orgloop_plugin_sdk::{Event, EventType};
use serde_json::Value as Json;

use crate::config::spec::RouteSpec;

/// Counters of one route, kept across reloads by route name.
#[derive(Debug, Default)]
pub struct RouteStats {
    pub fire_count: AtomicU64,
    /// Unix ms of the last match; 0 = never.
    pub last_fired_ms: AtomicI64,
}

impl RouteStats {
    pub fn fired(&self) {
        self.fire_count.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.last_fired_ms.store(now, Ordering::Relaxed);
    }
}

/// A route ready to match.
pub struct Route {
    pub spec: RouteSpec,
    /// Bit per event type, for a branch-free type check.
    event_mask: u8,
    pub stats: Arc<RouteStats>,
    /// `orgloop_route_matches_total` of this route.
    pub matches: prometheus_client::metrics::counter::Counter,
}

fn bit(t: EventType) -> u8 {
    match t {
        EventType::ResourceChanged => 1,
        EventType::ActorStopped => 2,
        EventType::MessageReceived => 4,
    }
}

impl Route {
    pub fn new(
        spec: RouteSpec,
        stats: Arc<RouteStats>,
        matches: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        let event_mask = spec.events.iter().map(|t| bit(*t)).fold(0, |a, b| a | b);
        Route {
            spec,
            event_mask,
            stats,
            matches,
        }
    }

    /// Whether `event`, of type `event_type` (parsed once per event by the caller) and already
    /// known to come from this route's source, matches.
    pub fn matches(&self, event: &Event, event_type: EventType) -> bool {
        self.event_mask & bit(event_type) != 0
            && self
                .spec
                .filter
                .iter()
                .all(|(path, want)| filter_holds(event, path, want))
    }
}

/// `getNestedValue(event, path) === expected`, as upstream. A missing path matches nothing (in
/// upstream, `undefined === value` is false for every value YAML can hold).
fn filter_holds(event: &Event, path: &str, want: &Json) -> bool {
    event.get(path).is_some_and(|v| v.equals(want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::Origin;
    use serde_json::json;

    fn route(events: &[EventType], filter: Json) -> Route {
        let spec = RouteSpec {
            name: "r".into(),
            source: "gh".into(),
            events: events.to_vec(),
            filter: filter.as_object().unwrap().clone().into_iter().collect(),
            transforms: vec![],
            actor: "a".into(),
            config: Default::default(),
            prompt_file: None,
            origin: Origin {
                file: "routes/r.yaml".into(),
                pos: None,
                field: "routes[0]".into(),
            },
        };
        Route::new(spec, Default::default(), Default::default())
    }

    fn event(t: EventType, payload: Json) -> Event {
        Event::builder("gh", t)
            .platform("github")
            .provenance("platform_event", "pull_request.opened")
            .payload(payload)
            .build()
    }

    #[test]
    fn matches_type_and_strict_filter() {
        let r = route(
            &[EventType::ResourceChanged],
            json!({"provenance.platform_event": "pull_request.opened", "payload.n": 1}),
        );
        let matches = |e: Event| r.matches(&e, e.event_type());
        assert!(matches(event(EventType::ResourceChanged, json!({"n": 1}))));
        assert!(!matches(event(EventType::ActorStopped, json!({"n": 1}))));
        assert!(
            !matches(event(EventType::ResourceChanged, json!({"n": "1"}))),
            "no coercion"
        );
        assert!(
            !matches(event(EventType::ResourceChanged, json!({}))),
            "missing path"
        );
    }
}
