//! `orgloop module status <name> [--json]`.

use clap::Args;
use serde_json::Value;

use super::{build_text, error_of, print_drain, print_errors, print_rollout, Client};
use crate::cli::exit;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The module's name.
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(client: &Client, args: &StatusArgs) -> u8 {
    let m = match client.get(&format!("/control/modules/{}", args.name)) {
        Ok(a) if a.status == 200 => a.body,
        Ok(a) => return error_of(&a),
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    if args.json {
        println!("{m}");
        return exit::OK;
    }
    let g = &m["generation"];
    println!(
        "module {} ({})",
        m["name"].as_str().unwrap_or_default(),
        m["directory"].as_str().unwrap_or_default()
    );
    println!(
        "  generation {}: {} routes, {} sources, {} actors, {} transforms, {} deliveries in flight",
        g["number"], g["routes"], g["sources"], g["actors"], g["transforms"], g["inflight"]
    );
    if let Some(why) = m["degraded"].as_str() {
        println!("  DEGRADED: {why}");
    }
    if m["transform_overruns"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  transform calls past their deadline so far: {}",
            m["transform_overruns"]
        );
    }
    let q = &m["queue"];
    if !q.is_null() {
        println!(
            "  queue: {} unfinished (events and deliveries; {} of {} bytes){}",
            q["entries"],
            q["bytes"],
            q["max_bytes"],
            match q["oldest_ms"].as_u64() {
                Some(ms) => format!(", oldest waiting {:.1} s", ms as f64 / 1000.0),
                None => String::new(),
            }
        );
    }
    for (id, a) in m["actors"].as_object().into_iter().flatten() {
        println!(
            "  actor {id}: {} in flight, {} waiting, {} retrying, {} dead letters{}",
            a["inflight"],
            a["waiting"],
            a["retrying"],
            a["dead"],
            if a["failing"] == true {
                " (failing: one probe at a time)"
            } else {
                ""
            }
        );
    }
    for p in g["plugins"].as_array().into_iter().flatten() {
        println!(
            "  plugin {} {}{}",
            p["name"].as_str().unwrap_or_default(),
            build_text(&p["build"]),
            process_text(&p["process"])
        );
    }
    for d in m["draining"].as_array().into_iter().flatten() {
        println!(
            "  draining generation {}: {} deliveries in flight, {:.1} s of {:.1} s drain timeout used",
            d["generation"],
            d["inflight"],
            d["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
            d["drain_timeout_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
        );
    }
    if !m["rollout"].is_null() {
        print_rollout(&m["rollout"]);
    }
    if !m["last_drain"].is_null() {
        println!("  last drain:");
        print_drain(&m["last_drain"]);
    }
    if !m["last_failed_reload"].is_null() {
        println!(
            "  last failed reload at {}:",
            m["last_failed_reload"]["at"].as_str().unwrap_or_default()
        );
        print_errors(&m["last_failed_reload"]);
    }
    exit::OK
}

/// `, process 1234 up, 2 restarts (last: was killed by signal 6 (SIGABRT))` for a plugin with
/// `isolation: process`; empty otherwise.
fn process_text(p: &Value) -> String {
    if p.is_null() {
        return String::new();
    }
    let mut text = format!(", process {}", p["state"].as_str().unwrap_or_default());
    if let Some(pid) = p["pid"].as_u64() {
        text.push_str(&format!(" (pid {pid})"));
    }
    if let Some(n) = p["restarts"].as_u64().filter(|n| *n > 0) {
        text.push_str(&format!(", {n} restarts"));
    }
    if let Some(exit) = p["last_exit"]["status"].as_str() {
        text.push_str(&format!(" (last exit: it {exit})"));
    }
    text
}
