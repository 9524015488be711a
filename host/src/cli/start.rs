//! `orgloop start [MODULE_DIR...]`: runs the daemon in the foreground until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::net::TcpListener;

use super::exit;
use crate::control::{server, AppState};
use crate::module::{LoadError, Registry};
use crate::plugin::store::PluginStore;
use crate::plugin::Loader;
use orgloop_plugin_sdk::duration::parse as parse_duration;

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Module directories (each with an orgloop.yaml). Default: the current directory.
    pub modules: Vec<PathBuf>,
    /// Port of the HTTP server on 127.0.0.1 (webhooks, API).
    #[arg(long, env = "ORGLOOP_PORT", default_value_t = 4800)]
    pub port: u16,
    /// How long in-flight deliveries may run on at shutdown before they are cancelled.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

pub fn run(args: StartArgs) -> ExitCode {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    runtime.block_on(daemon(args))
}

async fn daemon(args: StartArgs) -> ExitCode {
    let started = Instant::now();
    crate::home::clean_stale_runs();
    let store = PluginStore::new(crate::home::run_dir().join("plugins"));
    let registry = Arc::new(Registry::new(Loader::new(store.clone())));

    let listener = match TcpListener::bind(("127.0.0.1", args.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on 127.0.0.1:{}: {e} (is another orgloop running? choose another with --port)", args.port);
            return ExitCode::from(exit::FAILURE);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(args.port);

    let dirs = if args.modules.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.modules
    };
    let mut loaded = Vec::new();
    let mut invalid = false;
    for dir in &dirs {
        match registry.load(dir).await {
            Ok(m) => loaded.push(m.name.clone()),
            Err(e) => {
                invalid |= matches!(e, LoadError::Invalid(_));
                eprintln!("error: module {} not loaded:\n{e}", dir.display());
            }
        }
    }
    if loaded.is_empty() {
        store.remove_all();
        return ExitCode::from(if invalid {
            exit::INVALID
        } else {
            exit::FAILURE
        });
    }
    tracing::info!(port, modules = %loaded.join(", "), startup_ms = started.elapsed().as_millis() as u64, "orgloop listening on http://127.0.0.1:{port}");

    let state = AppState {
        registry: registry.clone(),
        started,
        port,
    };
    let result = server::serve(listener, state, shutdown_signal()).await;
    tracing::info!(
        "shutting down: waiting up to {:?} for in-flight deliveries",
        args.shutdown_timeout
    );
    registry.shutdown(args.shutdown_timeout).await;
    drop(registry);
    store.remove_all();
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("error: server failed: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORGLOOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
