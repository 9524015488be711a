//! Pollers run once in a cluster: a node polls a source only while it holds the source's lease,
//! and the source's checkpoint lives in the cluster, so that the node that takes over continues
//! where the last one left off.
//!
//! Both are records in the stream `<name>-leases`, which keeps the last record of each subject:
//! `<name>.leases.<module>.<source>` (who holds it, until when) and
//! `<name>.checkpoints.<module>.<source>`. (`<name>.leases.<module>` is the lock of the node
//! that coordinates a reload of the module, see [`super::reload`].) A lease is taken or renewed by a publish that names
//! the sequence of the record it replaces (`Nats-Expected-Last-Subject-Sequence`): of two nodes
//! that try at once, one wins. It lasts the cluster's ack wait and is renewed every third of it;
//! a node that died loses it when it runs out. The holder stops polling a third of the ack wait
//! before that, counted on its own clock from before its last renewal was asked, so that a node
//! cut off from NATS has stopped before another can take over (clocks must agree to within a
//! third of the ack wait). The checkpoint is stored, and acknowledged, before the next poll.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::Publish;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::nodes::key;
use super::Cluster;
use crate::module::running::{mono_ms, now_ms};

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
        let subject = self.subject("leases", module, source);
        self.claim_record(subject, self.node(), held, self.opts.ack_wait)
            .await
            .ok()
    }

    /// Takes or renews the record `subject` for `holder` and `lasting`; `held` is the sequence
    /// of its last record of it. The new sequence, or who holds it (`Err`), or `Err` with an
    /// empty name when JetStream could not be asked.
    async fn claim_record(
        &self,
        subject: String,
        holder: &str,
        held: Option<u64>,
        lasting: Duration,
    ) -> Result<u64, String> {
        // A renewal names its own last record; only a claim looks up the current one.
        let last = match held {
            Some(seq) => seq,
            None => match self
                .leases()
                .await
                .map_err(|_| String::new())?
                .get_last_raw_message_by_subject(&subject)
                .await
            {
                Ok(m) => {
                    let r: Record =
                        serde_json::from_slice(&m.payload).map_err(|_| String::new())?;
                    if r.holder != holder && r.until_ms > now_ms() {
                        return Err(r.holder);
                    }
                    m.sequence
                }
                // Never taken.
                Err(_) => 0,
            },
        };
        let record = Record {
            holder: holder.to_owned(),
            until_ms: now_ms() + lasting.as_millis() as i64,
        };
        let payload = serde_json::to_vec(&record).map_err(|_| String::new())?;
        let publish = Publish::build()
            .payload(payload.into())
            .expected_last_subject_sequence(last);
        let ack = self
            .js
            .send_publish(subject, publish)
            .await
            .map_err(|_| String::new())?;
        ack.await.map(|a| a.sequence).map_err(|_| String::new())
    }

    /// Takes the lock that lets this node coordinate a reload of `module` across the cluster,
    /// waiting up to `within` for another coordinator to finish; the lock lasts `lasting` unless
    /// [`unlock_reload`](Self::unlock_reload) gives it up first. Its record's sequence, or who
    /// holds it.
    pub async fn lock_reload(
        &self,
        module: &str,
        within: Duration,
        lasting: Duration,
    ) -> Result<u64, String> {
        let subject = self.reload_lock(module);
        // Each coordination holds it on its own, two on this node included.
        let holder = format!("{} {}", self.node(), orgloop_plugin_sdk::new_event_id());
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self
                .claim_record(subject.clone(), &holder, None, lasting)
                .await
            {
                Ok(seq) => return Ok(seq),
                Err(other) if tokio::time::Instant::now() >= deadline => {
                    return Err(match other.rsplit_once(' ') {
                        Some((node, _)) => format!("node {node} is reloading it"),
                        None => "the cluster did not answer".to_owned(),
                    })
                }
                Err(_) => tokio::time::sleep(WAIT_FOR_LEASE).await,
            }
        }
    }

    /// The subject of `module`'s reload lock: one token short of its pollers' leases.
    fn reload_lock(&self, module: &str) -> String {
        format!("{}.leases.{}", self.opts.name, key(module))
    }

    /// Gives up the reload lock of `module` taken with record `seq`.
    pub async fn unlock_reload(&self, module: &str, seq: u64) {
        self.release_record(self.reload_lock(module), seq).await;
    }

    /// Gives up this node's lease of `module`'s `source` (its record `seq`), if it still holds it.
    async fn release(&self, module: &str, source: &str, seq: u64) {
        self.release_record(self.subject("leases", module, source), seq)
            .await;
    }

    /// Gives up record `subject` (its record `seq`), if this node still holds it.
    async fn release_record(&self, subject: String, seq: u64) {
        let record = Record {
            holder: self.node().to_owned(),
            until_ms: 0,
        };
        let Ok(payload) = serde_json::to_vec(&record) else {
            return;
        };
        let publish = Publish::build()
            .payload(payload.into())
            .expected_last_subject_sequence(seq);
        if let Ok(ack) = self.js.send_publish(subject, publish).await {
            let _ = tokio::time::timeout(Duration::from_secs(2), ack).await;
        }
    }

    /// The checkpoint of `module`'s `source` the cluster keeps (`None`: never stored).
    pub async fn checkpoint(&self, module: &str, source: &str) -> Result<Option<String>, String> {
        let stream = self.leases().await?;
        let subject = self.subject("checkpoints", module, source);
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Ok(String::from_utf8(m.payload.to_vec()).ok()),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(format!("cannot read a checkpoint from the cluster: {e}")),
        }
    }

    /// Stores the checkpoint of `module`'s `source` in the cluster, after the events polled with
    /// it were stored (the caller waited for them), and before the next poll.
    pub async fn store_checkpoint(
        &self,
        module: &str,
        source: &str,
        value: &str,
    ) -> Result<(), String> {
        let subject = self.subject("checkpoints", module, source);
        self.put(subject, value.to_owned().into()).await
    }
}

