//! Where results go: a human summary, and with `--json` one JSON object on stdout (the human
//! summary then goes to stderr, so `--json | jq` works and a person still sees progress).

use serde_json::Value;

use crate::artifacts::Artifacts;
use crate::daemon::Daemon;

#[derive(Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// One line of the human summary.
    pub fn line(&self, text: impl AsRef<str>) {
        if self.json {
            eprintln!("{}", text.as_ref());
        } else {
            println!("{}", text.as_ref());
        }
    }

    /// The run's JSON object, printed when `--json` was given.
    pub fn finish(&self, value: &Value) {
        if self.json {
            println!("{value}");
        }
    }
}

/// "12345" → "12 345", for event counts and rates people read.
pub fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    if n < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// KiB shown as MB.
pub fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// Bytes shown as MB, or as KB or bytes when smaller (an empty data directory holds a few bytes).
pub fn size(bytes: u64) -> String {
    if bytes < 1 << 10 {
        format!("{bytes} B")
    } else if bytes < 1 << 20 {
        format!("{:.1} KB", bytes as f64 / 1024.0)
    } else {
        mb(bytes / 1024)
    }
}

/// Which daemon a run measures, and the extra environment it was started with (if any).
pub fn daemon(out: &Out, artifacts: &Artifacts, daemon: &Daemon, env: &[(String, String)]) {
    out.line(format!(
        "daemon: {}, pid {}, port {}",
        artifacts.built_at(),
        daemon.pid,
        daemon.port
    ));
    if !env.is_empty() {
        let pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.line(format!("daemon environment: {}", pairs.join(" ")));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::thousands(1234567.0), "1 234 567");
        assert_eq!(super::thousands(999.4), "999");
        assert_eq!(super::thousands(0.0), "0");
    }

    #[test]
    fn size() {
        assert_eq!(super::size(13), "13 B");
        assert_eq!(super::size(2048), "2.0 KB");
        assert_eq!(super::size(3 << 20), "3.0 MB");
    }
}
