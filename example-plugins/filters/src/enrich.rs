//! The `enrich` transform: sets fixed values and copies fields, with upstream OrgLoop's config.

use orgloop_plugin_sdk::prelude::*;
use orgloop_plugin_sdk::serde::{de, Deserializer};
use orgloop_plugin_sdk::serde_json::Map;
use std::collections::BTreeMap;

/// The config of [`Enrich`]. Unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// `target.path: value`: writes `value` (any JSON) at each path.
    #[serde(default)]
    set: Map<String, Json>,
    /// `target.path: source.path`: copies the value found at the source path, if there is one.
    #[serde(default)]
    copy: BTreeMap<String, String>,
    /// Upstream's expression evaluator; refused with an explanation .
    #[serde(default, rename = "compute", deserialize_with = "reject_compute")]
    _compute: (),
}

/// Upstream's `compute` parses little comparison expressions (`payload.n > 3`) with quirks of
/// JavaScript's loose comparison. Rather than reproduce those half-way, the key is refused with
/// what to use instead.
fn reject_compute<'de, D: Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(de::Error::custom(
        "`compute` is not supported by filters::enrich; use a filters::filter in front of an \
         enrich with `set` to tag the events that match a condition",
    ))
}

/// A dot path split into its segments once, at build time.
type Path = Vec<String>;

/// The `enrich` transform: sets fixed values and copies fields, with upstream OrgLoop's config.
///
/// ```yaml
/// config:
///   set:  { payload.team: platform, provenance.routed_by: orgloop }
///   copy: { payload.pr_number: payload.pull_request.number }   # target: source
/// ```
///
/// Paths start at the event root (`payload.…`, `provenance.…`; `type` or `id` too, as long as the
/// result is still a valid event). `set` runs first, then `copy`, which therefore sees the values
/// `set` wrote; a `copy` whose source is missing is skipped. Missing intermediate objects are
/// created, and a scalar in the way is replaced by an object, as upstream does. Array items are
/// addressed by index (`payload.labels.0`); an index past the end is an error.
#[derive(Debug)]
pub struct Enrich {
    set: Vec<(Path, Json)>,
    copy: Vec<(Path, Path)>,
}

fn split(section: &str, path: &str) -> Result<Path, PluginError> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(PluginError::new(format!(
            "{section}: {path:?} is not a dot path (e.g. payload.team)"
        )));
    }
    Ok(path.split('.').map(str::to_owned).collect())
}

impl Transform for Enrich {
    /// `Option`, so that no config at all is allowed (and changes nothing).
    type Config = Option<EnrichConfig>;

    const DESCRIPTION: &'static str = "Sets fixed values (set) and copies fields (copy) on events";

    fn new(config: Self::Config, _host: Host) -> Result<Self, PluginError> {
        let config = config.unwrap_or_default();
        let set = config
            .set
            .into_iter()
            .map(|(path, value)| Ok((split("set", &path)?, value)))
            .collect::<Result<_, PluginError>>()?;
        let copy = config
            .copy
            .iter()
            .map(|(target, source)| Ok((split("copy", target)?, split("copy", source)?)))
            .collect::<Result<_, PluginError>>()?;
        Ok(Enrich { set, copy })
    }

    fn apply(&self, event: &Event, _ctx: &TransformCtx<'_>) -> Result<Verdict, PluginError> {
        if self.set.is_empty() && self.copy.is_empty() {
            return Ok(Verdict::Pass);
        }
        let mut changed = Ok(false);
        let enriched = event.with(|root| changed = self.edit(root));
        if !changed? {
            return Ok(Verdict::Pass);
        }
        enriched
            .map(Verdict::Replace)
            .map_err(|e| PluginError::new(format!("the enriched event is not valid: {e}")))
    }
}

impl Enrich {
    /// Applies `set`, then `copy`; says whether anything was written.
    fn edit(&self, root: &mut Json) -> Result<bool, PluginError> {
        let mut changed = false;
        for (path, value) in &self.set {
            set_at(root, path, value.clone())?;
            changed = true;
        }
        for (target, source) in &self.copy {
            if let Some(value) = get_at(root, source).cloned() {
                set_at(root, target, value)?;
                changed = true;
            }
        }
        Ok(changed)
    }
}

