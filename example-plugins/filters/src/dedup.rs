//! The `dedup` transform: drops an event when an event with the same key passed within the window.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use orgloop_plugin_sdk::prelude::*;
use orgloop_plugin_sdk::serde_json;

use crate::duration;

/// The config of [`Dedup`]. Unknown keys are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Dot paths whose values together identify an event. Missing or `null` fields count as `""`.
    #[serde(default)]
    key: Option<Vec<String>>,
    /// Upstream's alias of `key`; `key` wins when both are given.
    #[serde(default)]
    fields: Option<Vec<String>>,
    /// How long a key is remembered (`30s`, `5m`, `1h`, ...).
    #[serde(default = "default_window", deserialize_with = "duration::deserialize")]
    window: Duration,
    /// Upstream's store choice; `memory`, its only value, is accepted for compatibility.
    #[serde(default)]
    #[allow(dead_code)] // Read only to validate it.
    store: Option<Store>,
    /// Accepted for compatibility with upstream, which ignores it too.
    #[serde(default)]
    #[allow(dead_code)] // Read only to validate it.
    track_delivery: Option<bool>,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            key: None,
            fields: None,
            window: default_window(),
            store: None,
            track_delivery: None,
        }
    }
}

fn default_window() -> Duration {
    Duration::from_secs(300)
}

/// Where the window is kept: only in memory.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Store {
    Memory,
}

/// The `dedup` transform: drops an event when an event with the same key passed within the window.
///
/// ```yaml
/// config:
///   key: [source, payload.pr.number, payload.review_state]   # default: [source, type, id]
///   window: 10m                                              # default: 5m
/// ```
///
/// The window is fixed from the first occurrence (a duplicate does not extend it), as upstream. Time
/// is the host's clock, so a test host can move it.
///
/// **Memory.** Keys are stored as 128-bit hashes (16 bytes plus the time), never as the field
/// values, so a large field costs nothing extra. Expired entries are swept during `apply` — no
/// timer or thread — whenever `max(window, 10s)` has passed since the last sweep, or sooner when
/// the table has doubled since then. So the table holds at most the keys seen within about one
/// window plus one sweep interval, and never more than twice the live keys (plus a small floor).
/// The state lives in the object: a reload that rebuilds the transform starts with an empty
/// window, one that carries it over keeps it.
pub struct Dedup {
    key: Vec<String>,
    window_ms: i64,
    /// Two independently keyed hashers make a 128-bit key: collisions (which would drop a
    /// distinct event) are out of reach, and the random keys defeat crafted collisions.
    hashers: (RandomState, RandomState),
    seen: Mutex<Seen>,
    host: Host,
}

/// The remembered keys and when the next sweep is due.
#[derive(Debug, Default)]
struct Seen {
    /// Key hash → when it first passed (ms since the epoch, host clock).
    first_at: HashMap<u128, i64>,
    next_sweep_ms: i64,
    sweep_above_len: usize,
}

/// The table may grow to this many entries before size alone triggers a sweep.
const MIN_SWEEP_LEN: usize = 4096;
/// Sweep at least this often (upstream's cleanup interval floor), and at least once per window.
const MIN_SWEEP_INTERVAL_MS: i64 = 10_000;

impl Seen {
    fn sweep_if_due(&mut self, now: i64, window_ms: i64) {
        if now < self.next_sweep_ms && self.first_at.len() <= self.sweep_above_len {
            return;
        }
        self.first_at.retain(|_, at| now - *at < window_ms);
        self.next_sweep_ms = now + window_ms.max(MIN_SWEEP_INTERVAL_MS);
        self.sweep_above_len = (2 * self.first_at.len()).max(MIN_SWEEP_LEN);
    }
}

impl Transform for Dedup {
    /// `Option`, so that no config at all means the defaults.
    type Config = Option<DedupConfig>;

    const DESCRIPTION: &'static str =
        "Drops events whose key fields were already seen within a time window";

