//! The `session` actor: stands in for a coding-agent session, so that routes, drain and
//! cancellation can be exercised end to end without a real agent.

use std::time::{Duration, SystemTime};

use orgloop_plugin_sdk::prelude::*;
use orgloop_plugin_sdk::{format_timestamp, new_event_id};

use crate::duration;

/// The config of [`Session`]. Unknown keys are refused; no config at all means the defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// How long a session runs unless cancelled (default `2s`).
    #[serde(
        default = "default_duration",
        deserialize_with = "duration::deserialize"
    )]
    duration: Duration,
    /// Refuse to build, with the error `fail_init is set` (for testing reload failures).
    #[serde(default)]
    fail_init: bool,
    /// The harness name in the emitted events (default `orgloop-agent`).
    #[serde(default = "default_harness")]
    harness: String,
    /// The `source` of the emitted events (default `agent`).
    #[serde(default = "default_source")]
    source: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            duration: default_duration(),
            fail_init: false,
            harness: default_harness(),
            source: default_source(),
        }
    }
}

fn default_duration() -> Duration {
    Duration::from_secs(2)
}

fn default_harness() -> String {
    "orgloop-agent".into()
}

fn default_source() -> String {
    "agent".into()
}

/// The `session` actor: stands in for a coding-agent session, so that routes, drain and
/// cancellation can be exercised end to end without a real agent.
///
/// ```yaml
/// actors:
///   - id: engineer
///     connector: agent::session
///     config:
///       duration: 2s              # how long each session "works" (default 2s; 0s is fine)
///       harness: orgloop-agent    # reported in the session and dedupe key
///       source: agent             # the `source` of the actor.stopped events it emits
/// ```
///
/// A route may change the duration for its deliveries with `then.config: {duration: 10m}`.
///
/// Each delivery starts a session that waits (on the host's timer) for the duration or until the
/// delivery is cancelled, whichever comes first. Either way it then emits an `actor.stopped`
/// event on the delivered event's trace, shaped by upstream's lifecycle contract (`lifecycle`
/// and `session` in the payload), and ends: `Delivered` when it ran to completion, an error
/// `cancelled after <time>` when it was cancelled.
pub struct Session {
    config: SessionConfig,
    host: Host,
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Completed,
    Cancelled,
}

impl End {
    fn phase(self) -> &'static str {
        match self {
            End::Completed => "completed",
            End::Cancelled => "stopped",
        }
    }

    fn outcome(self) -> &'static str {
        match self {
            End::Completed => "success",
            End::Cancelled => "cancelled",
        }
    }
}

/// What the `actor.stopped` event reports about one session.
struct Report<'a> {
    delivery: &'a Delivery,
    session_id: &'a str,
    started: SystemTime,
    ended: SystemTime,
    end: End,
}

impl Actor for Session {
    /// `Option`, so that an actor listed without any `config:` gets the defaults.
    type Config = Option<SessionConfig>;

    const DESCRIPTION: &'static str =
        "A stand-in agent session: runs for `duration` (or until cancelled), then emits actor.stopped";

    fn new(config: Self::Config, host: Host) -> Result<Self, PluginError> {
        let config = config.unwrap_or_default();
        if config.fail_init {
            return Err(PluginError::new("fail_init is set"));
        }
        if config.harness.is_empty() {
            return Err(PluginError::new("harness is empty"));
        }
        if config.source.is_empty() {
            return Err(PluginError::new("source is empty"));
        }
        Ok(Session { config, host })
    }

    async fn deliver(&self, delivery: Delivery, cancel: Cancel) -> Result<Outcome, PluginError> {
        let planned = self.duration_for(&delivery.config)?;
        // Random, not derived from the event: a retried delivery is a new session, and must not
        // share the previous one's dedupe key.
        let session_id = format!("ses_{}", &new_event_id()["evt_".len()..]);
        let started = self.host.now();
        self.host.info(&format!(
            "session {session_id} started (route {:?}, event {}, for {})",
            delivery.route,
            delivery.event.id(),
            duration::display(planned)
        ));

        let end = match race(self.host.sleep(planned), cancel.cancelled()).await {
            Either::Left(()) => End::Completed,
            Either::Right(()) => End::Cancelled,
        };
        let ended = self.host.now();
        let elapsed = duration::display(ended.duration_since(started).unwrap_or_default());

        let report = Report {
            delivery: &delivery,
            session_id: &session_id,
            started,
            ended,
            end,
        };
        // A module being unloaded refuses new events; the session still ended, so say so in
        // the log instead of failing the delivery over its report.
        if let Err(e) = self.stopped_event(&report).and_then(|e| self.host.emit(e)) {
            self.host.warn(&format!(
                "session {session_id}: could not emit actor.stopped: {e}"
            ));
        }
        match end {
            End::Completed => {
                self.host
                    .info(&format!("session {session_id} completed after {elapsed}"));
                Ok(Outcome::Delivered)
            }
            End::Cancelled => {
                self.host
                    .warn(&format!("session {session_id} cancelled after {elapsed}"));
                Err(PluginError::new(format!("cancelled after {elapsed}")))
            }
        }
    }
}

