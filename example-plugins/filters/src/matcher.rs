//! Field matching shared by `filter` and `fault`: a map of event dot paths to expected values,
//! compiled once when the transform is built and then checked against each event.
//!
//! The value rules, upstream OrgLoop's (`transforms/filter/src/matcher.ts`) with two deliberate
//! differences, are documented for users in the crate docs (`lib.rs`).
//!
//! Plain equality is checked in place on the event's flat document, without allocating: the
//! filter runs on the daemon's hot path for every event of every route that lists it.

use orgloop_plugin_sdk::serde_json::{Map, Value as Json};
use orgloop_plugin_sdk::{Event, Host, Kind, PluginError, ValueRef};
use regex_lite::{Regex, RegexBuilder};

/// One compiled expected value.
#[derive(Debug)]
enum Expected {
    /// `null`: the field is null or missing.
    Missing,
    /// Strict equality with this value.
    Equals(Json),
    /// A `/re/flags` pattern.
    Regex(Regex),
    /// Any of these.
    AnyOf(Vec<Expected>),
}

impl Expected {
    /// Compiles a value as written at the top level of a criteria map: like [`Self::item`], plus
    /// upstream's comma shorthand (`"alice, bob"` means either).
    fn top(where_: &str, value: &Json, host: &Host) -> Expected {
        match value {
            Json::String(s) if s.contains(',') && regex_parts(s).is_none() => Expected::AnyOf(
                s.split(',')
                    .map(|part| Self::item(where_, &Json::String(part.trim().to_owned()), host))
                    .collect(),
            ),
            _ => Self::item(where_, value, host),
        }
    }

    /// Compiles a value inside an array (or a comma part).
    fn item(where_: &str, value: &Json, host: &Host) -> Expected {
        match value {
            Json::Null => Expected::Missing,
            Json::Array(items) => {
                Expected::AnyOf(items.iter().map(|v| Self::item(where_, v, host)).collect())
            }
            Json::String(s) => match regex_parts(s) {
                Some((body, flags)) => match compile_regex(body, flags) {
                    Ok(re) => Expected::Regex(re),
                    Err(why) => {
                        host.warn(&format!(
                            "{where_}: {s:?} is not a usable regex ({why}); comparing it as plain text"
                        ));
                        Expected::Equals(value.clone())
                    }
                },
                None => Expected::Equals(value.clone()),
            },
            _ => Expected::Equals(value.clone()),
        }
    }

    fn matches(&self, actual: Option<ValueRef<'_>>) -> bool {
        match self {
            Expected::Missing => actual.is_none_or(|v| v.is_null()),
            Expected::Equals(want) => actual.is_some_and(|v| v.equals(want)),
            Expected::Regex(re) => actual.is_some_and(|v| match v.kind() {
                Kind::String => re.is_match(v.as_str().unwrap_or_default()),
                Kind::Number | Kind::Bool | Kind::Null => re.is_match(&v.to_text()),
                Kind::Array | Kind::Object => false,
            }),
            Expected::AnyOf(options) => options.iter().any(|o| o.matches(actual)),
        }
    }
}

/// Splits `/body/flags` as upstream does: starts with `/`, and the last `/` is not the first.
fn regex_parts(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix('/')?;
    let last = rest.rfind('/')?;
    Some((&rest[..last], &rest[last + 1..]))
}

/// Builds the regex with JavaScript's flags that make sense for a one-off test.
fn compile_regex(body: &str, flags: &str) -> Result<Regex, String> {
    let mut builder = RegexBuilder::new(body);
    let mut seen = String::new();
    for flag in flags.chars() {
        if seen.contains(flag) {
            return Err(format!("flag {flag:?} given twice"));
        }
        seen.push(flag);
        match flag {
            'i' => builder.case_insensitive(true),
            'm' => builder.multi_line(true),
            's' => builder.dot_matches_new_line(true),
            // Global and unicode change nothing for a yes/no test of one string.
            'g' | 'u' => &mut builder,
            other => return Err(format!("unsupported flag {other:?}")),
        };
    }
    builder.build().map_err(|e| e.to_string())
}

/// One `path: expected` pair.
#[derive(Debug)]
struct Rule {
    path: String,
    expected: Expected,
}

/// A compiled criteria map (`match`, `exclude`, `panic_when`, ...).
#[derive(Debug, Default)]
pub struct Criteria {
    rules: Vec<Rule>,
}

