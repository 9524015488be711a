//! `ceiling` and `throughput`: the same generator and sink, once talking to each other directly
//! (the most this harness can measure on this machine), once through the daemon.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::analysis::{analyze, Analysis};
use crate::artifacts::Artifacts;
use crate::daemon::Daemon;
use crate::disk::{data_dir, dir_bytes};
use crate::generator::{self, Load, Plan};
use crate::module::{self, Scratch, SOURCE};
use crate::procfs::{tree_rss_kb, CpuMeter};
use crate::report::{self, mb, size, thousands, Out};
use crate::sampler::Sampler;
use crate::sink::Sink;
use crate::{LoadArgs, ThroughputArgs};

/// `orgloop-load ceiling`.
pub async fn ceiling(args: &LoadArgs, out: &Out) -> Result<Value, String> {
    let load = args.load_or(Load::Closed(64));
    out.line(format!(
        "harness ceiling: generator → sink, no daemon; {}, {:.0} s",
        load.describe(),
        args.duration
    ));
    let (a, tool_cores) = run_ceiling(load, args, args.duration()).await?;
    for l in a.lines() {
        out.line(format!("  {l}"));
    }
    out.line(format!("  cpu: tool {tool_cores:.2} cores"));
    let mut result = json!({"benchmark": "ceiling", "load": load_json(load), "result": a.to_json(), "tool_cores": tool_cores});
    if args.timeline_ms > 0 {
        result["timeline"] = timeline(&a, args.timeline_ms, out);
    }
    Ok(result)
}

/// The generator posting webhook-shaped requests straight to a sink.
async fn run_ceiling(
    load: Load,
    args: &LoadArgs,
    duration: Duration,
) -> Result<(Analysis, f64), String> {
    let sink = Sink::start().await?;
    let plan = Plan {
        addrs: vec![sink.addr()],
        path: format!("/webhook/{SOURCE}"),
        load,
        connections: args.connections,
        duration,
        max_events: args.max_events,
        stop: Arc::default(),
        bot_every: 0,
        max_queued: args.max_queued,
    };
    let tool = CpuMeter::start(std::process::id());
    let gen = generator::run(plan).await?;
    let tool_cores = tool.cores();
    let record = sink.collect(gen.accepted.len() as u64, args.grace()).await;
    Ok((analyze(&gen, record, 0), tool_cores))
}

