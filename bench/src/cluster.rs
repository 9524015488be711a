//! `orgloop-load cluster`: N daemons with `--cluster` on one `nats-server -js` that this tool
//! starts (on a free loopback port, with a store directory of its own), all on the load module,
//! with the load spread over them (sender `k` on node `k mod N`, moving to the next node when
//! its own refuses connections, as a load balancer would). Measured: throughput, latency, loss
//! and duplicates by event id, and CPU per delivered event for the daemons and for nats-server.
//!
//! `--kill-at S` SIGKILLs the last node S seconds into the load: what it held comes back to the
//! other nodes after the ack wait, so the wait for the last deliveries is the grace plus the ack
//! wait. `--reloads N` reloads the module through the first node N times during the load (the
//! http plugin alternating between two builds, every node reading the same directory) and times
//! each from the request to the answer, which comes once every node has swapped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::analysis::analyze;
use crate::artifacts::Artifacts;
use crate::control::Control;
use crate::daemon::Daemon;
use crate::generator::{self, Load, Plan};
use crate::module::{self, Scratch, NAME, SOURCE};
use crate::procfs::cpu_secs;
use crate::report::{self, thousands, Out};
use crate::sink::Sink;
use crate::stats::{median, round1};
use crate::throughput::load_json;
use crate::ClusterArgs;

/// `nats-server -js` on a free loopback port, killed when dropped.
struct Nats {
    child: Child,
    url: String,
}

