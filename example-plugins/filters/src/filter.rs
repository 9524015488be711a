//! The `filter` transform: keeps or drops events by their fields, with upstream OrgLoop's config.

use orgloop_plugin_sdk::prelude::*;
use orgloop_plugin_sdk::serde::{de, Deserializer};
use orgloop_plugin_sdk::serde_json::Map;

use crate::matcher::Criteria;

/// The config of [`Filter`]. Each key maps event dot paths to expected values (see the value
/// rules in the [crate docs](crate)). No config at all, or an empty map, lets every event through.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// All of these must hold, or the event is dropped.
    #[serde(default, rename = "match")]
    match_all: Map<String, Json>,
    /// At least one of these must hold, or the event is dropped.
    #[serde(default)]
    match_any: Map<String, Json>,
    /// The event is dropped if any of these holds.
    #[serde(default)]
    exclude: Map<String, Json>,
    /// Upstream's jq mode; refused with an explanation .
    #[serde(default, rename = "jq", deserialize_with = "reject_jq")]
    _jq: (),
}

/// Upstream's `jq` key runs a `jq` process per event. A plugin must not start processes or
/// threads (they would pin the library in memory), and a per-event subprocess does not belong on
/// the daemon's event path, so the key is refused with a pointer to what to use instead rather
/// than being rejected as merely "unknown".
fn reject_jq<'de, D: Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(de::Error::custom(
        "`jq` is not supported by filters::filter (it would run a process per event); \
         use match / match_any / exclude, whose values may be regexes like \"/^fix/i\"",
    ))
}

/// The `filter` transform: keeps or drops events by their fields, with upstream OrgLoop's config.
///
/// ```yaml
/// transforms:
///   - name: humans-only
///     type: package
///     package: filters::filter
///     config:
///       exclude: { provenance.author_type: bot }
///       match: { type: resource.changed }
///       match_any: { payload.pr.labels.0: [bug, security], payload.priority: "/^p[01]$/i" }
/// ```
#[derive(Debug)]
pub struct Filter {
    exclude: Criteria,
    match_all: Criteria,
    match_any: Criteria,
}

impl Transform for Filter {
    /// `Option`, so that a transform listed without any `config:` (JSON `null`) passes everything.
    type Config = Option<FilterConfig>;

    const DESCRIPTION: &'static str =
        "Keeps or drops events by field values: match (all), match_any (any), exclude (none)";

    fn new(config: Self::Config, host: Host) -> Result<Self, PluginError> {
        let config = config.unwrap_or_default();
        // An empty `match_any: {}` would drop everything upstream (no criterion can hold); we read
        // an empty map as "no condition", like an absent key, since nobody means the former.
        Ok(Filter {
            exclude: Criteria::compile("exclude", &config.exclude, &host)?,
            match_all: Criteria::compile("match", &config.match_all, &host)?,
            match_any: Criteria::compile("match_any", &config.match_any, &host)?,
        })
    }

