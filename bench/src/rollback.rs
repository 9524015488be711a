//! `orgloop-load rollback`: how fast an automatic rollback reacts, and that it loses nothing.
//!
//! A fixed open-loop load runs while the module is reloaded, again and again, to a version whose
//! actor posts to a closed port (every delivery fails at once), with `auto_rollback`. Each trial
//! times the reload request's answer (the bad generation starts serving then; at these rates its
//! first failure follows within a millisecond or two) to the module status saying
//! `rolled_back`, and reads the daemon's own rollout clock from the report. The failed
//! deliveries are retried and, after the swap back, delivered through the previous generation:
//! the sink's count by event id says whether any was lost or duplicated.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::analysis::analyze;
use crate::artifacts::Artifacts;
use crate::control::Control;
use crate::daemon::Daemon;
use crate::generator::{self, Load, Plan};
use crate::module::{self, Scratch, NAME, SOURCE};
use crate::report::Out;
use crate::sink::Sink;
use crate::stats::median;
use crate::RollbackArgs;

/// Where the bad version's actor posts: nothing listens on the discard port of loopback here.
const NOWHERE: &str = "http://127.0.0.1:9/";

pub async fn run(
    args: &RollbackArgs,
    artifacts: &Artifacts,
    rebuild: bool,
    out: &Out,
) -> Result<Value, String> {
    tokio::task::block_in_place(|| artifacts.ensure_built(rebuild))?;
    let (filters, http) = (artifacts.plugin("filters"), artifacts.plugin("http"));
    let scratch = Scratch::new("rollback")?;
    let sink = Sink::start().await?;
    let dir = scratch.0.join("module");
    let home = scratch.0.join("home");
    let write = |url: &str| module::write(&dir, url, &filters, &http, None);
    write(&sink.hook_url())?;
    let env = Daemon::env(&args.daemon_env);
    let mut daemon =
        tokio::task::block_in_place(|| Daemon::start(&artifacts.orgloop(), &[&dir], &home, &env))?;
    let control = Control::new(daemon.port, &daemon.token()?);
    control.status(NAME).await?;
    crate::report::daemon(out, artifacts, &daemon, &args.daemon_env);
    out.line(format!(
        "automatic rollback under load: {:.0} events/s open loop; {} reloads to a version whose actor posts to a closed port, --auto-rollback",
        args.rate, args.trials
    ));

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let plan = Plan {
        addrs: vec![([127, 0, 0, 1], daemon.port).into()],
        path: format!("/webhook/{SOURCE}"),
        load: Load::Rate(args.rate),
        connections: 16,
        duration: Duration::from_secs(600),
        max_events: u64::MAX,
        stop: stop.clone(),
        bot_every: 0,
        max_queued: 100_000,
    };
    let load = tokio::spawn(generator::run(plan));
    tokio::time::sleep(Duration::from_secs_f64(args.steady)).await;

    let mut seen_ms = Vec::new();
    let mut daemon_ms = Vec::new();
    let mut reasons = Vec::new();
    let mut failure = None;
    for trial in 0..args.trials {
        match trial_once(&control, &write).await {
            Ok((seen, clock, reason)) => {
                seen_ms.push(seen);
                daemon_ms.push(clock);
                reasons.push(reason);
            }
            Err(e) => {
                failure = Some(format!("trial {} failed: {e}", trial + 1));
                break;
            }
        }
        // The previous generation's files again, then a pause for the retries to settle.
        write(&sink.hook_url())?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let gen = load
        .await
        .map_err(|e| format!("the generator failed: {e}"))??;
    let record = sink
        .collect(gen.accepted.len() as u64, Duration::from_secs(10))
        .await;
    let warnings = daemon.warnings();
    tokio::task::block_in_place(|| daemon.stop());
    let a = analyze(&gen, record, 0);

    for line in a.lines() {
        out.line(format!("  {line}"));
    }
    let fmt = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        format!(
            "median {:.0} ms (min {:.0}, max {:.0})",
            median(v),
            s.first().copied().unwrap_or(0.0),
            s.last().copied().unwrap_or(0.0)
        )
    };
    out.line(format!(
        "  reload answered → status says rolled back: {}   daemon's rollout clock: {}   ({} trials, warnings {warnings})",
        fmt(&seen_ms),
        fmt(&daemon_ms),
        seen_ms.len()
    ));
    if let Some(r) = reasons.first() {
        out.line(format!("  why (first trial): {r}"));
    }
    if let Some(f) = &failure {
        out.line(format!("  stopped early: {f}"));
    }
    Ok(json!({
        "benchmark": "rollback",
        "rate": args.rate,
        "daemon": artifacts.built_at(),
        "daemon_env": args.daemon_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "trials": seen_ms.len(),
        "stopped_early": failure,
        "result": a.to_json(),
        "reaction_seen_ms": seen_ms,
        "reaction_daemon_ms": daemon_ms,
        "reasons": reasons,
        "daemon_warnings": warnings,
    }))
}

/// One bad reload: returns (ms from its answer to `rolled_back` in the status, the daemon's own
/// rollout clock at the rollback, the reason it gave).
async fn trial_once(
    control: &Control,
    write: &impl Fn(&str) -> Result<(), String>,
) -> Result<(f64, f64, String), String> {
    write(NOWHERE)?;
    let report = control
        .reload(NAME, &json!({"auto_rollback": true, "bake_ms": 30_000}))
        .await?;
    let answered = Instant::now();
    if report["outcome"] != "swapped" {
        return Err(format!("expected a swap, got {report}"));
    }
    let to = report["to_generation"].as_u64();
    loop {
        let r = &control.status(NAME).await?["rollout"];
        if r["new_generation"].as_u64() == to && r["phase"] == "rolled_back" {
            return Ok((
                answered.elapsed().as_secs_f64() * 1000.0,
                r["elapsed_ms"].as_f64().unwrap_or(f64::NAN),
                r["reason"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        if answered.elapsed() > Duration::from_secs(30) {
            return Err(format!("not rolled back within the 30 s bake: {r}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