impl Session {
    /// The route's `duration`, if it sets one, else the actor's.
    fn duration_for(&self, route_config: &Json) -> Result<Duration, PluginError> {
        match route_config.get("duration") {
            None | Some(Json::Null) => Ok(self.config.duration),
            Some(Json::String(text)) => duration::parse(text)
                .map_err(|e| PluginError::new(format!("route config duration: {e}"))),
            Some(other) => Err(PluginError::new(format!(
                "route config duration must be a string like \"30s\", not {other}"
            ))),
        }
    }

    /// The `actor.stopped` event of a session, following upstream's lifecycle contract.
    fn stopped_event(&self, r: &Report<'_>) -> Result<Event, PluginError> {
        let harness = &self.config.harness;
        let phase = r.end.phase();
        let mut lifecycle = json!({
            "phase": phase,
            "terminal": true,
            "outcome": r.end.outcome(),
            "dedupe_key": format!("{harness}:{}:{phase}", r.session_id),
        });
        if r.end == End::Cancelled {
            lifecycle["reason"] = json!("the delivery was cancelled before the session finished");
        }
        let prompt = r.delivery.prompt.as_deref().map(|text| {
            json!({
                "first_line": text.lines().next().unwrap_or_default(),
                "length": text.chars().count(),
            })
        });
        let ended_at = format_timestamp(r.ended);
        let payload = json!({
            "lifecycle": lifecycle,
            "session": {
                "id": r.session_id,
                "adapter": "agent",
                // Which build ran the session: after a reload, in-flight sessions finish on the
                // old one.
                "adapter_version": env!("CARGO_PKG_VERSION"),
                "harness": harness,
                "started_at": format_timestamp(r.started),
                "ended_at": ended_at,
            },
            "trigger_event_id": r.delivery.event.id(),
            "route": r.delivery.route,
            "prompt": prompt,
            "prompt_file": r.delivery.prompt_file,
        });
        let mut builder = Event::builder(&self.config.source, EventType::ActorStopped)
            .timestamp(r.ended)
            .platform("orgloop-agent")
            .provenance("platform_event", format!("session.{phase}"))
            .provenance("author_type", "bot")
            .payload(payload);
        if let Some(trace) = r.delivery.event.trace_id() {
            builder = builder.trace_id(trace);
        }
        Ok(builder.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orgloop_plugin_sdk::testing::{test_event, TestActor, TestHost};
    use orgloop_plugin_sdk::Level;

    const T0: &str = "2026-01-01T00:00:00.000Z";

    fn session(host: &TestHost, config: Json) -> TestActor {
        host.actor::<Session>(config).unwrap()
    }

    fn config_error(config: Json) -> String {
        match TestHost::new().actor::<Session>(config) {
            Ok(_) => panic!("config should be refused"),
            Err(e) => e.message().to_owned(),
        }
    }

    fn delivery() -> Delivery {
        let mut d = Delivery::new(test_event(json!({"pr": 42})))
            .config(json!({"channel": "eng"}))
            .prompt("# Review the PR\n\nBe kind.");
        d.route = "pr-review".into();
        d.prompt_file = Some("sops/review.md".into());
        d
    }

    fn only_emitted(host: &TestHost) -> Event {
        let emitted = host.emitted();
        assert_eq!(emitted.len(), 1, "{emitted:?}");
        emitted.into_iter().next().unwrap()
    }

    fn elapsed(host: &TestHost, start: SystemTime) -> Duration {
        host.now().duration_since(start).unwrap()
    }

    #[test]
    fn completes_after_the_default_duration_and_reports() {
        let host = TestHost::new();
        let start = host.now();
        let a = session(&host, Json::Null);
        let d = delivery();
        assert_eq!(a.deliver(d.clone()), Ok(Outcome::Delivered));
        assert_eq!(elapsed(&host, start), Duration::from_secs(2));

        let e = only_emitted(&host);
        assert_eq!(e.event_type(), EventType::ActorStopped);
        assert_eq!(e.source(), "agent");
        assert_eq!(
            e.trace_id(),
            d.event.trace_id(),
            "same trace as the trigger"
        );
        assert_ne!(e.id(), d.event.id());
        assert_eq!(e.timestamp(), "2026-01-01T00:00:02.000Z");
        assert_eq!(
            e.get("provenance").unwrap().to_json(),
            json!({"platform": "orgloop-agent", "platform_event": "session.completed", "author_type": "bot"})
        );

        let p = e.payload().to_json();
        let id = p["session"]["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("ses_") && id.len() == 20, "{id}");
        assert!(id[4..].chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(
            p,
            json!({
                "lifecycle": {
                    "phase": "completed",
                    "terminal": true,
                    "outcome": "success",
                    "dedupe_key": format!("orgloop-agent:{id}:completed"),
                },
                "session": {
                    "id": id,
                    "adapter": "agent",
                    "adapter_version": env!("CARGO_PKG_VERSION"),
                    "harness": "orgloop-agent",
                    "started_at": T0,
                    "ended_at": "2026-01-01T00:00:02.000Z",
                },
                "trigger_event_id": d.event.id(),
                "route": "pr-review",
                "prompt": {"first_line": "# Review the PR", "length": 25},
                "prompt_file": "sops/review.md",
            })
        );

        let logs = host.logs();
        assert_eq!(logs[0].0, Level::Info);
        assert!(
            logs[0].1.starts_with(&format!("session {id} started")),
            "{logs:?}"
        );
        assert!(logs[0].1.contains(d.event.id()) && logs[0].1.contains("for 2s"));
        assert!(logs[1]
            .1
            .contains(&format!("session {id} completed after 2s")));
    }

    #[test]
    fn cancellation_stops_the_session_and_still_reports() {
        let host = TestHost::new();
        let start = host.now();
        let a = session(&host, json!({"duration": "10m"}));
        let d = delivery();
        let outcome = a.deliver_cancelled_after(d.clone(), Duration::from_millis(1_500));
        assert_eq!(outcome, Err(PluginError::new("cancelled after 1.5s")));
        assert_eq!(elapsed(&host, start), Duration::from_millis(1_500));

        let e = only_emitted(&host);
        assert_eq!(e.event_type(), EventType::ActorStopped);
        assert_eq!(e.trace_id(), d.event.trace_id());
        assert_eq!(
            e.str_field("provenance.platform_event"),
            Some("session.stopped")
        );
        let p = e.payload().to_json();
        let id = p["session"]["id"].as_str().unwrap();
        assert_eq!(p["lifecycle"]["phase"], "stopped");
        assert_eq!(p["lifecycle"]["terminal"], true);
        assert_eq!(p["lifecycle"]["outcome"], "cancelled");
        assert!(p["lifecycle"]["reason"]
            .as_str()
            .unwrap()
            .contains("cancelled"));
        assert_eq!(
            p["lifecycle"]["dedupe_key"],
            format!("orgloop-agent:{id}:stopped")
        );
        assert_eq!(p["session"]["ended_at"], "2026-01-01T00:00:01.500Z");
        assert_eq!(p["trigger_event_id"], d.event.id());
        let warning = host
            .logs()
            .into_iter()
            .find(|(l, _)| *l == Level::Warn)
            .unwrap();
        assert!(warning.1.contains("cancelled after 1.5s"));
    }

    #[test]
    fn already_cancelled_stops_at_once() {
        let host = TestHost::new();
        let a = session(&host, json!({}));
        let outcome = a.deliver_cancelled_after(delivery(), Duration::ZERO);
        assert_eq!(outcome, Err(PluginError::new("cancelled after 0ms")));
        assert_eq!(
            only_emitted(&host).payload().to_json()["lifecycle"]["outcome"],
            "cancelled"
        );
    }

    #[test]
    fn cancellation_after_the_end_changes_nothing() {
        let host = TestHost::new();
        let a = session(&host, json!({"duration": "1s"}));
        let outcome = a.deliver_cancelled_after(delivery(), Duration::from_secs(5));
        assert_eq!(outcome, Ok(Outcome::Delivered));
        assert_eq!(
            only_emitted(&host).payload().to_json()["lifecycle"]["phase"],
            "completed"
        );
    }

    #[test]
    fn zero_duration_completes_at_once() {
        let host = TestHost::new();
        let start = host.now();
        let a = session(&host, json!({"duration": "0s"}));
        assert_eq!(a.deliver(delivery()), Ok(Outcome::Delivered));
        assert_eq!(elapsed(&host, start), Duration::ZERO);
        let p = only_emitted(&host).payload().to_json();
        assert_eq!(p["session"]["started_at"], p["session"]["ended_at"]);
    }

    #[test]
    fn routes_override_the_duration() {
        let host = TestHost::new();
        let start = host.now();
        let a = session(&host, json!({"duration": "2s"}));
        let d = delivery().config(json!({"duration": "10m", "other": "ignored"}));
        assert_eq!(a.deliver(d), Ok(Outcome::Delivered));
        assert_eq!(elapsed(&host, start), Duration::from_secs(600));
        let d = delivery().config(json!({"duration": null}));
        assert_eq!(a.deliver(d), Ok(Outcome::Delivered));
        assert_eq!(elapsed(&host, start), Duration::from_secs(602));
    }

    #[test]
    fn bad_route_duration_fails_before_starting() {
        let host = TestHost::new();
        let a = session(&host, json!({}));
        let err = a
            .deliver(delivery().config(json!({"duration": "soon"})))
            .unwrap_err();
        assert!(
            err.message()
                .starts_with("route config duration: invalid duration \"soon\""),
            "{err}"
        );
        let err = a
            .deliver(delivery().config(json!({"duration": 5})))
            .unwrap_err();
        assert!(err.message().contains("must be a string"), "{err}");
        assert!(host.emitted().is_empty(), "no session, no report");
        assert!(host.logs().is_empty());
    }

    #[test]
    fn harness_and_source_are_configurable() {
        let host = TestHost::new();
        let a = session(
            &host,
            json!({"harness": "claude-code", "source": "engineer"}),
        );
        a.deliver(delivery()).unwrap();
        let e = only_emitted(&host);
        assert_eq!(e.source(), "engineer");
        let p = e.payload().to_json();
        assert_eq!(p["session"]["harness"], "claude-code");
        let id = p["session"]["id"].as_str().unwrap();
        assert_eq!(
            p["lifecycle"]["dedupe_key"],
            format!("claude-code:{id}:completed")
        );
    }

    #[test]
    fn no_prompt_and_no_trace() {
        let host = TestHost::new();
        let a = session(&host, json!({}));
        let mut untraced = test_event(json!({})).to_json();
        untraced.as_object_mut().unwrap().remove("trace_id");
        let d = Delivery::new(Event::from_json(untraced).unwrap());
        a.deliver(d).unwrap();
        let e = only_emitted(&host);
        assert!(
            e.trace_id().is_some_and(|t| t.starts_with("trc_")),
            "a new trace"
        );
        let p = e.payload().to_json();
        assert_eq!(p["prompt"], Json::Null);
        assert_eq!(p["prompt_file"], Json::Null);
        assert_eq!(p["route"], "");
    }

    #[test]
    fn every_delivery_is_a_new_session() {
        let host = TestHost::new();
        let a = session(&host, json!({"duration": "1s"}));
        let d = delivery();
        a.deliver(d.clone()).unwrap();
        a.deliver(d).unwrap();
        let ids: Vec<_> = host
            .emitted()
            .iter()
            .map(|e| e.str_field("payload.session.id").unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn bad_config_is_refused() {
        assert_eq!(config_error(json!({"fail_init": true})), "fail_init is set");
        for (config, expected) in [
            (json!({"duration": "2"}), "invalid duration \"2\""),
            (json!({"duration": 2}), "invalid type"),
            (json!({"harness": ""}), "harness is empty"),
            (json!({"source": ""}), "source is empty"),
            (json!({"model": "x"}), "unknown field `model`"),
        ] {
            let err = config_error(config.clone());
            assert!(err.contains(expected), "{config}: {err}");
        }
    }
}
