//! What `/proc` says about a process: resident memory, mappings, CPU time. Read directly (the
//! daemon is a child of this tool), so the numbers are the kernel's, not the daemon's own view.

use std::path::Path;

/// `VmRSS` of `pid`, in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Mappings of `pid`: (lines of `/proc/<pid>/maps`, lines whose path lies under `under`).
pub fn maps(pid: u32, under: &Path) -> Option<(usize, usize)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let under = under.to_string_lossy();
    let total = maps.lines().count();
    let ours = maps.lines().filter(|l| l.contains(under.as_ref())).count();
    Some((total, ours))
}

/// User plus system CPU time of `pid` so far, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it are space-separated.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks() as f64)
}

/// `getconf CLK_TCK`, read once (100 on every Linux this tool is likely to meet).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU time of `pid` over an interval, as a fraction of one core.
pub struct CpuMeter {
    pid: u32,
    cpu: f64,
    at: std::time::Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> CpuMeter {
        CpuMeter {
            pid,
            cpu: cpu_secs(pid).unwrap_or(0.0),
            at: std::time::Instant::now(),
        }
    }

    /// Cores used since `start` (1.0 = one core busy the whole time).
    pub fn cores(&self) -> f64 {
        let used = cpu_secs(self.pid).unwrap_or(self.cpu) - self.cpu;
        used / self.at.elapsed().as_secs_f64().max(1e-9)
    }
}
