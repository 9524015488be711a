//! `orgloop start [MODULE_DIR...] [--watch]`: runs the daemon in the foreground until SIGINT or
//! SIGTERM. SIGHUP reloads every module. When a daemon already runs on the port, the modules are
//! loaded into it instead (as upstream).

use crate::config::spec::Isolation;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use orgloop_plugin_sdk::duration::parse as parse_duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use super::exit;
use crate::cluster::{Cluster, ClusterOptions};
use crate::config::render_errors;
use crate::control::auth::{create_token, read_token, token_path};
use crate::control::client::Client;
use crate::control::{server, AppState};
use crate::module::report::ReloadOutcome;
use crate::module::{LoadError, Registry, ReloadOptions};
use crate::plugin::store::PluginStore;
use crate::plugin::Loader;
use crate::queue::{Durability, Options as QueueOptions, Queue};

/// Size at which the event log starts a new segment file.
const SEGMENT_BYTES: u64 = 8 << 20;

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Module directories (each with an orgloop.yaml). Default: the current directory.
    pub modules: Vec<PathBuf>,
    /// Port of the HTTP server (webhooks, API, control). 0 picks a free one.
    #[arg(long, env = "ORGLOOP_PORT", default_value_t = 4800)]
    pub port: u16,
    /// Address the HTTP server listens on. 127.0.0.1 keeps it to this machine; `0.0.0.0` (or
    /// one of the machine's addresses) lets other machines send webhooks, as the nodes of a
    /// cluster behind a load balancer need. The control API still asks for its token.
    #[arg(long, env = "ORGLOOP_HOST", default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// How long in-flight deliveries may run on at shutdown before they are cancelled.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Reload a module when its files or its plugin libraries change.
    #[arg(long)]
    pub watch: bool,
    /// How long files must be quiet before a watched change reloads.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Where accepted events and dead letters are stored. Default: `$ORGLOOP_HOME/data`.
    #[arg(long, env = "ORGLOOP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `disk`: a webhook is answered 202 once its event is synced to disk, and nothing accepted
    /// is lost by a crash or a restart. `memory`: faster, and whatever waits is lost when the
    /// daemon stops or dies.
    #[arg(long, env = "ORGLOOP_DURABILITY", value_enum, default_value_t = Durability::Disk)]
    pub durability: Durability,
    /// Bytes of accepted events all modules together may keep waiting; beyond, webhooks answer
    /// 503 (each module also has its own `defaults.max_queue_bytes`).
    #[arg(long, env = "ORGLOOP_MAX_STORE_BYTES", default_value_t = 1 << 30)]
    pub max_store_bytes: u64,
    /// Close a connection that sends no complete request header for this long: a slow client,
    /// or an idle keep-alive connection.
    #[arg(long, env = "ORGLOOP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Answer 408 to a webhook whose body has not arrived whole after this long.
    #[arg(long, env = "ORGLOOP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Connections served at once; beyond, a new one is answered 503 and closed.
    #[arg(long, env = "ORGLOOP_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// The daemon's own log: `text` or `json` (one object a line).
    #[arg(long, env = "ORGLOOP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Where the code of a plugin runs when its `plugins:` entry does not say: `in_process`
    /// (mapped into the daemon, the fastest) or `process` (a supervised child process each, so a
    /// crashing plugin cannot take the daemon down).
    #[arg(long, env = "ORGLOOP_ISOLATION", default_value = "in_process")]
    pub isolation: Isolation,
    /// Join a cluster: share the events of the modules with every daemon connected to this
    /// NATS JetStream server (`nats://HOST:PORT`) under the same --cluster-name. Without it, the
    /// embedded store keeps the events.
    #[arg(long, env = "ORGLOOP_CLUSTER")]
    pub cluster: Option<String>,
    /// Names the cluster's stream, subjects and consumers.
    #[arg(long, env = "ORGLOOP_CLUSTER_NAME", default_value = "orgloop", value_parser = parse_cluster_name)]
    pub cluster_name: String,
    /// JetStream replicas of the stream when this daemon creates it (3 on a 3-server NATS
    /// cluster, so that the loss of one server loses nothing).
    #[arg(long, env = "ORGLOOP_CLUSTER_REPLICAS", default_value_t = 1)]
    pub cluster_replicas: usize,
    /// How long a daemon may hold an event without a sign of life before JetStream gives it to
    /// another (after a crash); a daemon alive renews it every third of this.
    #[arg(long, env = "ORGLOOP_CLUSTER_ACK_WAIT", default_value = "30s", value_parser = parse_ack_wait)]
    pub cluster_ack_wait: Duration,
    /// How many times the nodes may take an event and not finish it (each one died, or stopped,
    /// while holding it) before the next node that takes it dead-letters it whole instead: an
    /// event that crashes every node that routes it must not take the cluster down in turn.
    #[arg(long, env = "ORGLOOP_CLUSTER_MAX_DELIVER", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub cluster_max_deliver: u32,
    /// This daemon's id in the cluster (default: the host name and the HTTP port).
    #[arg(long, env = "ORGLOOP_NODE_ID")]
    pub node_id: Option<String>,
}

