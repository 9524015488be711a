//! `orgloop validate [MODULE_DIR] [--json]`: everything a load would check, without starting
//! anything: YAML syntax and schema, references between files, plugin files, ABI, versions,
//! exported symbols, and each object's constructor. Exit 0 when valid, 2 when not.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use super::exit;
use crate::config::{self, ConfigError};
use crate::control::error::error_json;
use crate::module::generation::Generation;
use crate::module::stage::{stage, StageCtx};
use crate::plugin::http_client::HttpClient;
use crate::plugin::store::PluginStore;
use crate::plugin::Loader;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The module directory. Default: the current directory.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ValidateArgs) -> ExitCode {
    crate::home::clean_stale_runs();
    let store = PluginStore::new(crate::home::run_dir().join("plugins"));
    let result = check(&args.dir, &Loader::new(store.clone()));
    let code = report(&args, &result);
    drop(result);
    store.remove_all();
    ExitCode::from(code)
}

fn check(dir: &std::path::Path, loader: &Loader) -> Result<Generation, Vec<ConfigError>> {
    let spec = Arc::new(config::load_module(dir)?);
    let ctx = StageCtx {
        loader,
        http: &HttpClient::default(),
        emitter: Arc::new(|_| Err("not running: this is a validation".into())),
        route_stats: &HashMap::new(),
        number: 0,
        previous: None,
        start_loggers: false,
    };
    stage(spec, &ctx)
}

fn report(args: &ValidateArgs, result: &Result<Generation, Vec<ConfigError>>) -> u8 {
    match (result, args.json) {
        (Ok(g), true) => {
            let plugins: Vec<_> = g
                .libraries
                .iter()
                .map(|(n, l)| json!({"name": n, "version": l.manifest().version, "hash": l.hash(), "symbols": l.manifest().symbols}))
                .collect();
            println!(
                "{}",
                json!({"valid": true, "module": g.spec.name, "plugins": plugins, "errors": []})
            );
            exit::OK
        }
        (Err(errors), true) => {
            println!(
                "{}",
                json!({"valid": false, "errors": errors.iter().map(error_json).collect::<Vec<_>>()})
            );
            exit::INVALID
        }
        (Ok(g), false) => {
            let s = &g.spec;
            println!("✓ module {} ({})", s.name, s.dir.display());
            for (name, lib) in &g.libraries {
                println!(
                    "  plugin {name} {} ({})",
                    lib.manifest().version,
                    crate::plugin::library::short(lib.hash())
                );
            }
            println!(
                "  {} sources, {} actors, {} transforms, {} routes, {} loggers",
                s.sources.len(),
                s.actors.len(),
                s.transforms.len(),
                s.routes.len(),
                s.loggers.len()
            );
            exit::OK
        }
        (Err(errors), false) => {
            for e in errors {
                println!("✗ {e}");
            }
            println!(
                "{} error{}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            exit::INVALID
        }
    }
}
