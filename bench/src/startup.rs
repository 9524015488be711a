//! `orgloop-load startup`: how long from spawning the daemon (with the quickstart module) to the
//! first webhook answered 202, and how much memory the daemon holds once idle.
//!
//! The probe is a blocking loop of plain TCP connects on the port chosen up front: a connect
//! fails until the daemon binds, then the request waits in the socket's backlog until the
//! daemon has loaded its modules and serves. Attempts are 100 µs apart, which bounds the error
//! without the probe spinning on one of the two cores the daemon needs to start.

use std::io::{Read, Write};
use std::net::TcpStream;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::artifacts::{copy_tree, Artifacts};
use crate::daemon::Daemon;
use crate::module::Scratch;
use crate::procfs::{maps, rss_kb};
use crate::report::{mb, Out};
use crate::sink::Sink;
use crate::stats::median;
use crate::StartupArgs;

/// The quickstart's webhook source.
const SOURCE: &str = "inbox";

pub async fn run(
    args: &StartupArgs,
    artifacts: &Artifacts,
    rebuild: bool,
    out: &Out,
) -> Result<Value, String> {
    tokio::task::block_in_place(|| artifacts.ensure_built(rebuild))?;
    let scratch = Scratch::new("startup")?;
    let module = scratch.0.join("quickstart");
    copy_tree(
        &artifacts.workspace.join("examples").join("quickstart"),
        &module,
    )
    .map_err(|e| format!("copying the quickstart module: {e}"))?;
    let _ = std::fs::remove_dir_all(module.join("logs"));
    // Deliveries (there are none: the probe matches no route) would go to a live sink.
    let sink = Sink::start().await?;
    let env = [
        ("PLUGIN_DIR", artifacts.release().display().to_string()),
        ("NOTIFY_URL", sink.hook_url()),
    ];
    out.line(format!("startup: {} runs of `orgloop start` with the quickstart module; spawn → first 202 on /webhook/{SOURCE}", args.runs));
    out.line(format!("daemon: {}", artifacts.built_at()));

    let (mut first, mut reported, mut rss, mut map_lines) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        let home = scratch.0.join(format!("home-{run}"));
        let port = free_port()?;
        let idle = Duration::from_secs_f64(args.idle);
        let (ms, daemon) = tokio::task::block_in_place(|| -> Result<(f64, Daemon), String> {
            let started = Instant::now();
            let mut daemon = Daemon::spawn(&artifacts.orgloop(), &[&module], port, &home, &env)?;
            let ms =
                first_accepted(port, started).map_err(|e| format!("{e}\n{}", daemon.tail()))?;
            daemon.wait_listening(Duration::from_secs(5))?;
            std::thread::sleep(idle);
            Ok((ms, daemon))
        })?;
        let kb = rss_kb(daemon.pid).unwrap_or(0);
        let lines = maps(daemon.pid, &home).map_or(0, |m| m.0);
        let own = daemon.reported_startup_ms();
        out.line(format!(
            "  run {}: first 202 after {ms:.1} ms (daemon says startup_ms={}), idle rss {} after {:.1} s, {lines} mappings",
            run + 1,
            own.map_or("?".into(), |v| v.to_string()),
            mb(kb),
            args.idle
        ));
        first.push(ms);
        reported.extend(own);
        rss.push(kb as f64);
        map_lines.push(lines as f64);
        tokio::task::block_in_place(move || drop(daemon));
    }
    let range = |v: &[f64]| {
        (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        )
    };
    let (fmin, fmax) = range(&first);
    let (rmin, rmax) = range(&rss);
    out.line(format!(
        "  spawn → first 202: median {:.1} ms (min {fmin:.1}, max {fmax:.1})",
        median(&first)
    ));
    out.line(format!(
        "  idle rss: median {} (min {}, max {})",
        mb(median(&rss) as u64),
        mb(rmin as u64),
        mb(rmax as u64)
    ));
    Ok(json!({
        "benchmark": "startup",
        "daemon": artifacts.built_at(),
        "runs": args.runs,
        "first_202_ms": {"median": median(&first), "min": fmin, "max": fmax, "all": first},
        "daemon_reported_startup_ms": {"median": median(&reported), "all": reported},
        "idle_rss_kb": {"median": median(&rss), "min": rmin, "max": rmax, "all": rss},
        "idle_after_s": args.idle,
        "maps_median": median(&map_lines),
    }))
}

/// A port nobody listens on right now (the kernel's choice for a socket bound to port 0).
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Milliseconds from `started` until a webhook on `port` is answered 202 (at most 10 s).
fn first_accepted(port: u16, started: Instant) -> Result<f64, String> {
    let body = r#"{"kind":"ping","id":0,"text":"startup probe"}"#;
    let request = format!(
        "POST /webhook/{SOURCE} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(status) = try_post(port, &request) {
            if status == 202 {
                return Ok(started.elapsed().as_secs_f64() * 1e3);
            }
            return Err(format!("the first answer was {status}, not 202"));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Err("no 202 within 10 s".into())
}

/// Sends the request; the answer's status code.
fn try_post(port: u16, request: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let got = stream.read(&mut head[n..])?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        n += got;
    }
    // "HTTP/1.1 202 Accepted"
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::ErrorKind::InvalidData.into())
}
