//! The `orgloop` command line: one file per subcommand. Each only reads its arguments and calls
//! into the library.

pub mod dlq;
pub mod module;
pub mod start;
pub mod validate;

use clap::{Parser, Subcommand};

/// orgloop: a declarative event router for autonomous AI organizations, with hot-swappable plugin
/// modules.
#[derive(Debug, Parser)]
#[command(name = "orgloop", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground with the given modules.
    Start(start::StartArgs),
    /// Check a module: YAML, references, plugins (ABI, version, symbols) and constructors.
    Validate(validate::ValidateArgs),
    /// Manage the modules of a running daemon: list, status, load, unload, reload.
    Module(module::ModuleArgs),
    /// Inspect, replay or purge the dead letters of a running daemon.
    Dlq(dlq::DlqArgs),
}

/// Exit codes shared by the subcommands.
pub mod exit {
    /// Worked (or nothing to change).
    pub const OK: u8 = 0;
    /// Something else failed: unreachable daemon, I/O, a bug.
    pub const FAILURE: u8 = 1;
    /// The configuration is invalid.
    pub const INVALID: u8 = 2;
}
