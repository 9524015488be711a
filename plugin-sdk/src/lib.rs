//! # orgloop plugin SDK
//!
//! The one crate an orgloop plugin depends on. A plugin is a Rust `cdylib` that offers
//! **transforms** (filter, enrich or drop events on a route), **actors** (deliver events somewhere,
//! possibly running an agent session for minutes) and **sources** (poll an outside system). The
//! daemon loads it at run time and can replace it with a new build while it runs: events then go
//! to the new version at once, while deliveries already in flight finish on the old one, and then
//! the old library is unloaded.
//!
//! ## A whole plugin
//!
//! ```
//! use orgloop_plugin_sdk::prelude::*;
//!
//! /// Drops events whose author is on the list. Config: `authors: [dependabot]`.
//! #[derive(Deserialize)]
//! pub struct DropAuthors {
//!     authors: Vec<String>,
//! }
//!
//! impl Transform for DropAuthors {
//!     type Config = Self;
//!     const DESCRIPTION: &'static str = "Drops events by provenance.author";
//!
//!     fn new(config: Self, _host: Host) -> Result<Self, PluginError> {
//!         Ok(config)
//!     }
//!
//!     fn apply(&self, event: &Event, _ctx: &TransformCtx) -> Result<Verdict, PluginError> {
//!         match event.str_field("provenance.author") {
//!             Some(a) if self.authors.iter().any(|x| x == a) => Ok(Verdict::Drop),
//!             _ => Ok(Verdict::Pass),
//!         }
//!     }
//! }
//!
//! orgloop_plugin_sdk::export_plugin! {
//!     name: "authors",
//!     transforms: { "drop-authors" => DropAuthors },
//! }
//!
//! // Its test, without a daemon:
//! use orgloop_plugin_sdk::testing::TestHost;
//! let host = TestHost::new();
//! let t = host.transform::<DropAuthors>(json!({"authors": ["bot"]})).unwrap();
//! let event = Event::builder("github", EventType::ResourceChanged).provenance("author", "bot").build();
//! assert_eq!(t.apply(&event).unwrap(), Verdict::Drop);
//! ```
//!
//! In `Cargo.toml`: `crate-type = ["cdylib", "rlib"]`, and `orgloop-plugin-sdk` and `serde` as
//! dependencies. In the module's `orgloop.yaml`, list the built library under `plugins:` and refer to
//! the transform as `authors::drop-authors`. The plugins in the repository's `example-plugins/`
//! (`filters`, `http`, `agent`) are complete, tested examples of each kind.
//!
//! ## Core concepts
//!
//! - [`Event`]: the upstream event schema, laid out so that the daemon can lend it to a plugin by
//!   reference (see [`Doc`]). Read fields with [`Event::get`] and friends; change one with
//!   [`Event::with`].
//! - [`Transform`]: synchronous, called for each event on each route that lists it, concurrently.
//!   Answers a [`Verdict`].
//! - [`Actor`]: asynchronous; receives a [`Delivery`] (event, route config, SOP prompt) and a
//!   [`Cancel`] signal; may [`emit`](Host::emit) events back (for example `actor.stopped`).
//!   Delivery is at least once: the daemon retries a failed delivery with backoff unless the
//!   error is [`PluginError::permanent`] (a [`PluginError::with_retry_after`] sets the least
//!   wait), so a delivery can arrive more than once; [`Delivery::idempotency_key`] is the same on
//!   every attempt, for the receiver to drop repeats.
//! - [`Source`]: asynchronous; polled with an opaque checkpoint, returns [`Polled`] events.
//! - [`Host`]: the daemon's services lent to each object: log, time, sleep, emit, HTTP.
//! - [`export_plugin!`]: generates the binary interface. Every entry point catches panics: a
//!   panicking transform becomes an error for that event (handled by the route's `on_error`), never
//!   a crash of the daemon.
//!
//! ## Rules for plugins that can be unloaded
//!
//! The daemon unloads a plugin's old version after a reload, and verifies that the library really
//! left memory. These things keep a library mapped (reported as `pinned`) or crash the daemon, so a
//! plugin must not:
//!
//! - start threads, or keep a private async runtime (use [`Host::sleep`] and [`Host::http`]);
//! - use `thread_local!` with a type that has a `Drop` (a plain `Cell` of numbers is fine);
//! - write to stdout or stderr (use [`Host::info`] and friends; output goes to the daemon's log);
//! - set a global allocator, or keep state in globals (keep it in your objects, which the daemon
//!   owns and drops before unloading);
//! - hand out anything that outlives the object that made it: every future is dropped before the
//!   library closes.
//!
//! A new version of a plugin must keep the same [`abi::ABI_VERSION`]; the daemon refuses others
//! with a message naming both versions.

#![deny(missing_docs)]

#[doc(hidden)]
pub mod abi;
mod actor;
pub mod duration;
mod error;
mod event;
#[doc(hidden)]
pub mod export;
mod future;
mod host;
mod manifest;
mod source;
pub mod testing;
mod transform;
mod value;

pub use actor::{Actor, Delivery, Outcome};
pub use error::PluginError;
pub use event::{
    format_timestamp, new_event_id, new_trace_id, Event, EventBuilder, EventError, EventType,
};
pub use future::{race, Either};
pub use host::{Cancel, Host, HttpRequest, HttpResponse, Level};
pub use manifest::{Manifest, SymbolInfo, SymbolKind};
pub use source::{Polled, Source};
pub use transform::{Transform, TransformCtx, Verdict};
pub use value::{Doc, Kind, Part, ValueRef};

// Re-exported so that plugins use the same versions as the SDK. (Changing either major version is a
// breaking change of this crate.)
pub use serde;
pub use serde_json;

/// The names most plugins need: `use orgloop_plugin_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        race, Actor, Cancel, Delivery, Either, Event, EventType, Host, HttpRequest, HttpResponse,
        Outcome, PluginError, Polled, Source, Transform, TransformCtx, Verdict,
    };
    pub use serde::Deserialize;
    pub use serde_json::{json, Value as Json};
}
