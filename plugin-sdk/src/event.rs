//! The orgloop event, as in the upstream schema: `id` (`evt_…`), `timestamp` (ISO 8601 UTC),
//! `source`, `type`, `provenance`, `payload`, and an optional `trace_id` (`trc_…`).

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use abi_stable::StableAbi;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value as Json};

use crate::value::{Doc, ValueRef};

/// The three event types of the orgloop schema. They are only ever added to, never changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something changed in an external system: a PR, a ticket, a CI run, a deploy.
    ResourceChanged,
    /// An actor's session ended. Deliberately neutral: the payload says how it went.
    ActorStopped,
    /// A human or a system sent a message or a trigger.
    MessageReceived,
}

impl EventType {
    /// Every type, in schema order.
    pub const ALL: [EventType; 3] = [
        EventType::ResourceChanged,
        EventType::ActorStopped,
        EventType::MessageReceived,
    ];

    /// The wire name, e.g. `resource.changed`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ResourceChanged => "resource.changed",
            EventType::ActorStopped => "actor.stopped",
            EventType::MessageReceived => "message.received",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fields read for every event, stored first so that reading them is quick.
const HEADER: [&str; 5] = ["type", "source", "id", "trace_id", "timestamp"];

/// Why a JSON value is not a valid event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventError(pub String);

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid event: {}", self.0)
    }
}

impl std::error::Error for EventError {}

/// An event. Cheap to read in place (see [`Doc`]); to change one, go through
/// [`to_json`](Event::to_json) and [`from_json`](Event::from_json), or use [`Event::with`].
///
/// ```
/// use orgloop_plugin_sdk::{Event, EventType};
/// use serde_json::json;
///
/// let event = Event::builder("github", EventType::ResourceChanged)
///     .platform("github")
///     .provenance("author", "alice")
///     .payload(json!({"pr_number": 42}))
///     .build();
/// assert!(event.id().starts_with("evt_"));
/// assert_eq!(event.get("payload.pr_number").and_then(|v| v.as_i64()), Some(42));
/// assert_eq!(event.str_field("provenance.author"), Some("alice"));
/// ```
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq)]
pub struct Event {
    doc: Doc,
}

impl Event {
    /// Starts an event from `source` (the source id) of the given type, with a fresh id, trace id
    /// and timestamp.
    pub fn builder(source: &str, event_type: EventType) -> EventBuilder {
        EventBuilder {
            source: source.to_owned(),
            event_type,
            provenance: Map::new(),
            payload: Json::Object(Map::new()),
            trace_id: None,
            timestamp: None,
        }
    }

    /// Validates a JSON value as an event, as upstream's `validateEvent` does: `id` starts with
    /// `evt_`, `timestamp` is a string, `source` a non-empty string, `type` one of the three, and
    /// `provenance` an object with a string `platform`. The payload defaults to `{}`.
    pub fn from_json(mut value: Json) -> Result<Event, EventError> {
        let obj = value
            .as_object_mut()
            .ok_or_else(|| EventError("an event is a JSON object".into()))?;
        let text = |obj: &Map<String, Json>, key: &str| {
            obj.get(key).and_then(Json::as_str).map(str::to_owned)
        };
        match text(obj, "id") {
            Some(id) if id.starts_with("evt_") => {}
            Some(id) => {
                return Err(EventError(format!(
                    "id {id:?} does not start with \"evt_\""
                )))
            }
            None => return Err(EventError("missing string field \"id\"".into())),
        }
        if text(obj, "timestamp").is_none() {
            return Err(EventError("missing string field \"timestamp\"".into()));
        }
        if text(obj, "source").is_none_or(|s| s.is_empty()) {
            return Err(EventError(
                "missing non-empty string field \"source\"".into(),
            ));
        }
        match text(obj, "type") {
            Some(t) if EventType::parse(&t).is_some() => {}
            other => {
                return Err(EventError(format!(
                    "type {other:?} is not one of resource.changed, actor.stopped, message.received"
                )))
            }
        }
        if !obj
            .get("provenance")
            .and_then(|p| p.get("platform"))
            .is_some_and(Json::is_string)
        {
            return Err(EventError(
                "provenance must be an object with a string \"platform\"".into(),
            ));
        }
        match obj.get("trace_id") {
            None | Some(Json::String(_)) => {}
            Some(Json::Null) => {
                obj.remove("trace_id");
            }
            Some(_) => return Err(EventError("trace_id must be a string".into())),
        }
        obj.entry("payload")
            .or_insert_with(|| Json::Object(Map::new()));
        Ok(Event {
            doc: Doc::from_json_keys_first(&value, &HEADER),
        })
    }

