//! `orgloop start --watch`: reload a module when its files change. Each module's directory is
//! watched (YAML files and `.env`), and so is every plugin library it references, wherever it lives
//! (typically under `target/`). Changes are debounced: a burst of writes gives one reload. A plugin
//! file is only taken once its size and modification time stay put (a build still being written is
//! never loaded; the loader also refuses an incomplete library). A failed reload keeps the old
//! generation and logs why; the next good save applies.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use super::registry::Registry;
use super::report::ReloadOutcome;
use super::ReloadOptions;
use crate::config::{self, render_errors};

/// Which changed paths matter to one module.
#[derive(Default)]
struct Interest {
    dir: PathBuf,
    plugins: HashSet<PathBuf>,
}

impl Interest {
    fn matches(&self, path: &Path) -> bool {
        if self.plugins.contains(&normalize(path)) {
            return true;
        }
        path.starts_with(&self.dir)
            && (matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) || path.file_name().is_some_and(|n| n == ".env"))
    }
}

/// The path with its directory resolved, so that `a/../b/x.so` and `b/x.so` compare equal (the
/// file itself may not exist at that moment).
fn normalize(path: &Path) -> PathBuf {
    match (
        path.parent().and_then(|p| p.canonicalize().ok()),
        path.file_name(),
    ) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

/// Watches module `name` until it is unloaded.
pub fn spawn(registry: Arc<Registry>, name: String, debounce: Duration) {
    tokio::spawn(async move {
        if let Err(e) = watch(registry, &name, debounce).await {
            tracing::error!(module = %name, "cannot watch the module's files: {e}");
        }
    });
}

async fn watch(registry: Arc<Registry>, name: &str, debounce: Duration) -> notify::Result<()> {
    let interest: Arc<Mutex<Interest>> = Arc::default();
    let (tx, mut rx) = unbounded_channel();
    let mut watcher = notify::recommended_watcher(handler(interest.clone(), tx))?;
    let mut watched: HashSet<PathBuf> = HashSet::new();
    loop {
        let Some(module) = registry.module(name) else {
            return Ok(());
        };
        let Some(generation) = module.current() else {
            return Ok(());
        };
        // Watch the module directory and the directory of each plugin file (files are replaced,
        // not rewritten in place, so their directory is what sees the change): the plugins the
        // files on disk name, when they parse, so that a reload rejected because a new plugin is
        // not built yet still watches for that build.
        let plugins: Vec<PathBuf> = match config::load::read_module(&module.dir) {
            Ok(raw) => raw
                .project
                .value
                .plugins
                .iter()
                .map(|p| raw.dir.join(&p.path))
                .collect(),
            Err(_) => generation
                .spec
                .plugins
                .iter()
                .map(|p| p.path.clone())
                .collect(),
        };
        let mut wanted: HashSet<PathBuf> = plugins
            .iter()
            .filter_map(|p| normalize(p).parent().map(Path::to_path_buf))
            .collect();
        wanted.insert(module.dir.clone());
        for dir in wanted.difference(&watched) {
            let mode = if *dir == module.dir {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            watcher.watch(dir, mode)?;
        }
        for dir in watched.difference(&wanted) {
            let _ = watcher.unwatch(dir);
        }
        watched = wanted;
        *interest.lock().unwrap_or_else(|e| e.into_inner()) = Interest {
            dir: module.dir.clone(),
            plugins: plugins.iter().map(|p| normalize(p)).collect(),
        };
        drop((module, generation));

        if rx.recv().await.is_none() {
            return Ok(());
        }
        // Debounce: wait until nothing changed for `debounce`.
        while let Ok(Some(())) = tokio::time::timeout(debounce, rx.recv()).await {}
        wait_until_stable(&plugins).await;
        if let Some(cluster) = registry.queue.cluster() {
            crate::cluster::reload::on_change(&cluster, name).await;
            continue;
        }
        match registry.reload(name, &ReloadOptions::default()).await {
            Ok(ReloadOutcome::Rejected { errors, .. }) => {
                tracing::warn!(module = %name, "automatic reload rejected; the current generation keeps serving:\n{}", render_errors(&errors));
            }
            Ok(_) => {}
            Err(_) => return Ok(()), // unloaded meanwhile
        }
    }
}

fn handler(interest: Arc<Mutex<Interest>>, tx: UnboundedSender<()>) -> impl notify::EventHandler {
    move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let interest = interest.lock().unwrap_or_else(|e| e.into_inner());
        if event.paths.iter().any(|p| interest.matches(p)) {
            let _ = tx.send(());
        }
    }
}

/// Waits (up to 10 s) until every file's size and modification time hold still for 100 ms.
async fn wait_until_stable(files: &[PathBuf]) {
    let look = || -> Vec<Option<(u64, std::time::SystemTime)>> {
        files
            .iter()
            .map(|f| {
                std::fs::metadata(f)
                    .ok()
                    .and_then(|m| Some((m.len(), m.modified().ok()?)))
            })
            .collect()
    };
    let mut before = look();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = look();
        if now == before {
            return;
        }
        before = now;
    }
}
