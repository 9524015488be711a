//! `orgloop dlq list|show|replay|purge`: the dead letters of a running daemon, through its
//! control API.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::exit;
use crate::control::client::{Answer, Client};

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
    /// Port of the running daemon.
    #[arg(long, global = true, env = "ORGLOOP_PORT", default_value_t = 4800)]
    pub port: u16,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// Only those of this module.
        #[arg(long)]
        module: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter, with its event.
    Show {
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deliver dead letters again, through their module's current generation.
    Replay(Selection),
    /// Delete dead letters for good.
    Purge(Selection),
}

/// One dead letter by id, or all of them (of one module).
#[derive(Debug, Args)]
pub struct Selection {
    /// The dead letter's id.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<String>,
    /// Every dead letter (with --module, every one of that module).
    #[arg(long)]
    all: bool,
    /// With --all: only those of this module.
    #[arg(long, requires = "all")]
    module: Option<String>,
}

pub fn run(args: DlqArgs) -> ExitCode {
    let client = match Client::new(args.port) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let code = match args.command {
        DlqCommand::List { module, json } => list(&client, module.as_deref(), json),
        DlqCommand::Show { id, json } => show(&client, &id, json),
        DlqCommand::Replay(s) => act(&client, &s, "POST", "replayed"),
        DlqCommand::Purge(s) => act(&client, &s, "DELETE", "purged"),
    };
    ExitCode::from(code)
}

fn query(module: Option<&str>) -> String {
    module.map(|m| format!("?module={m}")).unwrap_or_default()
}

/// The answer's body when it is a success; else prints the error and gives the exit code.
fn ok(answer: Result<Answer, String>) -> Result<Value, u8> {
    match answer {
        Ok(a) if a.status < 300 => Ok(a.body),
        Ok(a) => {
            let error = a.body["error"].as_str().unwrap_or("request failed");
            eprintln!("error: {error}");
            Err(exit::FAILURE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(exit::FAILURE)
        }
    }
}

fn list(client: &Client, module: Option<&str>, as_json: bool) -> u8 {
    let letters = match ok(client.get(&format!("/control/dlq{}", query(module)))) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if as_json {
        println!("{letters}");
        return exit::OK;
    }
    let letters = letters.as_array().cloned().unwrap_or_default();
    if letters.is_empty() {
        println!("no dead letters");
        return exit::OK;
    }
    println!(
        "{:<20}  {:<24}  {:<16}  {:<16}  {:<8}  REASON",
        "ID", "DEAD AT", "MODULE", "ROUTE", "ATTEMPTS"
    );
    for d in &letters {
        println!(
            "{:<20}  {:<24}  {:<16}  {:<16}  {:<8}  {}",
            text(&d["id"]),
            text(&d["dead_at"]),
            text(&d["module"]),
            text(&d["route"]),
            d["attempts"],
            text(&d["reason"])
        );
    }
    exit::OK
}

fn show(client: &Client, id: &str, as_json: bool) -> u8 {
    let d = match ok(client.get(&format!("/control/dlq/{id}"))) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if as_json {
        println!("{d}");
        return exit::OK;
    }
    println!("dead letter {}", text(&d["id"]));
    for field in [
        "module",
        "route",
        "actor",
        "event_id",
        "reason",
        "last_error",
    ] {
        println!("  {field:<12} {}", text(&d[field]));
    }
    println!("  {:<12} {}", "attempts", d["attempts"]);
    println!("  {:<12} {}", "accepted_at", text(&d["accepted_at"]));
    println!("  {:<12} {}", "dead_at", text(&d["dead_at"]));
    let event = serde_json::to_string_pretty(&d["event"]).unwrap_or_default();
    println!("  event:\n{}", indent(&event));
    exit::OK
}

/// Replays or purges the selection; exit 1 if any letter was not handled.
fn act(client: &Client, s: &Selection, method: &str, done: &str) -> u8 {
    let path = match (&s.id, method) {
        (Some(id), "POST") => format!("/control/dlq/{id}/replay"),
        (Some(id), _) => format!("/control/dlq/{id}"),
        (None, "POST") => format!("/control/dlq/replay{}", query(s.module.as_deref())),
        (None, _) => format!("/control/dlq{}", query(s.module.as_deref())),
    };
    let answer = match method {
        "POST" => client.post(&path, &json!({})),
        _ => client.delete(&path),
    };
    let body = match ok(answer) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let handled = body[done].as_array().map_or(0, Vec::len);
    println!(
        "{done} {handled} dead letter{}",
        if handled == 1 { "" } else { "s" }
    );
    let failed = body["failed"].as_array().cloned().unwrap_or_default();
    for f in &failed {
        eprintln!("  ✗ {}: {}", text(&f["id"]), text(&f["error"]));
    }
    if failed.is_empty() {
        exit::OK
    } else {
        exit::FAILURE
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        other => other.to_string(),
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
