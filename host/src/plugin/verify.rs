//! Checking that a closed library really left the process.
//!
//! `dlclose` reports success even when glibc keeps the library mapped (for instance because a
//! plugin registered a thread-local destructor on a thread that is still alive). So after closing,
//! the host looks for itself: no mapping of the private copy in `/proc/self/maps`, and
//! `dlopen(path, RTLD_NOLOAD)` finds nothing.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::Serialize;

/// What became of a closed library.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum UnloadReport {
    /// Gone from the address space.
    Unloaded,
    /// Still mapped after `dlclose`: the plugin leaves something behind. A metric, not a failure.
    Pinned { reason: String },
    /// `isolation: process`: the child process that had it mapped exited and was reaped.
    #[serde(rename = "process_exited")]
    ProcessExited { pid: u32, status: String },
}

impl std::fmt::Display for UnloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnloadReport::Unloaded => write!(f, "unloaded"),
            UnloadReport::Pinned { reason } => write!(f, "PINNED ({reason})"),
            UnloadReport::ProcessExited { pid, status } => {
                write!(f, "process exited (pid {pid}, {status})")
            }
        }
    }
}

/// Whether `path` is mapped into this process.
pub fn is_mapped(path: &Path) -> bool {
    let needle = path.as_os_str().as_bytes();
    std::fs::read("/proc/self/maps")
        .map(|maps| {
            maps.split(|b| *b == b'\n')
                .any(|line| line.windows(needle.len()).any(|w| w == needle))
        })
        .unwrap_or(false)
}

/// Whether the dynamic loader still knows `path`.
fn loader_knows(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: RTLD_NOLOAD never loads or initializes anything; it only returns a handle (with one
    // more reference) when the library is already loaded, which is released right away.
    unsafe {
        let handle = libc::dlopen(c.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY);
        if handle.is_null() {
            return false;
        }
        libc::dlclose(handle);
        true
    }
}

/// Checks a library that was just closed.
pub fn verify_unloaded(path: &Path) -> UnloadReport {
    match (loader_knows(path), is_mapped(path)) {
        (false, false) => UnloadReport::Unloaded,
        (known, mapped) => UnloadReport::Pinned {
            reason: format!(
                "after dlclose the library is {}{}; usually a thread-local with a destructor, or a thread the plugin started, is still alive",
                if known { "still open in the loader" } else { "closed in the loader" },
                if mapped { " and still mapped" } else { "" },
            ),
        },
    }
}
