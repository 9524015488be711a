//! The end-to-end suite again, with every plugin that does not say otherwise in a child process
//! of its own (`orgloop start --isolation process`): the same test files, not copies. A plugin
//! behaves the same in either mode, so the same assertions hold; where a report differs by
//! design (a retired build is `process_exited` instead of `unloaded`), the harness says which.
//!
//! Left out: `loader` (it drives the in-process loader through the library API, with no daemon),
//! `stalls` (threads of the daemon stuck in plugin code, which process mode takes out of the
//! daemon; `crashes` covers process mode's own stalls) and `crashes` itself (it sets `isolation`
//! per plugin, so it runs once, in the main suite).

/// Where the daemons of this suite run plugins that do not say (`orgloop start --isolation`).
pub const ISOLATION: &str = "process";

mod harness;
mod swap;

mod bad_input;
mod churn;
mod control;
mod drain;
mod durability;
mod isolation;
mod ops;
mod quickstart;
mod reload;
mod reload_rejects;
mod rollout;
mod routing;
mod sources;
mod unload_safety;
mod watch;
mod webhook;
