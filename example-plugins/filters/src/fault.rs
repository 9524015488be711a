//! The `fault` transform: **misbehaves on purpose**, to test how the daemon and a route's
//! `on_error` policy handle a transform that fails to build, returns errors, panics or drops.
//! It is not meant for production routes.

use std::time::Duration;

use orgloop_plugin_sdk::prelude::*;
use orgloop_plugin_sdk::serde_json::Map;

use crate::matcher::Criteria;

/// The config of [`Fault`]. Unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Refuse to build, with the error `fail_init is set`.
    #[serde(default)]
    fail_init: bool,
    /// Panic when all of these hold.
    #[serde(default)]
    panic_when: Option<Map<String, Json>>,
    /// Return an error when all of these hold.
    #[serde(default)]
    error_when: Option<Map<String, Json>>,
    /// Drop the event when all of these hold.
    #[serde(default)]
    drop_when: Option<Map<String, Json>>,
    /// Block the calling thread for `block_for` when all of these hold (as a synchronous call
    /// or a runaway regex would; a real plugin must never do this).
    #[serde(default)]
    block_when: Option<Map<String, Json>>,
    /// How long `block_when` blocks (default `10s`).
    #[serde(
        default = "default_block_for",
        deserialize_with = "orgloop_plugin_sdk::duration::deserialize"
    )]
    block_for: Duration,
}

fn default_block_for() -> Duration {
    Duration::from_secs(10)
}

/// The `fault` transform: **misbehaves on purpose**, to test how the daemon and a route's
/// `on_error` policy handle a transform that fails to build, returns errors, panics or drops.
/// It is not meant for production routes.
///
/// ```yaml
/// config:
///   fail_init: false                          # true: refuse to build ("fail_init is set")
///   panic_when: { payload.kind: explode }     # panic ("fault: panic_when matched")
///   error_when: { payload.kind: fail }        # return an error ("fault: error_when matched")
///   drop_when:  { payload.kind: vanish }      # drop the event
///   block_when: { payload.kind: stall }       # block the thread for block_for, then pass
///   block_for: 10s
/// ```
///
/// Each `*_when` map is a set of conditions that must **all** hold, with the same value rules as
/// `filter` (regexes, any-of arrays, `null` for missing...). An absent key never fires; an empty
/// map (`{}`) fires for every event. They are checked in the order panic, error, drop; an event
/// that triggers none of them passes unchanged (after blocking, with `block_when`).
#[derive(Debug)]
pub struct Fault {
    panic_when: Option<Criteria>,
    error_when: Option<Criteria>,
    drop_when: Option<Criteria>,
    block_when: Option<Criteria>,
    block_for: Duration,
}

impl Transform for Fault {
    /// `Option`, so that no config at all builds a fault that never fires.
    type Config = Option<FaultConfig>;

    const DESCRIPTION: &'static str =
        "For testing error handling: fails to build, panics, errors or drops on command";

    fn new(config: Self::Config, host: Host) -> Result<Self, PluginError> {
        let config = config.unwrap_or_default();
        if config.fail_init {
            return Err(PluginError::new("fail_init is set"));
        }
        let compile = |section: &str, map: Option<Map<String, Json>>| {
            map.map(|m| Criteria::compile(section, &m, &host))
                .transpose()
        };
        Ok(Fault {
            panic_when: compile("panic_when", config.panic_when)?,
            error_when: compile("error_when", config.error_when)?,
            drop_when: compile("drop_when", config.drop_when)?,
            block_when: compile("block_when", config.block_when)?,
            block_for: config.block_for,
        })
    }