    /// The event as a `serde_json::Value`.
    pub fn to_json(&self) -> Json {
        self.doc.to_json()
    }

    /// Returns a copy changed by `edit`, validated again. The usual way for a transform to modify an
    /// event.
    ///
    /// ```
    /// # use orgloop_plugin_sdk::{Event, EventType};
    /// let event = Event::builder("s", EventType::ResourceChanged).platform("p").build();
    /// let tagged = event.with(|v| v["payload"]["tag"] = "x".into()).unwrap();
    /// assert_eq!(tagged.str_field("payload.tag"), Some("x"));
    /// ```
    pub fn with(&self, edit: impl FnOnce(&mut Json)) -> Result<Event, EventError> {
        let mut value = self.to_json();
        edit(&mut value);
        Event::from_json(value)
    }

    fn top(&self, key: &str) -> &str {
        self.doc
            .root()
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    }

    /// The `evt_…` id.
    pub fn id(&self) -> &str {
        self.top("id")
    }

    /// The id of the source that produced the event.
    pub fn source(&self) -> &str {
        self.top("source")
    }

    /// The type as written on the wire.
    pub fn type_name(&self) -> &str {
        self.top("type")
    }

    /// The type.
    pub fn event_type(&self) -> EventType {
        EventType::parse(self.type_name()).unwrap_or(EventType::ResourceChanged)
    }

    /// The ISO 8601 timestamp.
    pub fn timestamp(&self) -> &str {
        self.top("timestamp")
    }

    /// The `trc_…` trace id, if any.
    pub fn trace_id(&self) -> Option<&str> {
        self.doc.root().get("trace_id").and_then(|v| v.as_str())
    }

