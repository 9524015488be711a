//! The `orgloop` command line: one file per subcommand. Each only reads its arguments and calls
//! into the library.

pub mod cluster;
pub mod completions;
pub mod dlq;
pub mod module;
pub mod plugin;
pub mod start;
pub mod status;
pub mod validate;

use clap::{Parser, Subcommand};

/// orgloop: a declarative event router for autonomous AI organizations, with hot-swappable plugin
/// modules.
#[derive(Debug, Parser)]
#[command(name = "orgloop", version = version(), about, long_about = None)]
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
    /// Start a new plugin crate (transform, actor or source) that builds and tests as it is.
    Plugin(plugin::PluginArgs),
    /// Summarise the running daemon: modules, generations, health, queues, last reloads.
    Status(status::StatusArgs),
    /// The cluster a daemon started with --cluster is in: its nodes.
    Cluster(cluster::ClusterArgs),
    /// Print a shell completion script (bash, zsh or fish).
    Completions(completions::CompletionsArgs),
    /// The plugin process of an `isolation: process` plugin (started by the daemon).
    #[command(hide = true)]
    PluginHost(PluginHostArgs),
}

/// `orgloop plugin-host <library>`.
#[derive(Debug, clap::Args)]
pub struct PluginHostArgs {
    /// The daemon's private copy of the plugin build.
    pub library: std::path::PathBuf,
}

/// `orgloop --version`: the daemon's version, and the plugin ABI and SDK it loads plugins of.
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let sdk = orgloop_plugin_sdk::abi::AbiStamp::CURRENT.sdk_version;
        format!(
            "{} (plugin ABI {}, orgloop-plugin-sdk {}.{}.{})",
            env!("CARGO_PKG_VERSION"),
            orgloop_plugin_sdk::abi::ABI_VERSION,
            sdk[0],
            sdk[1],
            sdk[2]
        )
    })
}

/// Exit codes shared by the subcommands.
pub mod exit {
    /// Worked (or nothing to change).
    pub const OK: u8 = 0;
    /// Something else failed: unreachable daemon, I/O, a bug.
    pub const FAILURE: u8 = 1;
    /// The configuration is invalid.
    pub const INVALID: u8 = 2;
    /// A reload was rolled back (its new generation did worse, or by hand).
    pub const ROLLED_BACK: u8 = 3;
}
