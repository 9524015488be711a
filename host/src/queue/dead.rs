//! Dead letters: deliveries that will not be retried any more — refused for good by their
//! target, out of attempts or time, or whose route or actor a reload removed — kept with their
//! last error until someone replays or purges them. Never silently away.
//!
//! Where they are kept:
//! - by default, each one is a small JSON file under `<data>/dead/`, written to a temporary
//!   name, synced and renamed, so a crash leaves either the whole file or none; they are rare,
//!   and `ls` and `cat` are enough to look at them;
//! - with `durability: memory`, in memory only;
//! - in cluster mode, in the cluster's stream `<name>-dead` (see [`crate::cluster::dead`]), so
//!   that every node lists, replays and purges the same ones.
//!
//! A replay or a purge first claims its letter, so that nobody else replays it meanwhile; a
//! claim that is neither put back nor completed (its node died) runs out after a minute and the
//! letter is listed again.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::cluster::Cluster;
use crate::module::running::now_ms;

/// How long a claimed letter stays out of the list without being put back or deleted.
const CLAIM_RUNS_OUT_MS: i64 = 60_000;

/// One delivery that gave up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// `dl_` + 16 hex digits.
    pub id: String,
    pub module: String,
    /// The route it was to be delivered along; `None`: the whole event, before routing (a
    /// message that nodes kept failing to finish in cluster mode).
    pub route: Option<String>,
    /// `None` with `route`.
    pub actor: Option<String>,
    pub event_id: String,
    /// The event as it was to be delivered (after the route's transforms).
    pub event: Json,
    /// Why it is here, in words.
    pub reason: String,
    /// The last attempt's error, if an attempt was made.
    pub last_error: Option<String>,
    pub attempts: u32,
    pub accepted_at: String,
    pub dead_at: String,
}

/// A new dead letter's id.
pub fn new_id() -> String {
    format!("dl_{}", &orgloop_plugin_sdk::new_event_id()["evt_".len()..])
}

/// A dead letter as a store holds it.
#[derive(Clone, Debug)]
pub(crate) struct Kept {
    pub letter: DeadLetter,
    /// In cluster mode, the sequence of its record in the cluster's stream (0 elsewhere).
    pub seq: u64,
    /// Claimed by a replay or a purge since this Unix ms.
    pub claimed_ms: Option<i64>,
}

impl Kept {
    pub fn listed(&self, now: i64) -> bool {
        self.claimed_ms
            .is_none_or(|at| now - at > CLAIM_RUNS_OUT_MS)
    }
}

/// Dead letters by id.
pub(crate) type Items = Arc<Mutex<BTreeMap<String, Kept>>>;

#[derive(Clone)]
enum Keep {
    Memory,
    Files(PathBuf),
    Cluster(Arc<Cluster>),
}

/// The dead letters of the daemon (of the cluster, in cluster mode). Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    keep: Keep,
    items: Items,
}

impl DeadLetters {
    /// Kept in memory only.
    pub fn memory() -> Self {
        DeadLetters {
            keep: Keep::Memory,
            items: Arc::default(),
        }
    }

    /// Kept in the cluster's stream; the cluster keeps the list up to date.
    pub fn cluster(cluster: Arc<Cluster>) -> Self {
        DeadLetters {
            items: cluster.dead_letters(),
            keep: Keep::Cluster(cluster),
        }
    }

