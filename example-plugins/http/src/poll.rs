//! The `poll` source: fetches new events from an HTTP endpoint that speaks a small JSON protocol.

use std::collections::BTreeMap;
use std::time::Duration;

use orgloop_plugin_sdk::prelude::*;
use orgloop_plugin_sdk::serde::{de, Deserializer};
use orgloop_plugin_sdk::EventType;

use crate::auth::Auth;
use crate::duration;
use crate::headers::Headers;
use crate::response::status_error;
use crate::url;

/// The config of [`Poll`]. Unknown keys are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// The endpoint (required; `http://` only).
    url: String,
    /// The `source` of events built from plain objects (default `http-poll`). The daemon stamps
    /// every polled event with the source's id from YAML anyway; this names them elsewhere (in
    /// unit tests, say).
    #[serde(default = "default_source_id")]
    source_id: String,
    /// Extra request headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Bearer or basic authentication.
    #[serde(default)]
    auth: Option<Auth>,
    /// Give up on a request after this long (default `30s`).
    #[serde(
        default = "default_timeout",
        deserialize_with = "duration::deserialize"
    )]
    timeout: Duration,
    /// Belongs to the host; refused with a pointer to where it goes.
    #[serde(default, rename = "interval", deserialize_with = "reject_interval")]
    _interval: (),
}

fn default_source_id() -> String {
    "http-poll".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The host decides when to poll; an `interval` here would silently do nothing.
fn reject_interval<'de, D: Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(de::Error::custom(
        "`interval` is not a key of http::poll's config: set the source's `poll: {interval: 1m}` \
         next to `config:`",
    ))
}

/// What the endpoint answers. Other keys are ignored.
#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    events: Vec<Json>,
    #[serde(default)]
    checkpoint: Json,
}

/// The `poll` source: fetches new events from an HTTP endpoint that speaks a small JSON protocol.
///
/// ```yaml
/// sources:
///   - id: tickets
///     connector: http::poll
///     config:
///       url: http://127.0.0.1:9000/events
///       source_id: tickets               # default: http-poll
///       headers: { x-team: platform }
///       auth: { type: bearer, token: "${TICKETS_TOKEN}" }
///       timeout: 30s
///     poll:
///       interval: 1m                     # the host's setting, not this source's
/// ```
///
/// Each poll is `GET <url>`, with `since=<checkpoint>` added to the query once the endpoint has
/// handed out a checkpoint. The answer must be a JSON object:
///
/// ```json
/// {"events": [{"id": "evt_…", "type": "…", …}, {"ticket": 7, "state": "open"}], "checkpoint": "c42"}
/// ```
///
/// An item with an `id` starting with `evt_` is a complete orgloop event and is validated as one.
/// Any other object becomes the payload of a new `resource.changed` event from `source_id`
/// (a source object is not told its own id by the host, hence the config key). An item that is
/// neither is skipped with an error in the log, rather than failing the whole poll: otherwise one
/// bad item would stop the source for good, since the checkpoint could never move past it. A
/// missing or `null` checkpoint keeps the previous one. A non-2xx answer fails the poll.
pub struct Poll {
    config: PollConfig,
    host: Host,
}

impl Source for Poll {
    type Config = PollConfig;

    const DESCRIPTION: &'static str =
        "Polls an http:// endpoint answering {events: [...], checkpoint} (GET ?since=<checkpoint>)";

    fn new(config: PollConfig, host: Host) -> Result<Self, PluginError> {
        url::check("url", &config.url).map_err(PluginError::new)?;
        if config.source_id.is_empty() {
            return Err(PluginError::new("source_id is empty"));
        }
        if let Some(auth) = &config.auth {
            auth.check().map_err(PluginError::new)?;
        }
        Ok(Poll { config, host })
    }

    async fn poll(&self, checkpoint: Option<String>) -> Result<Polled, PluginError> {
        let url = match &checkpoint {
            Some(since) => url::with_query(&self.config.url, "since", since),
            None => self.config.url.clone(),
        };
        let mut headers = Headers::default();
        headers.set("accept", "application/json");
        headers.extend(&self.config.headers);
        if let Some(auth) = &self.config.auth {
            headers.set("authorization", &auth.header_value());
        }
        let mut request = HttpRequest::get(&url).timeout(self.config.timeout);
        request.headers = headers.into_vec();

        let response = self
            .host
            .http(request)
            .await
            .map_err(|e| e.context(format!("GET {url} failed")))?;
        if !response.is_success() {
            return Err(status_error(&url, &response));
        }
        let page: Page = response.json().map_err(|e| {
            PluginError::new(format!(
                "GET {url}: expected a JSON object {{\"events\": [...], \"checkpoint\": ...}}: {e}"
            ))
        })?;
        let checkpoint = match page.checkpoint {
            Json::Null => None,
            Json::String(s) if s.is_empty() => None,
            Json::String(s) => Some(s),
            Json::Number(n) => Some(n.to_string()),
            other => {
                return Err(PluginError::new(format!(
                    "GET {url}: checkpoint must be a string, not {other}"
                )))
            }
        };
        let events = page
            .events
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| match self.event_from(item) {
                Ok(event) => Some(event),
                Err(why) => {
                    self.host
                        .error(&format!("GET {url}: skipping events[{i}]: {why}"));
                    None
                }
            })
            .collect();
        Ok(Polled { events, checkpoint })
    }
}

