//! [`Actor`]: where a route delivers its events — a webhook, a chat, an agent session.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::error::PluginError;
use crate::event::Event;
use crate::host::{Cancel, Host};

/// One delivery: the event, with what the route adds to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// The event, after the route's transforms.
    pub event: Event,
    /// The route's `then.config`, with `{{dot.path}}` placeholders filled from the event.
    pub config: Json,
    /// The SOP text from the route's `with.prompt_file`, front matter removed.
    pub prompt: Option<String>,
    /// The path of that SOP file.
    pub prompt_file: Option<String>,
    /// The name of the route.
    pub route: String,
    /// The same for every attempt of this delivery (`<event id>:<route>`), including attempts
    /// after a daemon restart: send it along (the `http::webhook` actor sends it as the
    /// `Idempotency-Key` header) so that the receiver can drop duplicates.
    pub idempotency_key: String,
    /// Which attempt this is: 1 the first time, then 2, 3, ... after failures.
    pub attempt: u32,
}

impl Delivery {
    /// A delivery of `event` with an empty config and no prompt (for tests).
    pub fn new(event: Event) -> Self {
        Delivery {
            event,
            config: Json::Object(Default::default()),
            prompt: None,
            prompt_file: None,
            route: String::new(),
            idempotency_key: String::new(),
            attempt: 1,
        }
    }

    /// Sets the route config.
    pub fn config(mut self, config: Json) -> Self {
        self.config = config;
        self
    }

    /// Sets the SOP prompt.
    pub fn prompt(mut self, prompt: &str) -> Self {
        self.prompt = Some(prompt.to_owned());
        self
    }
}

/// How a delivery ended, when it did not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The actor took the event.
    Delivered,
    /// The actor refused the event on purpose (with a reason); not retried, and kept in the dead
    /// letters with that reason.
    Rejected(String),
}

/// An actor: configured once from its `connectors/*.yaml` entry, then handed deliveries,
/// concurrently. A delivery may run for minutes (an agent session); it must end soon after its
/// [`Cancel`] fires.
pub trait Actor: Sized + Send + Sync + 'static {
    /// The configuration, from the actor's `config:` in YAML.
    type Config: DeserializeOwned;

    /// One line for `orgloop validate` and the plugin's manifest.
    const DESCRIPTION: &'static str = "";

    /// A JSON schema of [`Config`](Self::Config); optional.
    fn config_schema() -> Option<Json> {
        None
    }

    /// Builds the actor. An error here refuses the module (or the reload) with this message.
    fn new(config: Self::Config, host: Host) -> Result<Self, PluginError>;

    /// Delivers one event. An error counts as a failed delivery: the daemon retries it with
    /// backoff, unless it is [`PluginError::permanent`]. A delivery may therefore arrive more than
    /// once; [`Delivery::idempotency_key`] tells the repeats apart.
    fn deliver(
        &self,
        delivery: Delivery,
        cancel: Cancel,
    ) -> impl Future<Output = Result<Outcome, PluginError>> + Send;
}
