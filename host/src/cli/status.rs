//! `orgloop status [--json]`: the running daemon at a glance — its version, store and uptime,
//! each module's generation, health, queue and last reload, and the dead letters.

use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Value};

use super::exit;
use crate::control::client::Client;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Port of the running daemon.
    #[arg(long, env = "ORGLOOP_PORT", default_value_t = 4800)]
    pub port: u16,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StatusArgs) -> ExitCode {
    match collect(args.port) {
        Ok(status) if args.json => println!("{status}"),
        Ok(status) => print(&status),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    }
    ExitCode::from(exit::OK)
}

/// `/api/status`, `/control/modules` and `/control/dlq`, in one object.
fn collect(port: u16) -> Result<Value, String> {
    let client = Client::new(port)?;
    let get = |path: &str| match client.get(path) {
        Ok(a) if a.status == 200 => Ok(a.body),
        Ok(a) => Err(format!("{path}: HTTP {}: {}", a.status, a.body["error"])),
        Err(e) => Err(e),
    };
    Ok(json!({
        "daemon": get("/api/status")?,
        "modules": get("/control/modules")?,
        "dead_letters": get("/control/dlq")?.as_array().map_or(0, Vec::len),
    }))
}

fn print(s: &Value) {
    let d = &s["daemon"];
    println!(
        "orgloop {} (pid {}, port {}): {}, up {:.0} s, durability {}",
        d["version"].as_str().unwrap_or("?"),
        d["pid"],
        d["http_port"],
        d["health"].as_str().unwrap_or("?"),
        d["uptime_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
        d["durability"].as_str().unwrap_or("?"),
    );
    for m in s["modules"].as_array().into_iter().flatten() {
        let q = &m["queue"];
        let last = m["last_reload"]["outcome"].as_str().unwrap_or("none");
        println!(
            "  {:<16} generation {:<4} {:<8} {} unfinished{}, last reload: {last}",
            m["name"].as_str().unwrap_or("?"),
            m["generation"]["number"],
            m["health"].as_str().unwrap_or("?"),
            q["entries"],
            match q["oldest_ms"].as_u64() {
                Some(ms) => format!(" (oldest {:.1} s)", ms as f64 / 1000.0),
                None => String::new(),
            },
        );
        if let Some(why) = m["degraded"].as_str() {
            println!("    degraded: {why}");
        }
    }
    println!("  dead letters: {}", s["dead_letters"]);
}
