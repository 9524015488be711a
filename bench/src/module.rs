//! The module every daemon benchmark runs: webhook source `load` → the `filters::filter` plugin
//! transform (dropping `payload.bot: true`, plain equality) → an `http::webhook` actor posting to
//! the tool's sink. One plugin call on the hot path and one real HTTP delivery: the shape of the
//! quickstart's main route, without its file logger, so the numbers are the engine's.
//!
//! The plugin libraries are copies inside the module directory, so the reload benchmark can
//! replace the http plugin's file the way `cargo build` replaces its output.

use std::path::{Path, PathBuf};

/// The module's name, as the control API knows it.
pub const NAME: &str = "loadbench";
/// The webhook source id.
pub const SOURCE: &str = "load";

/// Writes the module into `dir` with `filters` and `http` copied from the given builds, and
/// `defaults.max_queue_bytes` set when given (the daemon's default, 256 MiB, holds some 800 000
/// of this tool's events waiting; the recovery benchmark may keep more waiting than that).
pub fn write(
    dir: &Path,
    sink_url: &str,
    filters: &Path,
    http: &Path,
    max_queue_bytes: Option<u64>,
) -> Result<(), String> {
    install(dir, "filters", filters)?;
    install(dir, "http", http)?;
    let limit = max_queue_bytes.map_or(String::new(), |b| format!("  max_queue_bytes: {b}\n"));
    let files = [
        (
            "orgloop.yaml",
            format!(
                "apiVersion: orgloop/v1alpha1\nkind: Project\nmetadata:\n  name: {NAME}\ndefaults:\n  drain_timeout: 30s\n{limit}plugins:\n  - {{name: filters, path: plugins/libfilters.so}}\n  - {{name: http, path: plugins/libhttp.so}}\nconnectors: [connectors/load.yaml]\ntransforms: [transforms/filter.yaml]\n"
            ),
        ),
        (
            "connectors/load.yaml",
            format!(
                "apiVersion: orgloop/v1alpha1\nkind: ConnectorGroup\nsources:\n  - {{id: {SOURCE}, connector: webhook}}\nactors:\n  - {{id: sink, connector: http::webhook, config: {{url: \"{sink_url}\", timeout: 10s}}}}\n"
            ),
        ),
        (
            "transforms/filter.yaml",
            "apiVersion: orgloop/v1alpha1\nkind: TransformGroup\ntransforms:\n  - name: drop-bots\n    type: plugin\n    symbol: filters::filter\n    config: {exclude: {payload.bot: true}}\n".to_owned(),
        ),
        (
            "routes/load.yaml",
            format!(
                "apiVersion: orgloop/v1alpha1\nkind: RouteGroup\nroutes:\n  - name: deliver\n    when: {{source: {SOURCE}, events: [resource.changed]}}\n    transforms: [{{ref: drop-bots}}]\n    then: {{actor: sink}}\n"
            ),
        ),
    ];
    for (rel, content) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Replaces plugin `name`'s library in the module with `build`: written beside, then renamed
/// over, so the daemon never reads a half-written file.
pub fn install(dir: &Path, name: &str, build: &Path) -> Result<(), String> {
    let target = dir.join("plugins").join(format!("lib{name}.so"));
    std::fs::create_dir_all(dir.join("plugins")).map_err(|e| e.to_string())?;
    let tmp = target.with_extension("tmp");
    std::fs::copy(build, &tmp).map_err(|e| format!("copying {}: {e}", build.display()))?;
    std::fs::rename(&tmp, &target).map_err(|e| format!("renaming onto {}: {e}", target.display()))
}

/// A fresh scratch directory for one benchmark, removed by [`Scratch`]'s drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Result<Scratch, String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("orgloop-load-{}-{what}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
