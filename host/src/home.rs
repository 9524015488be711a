//! Where the daemon keeps its files: `$ORGLOOP_HOME`, else `~/.orgloop`. Each process keeps its
//! private plugin copies under `run/<pid>/`, removed at exit; leftovers of processes that died are
//! removed at the next start.

use std::path::PathBuf;

/// The orgloop home directory.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("ORGLOOP_HOME") {
        return PathBuf::from(h);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".orgloop")
}

/// This process's private directory.
pub fn run_dir() -> PathBuf {
    home().join("run").join(std::process::id().to_string())
}

/// Removes the run directories of processes that no longer exist.
pub fn clean_stale_runs() {
    let Ok(entries) = std::fs::read_dir(home().join("run")) else {
        return;
    };
    for entry in entries.flatten() {
        let alive = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
