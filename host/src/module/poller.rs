//! Polling plugin sources. Pollers belong to the module, not to a generation, so that a source
//! carried over by a reload keeps polling on its own cadence. A changed source's new object is
//! built and initialized before the old one stops, and takes over the checkpoint (kept in the
//! module): a poll the old one had in flight is abandoned before it advanced the checkpoint, so the
//! new one fetches that range again — nothing lost, nothing twice.

use crate::cluster::lease::{Lease, WAIT_FOR_LEASE};
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
        // Stop the pollers whose source is gone or replaced. A replacement waits until its
        // predecessor's task has ended before its first poll, so the two never overlap (and the
        // old one cannot write its checkpoint after the new one read it).
        let mut stopped: HashMap<String, JoinHandle<()>> = HashMap::new();
        let ids: Vec<String> = running.keys().cloned().collect();
        for id in ids {
            let source = &running[&id].source;
            let keep = generation
                .sources
                .iter()
                .any(|s| s.id == id && Arc::ptr_eq(&s.obj, source));
            if !keep {
                if let Some(p) = running.remove(&id) {
                    p.stop.cancel();
                    stopped.insert(id, p.task);
                }
            }
        }
        for slot in &generation.sources {
            if !running.contains_key(&slot.id) {
                let previous = stopped.remove(&slot.id);
                running.insert(slot.id.clone(), spawn(module, slot, previous));
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
        pollers.iter().for_each(|p| p.stop.cancel());
        for p in pollers {
            let _ = p.task.await;
        }
    }
}

/// Starts polling `slot` on the module's threads.
fn spawn(module: &Arc<Module>, slot: &SourceSlot, previous: Option<JoinHandle<()>>) -> Poller {
    let (source, id, interval) = (slot.obj.clone(), slot.id.clone(), slot.interval);
    let stop = CancellationToken::new();
    let (task_source, task_stop) = (source.clone(), stop.clone());
    let executor = module.executor.handle().clone();
    let module: Weak<Module> = Arc::downgrade(module);
    let task = executor.spawn(async move {
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        // In a cluster, only the node that holds the source's lease polls it.
        let cluster = module.upgrade().and_then(|m| m.queue.cluster());
        let lease = module
            .upgrade()
            .zip(cluster.as_ref())
            .map(|(m, c)| Lease::claim(c, &m.name, &id));
        // The lease term whose checkpoint this node has read.
        let mut leading = None;
        loop {
            let Some(m) = module.upgrade() else { return };
            if let (Some(lease), Some(cluster)) = (&lease, &cluster) {
                let term = lease.term();
                if term.is_some() && term != leading {
                    // Just took over: continue where the last holder left off.
                    match cluster.checkpoint(&m.name, &id).await {
                        Ok(cp) => {
                            if let Some(cp) = cp {
                                m.adopt_checkpoint(&id, cp);
                            }
                            leading = term;
                        }
                        Err(e) => tracing::warn!(module = %m.name, source = %id, "{e}"),
                    }
                }
                if term.is_none() || term != leading {
                    drop(m);
                    tokio::select! {
                        biased;
                        _ = task_stop.cancelled() => return,
                        _ = tokio::time::sleep(WAIT_FOR_LEASE) => continue,
                    }
                }
            }
            let stats = m.source_stats(&id);
            let polled = tokio::select! {
                biased;
                _ = task_stop.cancelled() => return,
                r = task_source.poll(m.checkpoint(&id)) => r,
            };
            match polled {
                Ok(p) => {
                    // The checkpoint moves only past what is stored: refused and failed writes
                    // alike make the batch be polled again (some of it then twice).
                    let mut all_stored = true;
                    let mut stored = Vec::new();
                    for event in p.events {
                        match m.accept(normalize(event, &id), Some(&stats)) {
                            Ok(s) => stored.push(s),
                            Err(e) => {
                                all_stored = false;
                                tracing::warn!(module = %m.name, source = %id, "event not accepted: {e}");
                            }
                        }
                    }
                    for s in stored {
                        if let Err(e) = s.wait().await {
                            all_stored = false;
                            tracing::warn!(module = %m.name, source = %id, "event not stored: {e}");
                        }
                    }
                    match p.checkpoint {
                        Some(cp) if all_stored => {
                            if let Some(cluster) = &cluster {
                                if let Err(e) = cluster.store_checkpoint(&m.name, &id, &cp).await {
                                    tracing::warn!(module = %m.name, source = %id, "checkpoint not stored in the cluster: {e}");
                                }
                            }
                            m.set_checkpoint(&id, cp)
                        }
                        Some(_) => {
                            tracing::warn!(module = %m.name, source = %id, "checkpoint not advanced: the batch is polled again")
                        }
                        None => {}
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
                biased;
                _ = task_stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
    Poller { source, stop, task }
}