    fn apply(&self, event: &Event, _ctx: &TransformCtx<'_>) -> Result<Verdict, PluginError> {
        let keep = !self.exclude.any(event)
            && self.match_all.all(event)
            && (self.match_any.is_empty() || self.match_any.any(event));
        Ok(if keep { Verdict::Pass } else { Verdict::Drop })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orgloop_plugin_sdk::testing::{test_event, TestHost};
    use orgloop_plugin_sdk::EventType;

    fn filter(config: Json) -> orgloop_plugin_sdk::testing::TestTransform {
        TestHost::new().transform::<Filter>(config).unwrap()
    }

    fn verdict(config: Json, event: &Event) -> Verdict {
        filter(config).apply(event).unwrap()
    }

    fn config_error(config: Json) -> String {
        match TestHost::new().transform::<Filter>(config) {
            Ok(_) => panic!("config should be refused"),
            Err(e) => e.message().to_owned(),
        }
    }

    fn bot_event() -> Event {
        Event::builder("github", EventType::ResourceChanged)
            .provenance("author", "dependabot")
            .provenance("author_type", "bot")
            .payload(json!({"pr": {"number": 7}, "labels": ["deps"]}))
            .build()
    }

    #[test]
    fn no_config_passes_everything() {
        for config in [Json::Null, json!({}), json!({"match": {}, "exclude": {}})] {
            assert_eq!(verdict(config, &bot_event()), Verdict::Pass);
        }
        assert_eq!(
            verdict(json!({"match_any": {}}), &bot_event()),
            Verdict::Pass,
            "an empty match_any is no condition"
        );
    }

    #[test]
    fn exclude_drops_on_any_hit() {
        let config = json!({"exclude": {"provenance.author_type": "bot", "payload.draft": true}});
        assert_eq!(verdict(config.clone(), &bot_event()), Verdict::Drop);
        assert_eq!(
            verdict(config.clone(), &test_event(json!({"draft": true}))),
            Verdict::Drop
        );
        assert_eq!(
            verdict(config, &test_event(json!({"draft": false}))),
            Verdict::Pass
        );
    }

    #[test]
    fn match_needs_every_rule() {
        let config = json!({"match": {"source": "github", "payload.pr.number": 7}});
        assert_eq!(verdict(config.clone(), &bot_event()), Verdict::Pass);
        let other = Event::builder("github", EventType::ResourceChanged)
            .payload(json!({"pr": {"number": 8}}))
            .build();
        assert_eq!(verdict(config, &other), Verdict::Drop);
    }

    #[test]
    fn match_any_needs_one_rule() {
        let config =
            json!({"match_any": {"provenance.author": "alice,bob", "payload.urgent": true}});
        let alice = test_event(json!({})).with(|v| v["provenance"]["author"] = "bob".into());
        assert_eq!(verdict(config.clone(), &alice.unwrap()), Verdict::Pass);
        assert_eq!(
            verdict(config.clone(), &test_event(json!({"urgent": true}))),
            Verdict::Pass
        );
        assert_eq!(verdict(config, &test_event(json!({}))), Verdict::Drop);
    }

    #[test]
    fn exclude_wins_over_match() {
        let config = json!({
            "match": {"provenance.author_type": "bot"},
            "match_any": {"payload.labels.0": ["deps", "ci"]},
            "exclude": {"provenance.author": "/^dependabot$/"},
        });
        assert_eq!(verdict(config.clone(), &bot_event()), Verdict::Drop);
        let renovate = bot_event()
            .with(|v| v["provenance"]["author"] = "renovate".into())
            .unwrap();
        assert_eq!(verdict(config.clone(), &renovate), Verdict::Pass);
        let unlabeled = renovate
            .with(|v| v["payload"]["labels"] = json!([]))
            .unwrap();
        assert_eq!(verdict(config, &unlabeled), Verdict::Drop);
    }

    #[test]
    fn regex_compiled_once_is_reused() {
        let t = filter(json!({"match": {"payload.title": "/^(feat|fix)(\\(.+\\))?:/i"}}));
        for (title, want) in [
            ("feat: x", Verdict::Pass),
            ("Fix(core): y", Verdict::Pass),
            ("chore: z", Verdict::Drop),
        ] {
            assert_eq!(t.apply(&test_event(json!({"title": title}))).unwrap(), want);
        }
    }

    #[test]
    fn jq_is_refused_with_a_reason() {
        let err = config_error(json!({"jq": ".payload.x == 1"}));
        assert!(err.contains("`jq` is not supported"), "{err}");
        assert!(err.contains("match_any"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = config_error(json!({"matches": {"type": "x"}}));
        assert!(err.contains("unknown field `matches`"), "{err}");
        assert!(
            err.contains("`match`"),
            "the message lists the known keys: {err}"
        );
    }

    #[test]
    fn malformed_config_is_refused() {
        let err = config_error(json!({"match": ["type"]}));
        assert!(err.contains("invalid type"), "{err}");
        let err = config_error(json!({"exclude": {"payload..x": 1}}));
        assert!(
            err.contains("exclude") && err.contains("not a dot path"),
            "{err}"
        );
        let err = config_error(json!("match everything"));
        assert!(err.contains("invalid config"), "{err}");
    }
}
