//! A reload across the cluster, in two phases. The node a reload is sent to coordinates:
//!
//! 1. **prepare**: it asks every node (itself included) to reload the module up to the point
//!    of the swap — read the files, stage and check the new generation — and waits for every
//!    node of the node list ([`super::nodes`]) to answer;
//! 2. **decide**: only if every node answered and none refused does it tell them all to swap;
//!    otherwise it tells them to drop what they staged, so that nothing changes anywhere. Each
//!    node answers with its own report (generation, swap time, drain), and the coordinator's
//!    report lists every node.
//!
//! A node that waits for a decision that does not come (its coordinator died) drops what it
//! staged after 90 s. A node that joins after the prepare is not part of the
//! reload: it loads the files as they are when it starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::Cluster;
use crate::module::report::ReloadOutcome;
use crate::module::{Registry, ReloadOptions};

/// How long the coordinator waits for every node's prepare (staging may start plugin processes
/// and run constructors).
const PREPARE_WITHIN: Duration = Duration::from_secs(60);
/// How long the coordinator waits for every node's swap.
const COMMIT_WITHIN: Duration = Duration::from_secs(30);
/// How long a node that staged waits for the decision before it drops what it staged.
const DECISION_WITHIN: Duration = Duration::from_secs(90);

#[derive(Serialize, Deserialize)]
struct Prepare {
    id: String,
    module: String,
    opts: ReloadOptions,
}

/// A node's answer to a prepare.
#[derive(Serialize, Deserialize)]
struct Prepared {
    node: String,
    /// `ready` (staged, waiting for the decision), else the outcome's own word: `unchanged`,
    /// `rejected`, `dry_run`.
    state: String,
    /// The outcome, when it is not `ready`.
    outcome: Option<Value>,
}

/// Where a staged reload's decision goes: whether to swap, and where to answer afterwards.
type Awaited = oneshot::Sender<(bool, Option<String>)>;

#[derive(Serialize, Deserialize)]
struct Decision {
    id: String,
    commit: bool,
}

/// A node's outcome after the decision.
#[derive(Serialize, Deserialize)]
struct Done {
    node: String,
    outcome: Value,
}

/// The subjects of the two phases.
fn subjects(cluster: &Cluster) -> (String, String) {
    let base = format!("{}.control.reload", cluster.opts.name);
    (format!("{base}.prepare"), format!("{base}.decide"))
}

/// Coordinates a reload of `module` on every node; returns the report and whether anything
/// was applied (`false`: refused, nothing changed anywhere). One coordinator at a time per
/// module: two at once would each hold some nodes' module locks while waiting for the others',
/// until the prepare timeout. A second one waits for the first (up to the prepare timeout).
pub async fn coordinate(cluster: &Cluster, module: &str, opts: &ReloadOptions) -> (bool, Value) {
    let lasting = PREPARE_WITHIN + COMMIT_WITHIN + Duration::from_secs(10);
    let lock = match cluster.lock_reload(module, PREPARE_WITHIN, lasting).await {
        Ok(seq) => seq,
        Err(e) => {
            let error =
                format!("another reload of {module} is under way and did not end in time: {e}");
            return (
                false,
                json!({"outcome": "rejected", "module": module, "error": error}),
            );
        }
    };
    let result = coordinate_locked(cluster, module, opts).await;
    cluster.unlock_reload(module, lock).await;
    result
}