impl Nats {
    fn start(bin: &Path, store: &Path) -> Result<Nats, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {} (install nats-server): {e}", bin.display()))?;
        let nats = Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err("nats-server did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nats)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds of a process tree since the meter started, readable after the process is gone.
struct CpuSince {
    pid: u32,
    start: f64,
    /// The last reading, kept for when the process is gone (a killed node).
    last: f64,
}

impl CpuSince {
    fn start(pid: u32) -> CpuSince {
        let start = cpu_secs(pid, true).unwrap_or(0.0);
        CpuSince {
            pid,
            start,
            last: start,
        }
    }

    fn read(&mut self) -> f64 {
        if let Some(now) = cpu_secs(self.pid, true) {
            self.last = now;
        }
        self.last - self.start
    }
}

pub async fn run(
    args: &ClusterArgs,
    artifacts: &Artifacts,
    rebuild: bool,
    out: &Out,
) -> Result<Value, String> {
    let l = &args.load;
    let load = l.load_or(Load::Closed(64));
    tokio::task::block_in_place(|| artifacts.ensure_built(rebuild))?;
    let v1 = artifacts.plugin("http");
    let v2 = if args.reloads > 0 {
        Some(tokio::task::block_in_place(|| {
            artifacts.http_variant("0.2.0")
        })?)
    } else {
        None
    };
    let scratch = Scratch::new("cluster")?;
    let nats = Nats::start(&args.nats_server, &scratch.0.join("nats"))?;
    let sink = Sink::start().await?;
    let dir = scratch.0.join("module");
    module::write(
        &dir,
        &sink.hook_url(),
        &artifacts.plugin("filters"),
        &v1,
        None,
    )?;
    let ack_wait = Duration::from_secs_f64(args.ack_wait);
    let mut nodes = Vec::new();
    for i in 0..args.nodes as usize {
        let mut env = vec![
            ("ORGLOOP_CLUSTER", nats.url.clone()),
            ("ORGLOOP_CLUSTER_NAME", "bench".to_owned()),
            (
                "ORGLOOP_CLUSTER_ACK_WAIT",
                format!("{}ms", ack_wait.as_millis()),
            ),
            ("ORGLOOP_NODE_ID", format!("node-{i}")),
        ];
        env.extend(Daemon::env(&args.daemon_env));
        let home = scratch.0.join(format!("home{i}"));
        nodes.push(tokio::task::block_in_place(|| {
            Daemon::start(&artifacts.orgloop(), &[&dir], &home, &env)
        })?);
    }
    report::daemon(out, artifacts, &nodes[0], &args.daemon_env);
    out.line(format!(
        "cluster: {} node(s) on one nats-server (ack wait {:.1} s); webhook → filters::filter → http::webhook → sink; {}, {:.0} s{}",
        args.nodes,
        args.ack_wait,
        load.describe(),
        l.duration,
        args.kill_at.map_or(String::new(), |t| format!("; the last node SIGKILLed at {t:.1} s")),
    ));

    let plan = Plan {
        addrs: nodes
            .iter()
            .map(|d| ([127, 0, 0, 1], d.port).into())
            .collect(),
        path: format!("/webhook/{SOURCE}"),
        load,
        connections: l.connections,
        duration: l.duration(),
        max_events: l.max_events,
        stop: Arc::default(),
        bot_every: l.bot_every,
        max_queued: l.max_queued,
    };
    let mut cpu: Vec<CpuSince> = nodes.iter().map(|d| CpuSince::start(d.pid)).collect();
    let mut nats_cpu = CpuSince::start(nats.child.id());
    let tool_cpu = crate::procfs::CpuMeter::start(std::process::id());
    let started = Instant::now();
    let load_task = tokio::spawn(generator::run(plan));

    let mut reloads = Vec::new();
    if let Some(v2) = &v2 {
        let control = Control::new(nodes[0].port, &nodes[0].token()?);
        for i in 0..args.reloads {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let build = if i % 2 == 0 { v2 } else { &v1 };
            tokio::task::block_in_place(|| module::install(&dir, "http", build))?;
            let asked = Instant::now();
            let report = control.reload(NAME, &json!({})).await?;
            let took = asked.elapsed();
            let swapped = report["nodes"].as_array().map_or(0, |n| {
                n.iter()
                    .filter(|n| n["outcome"]["outcome"] == "swapped")
                    .count()
            });
            if report["outcome"] != "swapped" || swapped as u64 != args.nodes {
                return Err(format!(
                    "reload {} did not swap on every node: {report}",
                    i + 1
                ));
            }
            reloads.push(took.as_secs_f64() * 1e3);
        }
    }
    let mut killed = None;
    if let Some(at) = args.kill_at {
        let wait = Duration::from_secs_f64(at).saturating_sub(started.elapsed());
        tokio::time::sleep(wait).await;
        let last = nodes.len() - 1;
        cpu[last].read();
        tokio::task::block_in_place(|| nodes[last].kill());
        killed = Some(format!("node-{last}"));
    }
    let gen = load_task.await.map_err(|e| e.to_string())??;
    let expected = gen
        .accepted
        .iter()
        .filter(|a| !gen.is_bot(a.id, l.bot_every))
        .count() as u64;
    let grace = l.grace()
        + if killed.is_some() {
            ack_wait
        } else {
            Duration::ZERO
        };
    let record = sink.collect(expected, grace).await;
    let daemons_secs: Vec<f64> = cpu.iter_mut().map(CpuSince::read).collect();
    let nats_secs = nats_cpu.read();
    let tool_cores = tool_cpu.cores();
    let nodes_len = nodes.len();
    let crashed: Vec<String> = nodes
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| killed.is_none() || *i + 1 < nodes_len)
        .filter_map(|(i, d)| d.exited().map(|s| format!("node-{i}: {s}")))
        .collect();
    for node in &mut nodes {
        tokio::task::block_in_place(|| node.stop());
    }
    let a = analyze(&gen, record, l.bot_every);
    for line in a.lines() {
        out.line(format!("  {line}"));
    }
    let delivered = a.delivered.max(1) as f64;
    let daemons_total: f64 = daemons_secs.iter().sum();
    let per_event = |secs: f64| secs / delivered * 1e6;
    out.line(format!(
        "  cpu per delivered event: {:.0} µs in all = daemons {:.0} µs ({}) + nats-server {:.0} µs   tool {tool_cores:.2} cores",
        per_event(daemons_total + nats_secs),
        per_event(daemons_total),
        daemons_secs
            .iter()
            .map(|s| format!("{s:.1} s"))
            .collect::<Vec<_>>()
            .join(", "),
        per_event(nats_secs),
    ));
    if !crashed.is_empty() {
        out.line(format!(
            "  NODES THAT EXITED BY THEMSELVES: {}",
            crashed.join(", ")
        ));
    }
    let mut result = json!({
        "benchmark": "cluster",
        "nodes": args.nodes,
        "ack_wait_s": args.ack_wait,
        "load": load_json(load),
        "daemon": artifacts.built_at(),
        "result": a.to_json(),
        "cpu_secs": {"daemons": daemons_secs, "nats_server": nats_secs},
        "cpu_us_per_event": {
            "all": round1(per_event(daemons_total + nats_secs)),
            "daemons": round1(per_event(daemons_total)),
            "nats_server": round1(per_event(nats_secs)),
        },
        "tool_cores": tool_cores,
        "killed": killed,
        "exited": crashed,
        "daemon_env": args.daemon_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
    });
    if !reloads.is_empty() {
        let mut sorted = reloads.clone();
        sorted.sort_by(f64::total_cmp);
        out.line(format!(
            "  {} reloads through node-0, request → every node swapped: median {:.1} ms (min {:.1}, max {:.1})",
            reloads.len(),
            median(&reloads),
            sorted[0],
            sorted[sorted.len() - 1]
        ));
        result["reload_ms"] = json!({"median": round1(median(&reloads)), "all": reloads});
    }
    out.line(format!(
        "  {} delivered/s with {} node(s)",
        thousands(a.delivered_per_s),
        args.nodes
    ));
    Ok(result)
}