impl Criteria {
    /// Compiles `map`; `section` names it in error and warning messages (e.g. `match`).
    pub fn compile(
        section: &str,
        map: &Map<String, Json>,
        host: &Host,
    ) -> Result<Self, PluginError> {
        let rules = map
            .iter()
            .map(|(path, value)| {
                if path.is_empty() || path.split('.').any(str::is_empty) {
                    return Err(PluginError::new(format!(
                        "{section}: {path:?} is not a dot path (e.g. payload.pr.number)"
                    )));
                }
                Ok(Rule {
                    path: path.clone(),
                    expected: Expected::top(&format!("{section}.{path}"), value, host),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Criteria { rules })
    }

    /// Whether there are no rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every rule holds (true when there are none).
    pub fn all(&self, event: &Event) -> bool {
        self.rules
            .iter()
            .all(|r| r.expected.matches(event.get(&r.path)))
    }

    /// At least one rule holds (false when there are none).
    pub fn any(&self, event: &Event) -> bool {
        self.rules
            .iter()
            .any(|r| r.expected.matches(event.get(&r.path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orgloop_plugin_sdk::serde_json::json;
    use orgloop_plugin_sdk::testing::{test_event, TestHost};
    use orgloop_plugin_sdk::Level;

    fn criteria(host: &TestHost, map: Json) -> Criteria {
        let Json::Object(map) = map else { panic!() };
        Criteria::compile("match", &map, &host.host()).unwrap()
    }

    /// Whether `{path: expected}` holds for an event with `payload`.
    fn holds(payload: Json, path: &str, expected: Json) -> bool {
        let host = TestHost::new();
        criteria(&host, json!({ path: expected })).all(&test_event(payload))
    }

    #[test]
    fn strings_compare_exactly() {
        assert!(holds(json!({"s": "open"}), "payload.s", json!("open")));
        assert!(!holds(json!({"s": "Open"}), "payload.s", json!("open")));
        assert!(!holds(json!({"s": "opened"}), "payload.s", json!("open")));
        assert!(!holds(json!({"s": 1}), "payload.s", json!("1")));
        assert!(!holds(json!({}), "payload.s", json!("open")));
    }

    #[test]
    fn numbers_and_booleans_compare_strictly() {
        assert!(holds(json!({"n": 42}), "payload.n", json!(42)));
        assert!(holds(json!({"n": 42.0}), "payload.n", json!(42)));
        assert!(!holds(json!({"n": "42"}), "payload.n", json!(42)));
        assert!(!holds(json!({"n": 43}), "payload.n", json!(42)));
        assert!(holds(json!({"b": false}), "payload.b", json!(false)));
        assert!(!holds(json!({"b": "false"}), "payload.b", json!(false)));
        assert!(!holds(json!({"b": 0}), "payload.b", json!(false)));
    }

    #[test]
    fn objects_compare_by_content() {
        let payload = json!({"o": {"a": 1, "b": [1, 2]}});
        assert!(holds(
            payload.clone(),
            "payload.o",
            json!({"b": [1, 2], "a": 1})
        ));
        assert!(!holds(payload, "payload.o", json!({"a": 1})));
    }

    #[test]
    fn null_matches_null_or_missing() {
        assert!(holds(json!({"x": null}), "payload.x", json!(null)));
        assert!(holds(json!({}), "payload.x", json!(null)));
        assert!(holds(json!({}), "payload.deep.er.x", json!(null)));
        assert!(!holds(json!({"x": 0}), "payload.x", json!(null)));
        assert!(!holds(json!({"x": ""}), "payload.x", json!(null)));
    }

    #[test]
    fn regexes_with_flags() {
        assert!(holds(
            json!({"t": "fix: crash"}),
            "payload.t",
            json!("/^fix/")
        ));
        assert!(!holds(
            json!({"t": "FIX: crash"}),
            "payload.t",
            json!("/^fix/")
        ));
        assert!(holds(
            json!({"t": "FIX: crash"}),
            "payload.t",
            json!("/^fix/i")
        ));
        assert!(holds(
            json!({"t": "a\nfix"}),
            "payload.t",
            json!("/^fix$/m")
        ));
        assert!(!holds(json!({"t": "a\nb"}), "payload.t", json!("/a.b/")));
        assert!(holds(json!({"t": "a\nb"}), "payload.t", json!("/a.b/s")));
        assert!(holds(json!({"t": "abc"}), "payload.t", json!("/B/gi")));
        // Paths with slashes inside the body: the last slash ends it.
        assert!(holds(
            json!({"p": "src/main.rs"}),
            "payload.p",
            json!("/^src/.*\\.rs$/")
        ));
        // Numbers and booleans are tested as text, as JavaScript's String(x) would.
        assert!(holds(json!({"n": 4711}), "payload.n", json!("/^47/")));
        assert!(holds(json!({"b": true}), "payload.b", json!("/^tr/")));
        // Missing fields, objects and arrays never match a regex.
        assert!(!holds(json!({}), "payload.n", json!("/.*/")));
        assert!(!holds(json!({"o": {"a": 1}}), "payload.o", json!("/.*/")));
        assert!(!holds(json!({"a": ["x"]}), "payload.a", json!("/x/")));
        // The empty regex matches any string.
        assert!(holds(json!({"t": ""}), "payload.t", json!("//")));
    }

    #[test]
    fn invalid_regexes_fall_back_to_exact_with_a_warning() {
        let host = TestHost::new();
        let c = criteria(&host, json!({"payload.t": "/a(/"}));
        assert!(c.all(&test_event(json!({"t": "/a(/"}))));
        assert!(!c.all(&test_event(json!({"t": "a("}))));
        let logs = host.logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].0, Level::Warn);
        assert!(logs[0].1.contains("match.payload.t") && logs[0].1.contains("plain text"));

        // An unknown or repeated flag makes the regex invalid, as in JavaScript.
        assert!(holds(json!({"t": "/x/q"}), "payload.t", json!("/x/q")));
        assert!(!holds(json!({"t": "x"}), "payload.t", json!("/x/q")));
        assert!(!holds(json!({"t": "x"}), "payload.t", json!("/x/ii")));
        // Not regex-shaped at all: a lone slash, or no closing slash.
        assert!(holds(json!({"t": "/"}), "payload.t", json!("/")));
        assert!(holds(json!({"t": "/abc"}), "payload.t", json!("/abc")));
    }

    #[test]
    fn arrays_mean_any_of() {
        let any = json!(["alice", 7, null, "/^bot-/"]);
        assert!(holds(json!({"a": "alice"}), "payload.a", any.clone()));
        assert!(holds(json!({"a": 7}), "payload.a", any.clone()));
        assert!(holds(json!({}), "payload.a", any.clone()));
        assert!(holds(json!({"a": "bot-x"}), "payload.a", any.clone()));
        assert!(!holds(json!({"a": "bob"}), "payload.a", any.clone()));
        assert!(!holds(json!({"a": "7"}), "payload.a", any));
        // Nested arrays flatten; an empty array matches nothing.
        assert!(holds(json!({"a": 2}), "payload.a", json!([1, [2, 3]])));
        assert!(!holds(json!({"a": 2}), "payload.a", json!([])));
        // Items of an array are not split at commas.
        assert!(holds(json!({"a": "x,y"}), "payload.a", json!(["x,y"])));
        assert!(!holds(json!({"a": "x"}), "payload.a", json!(["x,y"])));
    }

    #[test]
    fn commas_split_into_any_of() {
        let value = json!("alice, bob ,/^carol$/i");
        assert!(holds(json!({"a": "alice"}), "payload.a", value.clone()));
        assert!(holds(json!({"a": "bob"}), "payload.a", value.clone()));
        assert!(holds(json!({"a": "CAROL"}), "payload.a", value.clone()));
        assert!(!holds(
            json!({"a": "alice, bob ,/^carol$/i"}),
            "payload.a",
            value.clone()
        ));
        assert!(!holds(json!({"a": " bob "}), "payload.a", value));
        // A regex containing a comma stays one regex.
        assert!(holds(json!({"a": "xxx"}), "payload.a", json!("/^x{1,3}$/")));
        assert!(!holds(
            json!({"a": "xxxx"}),
            "payload.a",
            json!("/^x{1,3}$/")
        ));
    }

    #[test]
    fn paths_reach_anywhere_in_the_event() {
        let e = test_event(json!({"pr": {"number": 42, "labels": ["bug", "p1"]}}));
        let host = TestHost::new();
        let c = criteria(
            &host,
            json!({
                "type": "resource.changed",
                "source": "test-source",
                "provenance.author_type": "team_member",
                "payload.pr.number": 42,
                "payload.pr.labels.1": "p1",
            }),
        );
        assert!(c.all(&e));
        let c = criteria(
            &host,
            json!({"payload.pr.number.x": null, "payload.pr.labels.5": null}),
        );
        assert!(
            c.all(&e),
            "paths through scalars and past array ends are missing"
        );
    }

    #[test]
    fn all_and_any() {
        let host = TestHost::new();
        let e = test_event(json!({"a": 1, "b": 2}));
        let c = criteria(&host, json!({"payload.a": 1, "payload.b": 3}));
        assert!(!c.all(&e));
        assert!(c.any(&e));
        let none = Criteria::default();
        assert!(none.is_empty() && none.all(&e) && !none.any(&e));
    }

    #[test]
    fn bad_paths_are_config_errors() {
        let host = TestHost::new().host();
        for path in ["", "payload..x", ".payload", "payload."] {
            let mut map = Map::new();
            map.insert(path.into(), json!(1));
            let err = Criteria::compile("exclude", &map, &host).unwrap_err();
            let err = err.message();
            assert!(
                err.starts_with("exclude: ") && err.contains("not a dot path"),
                "{err}"
            );
        }
    }
}
