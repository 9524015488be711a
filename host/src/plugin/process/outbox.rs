//! [`Outbox`]: frames to one end of a plugin process's pipes, written by a thread of their own.
//!
//! Senders never block on the pipe (a child that stopped reading must not stall the module's
//! threads, nor a stuck parent the child's), and frames queued while the thread writes go out
//! together in one `write`.

use std::io::Write;
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;

use serde::Serialize;

use super::wire;

pub struct Outbox {
    tx: Mutex<Option<Sender<Vec<u8>>>>,
}

impl Outbox {
    /// Starts the writer thread on `out`. It ends, closing `out`, when the outbox is closed or
    /// dropped, or when a write fails (the other end is gone).
    pub fn start(name: &str, mut out: impl Write + Send + 'static) -> std::io::Result<Outbox> {
        let (tx, rx) = channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                while let Ok(mut batch) = rx.recv() {
                    while let Ok(more) = rx.try_recv() {
                        batch.extend_from_slice(&more);
                    }
                    if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Outbox {
            tx: Mutex::new(Some(tx)),
        })
    }

    /// Queues `msg`; `false` when the outbox is closed or its thread ended.
    pub fn send<T: Serialize>(&self, msg: &T) -> bool {
        let mut frame = Vec::new();
        wire::encode(msg, &mut frame);
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.as_ref().is_some_and(|tx| tx.send(frame).is_ok())
    }

    /// Writes what is queued, then closes the stream (for a child: its end of input).
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
