//! `orgloop-load recovery`: what a crash costs with durable delivery. Events are sent while the
//! sink answers 503, so every accepted one is still waiting in the daemon's store; the daemon is
//! killed with SIGKILL (no drain, no cleanup), the sink comes back, and a new daemon starts with
//! the same `ORGLOOP_HOME`. The promise checked is at-least-once: every event answered 202
//! before the crash arrives at the sink after the restart. Measured: the store's size on disk
//! per waiting event, the restart's time to listening, to the first delivery and to the last,
//! and the daemon's memory once it has delivered everything it found.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::analysis::analyze;
use crate::artifacts::Artifacts;
use crate::clock::{now_ns, secs};
use crate::control::Control;
use crate::daemon::Daemon;
use crate::disk::{data_dir, dir_bytes};
use crate::generator::{self, Load, Plan};
use crate::module::{self, Scratch, NAME, SOURCE};
use crate::procfs::rss_kb;
use crate::report::{self, mb, size, thousands, Out};
use crate::sampler::Sampler;
use crate::sink::Sink;
use crate::stats::round1;
use crate::RecoveryArgs;

/// Room in the queue's limits per event sent: several times what one of this tool's events
/// takes in the store (about 330 bytes), so that no event is refused for want of room however
/// many are sent. Below the daemon's defaults, the defaults stay.
const ROOM_PER_EVENT: u64 = 4096;
/// The daemon's defaults: `defaults.max_queue_bytes` and `--max-store-bytes`.
const DEFAULT_MODULE_BYTES: u64 = 256 << 20;
const DEFAULT_STORE_BYTES: u64 = 1 << 30;

