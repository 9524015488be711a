//! Polling plugin sources. Pollers belong to the module, not to a generation, so that a source
//! carried over by a reload keeps polling on its own cadence. A changed source's new object is
//! built and initialized before the old one stops, and takes over the checkpoint (kept in the
//! module): a poll the old one had in flight is abandoned before it advanced the checkpoint, so the
//! new one fetches that range again — nothing lost, nothing twice.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::generation::{Generation, SourceSlot};
use super::running::Module;
use crate::plugin::services::normalize;
use crate::plugin::PluginSource;

struct Poller {
    source: Arc<PluginSource>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The running pollers of one module, by source id.
#[derive(Default)]
pub struct Pollers {
    running: Mutex<HashMap<String, Poller>>,
}

impl Pollers {
    /// Makes the running pollers match `generation`: keeps those whose source object carried
    /// over, replaces the others, stops those of removed sources.
    pub fn reconcile(&self, module: &Arc<Module>, generation: &Generation) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|id, p| {
            let keep = generation
                .sources
                .iter()
                .any(|s| s.id == *id && Arc::ptr_eq(&s.obj, &p.source));
            if !keep {
                p.stop.cancel();
            }
            keep
        });
        for slot in &generation.sources {
            if !running.contains_key(&slot.id) {
                running.insert(slot.id.clone(), spawn(Arc::downgrade(module), slot));
            }
        }
    }

    /// Stops every poller and waits until they are gone.
    pub async fn stop_all(&self) {
        let pollers: Vec<Poller> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in pollers {
            p.stop.cancel();
            let _ = p.task.await;
        }
    }
}

fn spawn(module: Weak<Module>, slot: &SourceSlot) -> Poller {
    let (source, id, interval) = (slot.obj.clone(), slot.id.clone(), slot.interval);
    let stop = CancellationToken::new();
    let (task_source, task_stop) = (source.clone(), stop.clone());
    let task = tokio::spawn(async move {
        loop {
            let Some(m) = module.upgrade() else { return };
            let stats = m.source_stats(&id);
            let polled = tokio::select! {
                r = task_source.poll(m.checkpoint(&id)) => r,
                _ = task_stop.cancelled() => return,
            };
            match polled {
                Ok(p) => {
                    for event in p.events {
                        if let Err(e) = m.accept(normalize(event, &id), Some(&stats)) {
                            tracing::warn!(module = %m.name, source = %id, "event not accepted: {e}");
                        }
                    }
                    if let Some(cp) = p.checkpoint {
                        m.set_checkpoint(&id, cp);
                    }
                }
                Err(e) => {
                    stats.error_count.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(module = %m.name, source = %id, "poll failed: {e}");
                    *stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                }
            }
            drop(m);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = task_stop.cancelled() => return,
            }
        }
    });
    Poller { source, stop, task }
}
