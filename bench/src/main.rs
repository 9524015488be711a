//! `orgloop-load`: end-to-end load benchmarks of the real `orgloop` daemon (release build) over
//! real HTTP on 127.0.0.1 — the harness's own ceiling, throughput and latency, reload under load,
//! startup and idle memory, recovery after a crash. See BENCHMARKS.md at the repository root for how to read the numbers.
//!
//! Every run is bounded in events and in time and stops by itself.

mod analysis;
mod artifacts;
mod clock;
mod cluster;
mod control;
mod daemon;
mod disk;
mod generator;
mod machine;
mod module;
mod procfs;
mod recovery;
mod reload;
mod report;
mod rollback;
mod sampler;
mod sink;
mod startup;
mod stats;
mod throughput;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::generator::Load;

#[derive(Parser)]
#[command(
    name = "orgloop-load",
    about = "End-to-end load benchmarks for the orgloop daemon"
)]
struct Cli {
    /// Print one JSON object on stdout (the human summary goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Worker threads of the tool's own runtime (generator and sink).
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
    /// Rebuild the release daemon and plugins even when they exist.
    #[arg(long, global = true)]
    rebuild: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generator → sink directly, no daemon: the most this harness can measure on this machine.
    Ceiling(LoadArgs),
    /// Webhook → filter plugin → http plugin → sink through the release daemon.
    Throughput(ThroughputArgs),
    /// A fixed load while the module is reloaded N times, alternating two http plugin builds.
    Reload(ReloadArgs),
    /// Spawn → first 202, and idle memory, with the quickstart module.
    Startup(StartupArgs),
    /// Events stored while the sink is down, SIGKILL, restart: is every accepted event delivered?
    Recovery(RecoveryArgs),
    /// Reloads to a failing version with --auto-rollback under load: how fast the swap back comes.
    Rollback(RollbackArgs),
    /// N daemons with --cluster on a nats-server of its own, the load spread over them; a node
    /// killed mid-stream, or reloads across the nodes, on request.
    Cluster(ClusterArgs),
}

/// How much load, for how long.
#[derive(Args, Clone)]
pub struct LoadArgs {
    /// Open loop: events per second, sent on schedule whatever the answers do.
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Closed loop: this many senders, each waiting for its answer before sending again.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Stop sending after this many seconds.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub duration: f64,
    /// Stop sending after this many events.
    #[arg(long, default_value_t = u64::MAX, hide_default_value = true)]
    pub max_events: u64,
    /// Every Nth event carries "bot": true, which the module's filter drops (0: none).
    #[arg(long, default_value_t = 0)]
    pub bot_every: u64,
    /// Seconds to wait after the last send before an undelivered event counts as lost.
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    pub grace: f64,
    /// Open loop: keep-alive connections to send on (closed loop uses one per sender).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Open loop: at most this many events waiting for a free connection; further events are
    /// skipped (and counted).
    #[arg(long, default_value_t = 100_000)]
    pub max_queued: usize,
    /// Size of the first and last stretch of deliveries compared for decay.
    #[arg(long, default_value_t = 10_000)]
    pub window: usize,
    /// Also print latency by send time in buckets of this many milliseconds (0: no timeline).
    #[arg(long, default_value_t = 0)]
    pub timeline_ms: u64,
}

impl LoadArgs {
    pub fn load_or(&self, default: Load) -> Load {
        match (self.rate, self.concurrency) {
            (Some(r), _) => Load::Rate(r),
            (_, Some(n)) => Load::Closed(n.max(1)),
            _ => default,
        }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.grace)
    }
}

#[derive(Args, Clone)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// First measure the harness ceiling (closed loop) and report the daemon against it.
    #[arg(long)]
    pub with_ceiling: bool,
    /// Senders for the ceiling run when the daemon run is open loop.
    #[arg(long, default_value_t = 64)]
    pub ceiling_concurrency: usize,
    /// Seconds of the ceiling run (at most the main run's duration).
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub ceiling_duration: f64,
    /// Make the sink answer 503 from this many seconds into the run ...
    #[arg(long, value_parser = seconds)]
    pub sink_outage_at: Option<f64>,
    /// ... for this many seconds.
    #[arg(long, default_value_t = 2.0, value_parser = seconds)]
    pub sink_outage_for: f64,
    /// Extra environment for the daemon, KEY=VALUE (repeatable): for experiments such as
    /// TOKIO_WORKER_THREADS=1 or GLIBC_TUNABLES=..., reported with the result.
    #[arg(long, value_parser = key_value)]
    pub daemon_env: Vec<(String, String)>,
}