async fn coordinate_locked(cluster: &Cluster, module: &str, opts: &ReloadOptions) -> (bool, Value) {
    let mut nodes: Vec<String> = match cluster.nodes().await {
        Ok(nodes) => nodes.into_iter().map(|n| n.id).collect(),
        Err(e) => {
            let report = json!({"outcome": "rejected", "module": module, "error": e});
            return (false, report);
        }
    };
    // This node, even before its first record is in the list.
    if !nodes.iter().any(|n| n == cluster.node()) {
        nodes.push(cluster.node().to_owned());
    }
    let (prepare_subject, decide_subject) = subjects(cluster);
    let id = format!("reload-{}", orgloop_plugin_sdk::new_event_id());
    let request = Prepare {
        id: id.clone(),
        module: module.to_owned(),
        opts: opts.clone(),
    };
    let prepared: Vec<Prepared> =
        ask(cluster, &prepare_subject, &request, &nodes, PREPARE_WITHIN).await;
    let answered: Vec<&str> = prepared.iter().map(|p| p.node.as_str()).collect();
    let missing: Vec<String> = nodes
        .iter()
        .filter(|n| !answered.contains(&n.as_str()))
        .cloned()
        .collect();
    let refused = prepared.iter().any(|p| p.state == "rejected");
    let ready: Vec<String> = prepared
        .iter()
        .filter(|p| p.state == "ready")
        .map(|p| p.node.clone())
        .collect();
    let commit = missing.is_empty() && !refused && !ready.is_empty();
    let decision = Decision { id, commit };
    let done: Vec<Done> = ask(cluster, &decide_subject, &decision, &ready, COMMIT_WITHIN).await;
    let mut per_node: Vec<Value> = prepared
        .iter()
        .map(|p| {
            let outcome = done
                .iter()
                .find(|d| d.node == p.node)
                .map(|d| d.outcome.clone())
                .or_else(|| p.outcome.clone());
            json!({"node": p.node, "prepared": p.state, "outcome": outcome})
        })
        .collect();
    per_node.extend(
        missing
            .iter()
            .map(|n| json!({"node": n, "prepared": "no answer", "outcome": null})),
    );
    let confirmed = |node: &String| {
        done.iter()
            .any(|d| &d.node == node && d.outcome["outcome"] == "swapped")
    };
    let unconfirmed: Vec<&String> = ready.iter().filter(|n| !confirmed(n)).collect();
    let outcome = if commit && unconfirmed.is_empty() {
        "swapped"
    } else if commit {
        // A node that staged did not say it swapped: the decision did not reach it, or its
        // swap failed. The others did swap.
        "incomplete"
    } else if refused || !missing.is_empty() {
        "rejected"
    } else {
        prepared.first().map_or("unchanged", |p| p.state.as_str())
    };
    let report = json!({
        "outcome": outcome,
        "module": module,
        "cluster": true,
        "nodes": per_node,
        "missing": missing,
        "unconfirmed": unconfirmed,
    });
    (outcome != "rejected", report)
}

/// A change `--watch` saw on this node: reloaded across the cluster. Every watching node
/// coordinates the changes it sees (one after the other, see [`coordinate`]): when the files
/// reach the machines at different times, the node they reach last still reloads them, and
/// the nodes that already have them answer `unchanged`.
pub async fn on_change(cluster: &Cluster, module: &str) {
    let (applied, report) = coordinate(cluster, module, &ReloadOptions::default()).await;
    if applied {
        tracing::info!(module = %module, outcome = %report["outcome"], "automatic reload across the cluster");
    } else {
        tracing::warn!(module = %module, "automatic reload across the cluster refused; every node keeps its generation: {report}");
    }
}

/// Publishes `message` on `subject` and collects the answers of `from` (by their `node`),
/// until all of them answered or `within` is over.
async fn ask<M: Serialize, A: for<'de> Deserialize<'de> + Named>(
    cluster: &Cluster,
    subject: &str,
    message: &M,
    from: &[String],
    within: Duration,
) -> Vec<A> {
    let mut answers: Vec<A> = Vec::new();
    if from.is_empty() {
        // Still sent: a decision to drop must reach nodes that staged nothing as well.
        let _ = send(cluster, subject, None, message).await;
        return answers;
    }
    let inbox = cluster.client.new_inbox();
    let Ok(mut replies) = cluster.client.subscribe(inbox.clone()).await else {
        return answers;
    };
    if send(cluster, subject, Some(inbox), message).await.is_err() {
        return answers;
    }
    let deadline = Instant::now() + within;
    while answers.len() < from.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(reply)) = tokio::time::timeout(left, replies.next()).await else {
            break;
        };
        if let Ok(a) = serde_json::from_slice::<A>(&reply.payload) {
            if from.iter().any(|n| n == a.node()) {
                answers.push(a);
            }
        }
    }
    answers
}

async fn send<M: Serialize>(
    cluster: &Cluster,
    subject: &str,
    reply: Option<String>,
    message: &M,
) -> Result<(), String> {
    let payload = serde_json::to_vec(message).map_err(|e| e.to_string())?;
    let sent = match reply {
        Some(r) => {
            cluster
                .client
                .publish_with_reply(subject.to_owned(), r, payload.into())
                .await
        }
        None => {
            cluster
                .client
                .publish(subject.to_owned(), payload.into())
                .await
        }
    };
    sent.map_err(|e| e.to_string())?;
    cluster.client.flush().await.map_err(|e| e.to_string())
}