/// At least a second: a node renews what it holds every third of it.
fn parse_ack_wait(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{text}: the ack wait is at least 1s"));
    }
    Ok(d)
}

/// A cluster name is part of stream, subject and consumer names: letters, digits, `-`, `_`.
fn parse_cluster_name(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?}: a cluster name has letters, digits, '-' and '_' only"
        ))
    }
}

pub fn run(args: StartArgs) -> ExitCode {
    init_tracing(args.log_format);
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
    let listener = match runtime.block_on(listen(args.host, args.port)) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && token_path(args.port).exists() => {
            drop(runtime);
            return register_into_running(&args);
        }
        Err(e) => {
            eprintln!(
                "error: cannot listen on {}: {e} (choose another port with --port)",
                std::net::SocketAddr::new(args.host, args.port)
            );
            return ExitCode::from(exit::FAILURE);
        }
    };
    ExitCode::from(runtime.block_on(daemon(args, listener)))
}

/// A daemon already listens on the port: hand it the modules.
fn register_into_running(args: &StartArgs) -> ExitCode {
    let client = match Client::listening_on(Some(args.host), args.port) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    println!(
        "orgloop already runs on port {}; loading the modules into it",
        args.port
    );
    let dirs = if args.modules.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.modules.clone()
    };
    let worst = dirs
        .into_iter()
        .map(|dir| super::module::load::run(&client, &super::module::load::LoadArgs { dir }))
        .max()
        .unwrap_or(exit::OK);
    ExitCode::from(worst)
}

/// Binds `host`:`port` with a deep accept backlog (the standard library's 128 overflows when
/// many senders connect at once, and each overflow costs the sender a 1 s retry).
async fn listen(host: std::net::IpAddr, port: u16) -> std::io::Result<TcpListener> {
    let socket = match host {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(std::net::SocketAddr::new(host, port))?;
    socket.listen(4096)
}

/// This machine's name, for a node's default id and address.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".to_owned())
}

