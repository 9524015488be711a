//! What the daemon keeps on disk: the size of its data directory (`$ORGLOOP_HOME/data`: the
//! event log's segments, the dead letters, the lock file), as the sum of the files' lengths
//! (`du --apparent-size`), read from outside so the number is the file system's, not the
//! daemon's own account of its queue.

use std::path::Path;

/// Directories deeper than this are not counted (the data directory is two levels deep); it
/// bounds the walk whatever the directory holds.
const MAX_DEPTH: usize = 8;

/// The data directory of a daemon whose `ORGLOOP_HOME` is `home`.
pub fn data_dir(home: &Path) -> std::path::PathBuf {
    home.join("data")
}

/// Bytes in the files under `dir` (0 when it does not exist). Files that vanish while they are
/// counted (compaction deletes segments) count as 0.
pub fn dir_bytes(dir: &Path) -> u64 {
    walk(dir, MAX_DEPTH)
}

fn walk(dir: &Path, depth: usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() && depth > 0 => walk(&e.path(), depth - 1),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_nested_files() {
        let dir = std::env::temp_dir().join(format!("orgloop-load-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("queue")).unwrap();
        std::fs::write(dir.join("lock"), b"123").unwrap();
        std::fs::write(dir.join("queue").join("1.seg"), [0u8; 1000]).unwrap();
        assert_eq!(dir_bytes(&dir), 1003);
        assert_eq!(dir_bytes(&dir.join("missing")), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