    /// Opens (or creates) the directory and reads what it holds.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut items = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                // A temporary file a crash left behind.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<DeadLetter>(&b).map_err(|e| e.to_string()))
            {
                Ok(letter) => {
                    let kept = Kept {
                        letter,
                        seq: 0,
                        claimed_ms: None,
                    };
                    items.insert(kept.letter.id.clone(), kept);
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), "dead letter unreadable, left in place: {e}")
                }
            }
        }
        Ok(DeadLetters {
            keep: Keep::Files(dir),
            items: Arc::new(Mutex::new(items)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Kept>> {
        lock(&self.items)
    }

    /// Stores `letter` durably.
    pub async fn add(&self, letter: DeadLetter) -> io::Result<()> {
        let seq = match &self.keep {
            Keep::Memory => 0,
            Keep::Files(dir) => {
                let (dir, l) = (dir.clone(), letter.clone());
                tokio::task::spawn_blocking(move || write(&dir, &l))
                    .await
                    .map_err(io::Error::other)??;
                0
            }
            Keep::Cluster(c) => return c.bury(letter).await,
        };
        let kept = Kept {
            letter,
            seq,
            claimed_ms: None,
        };
        self.lock().insert(kept.letter.id.clone(), kept);
        Ok(())
    }

    /// Removes one; `false` when there is none with that id.
    pub async fn remove(&self, id: &str) -> io::Result<bool> {
        match self.claim(id).await? {
            Some(letter) => self.delete(letter).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Takes a letter out of the list (so that nobody else replays it meanwhile) until
    /// [`delete`](Self::delete) or [`put_back`](Self::put_back); `None` when it is not listed
    /// (any more).
    pub async fn claim(&self, id: &str) -> io::Result<Option<DeadLetter>> {
        if let Keep::Cluster(c) = &self.keep {
            return c.claim_dead(id).await;
        }
        let now = now_ms();
        Ok(self.lock().get_mut(id).filter(|k| k.listed(now)).map(|k| {
            k.claimed_ms = Some(now);
            k.letter.clone()
        }))
    }

    /// Returns a claimed letter to the list.
    pub async fn put_back(&self, letter: DeadLetter) -> io::Result<()> {
        if let Keep::Cluster(c) = &self.keep {
            return c.bury(letter).await;
        }
        if let Some(kept) = self.lock().get_mut(&letter.id) {
            kept.claimed_ms = None;
        }
        Ok(())
    }

    /// Deletes a claimed letter for good; on failure it is back in the list.
    pub async fn delete(&self, letter: DeadLetter) -> io::Result<()> {
        let deleted = match &self.keep {
            Keep::Memory => Ok(()),
            Keep::Files(dir) => {
                let file = dir.join(format!("{}.json", letter.id));
                match tokio::task::spawn_blocking(move || std::fs::remove_file(file)).await {
                    Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Ok(r) => r,
                    Err(e) => Err(io::Error::other(e)),
                }
            }
            Keep::Cluster(c) => return c.purge_dead(&letter.id).await,
        };
        match deleted {
            Ok(()) => {
                self.lock().remove(&letter.id);
                Ok(())
            }
            Err(e) => {
                self.put_back(letter).await?;
                Err(e)
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<DeadLetter> {
        let now = now_ms();
        self.lock()
            .get(id)
            .filter(|k| k.listed(now))
            .map(|k| k.letter.clone())
    }

    /// Those of `module` (all when `None`), oldest first.
    pub fn list(&self, module: Option<&str>) -> Vec<DeadLetter> {
        let mut all = Vec::new();
        self.each_listed(module, |letter| all.push(letter.clone()));
        all.sort_by(|a, b| a.dead_at.cmp(&b.dead_at).then(a.id.cmp(&b.id)));
        all
    }

    /// How many `module` holds, by actor (a whole event dead-lettered before routing counts
    /// under no actor, see [`count`](Self::count)).
    pub fn count_by_actor(&self, module: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        self.each_listed(Some(module), |letter| {
            if let Some(actor) = &letter.actor {
                *counts.entry(actor.clone()).or_default() += 1;
            }
        });
        counts
    }

    /// How many `module` holds.
    pub fn count(&self, module: &str) -> usize {
        let mut n = 0;
        self.each_listed(Some(module), |_| n += 1);
        n
    }

    /// Calls `f` with each listed letter of `module` (all when `None`), without copying them:
    /// the counts are read at every `/metrics` scrape and `module status`.
    fn each_listed(&self, module: Option<&str>, mut f: impl FnMut(&DeadLetter)) {
        let now = now_ms();
        for kept in self.lock().values() {
            if kept.listed(now) && module.is_none_or(|m| kept.letter.module == m) {
                f(&kept.letter);
            }
        }
    }
}

pub(crate) fn lock(items: &Items) -> std::sync::MutexGuard<'_, BTreeMap<String, Kept>> {
    items.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `letter`'s file (a blocking write and sync).
fn write(dir: &Path, letter: &DeadLetter) -> io::Result<()> {
    let tmp = dir.join(format!("{}.tmp", letter.id));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(letter)?)?;
    file.sync_data()?;
    std::fs::rename(&tmp, dir.join(format!("{}.json", letter.id)))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(id: &str, module: &str) -> DeadLetter {
        DeadLetter {
            id: id.into(),
            module: module.into(),
            route: Some("r".into()),
            actor: Some("a".into()),
            event_id: "evt_1".into(),
            event: serde_json::json!({"id": "evt_1"}),
            reason: "rejected".into(),
            last_error: Some("HTTP 400".into()),
            attempts: 1,
            accepted_at: "2026-01-01T00:00:00.000Z".into(),
            dead_at: format!("2026-01-01T00:00:0{}.000Z", id.len() % 10),
        }
    }

    #[tokio::test]
    async fn letters_survive_a_reopen_until_removed_and_a_claim_hides_one() {
        let dir = std::env::temp_dir().join(format!("orgloop-dead-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dead = DeadLetters::open(dir.clone()).unwrap();
        dead.add(letter("dl_1", "m")).await.unwrap();
        dead.add(letter("dl_22", "other")).await.unwrap();
        let again = DeadLetters::open(dir.clone()).unwrap();
        assert_eq!(again.list(None).len(), 2);
        assert_eq!(again.list(Some("m")), [letter("dl_1", "m")]);
        assert_eq!(again.count_by_actor("m")["a"], 1);
        let claimed = again.claim("dl_22").await.unwrap().unwrap();
        assert_eq!(again.list(None).len(), 1, "a claimed letter is not listed");
        assert_eq!(
            again.claim("dl_22").await.unwrap(),
            None,
            "nor claimed twice"
        );
        again.put_back(claimed).await.unwrap();
        assert_eq!(again.list(None).len(), 2);
        assert!(again.remove("dl_1").await.unwrap());
        assert!(!again.remove("dl_1").await.unwrap());
        assert_eq!(DeadLetters::open(dir).unwrap().list(None).len(), 1);
    }
}
