//! The `orgloop` binary.

use std::process::ExitCode;

use clap::Parser;
use orgloop::cli::{self, Cli, Command};

/// See `orgloop::allocator` for why, and for the options it needs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sets the allocator's options before the first allocation (an ELF constructor).
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = orgloop::allocator::tune;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Start(args) => cli::start::run(args),
        Command::Validate(args) => cli::validate::run(args),
        Command::Module(args) => cli::module::run(args),
        Command::Dlq(args) => cli::dlq::run(args),
        Command::Completions(args) => cli::completions::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Cluster(args) => cli::cluster::run(args),
        Command::Plugin(args) => cli::plugin::run(args),
        Command::PluginHost(args) => orgloop::plugin::process::child::run(&args.library),
    }
}
