//! The cluster's queue: the stream `<name>-events`.
//!
//! - A webhook accepted by any node is published to the stream `<name>-events`, on the subject
//!   `<name>.events.<module>`, with the event id as `Nats-Msg-Id`, and answered `202` only once
//!   JetStream has acknowledged the write: a publish sent twice (a client library's own retry
//!   after a lost acknowledgement) is stored once (within the two-minute window). Without a
//!   connection the webhook answers `503` at once, never `202` for an event nothing stored.
//! - A node takes a module's events only while the module has room (`max_queue_bytes`); what it
//!   cannot take waits in the stream for another node. While it has no room it pulls nothing,
//!   and keeps (and renews) what its client had fetched ahead, so that none of it goes to
//!   another node after the ack wait and then runs here too.
//! - An event that nodes took `--cluster-max-deliver` times without finishing it (each died or
//!   stopped while it held it) is dead-lettered whole by the next node that takes it.
//! - Each module has one durable pull consumer, shared by every node: each message goes to one
//!   node, which routes and delivers it, then acknowledges it. A message waiting for a retry or
//!   a long agent session is kept alive with progress acknowledgements. A node that stops hands
//!   its unfinished messages back (`nak`: at once to another node); one that dies leaves them to
//!   come back after the ack wait, to another node. Delivery is at least once: a node that dies
//!   after delivering a route and before the acknowledgement makes that route run again, with
//!   the same idempotency key.
//! - The stream is a work queue: an acknowledged message is deleted. Its limit is the daemon's
//!   `--max-store-bytes`; a full stream refuses new events (`503`).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::connection::State;
use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer};
use async_nats::jetstream::context::Publish;
use async_nats::jetstream::message::{AckKind, Acker};
use futures_util::{FutureExt, StreamExt};
use orgloop_plugin_sdk::{format_timestamp, Event};
use tokio::sync::oneshot;

use super::Cluster;
use crate::queue::dead::DeadLetter;
use crate::queue::{new_ticket, Entry, Refused, Shared, Stored, RESIDENT};

/// How long a publish may wait for JetStream's acknowledgement before the webhook says `503`.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pump waits before it asks for its consumer again after an error.
const PUMP_BACKOFF: Duration = Duration::from_millis(500);
/// How often a node whose module has no room looks again before it takes the next event.
const ROOM_BACKOFF: Duration = Duration::from_millis(10);
/// Messages a module's consumer may have handed out and not yet acknowledged, over all nodes.
const MAX_ACK_PENDING: i64 = 20_000;

const ROUTE: &str = "Orgloop-Route";
const ACCEPTED_MS: &str = "Orgloop-Accepted-Ms";

impl Cluster {
    /// Publishes an event of `module` (or a delivery along `route`; `again`: a dead letter's
    /// replay); the result resolves once JetStream has stored it, or says why not.
    pub fn publish(
        &self,
        module: &str,
        route: Option<&str>,
        event: &Event,
        accepted_ms: i64,
        again: bool,
    ) -> Result<Stored, Refused> {
        if self.client.connection_state() != State::Connected {
            return Err(Refused::Failed(format!(
                "not connected to the cluster at {}",
                self.opts.url
            )));
        }
        let json = serde_json::to_vec(event).map_err(|e| Refused::Failed(e.to_string()))?;
        // The event id deduplicates a publish sent twice; a replayed dead letter is a new
        // delivery of an event already stored once, so it gets an id of its own.
        let id = if again {
            format!(
                "{}:{}:replay-{accepted_ms}",
                event.id(),
                route.unwrap_or("*")
            )
        } else {
            event.id().to_owned()
        };
        let mut publish = Publish::build()
            .payload(json.into())
            .message_id(id)
            .header(ACCEPTED_MS, accepted_ms.to_string().as_str());
        if let Some(route) = route {
            publish = publish.header(ROUTE, route);
        }
        let subject = format!("{}.events.{module}", self.opts.name);
        let (tx, rx) = oneshot::channel();
        let js = self.js.clone();
        self.runtime.spawn(async move {
            let stored = tokio::time::timeout(PUBLISH_TIMEOUT, async {
                js.send_publish(subject, publish)
                    .await
                    .map_err(io::Error::other)?
                    .await
                    .map_err(io::Error::other)
            })
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::other(
                    "the cluster did not acknowledge the event in time",
                ))
            });
            let _ = tx.send(stored.map(drop));
        });
        Ok(Stored(rx))
    }

    /// Starts taking `module`'s messages from its shared consumer, for its dispatcher.
    pub(crate) fn pump(self: &Arc<Self>, shared: &Arc<Shared>, module: &str) {
        let task = self.runtime.spawn(pump(
            Arc::downgrade(self),
            Arc::downgrade(shared),
            module.to_owned(),
        ));
        if let Some(old) = self.pumps().insert(module.to_owned(), task) {
            old.abort();
        }
    }

    /// Stops taking `module`'s messages (it is no longer loaded here).
    pub(crate) fn stop_pump(&self, module: &str) {
        if let Some(task) = self.pumps().remove(module) {
            task.abort();
        }
    }

    pub(super) fn pumps(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, tokio::task::JoinHandle<()>>> {
        self.pumps.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Acker>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry of ticket `seq` is over: `done` acknowledges its message (deleting it), else
    /// it is handed back for another node (or this one) to take at once.
    pub(crate) fn finish(&self, seq: u64, done: bool) {
        let Some(acker) = self.held().remove(&seq) else {
            return;
        };
        // Tracked, so that a stop waits for its hand-backs to be sent (see `Cluster::leave`).
        self.acks.spawn_on(
            async move {
                let kind = if done {
                    AckKind::Ack
                } else {
                    AckKind::Nak(None)
                };
                if let Err(e) = acker.ack_with(kind).await {
                    tracing::warn!("cannot acknowledge a message to the cluster: {e}");
                }
            },
            &self.runtime,
        );
    }
}

/// A message taken from the stream that has no ticket yet: handed back when dropped.
struct Untracked<'a> {
    cluster: &'a Cluster,
    seq: u64,
}

