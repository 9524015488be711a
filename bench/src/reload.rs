//! `orgloop-load reload`: a fixed open-loop load while the module is reloaded again and again,
//! alternating two builds of the http plugin (0.1.0 and 0.2.0) — the README's promise ("none is
//! lost, duplicated or held up by it", old libraries unloaded) checked under load, and what a
//! reload costs: swap and stage time from the daemon's report, drain time from the module status,
//! latency around each swap from the sink, memory and mappings from `/proc`.
//!
//! Each reload waits for the previous generation's drain to end first, so no drain is cut short
//! (that would cancel deliveries on purpose, and the point here is that nothing is lost).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::analysis::analyze;
use crate::artifacts::Artifacts;
use crate::clock::now_ns;
use crate::control::Control;
use crate::daemon::Daemon;
use crate::generator::{self, Load, Plan};
use crate::module::{self, Scratch, NAME, SOURCE};
use crate::procfs::{children, maps, rss_kb, CpuMeter};
use crate::report::{self, mb, thousands, Out};
use crate::sink::{Arrival, Sink};
use crate::stats::{median, percentile, Summary};
use crate::ReloadArgs;

/// One reload, as the tool and the daemon saw it.
struct Swap {
    requested_ns: u64,
    /// When the report came back: the swap happened just before.
    done_ns: u64,
    swap_us: f64,
    stage_ms: f64,
    inflight_at_swap: u64,
    forced_previous: bool,
    drain_ms: u64,
    cancelled: u64,
    pinned: u64,
    unloaded: u64,
}

/// The daemon's footprint after some number of reloads.
struct Sample {
    reloads: u64,
    rss_kb: u64,
    maps: usize,
    /// Mappings of files under the daemon's `ORGLOOP_HOME` (its private plugin copies).
    plugin_maps: usize,
    /// Plugin copies on disk in the daemon's run directory.
    plugin_files: usize,
    /// Plugin processes (`isolation: process`), and their memory together.
    processes: usize,
    processes_rss_kb: u64,
}

