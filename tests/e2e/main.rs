//! End-to-end tests: the real `orgloop` binary, the real example plugins, real HTTP on 127.0.0.1.
//! One test binary (it links once); one module per behaviour.

mod harness;

mod bad_input;
mod loader;
mod quickstart;
mod routing;
mod webhook;
