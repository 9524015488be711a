//! The machine a run happened on, and whether something else was busy on it: the numbers of a
//! load test on a shared two-core box are only worth reading next to both.

use serde_json::{json, Value};

/// Cores, CPU model, memory, toolchain, load average.
pub fn describe() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rustc =
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model,
        "memory_gib": (mem_kb as f64 / 1048576.0 * 10.0).round() / 10.0,
        "rustc": rustc,
        "loadavg": loadavg(),
    })
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Other processes that would steal CPU from a measurement: cargo, rustc, criterion benches,
/// other orgloop daemons — not this tool's own children, nor the `cargo run` that started it.
pub fn busy_processes() -> Vec<String> {
    let me = std::process::id();
    let mut ancestors = Vec::new();
    let mut p = parent(me);
    while let Some(pid) = p.filter(|&pid| pid > 1) {
        ancestors.push(pid);
        p = parent(pid);
    }
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || ancestors.contains(&pid) {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        let heavy = ["cargo", "rustc", "orgloop", "cc", "ld", "valgrind", "perf"].contains(&comm)
            || comm.starts_with("hot_path");
        if !heavy || parent(pid) == Some(me) {
            continue;
        }
        found.push(format!("{comm} ({pid})"));
    }
    found
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
