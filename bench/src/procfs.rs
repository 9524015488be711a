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

/// The child processes of `pid` (a daemon's plugin processes, with `isolation: process`).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The `VmRSS` of `pid` and its child processes together, in KiB.
pub fn tree_rss_kb(pid: u32) -> Option<u64> {
    let children: u64 = children(pid).into_iter().filter_map(rss_kb).sum();
    Some(rss_kb(pid)? + children)
}

/// User plus system CPU time of `pid` so far, in seconds; with `tree`, also that of its
/// children, the live ones and those it has reaped.
pub fn cpu_secs(pid: u32, tree: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it are space-separated.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // utime, stime, cutime and cstime are fields 14 to 17 of the whole line, 12 to 15 after
    // the name.
    let mut ticks = field(11)? + field(12)?;
    if tree {
        ticks += field(13)? + field(14)?;
    }
    let own = ticks as f64 / clock_ticks() as f64;
    let live: f64 = if tree {
        children(pid)
            .into_iter()
            .filter_map(|c| cpu_secs(c, false))
            .sum()
    } else {
        0.0
    };
    Some(own + live)
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
    tree: bool,
    cpu: f64,
    at: std::time::Instant,
}

impl CpuMeter {
    /// Measures `pid` alone.
    pub fn start(pid: u32) -> CpuMeter {
        Self::begin(pid, false)
    }

    /// Measures a daemon with its plugin processes.
    pub fn start_tree(pid: u32) -> CpuMeter {
        Self::begin(pid, true)
    }

    fn begin(pid: u32, tree: bool) -> CpuMeter {
        CpuMeter {
            pid,
            tree,
            cpu: cpu_secs(pid, tree).unwrap_or(0.0),
            at: std::time::Instant::now(),
        }
    }

    /// Cores used since `start` (1.0 = one core busy the whole time).
    pub fn cores(&self) -> f64 {
        let used = cpu_secs(self.pid, self.tree).unwrap_or(self.cpu) - self.cpu;
        used / self.at.elapsed().as_secs_f64().max(1e-9)
    }
}