impl Drop for Untracked<'_> {
    fn drop(&mut self) {
        self.cluster.finish(self.seq, false);
    }
}

/// Messages the client fetched ahead that this node keeps while its module has no room: renewed
/// while they wait, handed back if the pump stops first.
struct Ahead<'a> {
    cluster: &'a Cluster,
    messages: VecDeque<async_nats::jetstream::Message>,
    /// When they were last renewed (or kept): across waits for room, which may each be short.
    renewed: tokio::time::Instant,
}

impl Ahead<'_> {
    /// Keeps `messages` (fetched ahead, now kept here) with those already kept.
    fn keep(&mut self, messages: impl IntoIterator<Item = async_nats::jetstream::Message>) {
        if self.messages.is_empty() {
            self.renewed = tokio::time::Instant::now();
        }
        self.messages.extend(messages);
    }

    /// Renews the kept messages every third of the ack wait.
    async fn renew_when_due(&mut self) {
        let ack_wait = Duration::from_millis(self.cluster.ack_wait_ms.load(Ordering::Relaxed));
        if self.messages.is_empty() || self.renewed.elapsed() < ack_wait / 3 {
            return;
        }
        for m in &self.messages {
            let _ = m.ack_with(AckKind::Progress).await;
        }
        self.renewed = tokio::time::Instant::now();
    }
}

impl Drop for Ahead<'_> {
    fn drop(&mut self) {
        let messages = std::mem::take(&mut self.messages);
        if messages.is_empty() {
            return;
        }
        self.cluster.acks.spawn_on(
            async move {
                for m in messages {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                }
            },
            &self.cluster.runtime,
        );
    }
}

/// A module's consumer name: JetStream's names have no `.`, `*`, `>` or white space.
fn consumer_name(module: &str) -> String {
    module
        .chars()
        .map(|c| {
            if matches!(c, '.' | '*' | '>') || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The stream of the cluster named `name`.
pub(super) fn name(name: &str) -> String {
    format!("{name}-events")
}

/// Takes `module`'s messages and hands them to its dispatcher, until the pump is stopped; after
/// an error (the connection was lost) it asks for the consumer again.
async fn pump(cluster: Weak<Cluster>, shared: Weak<Shared>, module: String) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        if let Err(e) = take(&c, &shared, &module).await {
            tracing::warn!(module = %module, "taking events from the cluster: {e}; trying again");
        }
        drop(c);
        tokio::time::sleep(PUMP_BACKOFF).await;
    }
}

async fn take(
    cluster: &Cluster,
    shared: &Weak<Shared>,
    module: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let stream = cluster.js.get_stream(name(&cluster.opts.name)).await?;
    let durable = consumer_name(module);
    let consumer: Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &durable,
            pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: format!("{}.events.{module}", cluster.opts.name),
                ack_policy: AckPolicy::Explicit,
                ack_wait: cluster.opts.ack_wait,
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            },
        )
        .await?;
    cluster.heed_ack_wait(module, consumer.cached_info().config.ack_wait);
    // `None` while the module has no room: then nothing more is pulled.
    let mut pulled = Some(consumer.messages().await?);
    let mut ahead = Ahead {
        cluster,
        messages: VecDeque::new(),
        renewed: tokio::time::Instant::now(),
    };
    loop {
        ahead.renew_when_due().await;
        let message = match ahead.messages.pop_front() {
            Some(m) => m,
            None => {
                let stream = match &mut pulled {
                    Some(stream) => stream,
                    stopped => stopped.insert(consumer.messages().await?),
                };
                match stream.next().await {
                    Some(m) => m?,
                    None => return Ok(()),
                }
            }
        };
        let Some(shared) = shared.upgrade() else {
            return Ok(());
        };
        let (delivered, stream_seq) = message
            .info()
            .map_or((1, 0), |i| (i.delivered, i.stream_sequence));
        let (message, acker) = message.split();
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let event: Event = match serde_json::from_slice(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                // Nothing can ever route it: acknowledged, so that it does not come back.
                tracing::error!(module = %module, "a message in the cluster's stream is not an event, dropped: {e}");
                let _ = acker.ack().await;
                continue;
            }
        };
        let accepted_ms = header(ACCEPTED_MS)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(crate::module::running::now_ms);
        if delivered > i64::from(cluster.opts.max_deliver) {
            cluster
                .give_up(
                    module,
                    header(ROUTE),
                    event,
                    accepted_ms,
                    (delivered, stream_seq),
                    acker,
                )
                .await;
            continue;
        }
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let bytes = message.payload.len() as u64 + RESIDENT;
        cluster.held().insert(seq, Arc::new(acker));
        // Handed back if the pump is stopped before the entry has its ticket.
        let taken = Untracked { cluster, seq };
        // This node takes no more than its module's `max_queue_bytes`: the rest stays in the
        // stream for the other nodes (the one taken meanwhile is kept alive by progress acks).
        if !shared.has_room(module, bytes) {
            // No pulling while there is no room. What the client had fetched ahead is kept
            // and renewed here: left in the client's buffer it would go to another node after
            // the ack wait, and then run here as well. (Handing it back instead would count a
            // delivery against it each time the room runs out, towards `max_deliver`.)
            if let Some(mut stream) = pulled.take() {
                let mut fetched = Vec::new();
                while let Some(Some(next)) = stream.next().now_or_never() {
                    fetched.extend(next.ok());
                }
                ahead.keep(fetched);
            }
            while !shared.has_room(module, bytes) {
                tokio::time::sleep(ROOM_BACKOFF).await;
                ahead.renew_when_due().await;
            }
        }
        std::mem::forget(taken);
        shared.track(module, seq, accepted_ms, bytes);
        shared.hand_off(Entry {
            ticket: new_ticket(&shared, seq, module, bytes, true),
            accepted_ms,
            route: header(ROUTE),
            done: Vec::new(),
            started: Vec::new(),
            event,
        });
    }
}