pub async fn run(
    args: &ReloadArgs,
    artifacts: &Artifacts,
    rebuild: bool,
    out: &Out,
) -> Result<Value, String> {
    tokio::task::block_in_place(|| artifacts.ensure_built(rebuild))?;
    let v1 = artifacts.plugin("http");
    let v2 = tokio::task::block_in_place(|| artifacts.http_variant("0.2.0"))?;
    let scratch = Scratch::new("reload")?;
    let sink = Sink::start().await?;
    let dir = scratch.0.join("module");
    let home = scratch.0.join("home");
    module::write(
        &dir,
        &sink.hook_url(),
        &artifacts.plugin("filters"),
        &v1,
        None,
    )?;
    let env = Daemon::env(&args.daemon_env);
    let mut daemon =
        tokio::task::block_in_place(|| Daemon::start(&artifacts.orgloop(), &[&dir], &home, &env))?;
    let control = Control::new(daemon.port, &daemon.token()?);
    control.status(NAME).await?;
    report::daemon(out, artifacts, &daemon, &args.daemon_env);
    out.line(format!(
        "reload under load: {:.0} events/s open loop; {} reloads alternating http 0.1.0 / 0.2.0 after {:.0} s steady; cap {:.0} s",
        args.rate, args.reloads, args.steady, args.max_time
    ));

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let plan = Plan {
        addrs: vec![([127, 0, 0, 1], daemon.port).into()],
        path: format!("/webhook/{SOURCE}"),
        load: Load::Rate(args.rate),
        connections: args.connections,
        duration: Duration::from_secs_f64(args.steady + args.max_time + args.tail + 60.0),
        max_events: u64::MAX,
        stop: stop.clone(),
        bot_every: 0,
        max_queued: 100_000,
    };
    let (daemon_cpu, load_start_ns) = (CpuMeter::start_tree(daemon.pid), now_ns());
    let load = tokio::spawn(generator::run(plan));
    tokio::time::sleep(Duration::from_secs_f64(args.steady)).await;

    let sample = |reloads| footprint(daemon.pid, &home, reloads);
    let mut samples = vec![sample(0)];
    let mut swaps: Vec<Swap> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(args.max_time);
    let mut failure = None;
    for i in 0..args.reloads {
        if Instant::now() >= deadline {
            failure = Some(format!(
                "time cap of {:.0} s reached after {i} reloads",
                args.max_time
            ));
            break;
        }
        match reload_once(&control, &dir, if i % 2 == 0 { &v2 } else { &v1 }).await {
            Ok(s) => swaps.push(s),
            Err(e) => {
                failure = Some(format!("reload {} failed: {e}", i + 1));
                break;
            }
        }
        let done = swaps.len() as u64;
        if done.is_multiple_of(args.sample_every.max(1)) {
            samples.push(sample(done));
        }
        if (i + 1) % 100 == 0 {
            eprintln!("  ... {} reloads", i + 1);
        }
        if args.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    }
    if samples
        .last()
        .is_some_and(|s| s.reloads != swaps.len() as u64)
    {
        samples.push(sample(swaps.len() as u64));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.tail)).await;
    stop.store(true, Ordering::SeqCst);
    let gen = load
        .await
        .map_err(|e| format!("the generator failed: {e}"))??;
    let daemon_cores = daemon_cpu.cores();
    let record = sink
        .collect(
            gen.accepted.len() as u64,
            Duration::from_secs_f64(args.grace),
        )
        .await;
    let warnings = daemon.warnings();
    tokio::task::block_in_place(|| daemon.stop());
    let a = analyze(&gen, record, 0);

    let w = args.window_ms * 1_000_000;
    let warmup_end = load_start_ns + 1_000_000_000;
    let split = split_latency(&a.deliveries, &swaps, w, warmup_end);
    let swap_us: Vec<u64> = swaps.iter().map(|s| (s.swap_us * 1e3) as u64).collect();
    let swap_us = Summary::of_ns(swap_us);
    let stage: Vec<f64> = swaps.iter().map(|s| s.stage_ms).collect();
    let mut stage_sorted: Vec<u64> = swaps.iter().map(|s| (s.stage_ms * 1e3) as u64).collect();
    stage_sorted.sort_unstable();
    let drain: Vec<f64> = swaps.iter().map(|s| s.drain_ms as f64).collect();
    let mut drain_sorted: Vec<u64> = swaps.iter().map(|s| s.drain_ms).collect();
    drain_sorted.sort_unstable();
    let pinned: u64 = swaps.iter().map(|s| s.pinned).sum();
    let unloaded: u64 = swaps.iter().map(|s| s.unloaded).sum();
    let cancelled: u64 = swaps.iter().map(|s| s.cancelled).sum();
    let forced = swaps.iter().filter(|s| s.forced_previous).count();
    let inflight: Vec<f64> = swaps.iter().map(|s| s.inflight_at_swap as f64).collect();
    let ratio = split.after.p99_us / split.steady.p99_us.max(1e-9);

    for line in a.lines() {
        out.line(format!("  {line}"));
    }
    out.line(format!("  reloads done: {} ({} pinned library closes, {unloaded} unloaded, {cancelled} deliveries cancelled, {forced} drains cut short)", swaps.len(), pinned));
    out.line(format!(
        "  swap {:.1} µs p50, {:.1} µs p99, {:.1} µs max   stage {:.1} ms p50, {:.1} ms p99   drain {:.0} ms p50, {} ms p99, {} ms max   in flight at swap {:.0} p50",
        swap_us.p50_us,
        swap_us.p99_us,
        swap_us.max_us,
        median(&stage),
        percentile(&stage_sorted, 0.99) as f64 / 1e3,
        median(&drain),
        percentile(&drain_sorted, 0.99),
        drain_sorted.last().copied().unwrap_or(0),
        median(&inflight)
    ));
    out.line(format!(
        "  latency, steady state ({} events)      {}",
        split.steady.count,
        split.steady.line()
    ));
    out.line(format!(
        "  latency, {} ms after a swap ({} events) {}",
        args.window_ms,
        split.after.count,
        split.after.line()
    ));
    out.line(format!(
        "  latency, during staging ({} events)     {}",
        split.staging.count,
        split.staging.line()
    ));
    out.line(format!("  p99 after a swap / steady p99 = {ratio:.2}"));
    let versions: Vec<String> = a
        .versions
        .iter()
        .map(|(v, n)| format!("{}.{}: {}", v / 100, v % 100, thousands(*n as f64)))
        .collect();
    out.line(format!("  deliveries by http plugin version: {}   daemon cpu {daemon_cores:.2} cores, warnings {warnings}", versions.join(", ")));
    out.line("  reloads   rss        maps   plugin maps   plugin copies on disk   plugin processes (rss)");
    for s in &samples {
        out.line(format!(
            "  {:>7}   {:>9}  {:>5}   {:>11}   {:>21}   {:>3} ({})",
            s.reloads,
            mb(s.rss_kb),
            s.maps,
            s.plugin_maps,
            s.plugin_files,
            s.processes,
            mb(s.processes_rss_kb)
        ));
    }
    if let Some(f) = &failure {
        out.line(format!("  stopped early: {f}"));
    }

    Ok(json!({
        "benchmark": "reload",
        "daemon_env": args.daemon_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "rate": args.rate,
        "daemon": artifacts.built_at(),
        "reloads_requested": args.reloads,
        "reloads_done": swaps.len(),
        "stopped_early": failure,
        "result": a.to_json(),
        "versions": a.versions.iter().map(|(v, n)| (format!("{}.{}", v / 100, v % 100), *n)).collect::<std::collections::BTreeMap<_, _>>(),
        "swap_us": swap_us.to_json(),
        "stage_ms": {"p50": median(&stage), "p99": percentile(&stage_sorted, 0.99) as f64 / 1e3},
        "drain_ms": {"p50": median(&drain), "p99": percentile(&drain_sorted, 0.99), "max": drain_sorted.last()},
        "inflight_at_swap_p50": median(&inflight),
        "pinned": pinned,
        "unloaded": unloaded,
        "cancelled": cancelled,
        "drains_cut_short": forced,
        "latency_steady": split.steady.to_json(),
        "latency_after_swap": split.after.to_json(),
        "latency_staging": split.staging.to_json(),
        "window_ms": args.window_ms,
        "p99_ratio": ratio,
        "daemon_cores": daemon_cores,
        "daemon_warnings": warnings,
        "footprint": samples.iter().map(|s| json!({"reloads": s.reloads, "rss_kb": s.rss_kb, "maps": s.maps, "plugin_maps": s.plugin_maps, "plugin_files": s.plugin_files, "processes": s.processes, "processes_rss_kb": s.processes_rss_kb})).collect::<Vec<_>>(),
    }))
}

