//! Dead letters: deliveries that will not be retried any more — refused for good by their
//! target, out of attempts or time, or whose route or actor a reload removed — kept with their
//! last error until someone replays or purges them. Never silently away.
//!
//! Each one is a small JSON file under `<data>/dead/`, written to a temporary name, synced and
//! renamed, so a crash leaves either the whole file or none; they are rare, and `ls` and `cat`
//! are enough to look at them. With `durability: memory` they live in memory only.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// One delivery that gave up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// `dl_` + 16 hex digits.
    pub id: String,
    pub module: String,
    pub route: String,
    pub actor: String,
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

/// The dead letters of the daemon, by id.
#[derive(Clone)]
pub struct DeadLetters {
    /// `None`: in memory only.
    dir: Option<PathBuf>,
    items: Arc<Mutex<BTreeMap<String, DeadLetter>>>,
}

impl DeadLetters {
    /// Kept in memory only.
    pub fn memory() -> Self {
        DeadLetters {
            dir: None,
            items: Arc::default(),
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
                Ok(d) => {
                    items.insert(d.id.clone(), d);
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), "dead letter unreadable, left in place: {e}")
                }
            }
        }
        Ok(DeadLetters {
            dir: Some(dir),
            items: Arc::new(Mutex::new(items)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DeadLetter>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `letter` durably (a blocking write and sync; call it off the async threads).
    pub fn add(&self, letter: DeadLetter) -> io::Result<()> {
        if let Some(dir) = &self.dir {
            let tmp = dir.join(format!("{}.tmp", letter.id));
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&serde_json::to_vec_pretty(&letter)?)?;
            file.sync_data()?;
            std::fs::rename(&tmp, dir.join(format!("{}.json", letter.id)))?;
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.lock().insert(letter.id.clone(), letter);
        Ok(())
    }

    /// Removes one; `false` when there is none with that id.
    pub fn remove(&self, id: &str) -> io::Result<bool> {
        match self.claim(id) {
            Some(letter) => self.delete(letter).map(|()| true),
            None => Ok(false),
        }
    }

    /// Takes a letter out of the list (so that nobody else replays it meanwhile); its file stays
    /// until [`delete`](Self::delete), or [`put_back`](Self::put_back) returns it.
    pub fn claim(&self, id: &str) -> Option<DeadLetter> {
        self.lock().remove(id)
    }

    /// Returns a claimed letter to the list.
    pub fn put_back(&self, letter: DeadLetter) {
        self.lock().insert(letter.id.clone(), letter);
    }

    /// Deletes a claimed letter's file; on failure it is back in the list.
    pub fn delete(&self, letter: DeadLetter) -> io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        match std::fs::remove_file(dir.join(format!("{}.json", letter.id))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                self.put_back(letter);
                Err(e)
            }
            _ => Ok(()),
        }
    }

    pub fn get(&self, id: &str) -> Option<DeadLetter> {
        self.lock().get(id).cloned()
    }

    /// Those of `module` (all when `None`), oldest first.
    pub fn list(&self, module: Option<&str>) -> Vec<DeadLetter> {
        let mut all: Vec<DeadLetter> = self
            .lock()
            .values()
            .filter(|d| module.is_none_or(|m| d.module == m))
            .cloned()
            .collect();
        all.sort_by(|a, b| a.dead_at.cmp(&b.dead_at).then(a.id.cmp(&b.id)));
        all
    }

    /// How many `module` holds, by actor.
    pub fn count_by_actor(&self, module: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for d in self.lock().values().filter(|d| d.module == module) {
            *counts.entry(d.actor.clone()).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(id: &str, module: &str) -> DeadLetter {
        DeadLetter {
            id: id.into(),
            module: module.into(),
            route: "r".into(),
            actor: "a".into(),
            event_id: "evt_1".into(),
            event: serde_json::json!({"id": "evt_1"}),
            reason: "rejected".into(),
            last_error: Some("HTTP 400".into()),
            attempts: 1,
            accepted_at: "2026-01-01T00:00:00.000Z".into(),
            dead_at: format!("2026-01-01T00:00:0{}.000Z", id.len() % 10),
        }
    }

    #[test]
    fn letters_survive_a_reopen_until_removed() {
        let dir = std::env::temp_dir().join(format!("orgloop-dead-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dead = DeadLetters::open(dir.clone()).unwrap();
        dead.add(letter("dl_1", "m")).unwrap();
        dead.add(letter("dl_22", "other")).unwrap();
        let again = DeadLetters::open(dir.clone()).unwrap();
        assert_eq!(again.list(None).len(), 2);
        assert_eq!(again.list(Some("m")), [letter("dl_1", "m")]);
        assert_eq!(again.count_by_actor("m")["a"], 1);
        assert!(again.remove("dl_1").unwrap());
        assert!(!again.remove("dl_1").unwrap());
        assert_eq!(DeadLetters::open(dir).unwrap().list(None).len(), 1);
    }
}
