//! `isolation: process`: a plugin library loaded in a child process of the daemon, so that a
//! crash of the plugin (an abort, a segfault, running out of memory) is a crash of that child
//! only.
//!
//! The child is this same binary (`orgloop plugin-host <library>`, see [`child`]); it maps the
//! daemon's private copy of the build with the same checks as in the daemon, and builds and runs
//! the objects the daemon asks for. The daemon's side ([`supervisor`]) talks to it over its
//! stdin and stdout with length-prefixed frames ([`wire`], written by [`outbox`]), restarts it
//! with backoff when it dies, and stops it when the library is retired: in process mode, a
//! reload starts the new build in a new child beside the old one, and the old child exits once
//! its generation has drained — the process being gone is the proof of the unload.
//!
//! Objects in the child are [`Remote`] handles in the daemon; the YAML, the SDK and the
//! plugin's code are the same in either mode.

pub mod child;
mod heartbeat;
mod link;
pub mod outbox;
pub mod remote;
mod run;
mod stderr;
pub mod supervisor;
pub mod wire;

pub use remote::Remote;
pub use supervisor::{ProcessStatus, Supervisor};