/// `orgloop-load throughput`.
pub async fn throughput(
    args: &ThroughputArgs,
    artifacts: &Artifacts,
    rebuild: bool,
    out: &Out,
) -> Result<Value, String> {
    let l = &args.load;
    let load = l.load_or(Load::Closed(32));
    tokio::task::block_in_place(|| artifacts.ensure_built(rebuild))?;

    let mut ceiling = None;
    if args.with_ceiling {
        let c_load = Load::Closed(l.concurrency.unwrap_or(args.ceiling_concurrency));
        let c_duration = Duration::from_secs_f64(args.ceiling_duration.min(l.duration));
        out.line(format!(
            "harness ceiling: generator → sink, no daemon; {}, {:.0} s",
            c_load.describe(),
            c_duration.as_secs_f64()
        ));
        let (c, tool_cores) = run_ceiling(c_load, l, c_duration).await?;
        for line in c.lines() {
            out.line(format!("  {line}"));
        }
        ceiling = Some((c_load, c, tool_cores));
    }

    let scratch = Scratch::new("throughput")?;
    let sink = Arc::new(Sink::start().await?);
    let dir = scratch.0.join("module");
    let home = scratch.0.join("home");
    module::write(
        &dir,
        &sink.hook_url(),
        &artifacts.plugin("filters"),
        &artifacts.plugin("http"),
        None,
    )?;
    let env = Daemon::env(&args.daemon_env);
    let mut daemon =
        tokio::task::block_in_place(|| Daemon::start(&artifacts.orgloop(), &[&dir], &home, &env))?;
    report::daemon(out, artifacts, &daemon, &args.daemon_env);
    out.line(format!(
        "through the daemon: webhook → filters::filter → http::webhook → sink; {}, {:.0} s",
        load.describe(),
        l.duration
    ));
    // With `isolation: process`, memory and CPU count the plugin processes too.
    let rss_start = tree_rss_kb(daemon.pid).unwrap_or(0);
    // Both samplers stop when the run does; their caps only back up the run's own bounds
    // (sending, up to 15 s for the last answers, the grace) with a minute to spare.
    let run_secs = l.duration + 15.0 + l.grace + 60.0;
    let pid = daemon.pid;
    let rss = Sampler::start(
        Duration::from_millis(100),
        (run_secs * 10.0) as usize,
        move || tree_rss_kb(pid),
    );
    // Disk use once a second: with durable delivery every accepted event is written to the
    // data directory; these samples show whether compaction keeps it flat over a long run.
    let data = data_dir(&home);
    let disk = Sampler::start(Duration::from_secs(1), run_secs as usize, move || {
        Some(dir_bytes(&data))
    });
    let outage = args.sink_outage_at.map(|at| {
        let (sink, length) = (sink.clone(), Duration::from_secs_f64(args.sink_outage_for));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(at)).await;
            sink.set_down(true);
            tokio::time::sleep(length).await;
            sink.set_down(false);
        })
    });

    let plan = Plan {
        addrs: vec![([127, 0, 0, 1], daemon.port).into()],
        path: format!("/webhook/{SOURCE}"),
        load,
        connections: l.connections,
        duration: l.duration(),
        max_events: l.max_events,
        stop: Arc::default(),
        bot_every: l.bot_every,
        max_queued: l.max_queued,
    };
    let (daemon_cpu, tool_cpu) = (
        CpuMeter::start_tree(daemon.pid),
        CpuMeter::start(std::process::id()),
    );
    let gen = generator::run(plan).await?;
    let (daemon_cores, tool_cores) = (daemon_cpu.cores(), tool_cpu.cores());
    let expected = gen
        .accepted
        .iter()
        .filter(|a| !gen.is_bot(a.id, l.bot_every))
        .count() as u64;
    let record = sink.collect(expected, l.grace()).await;
    if let Some(o) = outage {
        o.abort();
        sink.set_down(false);
    }
    let rss_peak = rss.finish().await.max().max(rss_start);
    let disk = disk.finish().await;
    let rss_end = tree_rss_kb(daemon.pid).unwrap_or(0);
    let warnings = daemon.warnings();
    let crashed = daemon.exited();
    if let Some(status) = &crashed {
        std::thread::sleep(Duration::from_millis(200)); // let the log readers catch up
        out.line(format!(
            "  THE DAEMON EXITED DURING THE RUN ({status}); its last lines:"
        ));
        for l in daemon.last_lines(15) {
            out.line(format!("    {l}"));
        }
    }
    tokio::task::block_in_place(|| daemon.stop());
    let a = analyze(&gen, record, l.bot_every);

    for line in a.lines() {
        out.line(format!("  {line}"));
    }
    out.line(format!(
        "  cpu: daemon {daemon_cores:.2} cores, tool {tool_cores:.2} cores   daemon rss: start {}, peak {}, end {}   daemon warnings: {warnings}",
        mb(rss_start),
        mb(rss_peak),
        mb(rss_end)
    ));
    out.line(format!(
        "  data dir on disk, every {} s: min {}, max {}, last {}   over the run: {}",
        disk.every.as_secs(),
        size(disk.min()),
        size(disk.max()),
        size(disk.last()),
        disk.spread(12)
            .into_iter()
            .map(size)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut result = json!({
        "benchmark": "throughput",
        "load": load_json(load),
        "daemon": artifacts.built_at(),
        "result": a.to_json(),
        "daemon_cores": daemon_cores,
        "tool_cores": tool_cores,
        "daemon_rss_kb": {"start": rss_start, "peak": rss_peak, "end": rss_end},
        "data_dir_bytes": disk.to_json("bytes"),
        "daemon_warnings": warnings,
        "daemon_exited": crashed,
        "daemon_env": args.daemon_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
    });
    if let Some((first, last)) = a.first_and_last(l.window) {
        out.line(format!(
            "  first {} deliveries: {}/s, p99 {:.2} ms   last {}: {}/s, p99 {:.2} ms   (last/first {:.2})",
            first.events,
            thousands(first.delivered_per_s),
            first.latency.p99_us / 1e3,
            last.events,
            thousands(last.delivered_per_s),
            last.latency.p99_us / 1e3,
            last.delivered_per_s / first.delivered_per_s
        ));
        result["first_window"] = first.to_json();
        result["last_window"] = last.to_json();
    }
    let tenths = a.tenths();
    if !tenths.is_empty() {
        out.line(format!(
            "  delivered/s by tenth of the run: {}",
            tenths
                .iter()
                .map(|r| thousands(*r))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        result["tenths_delivered_per_s"] = json!(tenths);
    }
    if l.timeline_ms > 0 {
        result["timeline"] = timeline(&a, l.timeline_ms, out);
    }
    if args.sink_outage_at.is_some() {
        out.line(format!(
            "  sink outage of {:.1} s: {} deliveries refused (503), {} events lost",
            args.sink_outage_for, a.refused_by_sink, a.lost
        ));
        result["sink_outage_s"] = json!(args.sink_outage_for);
    }
    if let Some((c_load, c, tool_cores)) = ceiling {
        let share = a.delivered_per_s / c.delivered_per_s.max(1e-9);
        out.line(format!(
            "  daemon delivered {}/s = {:.0}% of the harness ceiling {}/s measured in this run",
            thousands(a.delivered_per_s),
            share * 100.0,
            thousands(c.delivered_per_s)
        ));
        result["ceiling"] =
            json!({"load": load_json(c_load), "result": c.to_json(), "tool_cores": tool_cores});
        result["share_of_ceiling"] = json!(share);
    }
    Ok(result)
}

/// Prints latency by send time in buckets (where a stall begins); returns it as JSON.
fn timeline(a: &Analysis, bucket_ms: u64, out: &Out) -> Value {
    let timeline = a.timeline(a.started_ns, bucket_ms);
    let zero = crate::clock::zero_monotonic().map_or(String::new(), |z| {
        format!(
            ", t=0 is CLOCK_MONOTONIC {:.3} s",
            z + a.started_ns as f64 / 1e9
        )
    });
    out.line(format!("  latency by send time ({bucket_ms} ms buckets{zero}): start s, deliveries, p50, p99, max (ms)"));
    for (t, s) in &timeline {
        out.line(format!(
            "    {t:>7.2}  {:>6}  {:>9.2}  {:>9.2}  {:>9.2}",
            s.count,
            s.p50_us / 1e3,
            s.p99_us / 1e3,
            s.max_us / 1e3
        ));
    }
    timeline
        .iter()
        .map(|(t, s)| json!({"t": t, "latency": s.to_json()}))
        .collect()
}

pub fn load_json(load: Load) -> Value {
    match load {
        Load::Rate(r) => json!({"mode": "open", "rate": r}),
        Load::Closed(n) => json!({"mode": "closed", "concurrency": n}),
    }
}
