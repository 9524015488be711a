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
    /// Numbers the copies made with `own_copy`.
    copies: Arc<std::sync::atomic::AtomicU64>,
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
            copies: Default::default(),
        }
    }

    /// Copies `source` into the store (unless an identical copy is there) and leases it. With
    /// `own_copy`, the copy gets a path of its own even when an identical one exists (one that is
    /// being closed must not be mapped again: `dlopen` would hand back the closing image).
    pub fn import(&self, module: &str, source: &Path, own_copy: bool) -> std::io::Result<Stored> {
        let bytes = std::fs::read(source)?;
        check_complete(&bytes)?;
        let hash = hex(&Sha256::digest(&bytes));
        let dir = self.root.join(module);
        std::fs::create_dir_all(&dir)?;
        let path = if own_copy {
            let n = self
                .copies
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            dir.join(format!("{hash}.{n}.so"))
        } else {
            dir.join(format!("{hash}.so"))
        };
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

    /// How many libraries hold a lease on `path`.
    pub fn leases(&self, path: &Path) -> usize {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.get(path).copied().unwrap_or(0)
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

/// Refuses an ELF file whose section header table lies past its end: a build still being written,
/// or cut short. (`dlopen` may well load such a file when the cut falls in debug sections, and
/// fault later when something reads the missing part.)
fn check_complete(bytes: &[u8]) -> std::io::Result<()> {
    let incomplete = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("incomplete library file ({why}); is it still being written?"),
        )
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err(incomplete("no ELF header"));
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a 64-bit little-endian ELF library",
        ));
    }
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or_default());
    let u16_at = |o: usize| {
        u64::from(u16::from_le_bytes(
            bytes[o..o + 2].try_into().unwrap_or_default(),
        ))
    };
    let end = u64_at(0x28).saturating_add(u16_at(0x3a).saturating_mul(u16_at(0x3c)));
    if end > bytes.len() as u64 {
        return Err(incomplete(&format!(
            "{} of at least {end} bytes",
            bytes.len()
        )));
    }
    Ok(())
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
        std::fs::write(&src, elf(b"one")).unwrap();
        let a = store.import("m", &src, false).unwrap();
        let b = store.import("m", &src, false).unwrap();
        assert_eq!(a.path, b.path);
        std::fs::write(&src, elf(b"two")).unwrap();
        let c = store.import("m", &src, false).unwrap();
        assert_ne!(a.hash, c.hash);
        drop(a);
        assert!(b.path.exists());
        drop(b);
        assert!(!c
            .path
            .with_file_name(format!("{}.so", sha_of(b"one")))
            .exists());
        assert!(c.path.exists());
        // An own copy of the same content, for a build whose shared copy is being closed.
        let own = store.import("m", &src, true).unwrap();
        assert_eq!(
            (own.hash.as_str(), store.leases(&c.path)),
            (c.hash.as_str(), 1)
        );
        assert_ne!(own.path, c.path);
        drop(own);
        drop(c);
        store.remove_all();
        let _ = std::fs::remove_dir_all(&tmp);
    }

    /// A minimal complete ELF64 header (no sections) followed by `tail`.
    fn elf(tail: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b.extend_from_slice(tail);
        b
    }

    #[test]
    fn refuses_cut_and_foreign_files() {
        assert!(check_complete(b"hello").is_err());
        let mut cut = elf(b"");
        cut[0x28] = 200; // section headers at offset 200
        cut[0x3c] = 1; // one of them
        cut[0x3a] = 64;
        let err = check_complete(&cut).unwrap_err().to_string();
        assert!(err.contains("incomplete library file"), "{err}");
        assert!(check_complete(&elf(b"")).is_ok());
    }

    fn sha_of(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }
}
