//! Segment files, written full of zeros before use.
//!
//! On ext4 an `fdatasync` of a file that grows also commits its new size and extents to the
//! journal; into blocks that were already written it is only the data. Measured with
//! `bench/storage-compare`: the same log is 1.1–1.5× faster into pre-zeroed segments
//! (BENCHMARKS.md). Zeroing takes a while (tens of milliseconds for a segment), so the next
//! segment is prepared on a thread of its own while the current one fills, under a temporary
//! name that recovery ignores (and removes). A segment's data ends at the first record header of
//! eight zero bytes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use super::record::MAGIC;

/// The suffix of a segment being prepared.
pub const PREPARING: &str = "seg.tmp";

/// Creates `path` with the segment header and `size` bytes of zeros, synced.
pub fn create(path: &Path, size: u64) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    file.write_all(MAGIC)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = size.saturating_sub(MAGIC.len() as u64);
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// The next segment, being prepared in the background.
pub struct Spare {
    path: PathBuf,
    task: JoinHandle<io::Result<File>>,
}

impl Spare {
    /// Starts preparing a segment of `size` bytes at a temporary path in `dir`.
    pub fn start(dir: &Path, id: u64, size: u64) -> io::Result<Spare> {
        let path = dir.join(format!("{id:016}.{PREPARING}"));
        let p = path.clone();
        let task = std::thread::Builder::new()
            .name("orgloop-segment".into())
            .spawn(move || create(&p, size))?;
        Ok(Spare { path, task })
    }

    /// Waits until it is ready and moves it to `path` (synced into the directory).
    pub fn install(self, path: &Path) -> io::Result<File> {
        let file = self
            .task
            .join()
            .map_err(|_| io::Error::other("preparing a segment panicked"))??;
        std::fs::rename(&self.path, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(file)
    }
}
