//! `{{dot.path}}` placeholders in a route's `then.config`, filled from the event at delivery.
//! As upstream: only top-level string values are interpolated, a missing path becomes `""`, and
//! non-strings pass through unchanged. A string that is exactly one placeholder keeps the value's
//! type (a number stays a number), which upstream would have turned into text.

use orgloop_plugin_sdk::Event;
use serde_json::{Map, Value as Json};

/// Fills the placeholders of `config` from `event`.
pub fn interpolate(config: &Map<String, Json>, event: &Event) -> Map<String, Json> {
    config
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Json::String(s) if s.contains("{{") => fill(s, event),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn fill(template: &str, event: &Event) -> Json {
    let trimmed = template.trim();
    if let Some(path) = trimmed
        .strip_prefix("{{")
        .and_then(|s| s.strip_suffix("}}"))
    {
        if !path.contains("{{") && !path.contains("}}") {
            return event
                .get(path.trim())
                .map_or(Json::String(String::new()), |v| v.to_json());
        }
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Json::String(out);
        };
        if let Some(v) = event.get(after[..end].trim()) {
            out.push_str(&v.to_text());
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Json::String(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orgloop_plugin_sdk::EventType;
    use serde_json::json;

    #[test]
    fn fills_strings_keeps_types_and_blanks_missing() {
        let e = Event::builder("gh", EventType::ResourceChanged)
            .payload(json!({"pr": 42, "repo": "o/r"}))
            .build();
        let config = json!({"key": "pr:{{payload.repo}}#{{payload.pr}}", "n": "{{payload.pr}}", "gone": "x{{payload.nope}}y", "flag": true})
            .as_object()
            .unwrap()
            .clone();
        let out = interpolate(&config, &e);
        assert_eq!(
            Json::Object(out),
            json!({"key": "pr:o/r#42", "n": 42, "gone": "xy", "flag": true})
        );
    }
}
