//! # orgloop
//!
//! The orgloop daemon: routes events for autonomous AI organizations, with every module's
//! transforms and connectors loaded from plugin libraries that can be replaced while it runs.
//!
//! ## Core concepts
//!
//! - **Module**: one project directory (`orgloop.yaml`, `connectors/`, `routes/`, `transforms/`,
//!   `loggers/`, `sops/`). One daemon runs many; each is isolated from the others.
//! - **Generation**: an immutable snapshot of a module — its [`config::ModuleSpec`], its loaded
//!   plugin libraries, and the transform, actor and source objects built from them. Every event
//!   dispatch and every delivery holds an `Arc` of the generation it started on.
//! - **Plugin library**: a `cdylib` built with `orgloop-plugin-sdk`, loaded from a private
//!   content-addressed copy so that two versions can be mapped side by side, and unloaded (with
//!   verification) when the last generation using it is gone.
//! - **Route**: `when` (source, event types, filter) → transforms → `then` (actor, config) with an
//!   optional SOP prompt.
//! - **Actor delivery**: an asynchronous call into a plugin actor, which may run for minutes and
//!   may emit events back into its module.
//!
//! The code follows the event's path: [`ingest`] (webhooks) → [`queue`] (stored, synced, then
//! handed to its module) → [`engine`] (route, transform, deliver, retry, dead-letter) →
//! [`plugin`] (the libraries), and the module lifecycle in [`module`] (generations, reloads,
//! drains, and each module's own threads). The HTTP surface is in [`control`], with
//! [`metrics`]; the command line in [`cli`]; the service manager's notifications in [`systemd`].

pub mod allocator;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod engine;
pub mod home;
pub mod ingest;
pub mod metrics;
pub mod module;
pub mod plugin;
pub mod queue;
pub mod systemd;
