//! # http — send deliveries to, and poll events from, HTTP endpoints
//!
//! A plugin (`http`) with:
//!
//! - `http::webhook` ([`Webhook`]), an actor that sends each delivery as JSON to a URL, with the
//!   config keys of upstream OrgLoop's webhook actor (`url`, `method`, `headers`, `auth`).
//! - `http::poll` ([`Poll`]), a source that polls an endpoint for `{events, checkpoint}`.
//!
//! All traffic goes through the daemon's HTTP client ([`Host::http`](orgloop_plugin_sdk::Host)),
//! which speaks plain `http://`; the plugin starts no threads and owns no runtime, so the daemon
//! can unload it once its deliveries are done.

mod auth;
use orgloop_plugin_sdk::duration;
mod headers;
mod poll;
mod response;
mod url;
mod webhook;

pub use poll::{Poll, PollConfig};
pub use webhook::{Webhook, WebhookConfig};

orgloop_plugin_sdk::export_plugin! {
    name: "http",
    actors: { "webhook" => Webhook },
    sources: { "poll" => Poll },
}
