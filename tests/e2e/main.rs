//! End-to-end tests: the real `orgloop` binary, the real example plugins, real HTTP on 127.0.0.1.
//! One test binary (it links once); one module per behaviour. `process.rs` runs most of them
//! again with every plugin in a child process.

/// Where the daemons of this suite run plugins that do not say (`orgloop start --isolation`).
pub const ISOLATION: &str = "in_process";

mod harness;
mod nats;
mod swap;

mod bad_input;
mod churn;
mod cluster;
mod control;
mod crashes;
mod drain;
mod durability;
mod isolation;
mod loader;
mod ops;
mod quickstart;
mod reload;
mod reload_rejects;
mod rollout;
mod routing;
mod sources;
mod stalls;
mod unload_safety;
mod watch;
mod webhook;
