//! `orgloop cluster status [--json]`: the nodes of the cluster the daemon on `--port` joined —
//! each with its id, address, uptime, module generations and events in hand.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::exit;
use crate::control::client::Client;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the nodes of the cluster.
    Status {
        /// Port of a running daemon of the cluster.
        #[arg(long, env = "ORGLOOP_PORT", default_value_t = 4800)]
        port: u16,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ClusterArgs) -> ExitCode {
    let ClusterCommand::Status { port, json } = args.command;
    let status = Client::new(port).and_then(|c| c.get("/api/status"));
    let cluster = match status {
        Ok(a) if a.status == 200 => a.body["cluster"].clone(),
        Ok(a) => {
            eprintln!("error: HTTP {}: {}", a.status, a.body["error"]);
            return ExitCode::from(exit::FAILURE);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    if cluster.is_null() {
        eprintln!("error: the daemon on port {port} is not in a cluster (start it with --cluster)");
        return ExitCode::from(exit::FAILURE);
    }
    if json {
        println!("{cluster}");
    } else {
        print(&cluster);
    }
    ExitCode::from(exit::OK)
}

fn print(c: &Value) {
    let state = if c["connected"] == true {
        "connected"
    } else {
        "NOT CONNECTED"
    };
    println!(
        "cluster {} at {} ({state}; asked node {})",
        c["name"].as_str().unwrap_or("?"),
        c["url"].as_str().unwrap_or("?"),
        c["node"].as_str().unwrap_or("?")
    );
    let Some(nodes) = c["nodes"].as_array() else {
        println!("  nodes unknown: {}", c["nodes"]["error"]);
        return;
    };
    for n in nodes {
        let modules: Vec<String> = n["modules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                format!(
                    "{} gen {} ({} in flight)",
                    m["name"].as_str().unwrap_or("?"),
                    m["generation"],
                    m["inflight"]
                )
            })
            .collect();
        println!(
            "  {:<24} {:<24} up {:>6.0} s  holds {:>5}  {}",
            n["id"].as_str().unwrap_or("?"),
            n["address"].as_str().unwrap_or("?"),
            n["uptime_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
            n["held"],
            modules.join(", ")
        );
    }
}