pub async fn run(
    args: &RecoveryArgs,
    artifacts: &Artifacts,
    rebuild: bool,
    out: &Out,
) -> Result<Value, String> {
    tokio::task::block_in_place(|| artifacts.ensure_built(rebuild))?;
    let scratch = Scratch::new("recovery")?;
    let sink = Sink::start().await?;
    sink.set_down(true);
    let dir = scratch.0.join("module");
    let home = scratch.0.join("home");
    let room = args.events.saturating_mul(ROOM_PER_EVENT);
    module::write(
        &dir,
        &sink.hook_url(),
        &artifacts.plugin("filters"),
        &artifacts.plugin("http"),
        Some(room.max(DEFAULT_MODULE_BYTES)),
    )?;
    // The store's limit first, so that a --daemon-env given for it wins.
    let mut env = vec![(
        "ORGLOOP_MAX_STORE_BYTES",
        room.max(DEFAULT_STORE_BYTES).to_string(),
    )];
    env.extend(Daemon::env(&args.daemon_env));
    let orgloop = artifacts.orgloop();
    let load = Load::Closed(args.concurrency.max(1));
    out.line(format!(
        "recovery: {} events while the sink answers 503 ({}), SIGKILL, restart with the same home, sink answering 200",
        thousands(args.events as f64),
        load.describe()
    ));

    let mut first = tokio::task::block_in_place(|| Daemon::start(&orgloop, &[&dir], &home, &env))?;
    report::daemon(out, artifacts, &first, &args.daemon_env);
    let control = Control::new(first.port, &first.token()?);
    let gen = generator::run(Plan {
        addrs: vec![([127, 0, 0, 1], first.port).into()],
        path: format!("/webhook/{SOURCE}"),
        load,
        connections: args.concurrency,
        duration: Duration::from_secs_f64(args.send_for),
        max_events: args.events,
        stop: Arc::default(),
        bot_every: 0,
        max_queued: 0,
    })
    .await?;
    let refused = gen.statuses.get("503").copied().unwrap_or(0);

    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    if let Some(status) = first.exited() {
        return Err(format!(
            "the daemon exited before the kill ({status}):\n{}",
            first.tail()
        ));
    }
    let queue_before = status_queue(&control).await?;
    let disk_before = dir_bytes(&data_dir(&home));
    let rss_before = rss_kb(first.pid).unwrap_or(0);
    let warnings_before = first.warnings();
    tokio::task::block_in_place(|| first.kill());
    sink.set_down(false);

    let spawn_ns = now_ns();
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let mut second = tokio::task::block_in_place(|| {
        let mut d = Daemon::spawn(&orgloop, &[&dir], 0, &home, &env)?;
        d.wait_listening(Duration::from_secs_f64(args.timeout))?;
        Ok::<_, String>(d)
    })?;
    let listening_ms = secs(spawn_ns, now_ns()) * 1e3;
    let pid = second.pid;
    let rss = Sampler::start(
        Duration::from_millis(100),
        // Until the queue is empty or the timeout, then the sink's grace.
        (args.timeout * 10.0) as usize + 50,
        move || rss_kb(pid),
    );
    let control = Control::new(second.port, &second.token()?);
    let (queue_after, emptied) = wait_empty(&control, &mut second, deadline).await?;
    // A short grace: arrivals of the last deliveries may still be on their way to the record.
    let record = sink
        .collect(gen.accepted.len() as u64, Duration::from_secs(1))
        .await;
    let rss_peak = rss.finish().await.max();
    let rss_after = rss_kb(second.pid).unwrap_or(0);
    let disk_after = dir_bytes(&data_dir(&home));
    let warnings_after = second.warnings();
    let crashed = second.exited();
    tokio::task::block_in_place(|| second.stop());

    let a = analyze(&gen, record, 0);
    let since_spawn = |at_ns: u64| secs(spawn_ns, at_ns) * 1e3;
    let first_ms = a.deliveries.first().map(|d| since_spawn(d.at_ns));
    let all_ms = (a.lost == 0)
        .then(|| a.deliveries.last().map(|d| since_spawn(d.at_ns)))
        .flatten();
    let recovery_per_s = match (a.deliveries.first(), a.deliveries.last()) {
        (Some(f), Some(l)) if a.deliveries.len() > 1 => {
            (a.deliveries.len() - 1) as f64 / secs(f.at_ns, l.at_ns).max(1e-9)
        }
        _ => 0.0,
    };
    let per_event = disk_before as f64 / a.accepted.max(1) as f64;
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} ms"));

    let statuses: Vec<String> = a
        .statuses
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    out.line(format!(
        "  sent {}  accepted {} ({}/s)  answers: {}",
        a.sent,
        a.accepted,
        thousands(a.accepted_per_s),
        statuses.join(", ")
    ));
    out.line(format!("  send → 202  {}", a.answer.line()));
    if refused > 0 {
        out.line(format!(
            "  {refused} EVENTS WERE REFUSED WITH 503 (queue limit {} bytes); they are not counted as accepted",
            queue_before["max_bytes"]
        ));
    }
    out.line(format!(
        "  before the kill ({:.1} s after the last answer): queue {} entries, {} of {}; data dir {} on disk = {per_event:.0} bytes per accepted event; rss {}; {} delivery attempts refused by the sink",
        args.settle,
        queue_before["entries"],
        size(queue_before["bytes"].as_u64().unwrap_or(0)),
        size(queue_before["max_bytes"].as_u64().unwrap_or(0)),
        size(disk_before),
        mb(rss_before),
        a.refused_by_sink
    ));
    out.line(format!(
        "  SIGKILL → restart: listening after {listening_ms:.0} ms, first delivery after {}, every accepted event delivered after {} ({}/s once delivering)",
        ms(first_ms),
        ms(all_ms),
        thousands(recovery_per_s)
    ));
    out.line(format!(
        "  accepted {}  delivered {}  lost {}  duplicates {}  unexpected {}",
        a.accepted, a.delivered, a.lost, a.duplicates, a.unexpected
    ));
    out.line(format!(
        "  after recovery: queue {} entries; data dir {} on disk; rss {} (peak {})   daemon warnings: {warnings_before} before the kill, {warnings_after} after the restart",
        queue_after["entries"],
        size(disk_after),
        mb(rss_after),
        mb(rss_peak)
    ));
    if !emptied && crashed.is_none() {
        out.line(format!(
            "  TIMED OUT: the restarted daemon still had {} entries waiting {:.0} s after its spawn",
            queue_after["entries"], args.timeout
        ));
    }
    if let Some(status) = &crashed {
        out.line(format!(
            "  THE RESTARTED DAEMON EXITED ({status}); its last lines:"
        ));
        for l in second.last_lines(15) {
            out.line(format!("    {l}"));
        }
    }

    Ok(json!({
        "benchmark": "recovery",
        "daemon": artifacts.built_at(),
        "events": args.events,
        "load": crate::throughput::load_json(load),
        "daemon_env": args.daemon_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "sent": a.sent,
        "accepted": a.accepted,
        "refused_503": refused,
        "statuses": a.statuses,
        "accepted_per_s": a.accepted_per_s.round(),
        "answer_latency": a.answer.to_json(),
        "delivered": a.delivered,
        "lost": a.lost,
        "duplicates": a.duplicates,
        "unexpected": a.unexpected,
        "timed_out": !emptied,
        "before_kill": {
            "settle_s": args.settle,
            "queue": queue_before,
            "disk_bytes": disk_before,
            "disk_bytes_per_event": per_event.round(),
            "rss_kb": rss_before,
            "delivery_attempts_refused_by_sink": a.refused_by_sink,
            "daemon_warnings": warnings_before,
        },
        "restart": {
            "listening_ms": round1(listening_ms),
            "daemon_reported_startup_ms": second.reported_startup_ms(),
            "first_delivery_ms": first_ms.map(round1),
            "all_delivered_ms": all_ms.map(round1),
            "delivered_per_s": recovery_per_s.round(),
        },
        "after_recovery": {
            "queue": queue_after,
            "disk_bytes": disk_after,
            "rss_kb": rss_after,
            "rss_peak_kb": rss_peak,
            "daemon_warnings": warnings_after,
            "daemon_exited": crashed,
        },
        "timeout_s": args.timeout,
    }))
}

/// The module's `"queue"` from the control API, within 5 s.
async fn status_queue(control: &Control) -> Result<Value, String> {
    match tokio::time::timeout(Duration::from_secs(5), control.status(NAME)).await {
        Ok(status) => Ok(status?["queue"].clone()),
        Err(_) => Err("the module status did not answer within 5 s".into()),
    }
}

/// Polls the restarted daemon every 100 ms until its queue is empty — everything it found in
/// the store is finished — or `deadline` passes or it exits. The last queue status, and
/// whether it emptied. The sink's record, not this, says what was delivered and when.
async fn wait_empty(
    control: &Control,
    daemon: &mut Daemon,
    deadline: Instant,
) -> Result<(Value, bool), String> {
    loop {
        if daemon.exited().is_some() {
            return Ok((Value::Null, false));
        }
        let queue = status_queue(control).await?;
        if queue["entries"].as_u64() == Some(0) {
            return Ok((queue, true));
        }
        if Instant::now() >= deadline {
            return Ok((queue, false));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
