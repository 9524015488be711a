//! [`Source`]: a poller that brings events in from an outside system.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::error::PluginError;
use crate::event::Event;
use crate::host::Host;

/// What one poll found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Polled {
    /// New events, oldest first.
    pub events: Vec<Event>,
    /// Where the next poll should start; `None` keeps the previous checkpoint.
    pub checkpoint: Option<String>,
}

/// A source: polled by the host every `poll.interval`, never twice at once. The checkpoint is an
/// opaque string the source defines; the host keeps it, and hands it over to a new version of the
/// source when the module is reloaded.
pub trait Source: Sized + Send + Sync + 'static {
    /// The configuration, from the source's `config:` in YAML.
    type Config: DeserializeOwned;

    /// One line for `orgloop validate` and the plugin's manifest.
    const DESCRIPTION: &'static str = "";

    /// A JSON schema of [`Config`](Self::Config); optional.
    fn config_schema() -> Option<Json> {
        None
    }

    /// Builds the source. An error here refuses the module (or the reload) with this message.
    fn new(config: Self::Config, host: Host) -> Result<Self, PluginError>;

    /// Fetches what is new since `checkpoint` (`None` on the very first poll).
    fn poll(
        &self,
        checkpoint: Option<String>,
    ) -> impl Future<Output = Result<Polled, PluginError>> + Send;
}
