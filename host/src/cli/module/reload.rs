//! `orgloop module reload <name> [--drain-timeout D] [--force] [--dry-run] [--wait] [--json]`:
//! exit 0 when applied (or nothing changed), 2 when rejected (the old generation keeps serving),
//! 1 for anything else.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use orgloop_plugin_sdk::duration::parse as parse_duration;
use serde_json::{json, Value};

use super::{build_text, error_of, print_drain, print_errors, print_rollout, Client};
use crate::cli::exit;
use crate::config::spec::parse_share;

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The module's name.
    pub name: String,
    /// How long the old generation's deliveries may run on (default: the module's drain_timeout).
    #[arg(long, value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Cancel the old generation's deliveries at once.
    #[arg(long)]
    pub force: bool,
    /// Validate and show what would change, without applying it.
    #[arg(long)]
    pub dry_run: bool,
    /// Give the new generation this share of new events first (e.g. `10%`), by a stable hash
    /// of the event id; the rest stay on the current generation.
    #[arg(long, value_parser = parse_share_arg)]
    pub canary: Option<u32>,
    /// How long the canary lasts before the new generation gets every event (default `60s`).
    #[arg(long, value_parser = parse_duration)]
    pub canary_for: Option<Duration>,
    /// Compare the new generation with the previous one on live traffic (transform errors,
    /// delivery failures, p99 latency) and swap back at once when it does worse.
    #[arg(long)]
    pub auto_rollback: bool,
    /// With --auto-rollback: how long the comparison goes on after the full swap (default `30s`).
    #[arg(long, value_parser = parse_duration)]
    pub bake: Option<Duration>,
    /// Stay until the old generation has drained and its libraries are unloaded (with a rollout:
    /// until it was promoted or rolled back, and the losing generation drained).
    #[arg(long)]
    pub wait: bool,
    /// In a cluster: reload only the daemon on --port (by default every node reloads, or none).
    #[arg(long)]
    pub local: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_share_arg(text: &str) -> Result<u32, String> {
    parse_share(text)
}

pub fn run(client: &Client, args: &ReloadArgs) -> u8 {
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    let body = json!({
        "drain_timeout_ms": ms(args.drain_timeout),
        "force": args.force,
        "dry_run": args.dry_run,
        "canary": args.canary.map(|bp| format!("{}%", bp as f64 / 100.0)),
        "canary_for_ms": ms(args.canary_for),
        "auto_rollback": args.auto_rollback.then_some(true),
        "bake_ms": ms(args.bake),
        "local": args.local,
    });
    let answer = match client.post(&format!("/control/modules/{}/reload", args.name), &body) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    let report = answer.body;
    if answer.status != 200 && report["outcome"] != "rejected" {
        return error_of(&super::Answer {
            status: answer.status,
            body: report,
        });
    }
    if report["cluster"] == true {
        if args.json {
            println!("{report}");
        } else {
            print_cluster(&report);
        }
        return match report["outcome"].as_str() {
            Some("rejected") => exit::INVALID,
            Some("incomplete") => exit::FAILURE,
            _ => exit::OK,
        };
    }
    // With a rollout, the generation that drains is known once it ends.
    let ended = match (args.wait, report["rollout"]["new_generation"].as_u64()) {
        (true, Some(generation)) => match wait_for_rollout(client, &args.name, generation) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        },
        _ => None,
    };
    let draining = match &ended {
        Some(r) if r["phase"] == "rolled_back" => r["new_generation"].as_u64(),
        Some(r) => r["previous_generation"].as_u64(),
        None => report["draining"]["generation"].as_u64(),
    };
    let drained = match (args.wait, draining) {
        (true, Some(generation)) => {
            match wait_for_drain(client, &args.name, generation, !args.json) {
                Ok(d) => Some(d),
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::FAILURE;
                }
            }
        }
        _ => None,
    };
    if args.json {
        let mut out = report.clone();
        if let Some(r) = &ended {
            out["rollout"] = r.clone();
        }
        if let Some(d) = &drained {
            out["drain"] = d.clone();
        }
        println!("{out}");
    } else {
        print_report(&report);
        if let Some(r) = &ended {
            print_rollout(r);
        }
        if let Some(d) = &drained {
            print_drain(d);
        }
    }
    if report["outcome"] == "rejected" {
        exit::INVALID
    } else if ended.is_some_and(|r| r["phase"] == "rolled_back") {
        exit::ROLLED_BACK
    } else {
        exit::OK
    }
}

/// The module's status from the daemon, or why there is none.
fn module_status(client: &Client, name: &str) -> Result<Value, String> {
    let answer = client.get(&format!("/control/modules/{name}"))?;
    if answer.status != 200 {
        return Err(answer.body["error"]
            .as_str()
            .unwrap_or("the module is gone")
            .to_owned());
    }
    Ok(answer.body)
}