fn get_at<'a>(root: &'a Json, path: &[String]) -> Option<&'a Json> {
    path.iter().try_fold(root, |v, seg| match v {
        Json::Object(m) => m.get(seg),
        Json::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn set_at(root: &mut Json, path: &[String], value: Json) -> Result<(), PluginError> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut here = root;
    for (depth, seg) in parents.iter().enumerate() {
        let child = slot(here, seg, &path[..=depth])?;
        if !matches!(child, Json::Object(_) | Json::Array(_)) {
            *child = Json::Object(Map::new());
        }
        here = child;
    }
    *slot(here, last, path)? = value;
    Ok(())
}

/// The place for key `seg` inside a container (created as `null` in an object).
fn slot<'a>(
    container: &'a mut Json,
    seg: &str,
    at: &[String],
) -> Result<&'a mut Json, PluginError> {
    match container {
        Json::Object(m) => Ok(m.entry(seg).or_insert(Json::Null)),
        Json::Array(items) => {
            let len = items.len();
            seg.parse::<usize>()
                .ok()
                .and_then(|i| items.get_mut(i))
                .ok_or_else(|| {
                    PluginError::new(format!(
                        "cannot set {}: the array there has {len} items and {seg:?} is not one of their indexes",
                        at.join(".")
                    ))
                })
        }
        // `set_at` only descends into containers, and the event root is an object.
        _ => Err(PluginError::new(format!("cannot set {}", at.join(".")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orgloop_plugin_sdk::testing::{test_event, TestHost, TestTransform};

    fn enrich(config: Json) -> TestTransform {
        TestHost::new().transform::<Enrich>(config).unwrap()
    }

    fn enriched(config: Json, event: &Event) -> Json {
        match enrich(config).apply(event).unwrap() {
            Verdict::Replace(e) => e.to_json(),
            other => panic!("expected a replaced event, got {other:?}"),
        }
    }

    fn config_error(config: Json) -> String {
        match TestHost::new().transform::<Enrich>(config) {
            Ok(_) => panic!("config should be refused"),
            Err(e) => e.message().to_owned(),
        }
    }

    #[test]
    fn set_writes_values_and_creates_objects() {
        let event = test_event(json!({"pr": {"number": 1}}));
        let out = enriched(
            json!({"set": {
                "payload.team": "platform",
                "payload.meta.tags": ["a", "b"],
                "payload.pr.reviewed": true,
                "provenance.routed_by": "orgloop",
            }}),
            &event,
        );
        assert_eq!(out["payload"]["team"], "platform");
        assert_eq!(out["payload"]["meta"], json!({"tags": ["a", "b"]}));
        assert_eq!(out["payload"]["pr"], json!({"number": 1, "reviewed": true}));
        assert_eq!(out["provenance"]["routed_by"], "orgloop");
        assert_eq!(
            out["provenance"]["author"], "test-author",
            "the rest is kept"
        );
        assert_eq!(out["id"], event.id(), "same event, same id");
        assert!(
            event.get("payload.team").is_none(),
            "the input is not changed"
        );
    }

    #[test]
    fn set_replaces_scalars_in_the_way_and_indexes_arrays() {
        let event = test_event(json!({"pr": 5, "labels": ["x", "y"]}));
        let out = enriched(
            json!({"set": {"payload.pr.number": 5, "payload.labels.1": "z"}}),
            &event,
        );
        assert_eq!(out["payload"]["pr"], json!({"number": 5}));
        assert_eq!(out["payload"]["labels"], json!(["x", "z"]));

        let err = enrich(json!({"set": {"payload.labels.2": "w"}}))
            .apply(&event)
            .unwrap_err();
        assert!(
            err.message().contains("cannot set payload.labels.2"),
            "{err}"
        );
        let err = enrich(json!({"set": {"payload.labels.first": "w"}}))
            .apply(&event)
            .unwrap_err();
        assert!(
            err.message()
                .contains("\"first\" is not one of their indexes"),
            "{err}"
        );
    }

    #[test]
    fn copy_copies_and_skips_missing_sources() {
        let event =
            test_event(json!({"pull_request": {"number": 42, "user": {"login": "al"}}, "n": null}));
        let out = enriched(
            json!({"copy": {
                "payload.pr_number": "payload.pull_request.number",
                "provenance.author": "payload.pull_request.user.login",
                "payload.missing_copy": "payload.nope",
                "payload.null_copy": "payload.n",
            }}),
            &event,
        );
        assert_eq!(out["payload"]["pr_number"], 42);
        assert_eq!(out["provenance"]["author"], "al");
        assert!(out["payload"].get("missing_copy").is_none());
        assert_eq!(out["payload"]["null_copy"], Json::Null, "null is a value");
    }

    #[test]
    fn copy_sees_what_set_wrote() {
        let out = enriched(
            json!({"set": {"payload.team": "infra"}, "copy": {"payload.owner": "payload.team"}}),
            &test_event(json!({})),
        );
        assert_eq!(out["payload"]["owner"], "infra");
    }

    #[test]
    fn nothing_to_do_passes() {
        let event = test_event(json!({}));
        assert_eq!(enrich(Json::Null).apply(&event).unwrap(), Verdict::Pass);
        assert_eq!(enrich(json!({})).apply(&event).unwrap(), Verdict::Pass);
        assert_eq!(
            enrich(json!({"copy": {"payload.a": "payload.b"}}))
                .apply(&event)
                .unwrap(),
            Verdict::Pass,
            "a copy from a missing field changes nothing"
        );
    }

    #[test]
    fn results_must_stay_valid_events() {
        let err = enrich(json!({"set": {"id": "not-an-event-id"}}))
            .apply(&test_event(json!({})))
            .unwrap_err();
        assert!(
            err.message().contains("does not start with \"evt_\""),
            "{err}"
        );
        let out = enriched(
            json!({"set": {"type": "message.received"}}),
            &test_event(json!({})),
        );
        assert_eq!(out["type"], "message.received");
    }

    #[test]
    fn compute_is_refused_with_a_reason() {
        let err = config_error(json!({"compute": {"payload.big": "payload.n > 3"}}));
        assert!(err.contains("`compute` is not supported"), "{err}");
    }

    #[test]
    fn bad_config_is_refused() {
        let err = config_error(json!({"add": {"payload.x": 1}}));
        assert!(err.contains("unknown field `add`"), "{err}");
        let err = config_error(json!({"copy": {"payload.x": 1}}));
        assert!(err.contains("invalid type"), "{err}");
        let err = config_error(json!({"set": {"payload..x": 1}}));
        assert!(
            err.contains("set: \"payload..x\" is not a dot path"),
            "{err}"
        );
        let err = config_error(json!({"copy": {"payload.x": ""}}));
        assert!(err.contains("copy: \"\" is not a dot path"), "{err}");
    }
}
