//! Dead letters in a cluster: one list for every node, so that `orgloop dlq` on any node lists,
//! replays and purges the same letters, whichever node gave up on the delivery.
//!
//! They live in the stream `<name>-dead`, which keeps the last record of each subject
//! `<name>.dead.<id>`. A record is the letter, the letter claimed by a replay or a purge (since
//! when), or a tombstone once it is gone. A claim names the sequence of the record it replaces
//! (`Nats-Expected-Last-Subject-Sequence`), so that of two nodes replaying one letter at once
//! only one does. Each node follows the stream from its start with an ordered consumer and keeps
//! the list in memory (dead letters are few); `join` waits until it has read what was there.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::context::{Publish, PublishErrorKind};
use async_nats::jetstream::stream::StorageType;
use futures_util::StreamExt;

use super::Cluster;
use crate::module::running::now_ms;
use crate::queue::dead::{lock, DeadLetter, Items, Kept};

/// What a record says of its letter.
const KIND: &str = "Orgloop-Dead";
const CLAIMED: &str = "claimed";
const GONE: &str = "gone";
/// When the letter was claimed (Unix ms).
const CLAIMED_MS: &str = "Orgloop-Claimed-Ms";

/// How long `join` waits to have read the dead letters already there.
const CATCH_UP: Duration = Duration::from_secs(10);
/// How long following the stream waits after losing it before it starts again.
const FOLLOW_BACKOFF: Duration = Duration::from_millis(500);

impl Cluster {
    /// The dead letters of the cluster, as this node knows them.
    pub(crate) fn dead_letters(&self) -> Items {
        self.dead.clone()
    }

    fn dead_subject(&self, id: &str) -> String {
        format!("{}.dead.{id}", self.opts.name)
    }

    /// Stores `letter` (again, after this node's claim of it that was not completed: then only
    /// if nobody claimed it since, its claim having run out).
    pub async fn bury(&self, letter: DeadLetter) -> io::Result<()> {
        let payload = serde_json::to_vec(&letter)?;
        let publish = self.after_claim(&letter.id, Publish::build().payload(payload.into()));
        let seq = self.send_dead(&letter.id, publish).await?;
        learn(&self.dead, letter, seq, None);
        Ok(())
    }

