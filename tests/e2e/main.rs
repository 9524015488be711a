//! End-to-end tests: the real `orgloop` binary, the real example plugins, real HTTP on 127.0.0.1.
//! One test binary (it links once); one module per behaviour.

mod harness;
mod swap;

mod bad_input;
mod churn;
mod control;
mod drain;
mod durability;
mod isolation;
mod loader;
mod ops;
mod quickstart;
mod reload;
mod reload_rejects;
mod routing;
mod sources;
mod stalls;
mod unload_safety;
mod watch;
mod webhook;