/// Polls the module's status until the rollout to `generation` was promoted or rolled back.
fn wait_for_rollout(client: &Client, name: &str, generation: u64) -> Result<Value, String> {
    loop {
        let m = module_status(client, name)?;
        let r = &m["rollout"];
        if r.is_null() {
            return Err(format!(
                "module {name} has no rollout any more: it was unloaded, or the daemon restarted"
            ));
        }
        if r["new_generation"].as_u64() != Some(generation) {
            // Another rollout began: it ended this one first, and its reload's report says how.
            return Err(format!(
                "the rollout of generation {generation} was ended by another reload (see its report, or `orgloop module status {name}`)"
            ));
        }
        if matches!(r["phase"].as_str(), Some("promoted" | "rolled_back")) {
            return Ok(r.clone());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A reload across the cluster: the outcome, then each node's part.
fn print_cluster(r: &Value) {
    let name = r["module"].as_str().unwrap_or_default();
    let nodes = r["nodes"].as_array().map_or(&[][..], Vec::as_slice);
    match r["outcome"].as_str().unwrap_or_default() {
        "swapped" => println!("✓ {name}: reloaded on {} nodes", nodes.len()),
        "rejected" => println!("✗ {name}: reload refused; nothing changed on any node"),
        "incomplete" => println!(
            "! {name}: swapped, but not confirmed by {} (see their status)",
            r["unconfirmed"]
        ),
        other => println!("= {name}: {other} on every node"),
    }
    for n in nodes {
        let o = &n["outcome"];
        let what = match o["outcome"].as_str() {
            Some("swapped") => format!(
                "generation {} → {} (swap {:.0} µs)",
                o["from_generation"],
                o["to_generation"],
                o["swap_us"].as_f64().unwrap_or(0.0)
            ),
            Some(other) => other.replace('_', " "),
            None => n["prepared"].as_str().unwrap_or("?").to_owned(),
        };
        println!("  node {:<24} {what}", n["node"].as_str().unwrap_or("?"));
        if o["outcome"] == "rejected" {
            print_errors(o);
        }
    }
}

fn print_report(r: &Value) {
    let name = r["module"].as_str().unwrap_or_default();
    match r["outcome"].as_str().unwrap_or_default() {
        "rejected" => {
            println!("✗ {name}: reload rejected; the current generation keeps serving");
            print_errors(r);
            return;
        }
        "unchanged" => println!(
            "= {name}: nothing changed; generation {} keeps serving{}",
            r["from_generation"],
            coalesced(r)
        ),
        "dry_run" => println!("~ {name}: dry run, nothing applied; a reload would change:"),
        _ => println!(
            "✓ {name}: generation {} → {} (swap {:.0} µs, staged in {:.1} ms){}",
            r["from_generation"],
            r["to_generation"],
            r["swap_us"].as_f64().unwrap_or(0.0),
            r["stage_ms"].as_f64().unwrap_or(0.0),
            coalesced(r)
        ),
    }
    for p in r["plugins"].as_array().into_iter().flatten() {
        let (old, new) = (build_text(&p["old"]), build_text(&p["new"]));
        let change = if old == new {
            format!("{old} unchanged")
        } else {
            format!("{old} → {new}")
        };
        println!(
            "  plugin {:<12} {change}",
            p["name"].as_str().unwrap_or_default()
        );
    }
    for kind in ["routes", "transforms", "sources", "actors"] {
        let d = &r["diff"][kind];
        let parts: Vec<String> = ["added", "removed", "changed", "kept"]
            .iter()
            .filter_map(|k| {
                let names: Vec<&str> = d[*k].as_array()?.iter().filter_map(Value::as_str).collect();
                (!names.is_empty()).then(|| format!("{k}: {}", names.join(", ")))
            })
            .collect();
        if !parts.is_empty() {
            println!("  {kind:<11} {}", parts.join("; "));
        }
    }
    if let Some(f) = r["forced_previous_drain"].as_object() {
        println!(
            "  the previous old generation {} was still draining: forced to stop ({} cancelled)",
            f["generation"], f["cancelled"]
        );
    }
    if let Some(e) = r["ended_rollout"].as_object() {
        println!(
            "  the rollout of generation {} was under way: ended first ({})",
            e["new_generation"],
            e["phase"].as_str().unwrap_or_default().replace('_', " ")
        );
    }
    if let Some(o) = r["rollout"].as_object() {
        let how = match o["share_percent"].as_f64() {
            Some(share) => format!(
                "canary: {share}% of new events for {:.0} s",
                o["phase_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
            ),
            None => format!(
                "baking for {:.0} s",
                o["phase_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
            ),
        };
        let auto = if o["auto_rollback"] == true {
            ", rolled back at once if it does worse"
        } else {
            ""
        };
        println!(
            "  rollout: {how}{auto}; generation {} stays loaded until then",
            o["previous_generation"]
        );
    }
    if let Some(d) = r["draining"].as_object() {
        println!(
            "  generation {} drains: {} deliveries in flight, drain timeout {:.1} s",
            d["generation"],
            d["inflight"],
            d["drain_timeout_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
        );
    }
}

fn coalesced(r: &Value) -> &'static str {
    if r["coalesced"] == true {
        " (answered by a reload already under way)"
    } else {
        ""
    }
}

/// Polls the module's status until generation `generation` has drained; shows a progress line.
fn wait_for_drain(
    client: &Client,
    name: &str,
    generation: u64,
    progress: bool,
) -> Result<Value, String> {
    loop {
        let m = module_status(client, name)?;
        if m["last_drain"]["generation"].as_u64() == Some(generation) {
            if progress {
                eprint!("\r\x1b[K");
            }
            return Ok(m["last_drain"].clone());
        }
        let draining = m["draining"].as_array().and_then(|a| {
            a.iter()
                .find(|d| d["generation"].as_u64() == Some(generation))
        });
        let Some(d) = draining else {
            // Its drain started before the reload answered: it is over, and a later drain's
            // report took its place.
            return Err(format!(
                "generation {generation} is no longer draining, and a later drain replaced its report"
            ));
        };
        if progress {
            let left = d["drain_timeout_ms"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(d["elapsed_ms"].as_u64().unwrap_or(0));
            eprint!("\r\x1b[K  draining generation {generation}: {} in flight, {:.0} s before the drain timeout", d["inflight"], left as f64 / 1000.0);
            let _ = std::io::stderr().flush();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
