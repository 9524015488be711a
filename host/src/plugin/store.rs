//! Private, content-addressed copies of plugin builds.
//!
//! `dlopen` of a path that is already mapped returns the mapped image even when the file changed,
//! and overwriting a mapped file can corrupt the running process. So the daemon never maps a user's
//! build output: it copies each build to `<store>/<module>/<sha256>.so` and maps that. Equal
//! content gives the same path (and the same mapping); a new build gets a new path, so old and new
//! versions can be mapped side by side. A copy is deleted when the last library using it closes.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// The store of one daemon process.
#[derive(Clone)]
pub struct PluginStore {
    root: PathBuf,
    leases: Arc<Mutex<HashMap<PathBuf, usize>>>,
}

/// A copy in use. Dropping the last lease of a path deletes the file.
pub struct Lease {
    path: PathBuf,
    leases: Arc<Mutex<HashMap<PathBuf, usize>>>,
}

/// A stored copy.
pub struct Stored {
    pub path: PathBuf,
    /// Hex SHA-256 of the content.
    pub hash: String,
    pub lease: Lease,
}

impl PluginStore {
    pub fn new(root: PathBuf) -> Self {
        PluginStore {
            root,
            leases: Default::default(),
        }
    }

    /// Copies `source` into the store (unless an identical copy is there) and leases it.
    pub fn import(&self, module: &str, source: &Path) -> std::io::Result<Stored> {
        let bytes = std::fs::read(source)?;
        let hash = hex(&Sha256::digest(&bytes));
        let dir = self.root.join(module);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{hash}.so"));
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if !path.exists() {
            // Write beside, then rename: a reader never sees a half-written copy.
            let tmp = dir.join(format!(".{hash}.{}.tmp", std::process::id()));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
        }
        *leases.entry(path.clone()).or_default() += 1;
        Ok(Stored {
            path: path.clone(),
            hash,
            lease: Lease {
                path,
                leases: self.leases.clone(),
            },
        })
    }

    /// Removes the whole store (at daemon exit).
    pub fn remove_all(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let count = leases.entry(self.path.clone()).or_default();
        *count = count.saturating_sub(1);
        if *count == 0 {
            leases.remove(&self.path);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_shares_a_copy_until_the_last_lease() {
        let tmp = std::env::temp_dir().join(format!("orgloop-store-test-{}", std::process::id()));
        let store = PluginStore::new(tmp.join("store"));
        std::fs::create_dir_all(&tmp).unwrap();
        let src = tmp.join("lib.so");
        std::fs::write(&src, b"one").unwrap();
        let a = store.import("m", &src).unwrap();
        let b = store.import("m", &src).unwrap();
        assert_eq!(a.path, b.path);
        std::fs::write(&src, b"two").unwrap();
        let c = store.import("m", &src).unwrap();
        assert_ne!(a.hash, c.hash);
        drop(a);
        assert!(b.path.exists());
        drop(b);
        assert!(!c
            .path
            .with_file_name(format!("{}.so", sha_of(b"one")))
            .exists());
        assert!(c.path.exists());
        drop(c);
        store.remove_all();
        let _ = std::fs::remove_dir_all(&tmp);
    }

    fn sha_of(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }
}
