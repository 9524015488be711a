//! Module lifecycle: a module is a sequence of [`generation::Generation`]s; [`stage`] builds one,
//! [`registry`] holds the running modules and swaps their current generation, [`poller`] runs
//! plugin sources.

pub mod generation;
pub mod poller;
pub mod registry;
pub mod stage;

pub use generation::Generation;
pub use registry::{LoadError, Module, Registry};