    /// Claims letter `id` for this node: `None` when it is not listed, or another node claimed
    /// it first.
    pub async fn claim_dead(&self, id: &str) -> io::Result<Option<DeadLetter>> {
        let now = now_ms();
        let Some(kept) = lock(&self.dead).get(id).filter(|k| k.listed(now)).cloned() else {
            return Ok(None);
        };
        let publish = Publish::build()
            .payload(serde_json::to_vec(&kept.letter)?.into())
            .header(KIND, CLAIMED)
            .header(CLAIMED_MS, now.to_string().as_str())
            .expected_last_subject_sequence(kept.seq);
        match self.send_dead(id, publish).await {
            Ok(seq) => {
                self.claims().insert(id.to_owned(), seq);
                learn(&self.dead, kept.letter.clone(), seq, Some(now));
                Ok(Some(kept.letter))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes claimed letter `id` for good. It stays in this node's list, claimed (so not
    /// listed), until its tombstone comes back in the stream, after the records before it.
    pub async fn purge_dead(&self, id: &str) -> io::Result<()> {
        let publish = self.after_claim(id, Publish::build().header(KIND, GONE));
        self.send_dead(id, publish).await.map(drop)
    }

    /// `publish`, expected to replace this node's claim of letter `id` when it holds one: a
    /// claim that ran out may have been taken over by another node meanwhile.
    fn after_claim(&self, id: &str, publish: Publish) -> Publish {
        match self.claims().remove(id) {
            Some(seq) => publish.expected_last_subject_sequence(seq),
            None => publish,
        }
    }

    /// This node's claims of dead letters: the sequence of each claim's record, by letter id.
    fn claims(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u64>> {
        self.dead_claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a record of letter `id` and waits until JetStream stored it: its sequence, or
    /// `AlreadyExists` when the record it was to replace was replaced meanwhile.
    async fn send_dead(&self, id: &str, publish: Publish) -> io::Result<u64> {
        let ack = self
            .js
            .send_publish(self.dead_subject(id), publish)
            .await
            .map_err(io::Error::other)?;
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("dead letter {id} was claimed by another node"),
            )),
            Err(e) => Err(io::Error::other(format!(
                "cannot store dead letter {id} in the cluster: {e}"
            ))),
        }
    }

    /// Reads the dead letters the cluster holds, then follows the stream in a task of its own.
    pub(super) async fn follow_dead(self: &Arc<Self>) -> Result<(), String> {
        let mut records = self.dead_records().await?;
        tokio::time::timeout(CATCH_UP, records.catch_up(&self.dead))
            .await
            .map_err(|_| "reading the cluster's dead letters took too long".to_owned())??;
        let cluster = Arc::downgrade(self);
        self.runtime.spawn(async move {
            loop {
                if let Err(e) = records.follow(&cluster).await {
                    tracing::warn!("following the cluster's dead letters: {e}; starting again");
                }
                tokio::time::sleep(FOLLOW_BACKOFF).await;
                let Some(c) = cluster.upgrade() else { return };
                // From the start: what was missed meanwhile is read again, in order.
                match c.dead_records().await {
                    Ok(r) => records = r,
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        });
        Ok(())
    }

    /// Every record of the dead letters, from the first.
    async fn dead_records(&self) -> Result<Records, String> {
        let subjects = vec![format!("{}.dead.>", self.opts.name)];
        let stream = self
            .records("dead", subjects, None, StorageType::File)
            .await?;
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                description: Some("orgloop dead letters".into()),
                deliver_policy: DeliverPolicy::All,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot follow the cluster's dead letters: {e}"))?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| format!("cannot follow the cluster's dead letters: {e}"))?;
        Ok(Records { messages, pending })
    }
}

/// The records of the dead letters as they come.
struct Records {
    messages: push::Ordered,
    /// Records there were when following began.
    pending: u64,
}

impl Records {
    /// Applies the records there were when following began.
    async fn catch_up(&mut self, items: &Items) -> Result<(), String> {
        while self.pending > 0 {
            match self.messages.next().await {
                Some(Ok(m)) => {
                    self.pending = apply(items, &m).unwrap_or(self.pending.saturating_sub(1))
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the cluster's dead letters ended".into()),
            }
        }
        Ok(())
    }

    /// Applies records until the stream is lost or the cluster is gone.
    async fn follow(&mut self, cluster: &std::sync::Weak<Cluster>) -> Result<(), String> {
        while let Some(m) = self.messages.next().await {
            let Some(c) = cluster.upgrade() else {
                return Ok(());
            };
            apply(&c.dead, &m.map_err(|e| e.to_string())?);
        }
        Err("the cluster's dead letters ended".into())
    }
}

/// Applies one record to the list; how many records followed it when it was sent.
fn apply(items: &Items, m: &async_nats::jetstream::Message) -> Option<u64> {
    let info = m.info().ok()?;
    let (seq, pending) = (info.stream_sequence, info.pending);
    let header = |name: &str| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let id = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
    if lock(items).get(&id).is_some_and(|k| k.seq >= seq) {
        // This node already knows a later record (its own, applied when it was stored).
        return Some(pending);
    }
    match header(KIND).as_deref() {
        Some(GONE) => {
            let mut items = lock(items);
            if items.get(&id).is_some_and(|k| k.seq < seq) {
                items.remove(&id);
            }
        }
        kind => match serde_json::from_slice::<DeadLetter>(&m.payload) {
            Ok(letter) => {
                let claimed = (kind == Some(CLAIMED))
                    .then(|| header(CLAIMED_MS).and_then(|v| v.parse().ok()))
                    .flatten();
                learn(items, letter, seq, claimed);
            }
            Err(e) => tracing::error!(
                record = seq,
                "a dead letter in the cluster is unreadable: {e}"
            ),
        },
    }
    Some(pending)
}

/// Records `letter` at record `seq`, unless a later record of it is known.
fn learn(items: &Items, letter: DeadLetter, seq: u64, claimed_ms: Option<i64>) {
    let mut items = lock(items);
    if items.get(&letter.id).is_some_and(|k| k.seq > seq) {
        return;
    }
    items.insert(
        letter.id.clone(),
        Kept {
            letter,
            seq,
            claimed_ms,
        },
    );
}
