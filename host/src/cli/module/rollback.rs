//! `orgloop module rollback <name>`: ends a rollout by swapping back to the previous generation.

use clap::Args;

use super::{error_of, print_rollout, Client};
use crate::cli::exit;

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The module's name.
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(client: &Client, args: &RollbackArgs) -> u8 {
    match client.post(
        &format!("/control/modules/{}/rollback", args.name),
        &serde_json::json!({}),
    ) {
        Ok(a) if a.status == 200 => {
            if args.json {
                println!("{}", a.body);
            } else {
                println!("✓ {}: rolled back", args.name);
                print_rollout(&a.body["rollout"]);
            }
            exit::OK
        }
        Ok(a) => error_of(&a),
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILURE
        }
    }
}
