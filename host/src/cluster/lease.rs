//! Pollers run once in a cluster: a node polls a source only while it holds the source's lease,
//! and the source's checkpoint lives in the cluster, so that the node that takes over continues
//! where the last one left off.
//!
//! Both are records in the stream `<name>-leases`, which keeps the last record of each subject:
//! `<name>.leases.<module>.<source>` (who holds it, until when) and
//! `<name>.checkpoints.<module>.<source>`. A lease is taken or renewed by a publish that names
//! the sequence of the record it replaces (`Nats-Expected-Last-Subject-Sequence`): of two nodes
//! that try at once, one wins. It lasts the cluster's ack wait and is renewed every third of it;
//! a node that died loses it when it runs out, and a node that could not renew stops polling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::Publish;
use async_nats::jetstream::stream;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::nodes::key;
use super::Cluster;
use crate::module::running::now_ms;

#[derive(Serialize, Deserialize)]
struct Record {
    holder: String,
    /// Unix ms.
    until_ms: i64,
}

impl Cluster {
    async fn leases(&self) -> Result<stream::Stream, String> {
        let name = &self.opts.name;
        let subjects = vec![format!("{name}.leases.>"), format!("{name}.checkpoints.>")];
        self.records("leases", subjects, None, stream::StorageType::File)
            .await
    }

    fn subject(&self, kind: &str, module: &str, source: &str) -> String {
        format!("{}.{kind}.{}.{}", self.opts.name, key(module), key(source))
    }

    /// Takes or renews the lease of `module`'s `source`; `held` is the sequence of this
    /// node's last record of it. Returns the new sequence, or `None` when another node holds it.
    async fn take(&self, module: &str, source: &str, held: Option<u64>) -> Option<u64> {
        let stream = self.leases().await.ok()?;
        let subject = self.subject("leases", module, source);
        let last = match held {
            Some(seq) => seq,
            None => match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => {
                    let r: Record = serde_json::from_slice(&m.payload).ok()?;
                    if r.holder != self.node() && r.until_ms > now_ms() {
                        return None;
                    }
                    m.sequence
                }
                // Never taken.
                Err(_) => 0,
            },
        };
        let record = Record {
            holder: self.node().to_owned(),
            until_ms: now_ms() + self.opts.ack_wait.as_millis() as i64,
        };
        let payload = serde_json::to_vec(&record).ok()?;
        let publish = Publish::build()
            .payload(payload.into())
            .expected_last_subject_sequence(last);
        let ack = self.js.send_publish(subject, publish).await.ok()?;
        ack.await.ok().map(|a| a.sequence)
    }

    /// The checkpoint of `module`'s `source` the cluster keeps.
    pub async fn checkpoint(&self, module: &str, source: &str) -> Option<String> {
        let stream = self.leases().await.ok()?;
        let m = stream
            .get_last_raw_message_by_subject(&self.subject("checkpoints", module, source))
            .await
            .ok()?;
        String::from_utf8(m.payload.to_vec()).ok()
    }

    /// Stores the checkpoint of `module`'s `source` in the cluster (after the events polled with
    /// it were stored: the caller waited for them).
    pub fn set_checkpoint(self: &Arc<Self>, module: &str, source: &str, value: &str) {
        let subject = self.subject("checkpoints", module, source);
        let (cluster, value) = (self.clone(), value.to_owned());
        self.runtime.spawn(async move {
            let published = match cluster.js.publish(subject, value.into()).await {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = published {
                tracing::warn!("cannot store a checkpoint in the cluster: {e}");
            }
        });
    }
}

/// This node's claim on one source's lease, renewed by a task of its own until dropped.
pub struct Lease {
    held: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Lease {
    /// Starts trying to take (and then keep) the lease of `module`'s `source`.
    pub fn claim(cluster: &Arc<Cluster>, module: &str, source: &str) -> Lease {
        let held = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let (c, h, s) = (cluster.clone(), held.clone(), stop.clone());
        let (module, source) = (module.to_owned(), source.to_owned());
        let every = cluster.opts.ack_wait / 3;
        cluster.runtime.spawn(async move {
            let mut seq = None;
            loop {
                seq = c.take(&module, &source, seq).await;
                let had = h.swap(seq.is_some(), Ordering::AcqRel);
                if had != seq.is_some() {
                    let what = if seq.is_some() { "took" } else { "lost" };
                    tracing::info!(module = %module, source = %source, "{what} the poller's lease");
                }
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        Lease { held, stop }
    }

    /// Whether this node may poll now.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long a poller without the lease waits before it looks again.
pub const WAIT_FOR_LEASE: Duration = Duration::from_millis(250);