/// This node's claim on one source's lease, renewed by a task of its own until dropped.
pub struct Lease {
    state: Arc<Held>,
    stop: CancellationToken,
}

/// Whether, and until when on this node's own clock, the lease is this node's.
#[derive(Default)]
struct Held {
    /// When, in [`mono_ms`], this node must stop polling; 0: not held.
    until: AtomicI64,
    /// How many times this node took the lease after not holding it.
    terms: AtomicU64,
}

impl Lease {
    /// Starts trying to take (and then keep) the lease of `module`'s `source`.
    pub fn claim(cluster: &Arc<Cluster>, module: &str, source: &str) -> Lease {
        let state = Arc::new(Held::default());
        let stop = CancellationToken::new();
        let (c, h, s) = (cluster.clone(), state.clone(), stop.clone());
        let (module, source) = (module.to_owned(), source.to_owned());
        let ack_wait = cluster.opts.ack_wait;
        let every = ack_wait / 3;
        // Tracked with the acknowledgements, so that a stop waits for the hand-over below.
        let runtime = cluster.runtime.clone();
        cluster.acks.spawn_on(async move {
            let mut seq = None;
            loop {
                // A renewal that takes too long counts as lost: the lease runs out meanwhile.
                let asked = mono_ms();
                seq = tokio::time::timeout(every, c.take(&module, &source, seq))
                    .await
                    .unwrap_or(None);
                let had = h.until.load(Ordering::Acquire) > mono_ms();
                match seq {
                    // Polls stop a third of the ack wait before the lease runs out for the others,
                    // counted on this node's clock from before the renewal was asked.
                    Some(_) => {
                        let until = asked + (ack_wait - every).as_millis() as i64;
                        h.until.store(until, Ordering::Release);
                        if !had {
                            h.terms.fetch_add(1, Ordering::AcqRel);
                            tracing::info!(module = %module, source = %source, "took the poller's lease");
                        }
                    }
                    None => {
                        h.until.store(0, Ordering::Release);
                        if had {
                            tracing::info!(module = %module, source = %source, "lost the poller's lease");
                        }
                    }
                }
                tokio::select! {
                    _ = s.cancelled() => {
                        // The poller stopped (a stop, a reload, an unload): the lease is free
                        // at once, not when it runs out.
                        if let Some(seq) = seq {
                            c.release(&module, &source, seq).await;
                        }
                        return;
                    }
                    _ = tokio::time::sleep(every) => {}
                }
            }
        }, &runtime);
        Lease { state, stop }
    }

    /// Whether this node may poll now: the term it holds the lease in, or `None`.
    pub fn term(&self) -> Option<u64> {
        (self.state.until.load(Ordering::Acquire) > mono_ms())
            .then(|| self.state.terms.load(Ordering::Acquire))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long a poller without the lease waits before it looks again.
pub const WAIT_FOR_LEASE: Duration = Duration::from_millis(250);