impl Poll {
    /// One item of `events`: a full event, or the payload of a new one.
    fn event_from(&self, item: Json) -> Result<Event, String> {
        if !item.is_object() {
            return Err(format!("expected an object, not {item}"));
        }
        let is_event = item
            .get("id")
            .and_then(Json::as_str)
            .is_some_and(|id| id.starts_with("evt_"));
        if is_event {
            return Event::from_json(item).map_err(|e| e.to_string());
        }
        Ok(
            Event::builder(&self.config.source_id, EventType::ResourceChanged)
                .timestamp(self.host.now())
                .payload(item)
                .build(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orgloop_plugin_sdk::testing::{json_response, test_event, TestHost, TestSource};
    use orgloop_plugin_sdk::{HttpResponse, Level};
    use std::sync::{Arc, Mutex};

    /// A test host whose endpoint answers with the given pages in turn, and the requests it saw.
    fn endpoint(pages: Vec<HttpResponse>) -> (TestHost, Arc<Mutex<Vec<HttpRequest>>>) {
        let host = TestHost::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let pages = Mutex::new(pages.into_iter());
        host.on_http(move |req| {
            log.lock().unwrap().push(req);
            pages.lock().unwrap().next().expect("more polls than pages")
        });
        (host, seen)
    }

    fn poll_source(host: &TestHost, config: Json) -> TestSource {
        host.source::<Poll>(config).unwrap()
    }

    fn config_error(config: Json) -> String {
        match TestHost::new().source::<Poll>(config) {
            Ok(_) => panic!("config should be refused"),
            Err(e) => e.message().to_owned(),
        }
    }

    #[test]
    fn plain_objects_become_resource_changed_events() {
        let (host, seen) = endpoint(vec![json_response(
            200,
            json!({"events": [{"ticket": 7, "state": "open"}, {"id": 12}], "checkpoint": "c1"}),
        )]);
        let s = poll_source(&host, json!({"url": "http://h/events"}));
        let polled = s.poll(None).unwrap();

        assert_eq!(
            seen.lock().unwrap()[0].url,
            "http://h/events",
            "no since on the first poll"
        );
        assert_eq!(seen.lock().unwrap()[0].method, "GET");
        assert_eq!(polled.checkpoint.as_deref(), Some("c1"));
        assert_eq!(polled.events.len(), 2);
        let e = &polled.events[0];
        assert!(e.id().starts_with("evt_"));
        assert_eq!(e.source(), "http-poll");
        assert_eq!(e.event_type(), EventType::ResourceChanged);
        assert_eq!(e.payload().to_json(), json!({"ticket": 7, "state": "open"}));
        assert_eq!(
            e.timestamp(),
            "2026-01-01T00:00:00.000Z",
            "the host's clock"
        );
        assert!(e.trace_id().is_some_and(|t| t.starts_with("trc_")));
        assert_eq!(
            polled.events[1].payload().to_json(),
            json!({"id": 12}),
            "an id that is not evt_… is just data"
        );
    }

    #[test]
    fn source_id_names_the_built_events() {
        let (host, _) = endpoint(vec![json_response(200, json!({"events": [{"a": 1}]}))]);
        let s = poll_source(&host, json!({"url": "http://h/e", "source_id": "tickets"}));
        let polled = s.poll(None).unwrap();
        assert_eq!(polled.events[0].source(), "tickets");
        assert_eq!(
            polled.events[0].str_field("provenance.platform"),
            Some("tickets")
        );
    }

    #[test]
    fn full_events_are_kept_as_they_are() {
        let full = test_event(json!({"n": 1})).to_json();
        let (host, _) = endpoint(vec![json_response(200, json!({"events": [full.clone()]}))]);
        let s = poll_source(&host, json!({"url": "http://h/e"}));
        let polled = s.poll(None).unwrap();
        assert_eq!(polled.events.len(), 1);
        assert_eq!(polled.events[0].to_json(), full);
        assert_eq!(
            polled.checkpoint, None,
            "no checkpoint: keep the previous one"
        );
    }

    #[test]
    fn bad_items_are_skipped_and_logged() {
        let mut broken = test_event(json!({})).to_json();
        broken["type"] = json!("resource.exploded");
        let (host, _) = endpoint(vec![json_response(
            200,
            json!({"events": [broken, "text", {"ok": true}], "checkpoint": "c9"}),
        )]);
        let s = poll_source(&host, json!({"url": "http://h/e"}));
        let polled = s.poll(None).unwrap();
        assert_eq!(polled.events.len(), 1);
        assert_eq!(polled.events[0].payload().to_json(), json!({"ok": true}));
        assert_eq!(
            polled.checkpoint.as_deref(),
            Some("c9"),
            "the poll still moves on"
        );
        let errors: Vec<_> = host
            .logs()
            .into_iter()
            .filter(|(level, _)| *level == Level::Error)
            .map(|(_, m)| m)
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("events[0]") && errors[0].contains("resource.exploded"));
        assert!(errors[1].contains("events[1]") && errors[1].contains("expected an object"));
    }

    #[test]
    fn checkpoints_go_into_the_query() {
        let page = |c: Json| json_response(200, json!({"events": [], "checkpoint": c}));
        let (host, seen) = endpoint(vec![
            page(json!("2026-01-01T00:00:00.000Z")),
            page(json!(42)),
            page(json!(null)),
        ]);
        let s = poll_source(&host, json!({"url": "http://h/e?team=a"}));
        let first = s.poll(Some("a b&c")).unwrap();
        assert_eq!(
            first.checkpoint.as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
        let second = s.poll(first.checkpoint.as_deref()).unwrap();
        assert_eq!(
            second.checkpoint.as_deref(),
            Some("42"),
            "numbers are kept as text"
        );
        assert_eq!(s.poll(Some("42")).unwrap().checkpoint, None);
        let urls: Vec<_> = seen.lock().unwrap().iter().map(|r| r.url.clone()).collect();
        assert_eq!(
            urls,
            [
                "http://h/e?team=a&since=a%20b%26c",
                "http://h/e?team=a&since=2026-01-01T00%3A00%3A00.000Z",
                "http://h/e?team=a&since=42",
            ]
        );
    }

    #[test]
    fn headers_auth_and_timeout_are_sent() {
        let (host, seen) = endpoint(vec![json_response(200, json!({}))]);
        let s = poll_source(
            &host,
            json!({
                "url": "http://h/e",
                "headers": {"X-Team": "platform"},
                "auth": {"type": "basic", "username": "alice", "password": "s3cret"},
                "timeout": "10s",
            }),
        );
        assert_eq!(s.poll(None).unwrap(), Polled::default());
        let seen = seen.lock().unwrap();
        let req = &seen[0];
        let header = |n: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("x-team"), Some("platform"));
        assert_eq!(header("authorization"), Some("Basic YWxpY2U6czNjcmV0"));
        assert_eq!(header("accept"), Some("application/json"));
        assert_eq!(req.timeout, Duration::from_secs(10));
    }

    #[test]
    fn failures_fail_the_poll() {
        let text = |status, body: &str| HttpResponse {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        };
        let (host, _) = endpoint(vec![
            text(500, "database down"),
            text(200, "<html>"),
            json_response(200, json!({"events": {}})),
            json_response(200, json!({"checkpoint": {"at": 1}})),
        ]);
        let s = poll_source(&host, json!({"url": "http://h/e"}));
        let err = |r: Result<Polled, PluginError>| r.unwrap_err().message().to_owned();
        assert_eq!(
            err(s.poll(Some("c"))),
            "HTTP 500 from http://h/e?since=c: database down"
        );
        assert!(err(s.poll(None)).contains("expected a JSON object"));
        assert!(err(s.poll(None)).contains("expected a JSON object"));
        assert!(err(s.poll(None)).contains("checkpoint must be a string"));

        let s = poll_source(&TestHost::new(), json!({"url": "http://h/e"}));
        assert!(err(s.poll(None)).starts_with("GET http://h/e failed: "));
    }

    #[test]
    fn bad_config_is_refused() {
        for (config, expected) in [
            (json!({}), "missing field `url`"),
            (json!({"url": "https://h"}), "https is not supported"),
            (
                json!({"url": "http://h", "interval": "1m"}),
                "poll: {interval: 1m}",
            ),
            (
                json!({"url": "http://h", "source_id": ""}),
                "source_id is empty",
            ),
            (
                json!({"url": "http://h", "timeout": "soon"}),
                "invalid duration",
            ),
            (
                json!({"url": "http://h", "auth": {"type": "basic", "username": "u"}}),
                "missing field `password`",
            ),
            (
                json!({"url": "http://h", "since": "x"}),
                "unknown field `since`",
            ),
        ] {
            let err = config_error(config.clone());
            assert!(err.contains(expected), "{config}: {err}");
        }
    }
}
