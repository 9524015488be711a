//! Module lifecycle. A module ([`running::Module`]) is a sequence of [`generation::Generation`]s:
//! [`stage`] builds one, [`reload`] swaps it in, [`drain`] retires the old one, and [`registry`]
//! holds the running modules. [`executor`] gives each module threads of its own, [`poller`] runs
//! plugin sources, [`watch`] reloads on file changes, and [`report`] is what all of it tells the
//! control API.

pub mod drain;
pub mod executor;
pub mod generation;
pub mod health;
pub mod poller;
pub mod registry;
pub mod reload;
pub mod report;
pub mod rollout;
pub mod running;
pub mod stage;
pub mod watch;

pub use generation::Generation;
pub use registry::{LoadError, Registry};
pub use reload::ReloadOptions;
pub use running::Module;