    fn new(config: Self::Config, host: Host) -> Result<Self, PluginError> {
        let config = config.unwrap_or_default();
        let key = config
            .key
            .or(config.fields)
            .unwrap_or_else(|| vec!["source".into(), "type".into(), "id".into()]);
        if key.is_empty() {
            return Err(PluginError::new(
                "key: list at least one field (an empty key would make every event a duplicate)",
            ));
        }
        if let Some(bad) = key
            .iter()
            .find(|p| p.is_empty() || p.split('.').any(str::is_empty))
        {
            return Err(PluginError::new(format!(
                "key: {bad:?} is not a dot path (e.g. payload.pr.number)"
            )));
        }
        Ok(Dedup {
            key,
            window_ms: i64::try_from(config.window.as_millis()).unwrap_or(i64::MAX),
            hashers: (RandomState::new(), RandomState::new()),
            seen: Mutex::new(Seen::default()),
            host,
        })
    }

    fn apply(&self, event: &Event, _ctx: &TransformCtx<'_>) -> Result<Verdict, PluginError> {
        let key = self.key_of(event);
        let now = self
            .host
            .now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // Nothing below can panic, so a poisoned lock can only come from a panic elsewhere in the
        // same call; the table is still consistent.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.sweep_if_due(now, self.window_ms);
        match seen.first_at.get(&key) {
            Some(&at) if now - at < self.window_ms => Ok(Verdict::Drop),
            _ => {
                seen.first_at.insert(key, now);
                Ok(Verdict::Pass)
            }
        }
    }
}

impl Dedup {
    /// Hashes the key fields without building a string: each field's text (strings as they are,
    /// other values as compact JSON, missing or `null` as `""`) followed by its length, so that
    /// `["ab", "c"]` and `["a", "bc"]` differ.
    fn key_of(&self, event: &Event) -> u128 {
        let mut h = KeyHasher {
            a: self.hashers.0.build_hasher(),
            b: self.hashers.1.build_hasher(),
            len: 0,
        };
        for path in &self.key {
            match event.get(path) {
                Some(v) if v.is_null() => {}
                Some(v) => match v.as_str() {
                    Some(s) => h.feed(s.as_bytes()),
                    // Writing into the hasher cannot fail.
                    None => serde_json::to_writer(&mut h, &v).unwrap_or(()),
                },
                None => {}
            }
            h.end_field();
        }
        (u128::from(h.a.finish()) << 64) | u128::from(h.b.finish())
    }
}

/// Feeds bytes to both hashers, counting them per field.
struct KeyHasher<H> {
    a: H,
    b: H,
    len: u64,
}

impl<H: Hasher> KeyHasher<H> {
    fn feed(&mut self, bytes: &[u8]) {
        self.a.write(bytes);
        self.b.write(bytes);
        self.len += bytes.len() as u64;
    }

    fn end_field(&mut self) {
        self.a.write_u64(self.len);
        self.b.write_u64(self.len);
        self.len = 0;
    }
}