    /// The whole event as a value, for walking it.
    pub fn root(&self) -> ValueRef<'_> {
        self.doc.root()
    }

    /// The value at a dot path from the event root, e.g. `provenance.author` or `payload.pr.number`.
    pub fn get(&self, path: &str) -> Option<ValueRef<'_>> {
        self.doc.root().path(path)
    }

    /// The string at a dot path, if there is a string there.
    pub fn str_field(&self, path: &str) -> Option<&str> {
        self.get(path).and_then(|v| v.as_str())
    }

    /// The payload object.
    pub fn payload(&self) -> ValueRef<'_> {
        self.doc
            .root()
            .get("payload")
            .unwrap_or_else(|| self.doc.root())
    }

    /// A deep copy allocated by the caller's code; see [`Doc::rehome`]. The host uses it on every
    /// event a plugin hands over.
    pub fn rehome(&self) -> Event {
        Event {
            doc: self.doc.rehome(),
        }
    }

    /// Parses an event from JSON text and validates it.
    pub fn parse(text: &[u8]) -> Result<Event, EventError> {
        let value: Json = serde_json::from_slice(text).map_err(|e| EventError(e.to_string()))?;
        Event::from_json(value)
    }

    /// Wraps an already validated document. The host uses it on its ingest path, where it builds
    /// the document itself.
    #[doc(hidden)]
    pub fn from_doc_unchecked(doc: Doc) -> Event {
        Event { doc }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.doc, f)
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.doc.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        Event::from_json(Json::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Builds an [`Event`]; see [`Event::builder`].
#[derive(Clone, Debug)]
pub struct EventBuilder {
    source: String,
    event_type: EventType,
    provenance: Map<String, Json>,
    payload: Json,
    trace_id: Option<String>,
    timestamp: Option<SystemTime>,
}

impl EventBuilder {
    /// `provenance.platform`, e.g. `github`. Defaults to the source id.
    pub fn platform(self, platform: &str) -> Self {
        self.provenance("platform", platform)
    }

    /// Sets any provenance field (`platform_event`, `author`, `author_type`, ...).
    pub fn provenance(mut self, key: &str, value: impl Into<Json>) -> Self {
        self.provenance.insert(key.to_owned(), value.into());
        self
    }

    /// The payload (an object by convention).
    pub fn payload(mut self, payload: Json) -> Self {
        self.payload = payload;
        self
    }

    /// Sets the timestamp (default: now, by the system clock). Use `host.now()` where the host's
    /// clock should rule, as in tests with a virtual clock.
    pub fn timestamp(mut self, at: SystemTime) -> Self {
        self.timestamp = Some(at);
        self
    }

    /// Continues an existing trace instead of starting a new one.
    pub fn trace_id(mut self, trace_id: &str) -> Self {
        self.trace_id = Some(trace_id.to_owned());
        self
    }

    /// Finishes the event with a fresh id and the current time.
    pub fn build(mut self) -> Event {
        self.provenance
            .entry("platform")
            .or_insert_with(|| Json::String(self.source.clone()));
        let value = serde_json::json!({
            "id": new_event_id(),
            "timestamp": format_timestamp(self.timestamp.unwrap_or_else(SystemTime::now)),
            "source": self.source,
            "type": self.event_type.as_str(),
            "provenance": self.provenance,
            "payload": self.payload,
            "trace_id": self.trace_id.unwrap_or_else(new_trace_id),
        });
        Event {
            doc: Doc::from_json_keys_first(&value, &HEADER),
        }
    }
}

/// 64 random-enough bits for ids. `RandomState` draws its keys from the OS once per thread and
/// keeps them in a plain `Cell` (no destructor, so it never pins a plugin library); the counter and
/// the clock make every call distinct.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// A fresh `evt_` + 16 hex digits id.
pub fn new_event_id() -> String {
    format!("evt_{:016x}", random_u64())
}

/// A fresh `trc_` + 16 hex digits trace id.
pub fn new_trace_id() -> String {
    format!("trc_{:016x}", random_u64())
}

/// Formats a time as ISO 8601 UTC with milliseconds, like JavaScript's `toISOString()`.
pub fn format_timestamp(t: SystemTime) -> String {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil-from-days, after Howard Hinnant's public-domain algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn timestamps_match_javascript() {
        let t = UNIX_EPOCH + Duration::from_millis(1_770_583_620_123);
        assert_eq!(format_timestamp(t), "2026-02-08T20:47:00.123Z");
        assert_eq!(format_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn validation_follows_upstream() {
        let good = json!({"id": "evt_1", "timestamp": "t", "source": "s", "type": "actor.stopped",
                          "provenance": {"platform": "p"}});
        let e = Event::from_json(good.clone()).unwrap();
        assert_eq!(e.event_type(), EventType::ActorStopped);
        assert!(e.payload().is_empty());
        for (key, bad) in [
            ("id", json!("x_1")),
            ("type", json!("other")),
            ("source", json!("")),
            ("provenance", json!({})),
        ] {
            let mut v = good.clone();
            v[key] = bad;
            assert!(Event::from_json(v).is_err(), "{key} should be rejected");
        }
    }

    #[test]
    fn ids_are_distinct_and_well_formed() {
        let a = new_event_id();
        let b = new_event_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        assert!(new_trace_id().starts_with("trc_"));
    }
}
