//! `orgloop module unload <name> [--drain-timeout D] [--force]`.

use std::time::Duration;

use clap::Args;
use orgloop_plugin_sdk::duration::parse as parse_duration;

use super::{error_of, print_drain, Client};
use crate::cli::exit;

#[derive(Debug, Args)]
pub struct UnloadArgs {
    /// The module's name.
    pub name: String,
    /// How long in-flight deliveries may run on (default: the module's drain_timeout).
    #[arg(long, value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Cancel in-flight deliveries at once.
    #[arg(long)]
    pub force: bool,
}

pub fn run(client: &Client, args: &UnloadArgs) -> u8 {
    let mut path = format!("/control/modules/{}?force={}", args.name, args.force);
    if let Some(d) = args.drain_timeout {
        path.push_str(&format!("&drain_timeout_ms={}", d.as_millis()));
    }
    match client.delete(&path) {
        Ok(a) if a.status == 200 => {
            println!("✓ module {} unloaded", args.name);
            print_drain(&a.body["drain"]);
            exit::OK
        }
        Ok(a) => error_of(&a),
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILURE
        }
    }
}
