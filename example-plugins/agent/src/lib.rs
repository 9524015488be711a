//! # agent — a stand-in for coding-agent sessions
//!
//! A plugin (`agent`) with an actor, `agent::session` ([`Session`]), that behaves like an agent
//! session from the daemon's point of view: it runs for a while, can be cancelled, and reports its
//! end as an `actor.stopped` event that flows back into the module. It lets the daemon's drain,
//! cancellation and event loop-back be tested without a real agent, and shows the shape such an
//! actor should have: all waiting on the host's timer, all events through the host, no threads.
//!
//! A second actor, `agent::noop` ([`Noop`]), accepts every delivery at once: for benchmarks and
//! for wiring tests.

use orgloop_plugin_sdk::duration;
mod noop;
mod session;

pub use noop::{Noop, NoopConfig};
pub use session::{Session, SessionConfig};

orgloop_plugin_sdk::export_plugin! {
    name: "agent",
    actors: {
        "session" => Session,
        "noop" => Noop,
    },
}
