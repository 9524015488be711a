//! Polling plugin sources: one task per source, on the generation's tracker. The first poll runs
//! at once (as upstream), then one every `interval`; polls never overlap. The checkpoint lives in
//! the module, not the generation, so a new version of a source picks up where the old one was.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::generation::Generation;
use super::registry::Module;
use crate::plugin::services::normalize;

/// Starts the pollers of `generation`'s plugin sources.
pub fn spawn_pollers(module: &Arc<Module>, generation: &Arc<Generation>) {
    for slot in &generation.sources {
        let (module, source, id, interval) = (
            Arc::downgrade(module),
            slot.obj.clone(),
            slot.id.clone(),
            slot.interval,
        );
        let stop = generation.stop_sources.clone();
        generation.inflight.spawn(async move {
            loop {
                let Some(m) = module.upgrade() else { return };
                let stats = m.source_stats(&id);
                let polled = tokio::select! {
                    r = source.poll(m.checkpoint(&id)) => r,
                    _ = stop.cancelled() => return,
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
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
}
