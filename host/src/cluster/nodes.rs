//! The nodes of a cluster. Each publishes a record of itself on `<name>.nodes.<id>` every
//! second, into the stream `<name>-nodes`, which keeps the last record of each node and
//! forgets one not renewed within 5 s: a node that died leaves the list by itself,
//! and a reload across the cluster knows whom to wait for. (A key-value bucket by hand: the
//! JetStream of nats-server 2.9 and the client disagree on creating one.)

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::module::Registry;

/// How often a node renews its record.
const EVERY: Duration = Duration::from_secs(1);
/// A record not renewed for this long is gone: its node is taken for dead.
const GONE_AFTER: Duration = Duration::from_secs(5);

/// One node, as it announces itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    /// Its HTTP address (webhooks and the API).
    pub address: String,
    pub uptime_ms: u64,
    pub modules: Vec<ModuleGeneration>,
    /// Events it took from the stream and has not finished.
    pub held: usize,
    /// It runs with `--watch`.
    #[serde(default)]
    pub watching: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModuleGeneration {
    pub name: String,
    pub generation: u64,
    /// Deliveries running on the current generation.
    pub inflight: usize,
}

impl Cluster {
    fn nodes_subject(&self, key: &str) -> String {
        format!("{}.nodes.{key}", self.opts.name)
    }

    async fn nodes_stream(&self) -> Result<stream::Stream, String> {
        let subjects = vec![self.nodes_subject("*")];
        self.records(
            "nodes",
            subjects,
            Some(GONE_AFTER),
            stream::StorageType::Memory,
        )
        .await
    }

    /// The nodes alive now (this one included), by id.
    pub async fn nodes(&self) -> Result<Vec<Node>, String> {
        let stream = self.nodes_stream().await?;
        let mut subjects = stream
            .info_with_subjects(self.nodes_subject("*"))
            .await
            .map_err(|e| format!("cannot list the cluster's nodes: {e}"))?;
        let mut nodes = Vec::new();
        while let Some(subject) = subjects.next().await {
            let Ok((subject, _)) = subject else { continue };
            if let Ok(record) = stream.get_last_raw_message_by_subject(&subject).await {
                if let Ok(node) = serde_json::from_slice::<Node>(&record.payload) {
                    nodes.push(node);
                }
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Takes this node off the list.
    pub(super) async fn forget_node(&self) {
        if let Ok(stream) = self.nodes_stream().await {
            let subject = self.nodes_subject(&key(self.node()));
            let _ = stream.purge().filter(subject).await;
        }
    }

    /// This node's id in the cluster.
    pub fn node(&self) -> &str {
        &self.opts.node
    }
}

/// Announces this node (serving at `address`) until the registry is gone.
pub fn announce(cluster: Arc<Cluster>, registry: Weak<Registry>, address: String) {
    let started = Instant::now();
    tokio::spawn(async move {
        let subject = cluster.nodes_subject(&key(cluster.node()));
        let mut opened = false;
        loop {
            let Some(registry) = registry.upgrade() else {
                return;
            };
            if !opened {
                opened = cluster.nodes_stream().await.is_ok();
            }
            let me = Node {
                id: cluster.node().to_owned(),
                address: address.clone(),
                uptime_ms: started.elapsed().as_millis() as u64,
                modules: registry
                    .modules()
                    .iter()
                    .filter_map(|m| {
                        let g = m.current()?;
                        Some(ModuleGeneration {
                            name: m.name.clone(),
                            generation: g.number,
                            inflight: g.inflight.len(),
                        })
                    })
                    .collect(),
                held: cluster.held().len(),
                watching: registry.watching(),
            };
            drop(registry);
            if let (true, Ok(record)) = (opened, serde_json::to_vec(&me)) {
                if let Err(e) = cluster.put(subject.clone(), record.into()).await {
                    tracing::debug!("cannot renew this node's record in the cluster: {e}");
                    opened = false;
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    });
}

/// A name as one token of a subject (letters, digits, `-`, `_`; the rest becomes `_`).
pub(super) fn key(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