/// What answers carry: the node that sent them.
trait Named {
    fn node(&self) -> &str;
}

impl Named for Prepared {
    fn node(&self) -> &str {
        &self.node
    }
}

impl Named for Done {
    fn node(&self) -> &str {
        &self.node
    }
}

/// Takes part in the cluster's reloads: answers prepares and decisions for the modules of
/// `registry`, until it is gone.
pub fn serve(cluster: Arc<Cluster>, registry: Weak<Registry>) {
    let decisions: Arc<Mutex<HashMap<String, Awaited>>> = Arc::default();
    let (prepare_subject, decide_subject) = subjects(&cluster);
    let (c, d) = (cluster.clone(), decisions.clone());
    tokio::spawn(async move {
        let Ok(mut decides) = c.client.subscribe(decide_subject).await else {
            return tracing::error!("cannot take part in the cluster's reloads");
        };
        while let Some(msg) = decides.next().await {
            let Ok(decision) = serde_json::from_slice::<Decision>(&msg.payload) else {
                continue;
            };
            let waiting = d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&decision.id);
            if let Some(tx) = waiting {
                let reply = msg.reply.map(|r| r.to_string());
                let _ = tx.send((decision.commit, reply));
            }
        }
    });
    tokio::spawn(async move {
        let Ok(mut prepares) = cluster.client.subscribe(prepare_subject).await else {
            return tracing::error!("cannot take part in the cluster's reloads");
        };
        while let Some(msg) = prepares.next().await {
            let (Ok(request), Some(reply)) =
                (serde_json::from_slice::<Prepare>(&msg.payload), msg.reply)
            else {
                continue;
            };
            let Some(registry) = registry.upgrade() else {
                return;
            };
            let (tx, rx) = oneshot::channel();
            decisions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(request.id.clone(), tx);
            let (cluster, decisions) = (cluster.clone(), decisions.clone());
            tokio::spawn(async move {
                let id = request.id.clone();
                take_part(cluster, registry, request, reply.to_string(), rx).await;
                // Still there when no decision came in time.
                decisions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            });
        }
    });
}

/// This node's part in one reload.
async fn take_part(
    cluster: Arc<Cluster>,
    registry: Arc<Registry>,
    request: Prepare,
    reply: String,
    decision: oneshot::Receiver<(bool, Option<String>)>,
) {
    let node = cluster.node().to_owned();
    let answer = |state: &str, outcome: Option<Value>| Prepared {
        node: node.clone(),
        state: state.to_owned(),
        outcome,
    };
    let Some(module) = registry.module(&request.module) else {
        // Not every node must run every module: one that does not is simply not part of it.
        let _ = send(&cluster, &reply, None, &answer("absent", None)).await;
        return;
    };
    let done_to: Arc<Mutex<Option<String>>> = Arc::default();
    let outcome = crate::module::reload::reload_gated(&registry, &module, &request.opts, |prepared| {
        let (state, outcome) = match prepared {
            Ok(_) => ("ready".to_owned(), None),
            Err(outcome) => {
                let json = crate::control::modules::outcome_json(outcome);
                let state = json["outcome"].as_str().unwrap_or("rejected").to_owned();
                (state, Some(json))
            }
        };
        let (cluster, reply, done_to) = (cluster.clone(), reply.clone(), done_to.clone());
        let answer = answer(&state, outcome);
        async move {
            let _ = send(&cluster, &reply, None, &answer).await;
            if state != "ready" {
                return false;
            }
            match tokio::time::timeout(DECISION_WITHIN, decision).await {
                Ok(Ok((commit, to))) => {
                    *done_to.lock().unwrap_or_else(|e| e.into_inner()) = to;
                    commit
                }
                _ => {
                    tracing::warn!("no decision came for a reload across the cluster; what was staged is dropped");
                    false
                }
            }
        }
    })
    .await;
    let to = done_to.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(to) = to {
        let done = Done {
            node,
            outcome: crate::control::modules::outcome_json(&outcome),
        };
        let _ = send(&cluster, &to, None, &done).await;
    }
    if let ReloadOutcome::Swapped(r) = &outcome {
        tracing::info!(module = %r.module, generation = r.to_generation, "reloaded with the cluster");
    }
}
