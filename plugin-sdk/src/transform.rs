//! [`Transform`]: a synchronous step of a route that passes, changes or drops an event.

use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::error::PluginError;
use crate::event::Event;
use crate::host::Host;

/// What a transform decided about an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Keep the event as it is (costs nothing: the host keeps its own copy).
    Pass,
    /// Go on with this event instead.
    Replace(Event),
    /// Stop this route for this event. Other routes the event matched go on.
    Drop,
}

/// Where a transform is being applied.
#[derive(Clone, Copy, Debug)]
pub struct TransformCtx<'a> {
    /// The id of the source the event came from.
    pub source: &'a str,
    /// The name of the route being run.
    pub route: &'a str,
    /// The id of the route's actor.
    pub actor: &'a str,
    /// The name of the module.
    pub module: &'a str,
}

/// A transform: configured once, then applied to each event of each route that lists it, possibly
/// from several threads at once (hence `Sync`: keep mutable state behind a `Mutex` or atomics).
///
/// `apply` runs on the daemon's event path: keep it quick and never block.
pub trait Transform: Sized + Send + Sync + 'static {
    /// The configuration, read from the transform's `config:` in YAML (JSON-compatible). A
    /// definition without `config:` is handed `{}`, so a struct whose fields all have defaults works.
    type Config: DeserializeOwned;

    /// One line for `orgloop validate` and the plugin's manifest.
    const DESCRIPTION: &'static str = "";

    /// A JSON schema of [`Config`](Self::Config), shown to users; optional.
    fn config_schema() -> Option<Json> {
        None
    }

    /// Builds the transform. An error here refuses the module (or the reload) with this message.
    fn new(config: Self::Config, host: Host) -> Result<Self, PluginError>;

    /// Decides about one event. An error is handled by the route's `on_error` policy.
    fn apply(&self, event: &Event, ctx: &TransformCtx<'_>) -> Result<Verdict, PluginError>;
}