impl<H: Hasher> io::Write for KeyHasher<H> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.feed(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orgloop_plugin_sdk::testing::{test_event, TestHost, TestTransform};
    use orgloop_plugin_sdk::EventType;

    fn dedup(host: &TestHost, config: Json) -> TestTransform {
        host.transform::<Dedup>(config).unwrap()
    }

    fn config_error(config: Json) -> String {
        match TestHost::new().transform::<Dedup>(config) {
            Ok(_) => panic!("config should be refused"),
            Err(e) => e.message().to_owned(),
        }
    }

    #[test]
    fn default_key_is_source_type_id() {
        let host = TestHost::new();
        let t = dedup(&host, Json::Null);
        let e = test_event(json!({"x": 1}));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Pass);
        assert_eq!(t.apply(&e).unwrap(), Verdict::Drop, "same event again");
        assert_eq!(
            t.apply(&test_event(json!({"x": 1}))).unwrap(),
            Verdict::Pass,
            "same content, new id"
        );
    }

    #[test]
    fn custom_key_ignores_other_fields() {
        let host = TestHost::new();
        let t = dedup(&host, json!({"key": ["source", "payload.pr"]}));
        assert_eq!(
            t.apply(&test_event(json!({"pr": 1, "n": 1}))).unwrap(),
            Verdict::Pass
        );
        assert_eq!(
            t.apply(&test_event(json!({"pr": 1, "n": 2}))).unwrap(),
            Verdict::Drop
        );
        assert_eq!(
            t.apply(&test_event(json!({"pr": 2}))).unwrap(),
            Verdict::Pass
        );
        assert_eq!(
            t.apply(&test_event(json!({"pr": "1"}))).unwrap(),
            Verdict::Drop,
            "the key is the field's text, as upstream's String(value)"
        );
        let other_source = Event::builder("github", EventType::ResourceChanged)
            .payload(json!({"pr": 1}))
            .build();
        assert_eq!(t.apply(&other_source).unwrap(), Verdict::Pass);
    }

    #[test]
    fn structured_values_are_part_of_the_key() {
        let host = TestHost::new();
        let t = dedup(&host, json!({"key": ["payload.pr"]}));
        assert_eq!(
            t.apply(&test_event(json!({"pr": {"n": 1}}))).unwrap(),
            Verdict::Pass
        );
        assert_eq!(
            t.apply(&test_event(json!({"pr": {"n": 1}}))).unwrap(),
            Verdict::Drop
        );
        assert_eq!(
            t.apply(&test_event(json!({"pr": {"n": 2}}))).unwrap(),
            Verdict::Pass
        );
        assert_eq!(
            t.apply(&test_event(json!({"pr": [1, 2]}))).unwrap(),
            Verdict::Pass
        );
    }

    #[test]
    fn missing_and_null_fields_count_as_empty() {
        let host = TestHost::new();
        let t = dedup(&host, json!({"key": ["payload.a", "payload.b"]}));
        assert_eq!(
            t.apply(&test_event(json!({"a": "x"}))).unwrap(),
            Verdict::Pass
        );
        assert_eq!(
            t.apply(&test_event(json!({"a": "x", "b": null}))).unwrap(),
            Verdict::Drop
        );
        assert_eq!(
            t.apply(&test_event(json!({"a": "x", "b": ""}))).unwrap(),
            Verdict::Drop
        );
        assert_eq!(t.apply(&test_event(json!({}))).unwrap(), Verdict::Pass);
        assert_eq!(
            t.apply(&test_event(json!({"b": "x"}))).unwrap(),
            Verdict::Pass
        );
    }

    #[test]
    fn field_boundaries_matter() {
        let host = TestHost::new();
        let t = dedup(&host, json!({"key": ["payload.a", "payload.b"]}));
        assert_eq!(
            t.apply(&test_event(json!({"a": "ab", "b": "c"}))).unwrap(),
            Verdict::Pass
        );
        assert_eq!(
            t.apply(&test_event(json!({"a": "a", "b": "bc"}))).unwrap(),
            Verdict::Pass
        );
    }

    #[test]
    fn window_expires_from_the_first_occurrence() {
        let host = TestHost::new();
        let t = dedup(&host, json!({"key": ["payload.n"], "window": "30s"}));
        let e = test_event(json!({"n": 1}));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Pass);
        host.advance(Duration::from_secs(20));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Drop);
        host.advance(Duration::from_millis(9_999));
        assert_eq!(
            t.apply(&e).unwrap(),
            Verdict::Drop,
            "29.999s after the first"
        );
        host.advance(Duration::from_millis(1));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Pass, "30s after the first");
        assert_eq!(t.apply(&e).unwrap(), Verdict::Drop, "a new window started");
    }

    #[test]
    fn default_window_is_five_minutes() {
        let host = TestHost::new();
        let t = dedup(&host, json!({"key": ["payload.n"]}));
        let e = test_event(json!({"n": 1}));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Pass);
        host.advance(Duration::from_secs(299));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Drop);
        host.advance(Duration::from_secs(1));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Pass);
    }

    #[test]
    fn millisecond_and_day_windows() {
        let host = TestHost::new();
        let t = dedup(&host, json!({"key": ["payload.n"], "window": "500ms"}));
        let e = test_event(json!({"n": 1}));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Pass);
        host.advance(Duration::from_millis(499));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Drop);
        host.advance(Duration::from_millis(1));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Pass);

        let t = dedup(&host, json!({"key": ["payload.n"], "window": "1d"}));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Pass);
        host.advance(Duration::from_secs(86_399));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Drop);
        host.advance(Duration::from_secs(1));
        assert_eq!(t.apply(&e).unwrap(), Verdict::Pass);
    }

    #[test]
    fn key_wins_over_fields_and_fields_works_alone() {
        let host = TestHost::new();
        let both = dedup(
            &host,
            json!({"key": ["payload.a"], "fields": ["payload.b"]}),
        );
        assert_eq!(
            both.apply(&test_event(json!({"a": 1, "b": 1}))).unwrap(),
            Verdict::Pass
        );
        assert_eq!(
            both.apply(&test_event(json!({"a": 1, "b": 2}))).unwrap(),
            Verdict::Drop
        );
        let fields = dedup(&host, json!({"fields": ["payload.b"]}));
        assert_eq!(
            fields.apply(&test_event(json!({"a": 1, "b": 1}))).unwrap(),
            Verdict::Pass
        );
        assert_eq!(
            fields.apply(&test_event(json!({"a": 2, "b": 1}))).unwrap(),
            Verdict::Drop
        );
    }

    #[test]
    fn upstream_compatibility_keys_are_accepted() {
        let host = TestHost::new();
        assert!(host
            .transform::<Dedup>(json!({"store": "memory", "track_delivery": true}))
            .is_ok());
        let err = config_error(json!({"store": "redis"}));
        assert!(
            err.contains("unknown variant `redis`") && err.contains("memory"),
            "{err}"
        );
    }

    #[test]
    fn expired_entries_are_swept() {
        // Built directly rather than through the TestHost, to look at its table.
        let host = TestHost::new();
        let d = Dedup::new(
            Some(DedupConfig {
                key: Some(vec!["payload.n".into()]),
                window: Duration::from_secs(60),
                ..DedupConfig::default()
            }),
            host.host(),
        )
        .unwrap();
        let ctx = TransformCtx {
            source: "s",
            route: "r",
            actor: "a",
            module: "m",
        };
        for n in 0..100 {
            d.apply(&test_event(json!({ "n": n })), &ctx).unwrap();
        }
        assert_eq!(d.seen.lock().unwrap().first_at.len(), 100);
        host.advance(Duration::from_secs(61));
        d.apply(&test_event(json!({"n": "new"})), &ctx).unwrap();
        assert_eq!(
            d.seen.lock().unwrap().first_at.len(),
            1,
            "the 100 expired keys are gone"
        );
        // Size alone triggers a sweep too, without waiting for the interval.
        let mut seen = Seen::default();
        seen.sweep_if_due(0, 60_000);
        for k in 0..=MIN_SWEEP_LEN as u128 {
            seen.first_at.insert(k, -60_000);
        }
        seen.sweep_if_due(1, 60_000);
        assert!(seen.first_at.is_empty());
    }

    #[test]
    fn bad_config_is_refused() {
        let err = config_error(json!({"window": "5 minutes"}));
        assert!(err.contains("invalid duration \"5 minutes\""), "{err}");
        let err = config_error(json!({"window": 300}));
        assert!(err.contains("invalid type"), "{err}");
        let err = config_error(json!({"key": []}));
        assert!(err.contains("at least one field"), "{err}");
        let err = config_error(json!({"key": ["payload."]}));
        assert!(err.contains("not a dot path"), "{err}");
        let err = config_error(json!({"keys": ["id"]}));
        assert!(err.contains("unknown field `keys`"), "{err}");
    }
}
