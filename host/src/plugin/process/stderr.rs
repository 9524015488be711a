//! [`StderrTail`]: the last lines a plugin process wrote to its stderr, for its status and the
//! report of its exit.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lines kept.
const STDERR_LINES: usize = 20;
/// How long the end of a dead child's stderr is waited for: a process it started may hold the
/// pipe open for ever.
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// The last lines a child wrote to stderr; each line is also logged.
pub(super) struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    /// Disconnected when the reading thread ends.
    ended: Option<Receiver<()>>,
}

impl StderrTail {
    pub fn start(label: &str, stderr: Option<std::process::ChildStderr>) -> StderrTail {
        let lines: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (l, label) = (lines.clone(), label.to_owned());
        let (ending, ended) = sync_channel::<()>(0);
        let started = stderr.and_then(|stderr| {
            std::thread::Builder::new()
                .name("p-stderr".into())
                .spawn(move || {
                    let _ending = ending;
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { return };
                        tracing::warn!(plugin = %label, "plugin process stderr: {line}");
                        let mut l = l.lock().unwrap_or_else(|e| e.into_inner());
                        if l.len() == STDERR_LINES {
                            l.pop_front();
                        }
                        l.push_back(line);
                    }
                })
                .ok()
        });
        StderrTail {
            lines,
            ended: started.map(|_| ended),
        }
    }

    /// Waits for the end of the stream (the child is gone), for [`STDERR_GRACE`] at most, and
    /// returns the last lines.
    pub fn finish(self) -> Vec<String> {
        if let Some(ended) = &self.ended {
            let _ = ended.recv_timeout(STDERR_GRACE);
        }
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