/// Installs `build` as the module's http plugin, reloads, and waits until the old generation
/// has drained and its libraries are closed.
async fn reload_once(control: &Control, dir: &Path, build: &Path) -> Result<Swap, String> {
    tokio::task::block_in_place(|| module::install(dir, "http", build))?;
    let requested_ns = now_ns();
    let report = control.reload(NAME, &json!({})).await?;
    let done_ns = now_ns();
    if report["outcome"] != "swapped" {
        return Err(format!("expected a swap, got {report}"));
    }
    let from = report["from_generation"]
        .as_u64()
        .ok_or("no from_generation in the report")?;
    let drain = wait_drain(control, from).await?;
    let count = |state: &str| {
        drain["libraries"].as_array().map_or(0, |l| {
            l.iter().filter(|l| l["result"]["state"] == state).count() as u64
        })
    };
    Ok(Swap {
        requested_ns,
        done_ns,
        swap_us: report["swap_us"].as_f64().unwrap_or(f64::NAN),
        stage_ms: report["stage_ms"].as_f64().unwrap_or(f64::NAN),
        inflight_at_swap: report["draining"]["inflight"].as_u64().unwrap_or(0),
        forced_previous: !report["forced_previous_drain"].is_null(),
        drain_ms: drain["duration_ms"].as_u64().unwrap_or(0),
        cancelled: drain["cancelled"].as_u64().unwrap_or(0),
        pinned: count("pinned"),
        // With `isolation: process`, a retired build's child process exited instead.
        unloaded: count("unloaded") + count("process_exited"),
    })
}

/// Polls the module status until generation `from` has drained; returns its drain report.
async fn wait_drain(control: &Control, from: u64) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let status = control.status(NAME).await?;
        let draining = status["draining"].as_array().is_some_and(|d| !d.is_empty());
        if !draining && status["last_drain"]["generation"].as_u64() == Some(from) {
            return Ok(status["last_drain"].clone());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "generation {from} did not drain within 40 s: {status}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn footprint(pid: u32, home: &Path, reloads: u64) -> Sample {
    let (maps, plugin_maps) = maps(pid, home).unwrap_or((0, 0));
    let plugin_files = count_files(&home.join("run").join(pid.to_string()));
    let processes = children(pid);
    Sample {
        reloads,
        rss_kb: rss_kb(pid).unwrap_or(0),
        maps,
        plugin_maps,
        plugin_files,
        processes: processes.len(),
        processes_rss_kb: processes.into_iter().filter_map(rss_kb).sum(),
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    count_files(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

/// Latency of events by when they were sent: in steady state (after a second of warm-up, away
/// from every reload), while a reload was being staged, and in the window after a swap.
struct Split {
    steady: Summary,
    staging: Summary,
    after: Summary,
}

fn split_latency(
    deliveries: &[Arrival],
    swaps: &[Swap],
    window_ns: u64,
    warmup_end_ns: u64,
) -> Split {
    let (mut steady, mut staging, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for d in deliveries {
        let latency = d.at_ns.saturating_sub(d.sent_ns);
        // The last reload requested at or before the send (reloads are sequential, so the
        // latest one also has the latest swap).
        let k = swaps.partition_point(|s| s.requested_ns <= d.sent_ns);
        match k.checked_sub(1).map(|k| &swaps[k]) {
            Some(s) if d.sent_ns < s.done_ns => staging.push(latency),
            Some(s) if d.sent_ns < s.done_ns + window_ns => after.push(latency),
            _ if d.sent_ns >= warmup_end_ns => steady.push(latency),
            _ => {}
        }
    }
    Split {
        steady: Summary::of_ns(steady),
        staging: Summary::of_ns(staging),
        after: Summary::of_ns(after),
    }
}
