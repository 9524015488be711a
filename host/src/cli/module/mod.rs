//! `orgloop module ...`: manage the modules of a running daemon through its control API.

pub mod list;
pub mod load;
pub mod reload;
pub mod rollback;
pub mod status;
pub mod unload;

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::exit;
use crate::control::client::{Answer, Client};
use crate::plugin::library::short;

#[derive(Debug, Args)]
pub struct ModuleArgs {
    #[command(subcommand)]
    pub command: ModuleCommand,
    /// Port of the running daemon.
    #[arg(long, global = true, env = "ORGLOOP_PORT", default_value_t = 4800)]
    pub port: u16,
}

#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// List the daemon's modules.
    List(list::ListArgs),
    /// Show one module: generation, plugins, draining generations, last reload.
    Status(status::StatusArgs),
    /// Load a module directory into the running daemon.
    Load(load::LoadArgs),
    /// Stop a module: let its deliveries finish, then unload its plugins.
    Unload(unload::UnloadArgs),
    /// Re-read a module from disk and swap it in without a restart (at once, or as a canary).
    Reload(reload::ReloadArgs),
    /// Swap back to the previous generation while a rollout (canary, bake) keeps it loaded.
    Rollback(rollback::RollbackArgs),
}

pub fn run(args: ModuleArgs) -> ExitCode {
    let client = match Client::new(args.port) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let code = match args.command {
        ModuleCommand::List(a) => list::run(&client, &a),
        ModuleCommand::Status(a) => status::run(&client, &a),
        ModuleCommand::Load(a) => load::run(&client, &a),
        ModuleCommand::Unload(a) => unload::run(&client, &a),
        ModuleCommand::Reload(a) => reload::run(&client, &a),
        ModuleCommand::Rollback(a) => rollback::run(&client, &a),
    };
    ExitCode::from(code)
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(exit::FAILURE)
}

/// Turns an error answer into a message and an exit code: 2 for invalid configuration, 1 else.
fn error_of(answer: &Answer) -> u8 {
    eprintln!(
        "error: {}",
        answer.body["error"].as_str().unwrap_or("request failed")
    );
    print_errors(&answer.body);
    if answer.status == 422 {
        exit::INVALID
    } else {
        exit::FAILURE
    }
}

fn print_errors(body: &Value) {
    for e in body["errors"].as_array().into_iter().flatten() {
        println!("  ✗ {}", e["text"].as_str().unwrap_or_default());
    }
}

/// `0.1.0 (2272e8d4d836)`.
fn build_text(build: &Value) -> String {
    if build.is_null() {
        return "—".into();
    }
    format!(
        "{} ({})",
        build["version"].as_str().unwrap_or("?"),
        short(build["hash"].as_str().unwrap_or_default())
    )
}

/// The end of a drain, as `reload --wait` and `unload` print it.
/// A rollout's state or end, with the two generations' figures when they were compared.
fn print_rollout(r: &Value) {
    let phase = r["phase"].as_str().unwrap_or_default();
    let (prev, new) = (&r["previous_generation"], &r["new_generation"]);
    let what = match phase {
        "canary" => format!(
            "canary: generation {new} takes {}% of new events, generation {prev} the rest",
            r["share_percent"]
        ),
        "baking" => {
            format!("generation {new} takes every event and bakes; generation {prev} stays loaded")
        }
        "promoted" => format!("generation {new} promoted; generation {prev} drains"),
        "rolled_back" => format!("ROLLED BACK to generation {prev}; generation {new} drains"),
        other => other.to_owned(),
    };
    println!("  rollout: {what}");
    if let Some(why) = r["reason"].as_str() {
        println!("    why: {why}");
    }
    let c = &r["comparison"];
    for (label, f) in [("previous", &c["previous"]), ("new", &c["new"])] {
        if f.is_null() {
            continue;
        }
        println!(
            "    {label:<8} transform errors {:.1}% of {}, delivery failures {:.1}% of {}, p99 {}",
            f["transform_error_rate"].as_f64().unwrap_or(0.0) * 100.0,
            f["transform_calls"],
            f["failure_rate"].as_f64().unwrap_or(0.0) * 100.0,
            f["attempts"],
            f["p99_ms"]
                .as_f64()
                .map_or("-".to_owned(), |ms| format!("{ms:.1} ms"))
        );
    }
}

fn print_drain(drain: &Value) {
    let cancelled = drain["cancelled"].as_u64().unwrap_or(0);
    println!(
        "  generation {} drained in {:.1} s{}",
        drain["generation"],
        drain["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
        match cancelled {
            0 => String::new(),
            n => format!(
                ", {n} deliver{} cancelled{}",
                if n == 1 { "y" } else { "ies" },
                if drain["forced"] == true {
                    " (forced)"
                } else {
                    ""
                }
            ),
        }
    );
    for lib in drain["libraries"].as_array().into_iter().flatten() {
        let result = match lib["result"]["state"].as_str() {
            Some("unloaded") => "unloaded (verified: no longer mapped)".to_owned(),
            Some("pinned") => format!(
                "PINNED: {}",
                lib["result"]["reason"].as_str().unwrap_or_default()
            ),
            Some("process_exited") => format!(
                "process exited (verified: pid {} is gone; it {})",
                lib["result"]["pid"],
                lib["result"]["status"].as_str().unwrap_or_default()
            ),
            other => other.unwrap_or("?").to_owned(),
        };
        println!(
            "  plugin {} {} {result}",
            lib["plugin"].as_str().unwrap_or_default(),
            build_text(&lib["build"])
        );
    }
}
