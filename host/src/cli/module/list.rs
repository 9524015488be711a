//! `orgloop module list [--json]`.

use clap::Args;

use super::{error_of, Client};
use crate::cli::exit;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(client: &Client, args: &ListArgs) -> u8 {
    let answer = match client.get("/control/modules") {
        Ok(a) if a.status == 200 => a,
        Ok(a) => return error_of(&a),
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    if args.json {
        println!("{}", answer.body);
        return exit::OK;
    }
    println!(
        "{:<20} {:>10} {:>7} {:>9} {:>9}  PLUGINS",
        "MODULE", "GENERATION", "ROUTES", "INFLIGHT", "DRAINING"
    );
    for m in answer.body.as_array().into_iter().flatten() {
        let g = &m["generation"];
        let plugins: Vec<String> = g["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} {}",
                    p["name"].as_str().unwrap_or_default(),
                    p["build"]["version"].as_str().unwrap_or_default()
                )
            })
            .collect();
        println!(
            "{:<20} {:>10} {:>7} {:>9} {:>9}  {}",
            m["name"].as_str().unwrap_or_default(),
            g["number"].to_string(),
            g["routes"].to_string(),
            g["inflight"].to_string(),
            m["draining"].as_array().map_or(0, Vec::len),
            plugins.join(", ")
        );
    }
    exit::OK
}
