//! `orgloop module load <dir>`.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{error_of, Client};
use crate::cli::exit;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The module directory (with its orgloop.yaml).
    pub dir: PathBuf,
}

pub fn run(client: &Client, args: &LoadArgs) -> u8 {
    let dir = args.dir.canonicalize().unwrap_or_else(|_| args.dir.clone());
    match client.post("/control/modules", &json!({"path": dir})) {
        Ok(a) if a.status == 201 => {
            println!(
                "✓ module {} loaded (generation {})",
                a.body["name"].as_str().unwrap_or_default(),
                a.body["generation"]["number"]
            );
            exit::OK
        }
        Ok(a) => error_of(&a),
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILURE
        }
    }
}