#[derive(Args, Clone)]
pub struct ReloadArgs {
    /// Open-loop load during the whole run, events per second.
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// How many reloads (alternating the two http plugin builds).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub reloads: u64,
    /// Pause between a drain's end and the next reload, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// Seconds of load before the first reload (the steady-state reference).
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    pub steady: f64,
    /// Seconds of load after the last reload.
    #[arg(long, default_value_t = 3.0, value_parser = seconds)]
    pub tail: f64,
    /// Stop reloading after this many seconds, however many are done.
    #[arg(long, default_value_t = 600.0, value_parser = seconds)]
    pub max_time: f64,
    /// Width of the window after each swap whose latency is compared with steady state, ms.
    #[arg(long, default_value_t = 1000)]
    pub window_ms: u64,
    /// Seconds to wait after the last send before an undelivered event counts as lost.
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    pub grace: f64,
    /// Keep-alive connections the load is sent on.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Sample RSS and mappings every this many reloads.
    #[arg(long, default_value_t = 100)]
    pub sample_every: u64,
    /// Extra environment for the daemon, KEY=VALUE (repeatable): ORGLOOP_ISOLATION=process
    /// reloads plugins that run in child processes.
    #[arg(long, value_parser = key_value)]
    pub daemon_env: Vec<(String, String)>,
}

#[derive(Args, Clone)]
pub struct StartupArgs {
    /// How many daemon starts to time (the median is reported).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=50))]
    pub runs: u64,
    /// Seconds to idle after the first 202 before reading the resident memory.
    #[arg(long, default_value_t = 1.0, value_parser = seconds)]
    pub idle: f64,
}

#[derive(Args, Clone)]
pub struct RecoveryArgs {
    /// Events to send while the sink answers 503 (all of them wait in the store at the kill).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub events: u64,
    /// Closed loop: this many senders, each waiting for its answer before sending again.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Stop sending after this many seconds, however many events were sent.
    #[arg(long, default_value_t = 300.0, value_parser = seconds)]
    pub send_for: f64,
    /// Seconds between the last answer and the kill (the store's size is read just before it).
    #[arg(long, default_value_t = 1.0, value_parser = seconds)]
    pub settle: f64,
    /// Seconds from the restart's spawn to wait for every accepted event to be delivered.
    #[arg(long, default_value_t = 120.0, value_parser = seconds)]
    pub timeout: f64,
    /// Extra environment for both daemons, KEY=VALUE (repeatable): ORGLOOP_DURABILITY=memory
    /// shows what the same crash costs without the store.
    #[arg(long, value_parser = key_value)]
    pub daemon_env: Vec<(String, String)>,
}

#[derive(Args, Clone)]
pub struct RollbackArgs {
    /// Open-loop load during the whole run, events per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How many failing reloads to time.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub trials: u64,
    /// Seconds of load before the first reload.
    #[arg(long, default_value_t = 3.0, value_parser = seconds)]
    pub steady: f64,
    /// Extra environment for the daemon, KEY=VALUE (repeatable).
    #[arg(long, value_parser = key_value)]
    pub daemon_env: Vec<(String, String)>,
}

#[derive(Args, Clone)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Daemons sharing the stream (each with a home of its own, on the same module directory).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub nodes: u64,
    /// SIGKILL the last node this many seconds into the load.
    #[arg(long, value_parser = seconds, conflicts_with = "reloads")]
    pub kill_at: Option<f64>,
    /// Reload the module through the first node this many times during the load, a second
    /// apart, and time each until every node has swapped.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub reloads: u64,
    /// The nodes' `--cluster-ack-wait`, in seconds: how long a killed node's events wait
    /// before they go to another node.
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    pub ack_wait: f64,
    /// The nats-server binary.
    #[arg(long, default_value = "nats-server")]
    pub nats_server: std::path::PathBuf,
    /// Extra environment for every node, KEY=VALUE (repeatable).
    #[arg(long, value_parser = key_value)]
    pub daemon_env: Vec<(String, String)>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok((k.to_owned(), v.to_owned()))
}

/// A positive number of seconds, at most an hour (every run must end by itself).
fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v > 0.0 && v <= 3600.0 {
        Ok(v)
    } else {
        Err("must be more than 0 and at most 3600 seconds".into())
    }
}

fn main() -> ExitCode {
    clock::now_ns();
    let cli = Cli::parse();
    let out = report::Out { json: cli.json };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let artifacts = artifacts::Artifacts::locate();
    let busy = machine::busy_processes();
    if !busy.is_empty() {
        out.line(format!(
            "warning: other heavy processes are running, numbers may be disturbed: {}",
            busy.join(", ")
        ));
    }
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Ceiling(a) => throughput::ceiling(a, &out).await,
            Command::Throughput(a) => {
                throughput::throughput(a, &artifacts, cli.rebuild, &out).await
            }
            Command::Reload(a) => reload::run(a, &artifacts, cli.rebuild, &out).await,
            Command::Startup(a) => startup::run(a, &artifacts, cli.rebuild, &out).await,
            Command::Recovery(a) => recovery::run(a, &artifacts, cli.rebuild, &out).await,
            Command::Rollback(a) => rollback::run(a, &artifacts, cli.rebuild, &out).await,
            Command::Cluster(a) => cluster::run(a, &artifacts, cli.rebuild, &out).await,
        }
    });
    let busy_after = machine::busy_processes();
    if !busy_after.is_empty() {
        out.line(format!(
            "warning: other heavy processes were running at the end: {}",
            busy_after.join(", ")
        ));
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(mut value) => {
            value["machine"] = machine::describe();
            value["busy_before"] = busy.into();
            value["busy_after"] = busy_after.into();
            out.finish(&value);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
