//! The `noop` actor: accepts every delivery at once.

use orgloop_plugin_sdk::prelude::*;

/// The config of [`Noop`]: nothing to set. Unknown keys are refused, so a typo still shows.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoopConfig {}

/// The `noop` actor: accepts every delivery at once: for benchmarks and for wiring tests.
///
/// ```yaml
/// actors:
///   - id: sink
///     connector: agent::noop
/// ```
///
/// It does no work, waits on nothing and emits nothing, so what a benchmark measures is the
/// daemon's own path up to and including the hand-off to an actor.
pub struct Noop;

impl Actor for Noop {
    type Config = NoopConfig;

    const DESCRIPTION: &'static str =
        "Accepts every delivery at once (for benchmarks and wiring tests)";

    fn new(_config: NoopConfig, _host: Host) -> Result<Self, PluginError> {
        Ok(Noop)
    }

    async fn deliver(&self, _delivery: Delivery, _cancel: Cancel) -> Result<Outcome, PluginError> {
        Ok(Outcome::Delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orgloop_plugin_sdk::testing::{test_event, TestHost};

    #[test]
    fn delivers_at_once_and_refuses_unknown_config() {
        let host = TestHost::new();
        let start = host.now();
        let noop = host.actor::<Noop>(json!({})).unwrap();
        let delivery = Delivery::new(test_event(json!({"pr": 42}))).config(json!({"x": 1}));
        assert_eq!(noop.deliver(delivery), Ok(Outcome::Delivered));
        assert_eq!(host.now(), start, "no time passes");
        assert!(host.emitted().is_empty(), "emits nothing");
        assert!(host.logs().is_empty(), "logs nothing");

        let err = match host.actor::<Noop>(json!({"duration": "1s"})) {
            Ok(_) => panic!("an unknown key should be refused"),
            Err(e) => e.message().to_owned(),
        };
        assert!(err.contains("unknown field `duration`"), "{err}");
    }
}