    fn apply(&self, event: &Event, _ctx: &TransformCtx<'_>) -> Result<Verdict, PluginError> {
        let fires = |c: &Option<Criteria>| c.as_ref().is_some_and(|c| c.all(event));
        if fires(&self.panic_when) {
            panic!("fault: panic_when matched");
        }
        if fires(&self.error_when) {
            return Err(PluginError::new("fault: error_when matched"));
        }
        if fires(&self.drop_when) {
            return Ok(Verdict::Drop);
        }
        if fires(&self.block_when) {
            std::thread::sleep(self.block_for);
        }
        Ok(Verdict::Pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orgloop_plugin_sdk::testing::{test_event, TestHost, TestTransform};

    fn fault(config: Json) -> TestTransform {
        TestHost::new().transform::<Fault>(config).unwrap()
    }

    fn config_error(config: Json) -> String {
        match TestHost::new().transform::<Fault>(config) {
            Ok(_) => panic!("config should be refused"),
            Err(e) => e.message().to_owned(),
        }
    }

    #[test]
    fn block_when_blocks_the_thread_then_passes() {
        let t = fault(json!({"block_when": {"payload.kind": "stall"}, "block_for": "50ms"}));
        let started = std::time::Instant::now();
        assert_eq!(
            t.apply(&test_event(json!({"kind": "stall"}))),
            Ok(Verdict::Pass)
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            t.apply(&test_event(json!({"kind": "other"}))),
            Ok(Verdict::Pass)
        );
    }

    #[test]
    fn fail_init_refuses_to_build() {
        assert_eq!(config_error(json!({"fail_init": true})), "fail_init is set");
        assert!(TestHost::new()
            .transform::<Fault>(json!({"fail_init": false}))
            .is_ok());
    }

    #[test]
    fn panics_become_errors_for_the_event() {
        let t = fault(json!({"panic_when": {"payload.kind": "explode"}}));
        let err = t
            .apply(&test_event(json!({"kind": "explode"})))
            .unwrap_err();
        assert!(err.message().contains("panicked"), "{err}");
        assert!(err.message().contains("fault: panic_when matched"), "{err}");
        // The transform stays usable after a panic.
        assert_eq!(
            t.apply(&test_event(json!({"kind": "calm"}))).unwrap(),
            Verdict::Pass
        );
        let again = t
            .apply(&test_event(json!({"kind": "explode"})))
            .unwrap_err();
        assert!(again.message().contains("fault: panic_when matched"));
    }

    #[test]
    fn error_when_returns_an_error() {
        let t = fault(json!({"error_when": {"payload.kind": "fail", "payload.n": [1, 2]}}));
        let err = t
            .apply(&test_event(json!({"kind": "fail", "n": 2})))
            .unwrap_err();
        assert_eq!(err.message(), "fault: error_when matched");
        assert_eq!(
            t.apply(&test_event(json!({"kind": "fail", "n": 3})))
                .unwrap(),
            Verdict::Pass,
            "every condition must hold"
        );
    }

    #[test]
    fn drop_when_drops() {
        let t = fault(json!({"drop_when": {"payload.kind": "/^van/"}}));
        assert_eq!(
            t.apply(&test_event(json!({"kind": "vanish"}))).unwrap(),
            Verdict::Drop
        );
        assert_eq!(
            t.apply(&test_event(json!({"kind": "stay"}))).unwrap(),
            Verdict::Pass
        );
    }

    #[test]
    fn order_is_panic_error_drop() {
        let t = fault(json!({
            "panic_when": {"payload.p": true},
            "error_when": {"payload.e": true},
            "drop_when": {"payload.d": true},
        }));
        let all = test_event(json!({"p": true, "e": true, "d": true}));
        assert!(t.apply(&all).unwrap_err().message().contains("panic_when"));
        let e_and_d = test_event(json!({"e": true, "d": true}));
        assert_eq!(
            t.apply(&e_and_d).unwrap_err().message(),
            "fault: error_when matched"
        );
        assert_eq!(
            t.apply(&test_event(json!({"d": true}))).unwrap(),
            Verdict::Drop
        );
    }

    #[test]
    fn absent_never_fires_and_empty_always_fires() {
        let event = test_event(json!({}));
        assert_eq!(fault(Json::Null).apply(&event).unwrap(), Verdict::Pass);
        assert_eq!(fault(json!({})).apply(&event).unwrap(), Verdict::Pass);
        assert_eq!(
            fault(json!({"drop_when": {}})).apply(&event).unwrap(),
            Verdict::Drop
        );
        assert!(fault(json!({"error_when": {}})).apply(&event).is_err());
    }

    #[test]
    fn bad_config_is_refused() {
        let err = config_error(json!({"panic_if": {}}));
        assert!(err.contains("unknown field `panic_if`"), "{err}");
        let err = config_error(json!({"fail_init": "yes"}));
        assert!(err.contains("invalid type"), "{err}");
        let err = config_error(json!({"drop_when": {"": 1}}));
        assert!(
            err.contains("drop_when") && err.contains("not a dot path"),
            "{err}"
        );
    }
}