impl Cluster {
    /// Dead-letters an event that `delivered` nodes took without finishing it (each died or
    /// stopped while it held it: an event that kills whoever routes it), then acknowledges it.
    /// (A node that stops hands back what it holds, and that counts as a delivery too: an event
    /// held through `max_deliver` restarts is taken for such an event.)
    async fn give_up(
        &self,
        module: &str,
        route: Option<String>,
        event: Event,
        accepted_ms: i64,
        (delivered, stream_seq): (i64, u64),
        acker: Acker,
    ) {
        let reason = format!(
            "taken by a node {delivered} times and never finished (each node died or stopped while it held it); dead-lettered before routing"
        );
        // Named after the message, so that burying it again (its acknowledgement was lost)
        // replaces the letter instead of adding a second one.
        let id = format!("dl_{stream_seq:016x}");
        let letter = DeadLetter {
            id: id.clone(),
            module: module.to_owned(),
            actor: None,
            event_id: event.id().to_owned(),
            event: event.to_json(),
            route,
            reason,
            last_error: None,
            attempts: delivered.try_into().unwrap_or(u32::MAX),
            accepted_at: format_timestamp(
                UNIX_EPOCH + Duration::from_millis(accepted_ms.max(0) as u64),
            ),
            dead_at: format_timestamp(SystemTime::now()),
        };
        match self.bury(letter).await {
            Ok(()) => {
                tracing::warn!(module = %module, event = %event.id(), dead_letter = %id, delivered, "an event no node could finish was dead-lettered");
                if let Err(e) = acker.ack().await {
                    tracing::warn!("cannot acknowledge a message to the cluster: {e}");
                }
            }
            // Left unacknowledged: it comes back after the ack wait, to be tried again.
            Err(e) => {
                tracing::error!(module = %module, event = %event.id(), "cannot dead-letter an event no node could finish: {e}")
            }
        }
    }

    /// Renews held messages often enough for the ack wait of `module`'s consumer as it
    /// exists: the daemon that created it may have been given another `--cluster-ack-wait`.
    fn heed_ack_wait(&self, module: &str, ack_wait: Duration) {
        let ms = ack_wait.as_millis().max(1000) as u64;
        if ack_wait != self.opts.ack_wait {
            tracing::warn!(module = %module, "the cluster's consumer has an ack wait of {ack_wait:?}, not {:?} as this node was given; held events are renewed for the shorter", self.opts.ack_wait);
        }
        self.ack_wait_ms.fetch_min(ms, Ordering::Relaxed);
    }
}

/// Every third of the ack wait, a progress acknowledgement for every message this node holds,
/// so that none goes to another node while it is being worked on here.
pub(super) async fn progress(cluster: Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let every = Duration::from_millis(c.ack_wait_ms.load(Ordering::Relaxed)) / 3;
        let held: Vec<Arc<Acker>> = c.held().values().cloned().collect();
        drop(c);
        for acker in held {
            let _ = acker.ack_with(AckKind::Progress).await;
        }
        tokio::time::sleep(every).await;
    }
}