async fn daemon(args: StartArgs, listener: TcpListener) -> u8 {
    let started = Instant::now();
    crate::home::clean_stale_runs();
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(args.port);
    let cluster = match &args.cluster {
        None => None,
        Some(url) => {
            let joined = Cluster::join(ClusterOptions {
                url: url.clone(),
                name: args.cluster_name.clone(),
                replicas: args.cluster_replicas,
                ack_wait: args.cluster_ack_wait,
                max_deliver: args.cluster_max_deliver,
                max_bytes: args.max_store_bytes,
                node: args
                    .node_id
                    .clone()
                    .unwrap_or_else(|| format!("{}:{port}", hostname())),
            })
            .await;
            match joined {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::FAILURE;
                }
            }
        }
    };
    let queue = match Queue::open(&QueueOptions {
        durability: args.durability,
        dir: args
            .data_dir
            .clone()
            .unwrap_or_else(|| crate::home::home().join("data")),
        max_bytes: args.max_store_bytes,
        segment_bytes: SEGMENT_BYTES,
        cluster,
    }) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("error: cannot open the event store: {e}");
            return exit::FAILURE;
        }
    };
    let store = PluginStore::new(crate::home::run_dir().join("plugins"));
    let registry = Arc::new(Registry::new(
        Loader::new(store.clone()).with_default_isolation(args.isolation),
        queue,
    ));
    if let Some(cluster) = registry.queue.cluster() {
        // Where the other machines reach this node: its name when it listens on every address.
        let address = if args.host.is_unspecified() {
            format!("http://{}:{port}", hostname())
        } else {
            format!("http://{}", std::net::SocketAddr::new(args.host, port))
        };
        crate::cluster::nodes::announce(cluster.clone(), Arc::downgrade(&registry), address);
        crate::cluster::reload::serve(cluster, Arc::downgrade(&registry));
    }
    let token = match create_token(port) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "error: cannot write the control token {}: {e}",
                token_path(port).display()
            );
            return exit::FAILURE;
        }
    };

    let dirs = if args.modules.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.modules.clone()
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
        cleanup(&store, port, &token);
        return if invalid {
            exit::INVALID
        } else {
            exit::FAILURE
        };
    }
    if args.watch {
        registry.watch_all(args.debounce);
    }
    // Registered before READY=1: the default action of these signals would end the daemon.
    let stop_signal = shutdown_signal();
    match signal(SignalKind::hangup()) {
        Ok(hup) => {
            tokio::spawn(reload_on_sighup(registry.clone(), hup));
        }
        Err(e) => tracing::warn!("SIGHUP will not reload: {e}"),
    }
    tracing::info!(
        port,
        modules = %loaded.join(", "),
        watch = args.watch,
        durability = ?args.durability,
        startup_ms = started.elapsed().as_millis() as u64,
        "orgloop listening on http://{}",
        std::net::SocketAddr::new(args.host, port)
    );
    crate::systemd::ready(&format!(
        "listening on {}; modules: {}",
        std::net::SocketAddr::new(args.host, port),
        loaded.join(", ")
    ));
    crate::systemd::spawn_watchdog();

    let state = AppState {
        registry: registry.clone(),
        started,
        port,
        token: Arc::from(token.as_str()),
        body_timeout: args.body_timeout,
        stopping: Arc::default(),
    };
    let limits = server::Limits {
        header_timeout: args.header_timeout,
        max_connections: args.max_connections as usize,
    };
    let stopping = state.stopping.clone();
    let shutdown = async move {
        stop_signal.await;
        // Not ready from here on (`/readyz`), while open requests are still answered.
        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        crate::systemd::stopping();
    };
    let result = server::serve(listener, state, limits, shutdown).await;
    tracing::info!(
        "shutting down: waiting up to {:?} for in-flight deliveries",
        args.shutdown_timeout
    );
    registry.shutdown(args.shutdown_timeout).await;
    if let Some(cluster) = registry.queue.cluster() {
        cluster.leave().await;
    }
    drop(registry);
    cleanup(&store, port, &token);
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: server failed: {e}");
            exit::FAILURE
        }
    }
}

/// Removes this process's plugin copies and, if it is still ours, the token file.
fn cleanup(store: &PluginStore, port: u16, token: &str) {
    store.remove_all();
    if read_token(port).is_ok_and(|t| t == token) {
        let _ = std::fs::remove_file(token_path(port));
    }
}

/// SIGHUP reloads every module (so a service manager's reload works).
async fn reload_on_sighup(registry: Arc<Registry>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading every module");
        crate::systemd::reloading();
        for m in registry.modules() {
            match registry.reload(&m.name, &ReloadOptions::default()).await {
                Ok(ReloadOutcome::Rejected { errors, .. }) => {
                    tracing::warn!(module = %m.name, "reload rejected; the current generation keeps serving:\n{}", render_errors(&errors))
                }
                Ok(ReloadOutcome::Unchanged(_)) => {
                    tracing::info!(module = %m.name, "nothing changed")
                }
                _ => {}
            }
        }
        crate::systemd::ready("reloaded");
    }
}

/// Completes at SIGTERM or SIGINT. The handlers are installed when this is called, not when it
/// is first polled, so that a signal in between is not taken by its default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORGLOOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => fmt.try_init(),
        LogFormat::Json => fmt.json().try_init(),
    };
}

/// How the daemon writes its own log (the events' log phases go to the module's loggers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}
