//! Cluster mode (`orgloop start --cluster nats://HOST:PORT`): several daemons share one queue —
//! NATS JetStream — and know of each other.
//!
//! - [`stream`]: the queue. Events go through the cluster's stream instead of the local log.
//! - [`nodes`]: each node announces itself every second in a stream that keeps the last record
//!   of each; `/api/status` and `orgloop cluster status` list them.
//! - [`lease`]: a polling source runs on one node at a time, with its checkpoint in the cluster.
//! - [`dead`]: the dead letters are the cluster's, in a stream of their own.
//! - [`reload`]: a reload sent to any node is staged on every node, and swapped on all of them
//!   only if none refused it.

pub mod dead;
pub mod lease;
pub mod nodes;
pub mod reload;
pub mod stream;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::stream::{self as js_stream, DiscardPolicy, RetentionPolicy};
use async_nats::jetstream::{self as js};

/// How to join a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `nats://HOST:PORT` (several, comma-separated).
    pub url: String,
    /// Names the stream, its subjects and consumers: daemons with the same name share work.
    pub name: String,
    /// JetStream replicas of the stream (1 for a single nats-server; 3 on a 3-server cluster).
    pub replicas: usize,
    /// How long a node may hold a message without a sign of life before it goes to another.
    pub ack_wait: Duration,
    /// Deliveries of an event to nodes that did not finish it, after which the next node
    /// dead-letters it whole.
    pub max_deliver: u32,
    /// The stream's limit in bytes.
    pub max_bytes: u64,
    /// This node's id in the cluster (default: host name and HTTP port).
    pub node: String,
}

/// This node's connection to the cluster.
pub struct Cluster {
    client: async_nats::Client,
    js: js::Context,
    opts: ClusterOptions,
    /// The messages this node holds, by the sequence number of their ticket.
    held: Mutex<HashMap<u64, Arc<Acker>>>,
    /// The pump of each module, while it is registered.
    pumps: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
    /// Acknowledgements and hand-backs on their way.
    acks: tokio_util::task::TaskTracker,
    /// The cluster's dead letters, kept up to date from their stream (see [`dead`]).
    dead: crate::queue::dead::Items,
    /// This node's claims of dead letters (see [`dead`]).
    dead_claims: Mutex<HashMap<String, u64>>,
    /// The shortest ack wait of the consumers this node takes from, in ms.
    ack_wait_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.opts.url)
            .field("name", &self.opts.name)
            .finish()
    }
}

impl Cluster {
    /// Connects, creates the stream if it does not exist, and starts the progress
    /// acknowledgements.
    pub async fn join(opts: ClusterOptions) -> io::Result<Arc<Cluster>> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            io::Error::other(format!("{what} {}: {e}", opts.url))
        };
        let client = async_nats::ConnectOptions::new()
            .name("orgloop")
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .connect(opts.url.split(',').map(str::trim).collect::<Vec<_>>())
            .await
            .map_err(|e| failed("cannot reach the cluster at", &e))?;
        let js = js::new(client.clone());
        js.get_or_create_stream(js_stream::Config {
            name: stream::name(&opts.name),
            subjects: vec![format!("{}.events.>", opts.name)],
            retention: RetentionPolicy::WorkQueue,
            storage: js_stream::StorageType::File,
            num_replicas: opts.replicas,
            duplicate_window: Duration::from_secs(120),
            max_bytes: opts.max_bytes.min(i64::MAX as u64) as i64,
            discard: DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| failed("cannot create the stream on", &e))?;
        let cluster = Arc::new(Cluster {
            client,
            js,
            held: Mutex::default(),
            pumps: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
            acks: tokio_util::task::TaskTracker::new(),
            dead: Default::default(),
            dead_claims: Mutex::default(),
            ack_wait_ms: (opts.ack_wait.as_millis() as u64).into(),
            opts,
        });
        cluster.follow_dead().await.map_err(io::Error::other)?;
        tokio::spawn(stream::progress(Arc::downgrade(&cluster)));
        tracing::info!(url = %cluster.opts.url, stream = %stream::name(&cluster.opts.name), "joined the cluster");
        Ok(cluster)
    }

    /// Leaves the cluster at a stop: sends what this node still hands back or acknowledges,
    /// and takes it off the node list at once (not 5 s later, which a reload would wait for).
    pub async fn leave(&self) {
        self.acks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.acks.wait()).await;
        self.forget_node().await;
        let _ = self.client.flush().await;
    }

    /// Publishes `payload` on `subject` and waits until JetStream has stored it.
    async fn put(&self, subject: String, payload: bytes::Bytes) -> Result<(), String> {
        let ack = self
            .js
            .publish(subject, payload)
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map(drop).map_err(|e| e.to_string())
    }

    /// The stream `<name>-<what>` on `subjects` that keeps the last record of each subject (for
    /// `max_age`, when given): a key-value store of records, kept by JetStream.
    async fn records(
        &self,
        what: &str,
        subjects: Vec<String>,
        max_age: Option<Duration>,
        storage: js_stream::StorageType,
    ) -> Result<js_stream::Stream, String> {
        self.js
            .get_or_create_stream(js_stream::Config {
                name: format!("{}-{what}", self.opts.name),
                subjects,
                max_messages_per_subject: 1,
                max_age: max_age.unwrap_or_default(),
                discard: DiscardPolicy::Old,
                storage,
                num_replicas: self.opts.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot open the cluster's {what}: {e}"))
    }

    /// Whether this node is connected now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    pub fn url(&self) -> &str {
        &self.opts.url
    }

    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            node: self.opts.node.clone(),
            url: self.opts.url.clone(),
            name: self.opts.name.clone(),
            connected: self.connected(),
            held: self.held().len(),
        }
    }
}

/// This node in its cluster, as `/api/status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct ClusterStatus {
    /// This node's id.
    pub node: String,
    pub url: String,
    pub name: String,
    pub connected: bool,
    /// Events this node took from the stream and has not finished.
    pub held: usize,
}
