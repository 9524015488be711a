//! [`Outbox`]: frames to one end of a plugin process's pipes, written by the sender itself when
//! the pipe has room, else by a thread of their own.
//!
//! A sender must never block on the pipe: a child that stopped reading (stuck in a call) must
//! not stall the module's threads — nor the deadline and heartbeat that would kill that child —
//! and a stuck daemon must not stall the child's. A hand-off to a writer thread for every frame
//! would be safe too, but costs a thread wake-up per frame on the path of every call.
//!
//! So the pipe is non-blocking and a sender writes its frame at once when nothing is queued; a
//! frame (or the rest of one) that does not fit is queued, and from then on every frame is
//! queued behind it until the writer thread has drained the queue, waiting for room with
//! `poll`. Frames therefore leave in the order they were sent, whoever writes them.

use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::Serialize;

use super::wire;

pub struct Outbox {
    shared: Arc<Shared>,
}

/// Why a message was not sent.
#[derive(Debug)]
pub enum Unsent {
    TooLarge(wire::TooLarge),
    /// The outbox is closed, or the other end is gone.
    Closed,
}

impl std::fmt::Display for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsent::TooLarge(e) => e.fmt(f),
            Unsent::Closed => f.write_str("the pipe to the plugin process is closed"),
        }
    }
}

struct Shared {
    state: Mutex<State>,
    queued: Condvar,
}

struct State {
    /// `None` once closed or broken.
    pipe: Option<std::fs::File>,
    /// Bytes waiting for the writer thread, oldest first.
    queue: Vec<u8>,
    /// The writer thread holds bytes taken from the queue: senders must queue behind them.
    writing: bool,
    /// Close the pipe once the queue is drained.
    closing: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Outbox {
    /// Takes over `pipe` (made non-blocking) and starts its writer thread, which ends when the
    /// outbox is closed or dropped, or when the other end is gone.
    pub fn start(name: &str, pipe: impl Into<OwnedFd>) -> std::io::Result<Outbox> {
        let pipe = std::fs::File::from(pipe.into());
        set_nonblocking(&pipe)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pipe: Some(pipe),
                queue: Vec::new(),
                writing: false,
                closing: false,
            }),
            queued: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || drain(&s))?;
        Ok(Outbox { shared })
    }

    /// Sends `msg`; refuses it when it is too long for a frame, or when the outbox is closed or
    /// its other end is gone.
    pub fn send<T: Serialize>(&self, msg: &T) -> Result<(), Unsent> {
        let mut frame = Vec::new();
        wire::encode(msg, &mut frame).map_err(Unsent::TooLarge)?;
        let mut st = self.shared.state();
        if st.closing {
            return Err(Unsent::Closed);
        }
        let State {
            pipe,
            queue,
            writing,
            ..
        } = &mut *st;
        let Some(file) = pipe else {
            return Err(Unsent::Closed);
        };
        let mut sent = 0;
        if queue.is_empty() && !*writing {
            loop {
                match file.write(&frame[sent..]) {
                    Ok(n) => {
                        sent += n;
                        if sent == frame.len() {
                            return Ok(());
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *pipe = None;
                        return Err(Unsent::Closed);
                    }
                }
            }
        }
        queue.extend_from_slice(&frame[sent..]);
        self.shared.queued.notify_one();
        Ok(())
    }

    /// Writes what is queued, then closes the pipe (for a child: its end of input).
    pub fn close(&self) {
        self.shared.state().closing = true;
        self.shared.queued.notify_one();
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: writes queued bytes as the pipe makes room.
fn drain(shared: &Shared) {
    let mut st = shared.state();
    loop {
        while st.queue.is_empty() && !st.closing && st.pipe.is_some() {
            st = shared.queued.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.queue.is_empty() {
            // Closing, or the pipe broke: dropping the file closes it.
            st.pipe = None;
            return;
        }
        let Some(file) = st.pipe.as_ref().and_then(|f| f.try_clone().ok()) else {
            st.pipe = None;
            return;
        };
        let bytes = std::mem::take(&mut st.queue);
        st.writing = true;
        drop(st);
        let ok = write_all_waiting(&file, &bytes);
        st = shared.state();
        st.writing = false;
        if !ok {
            st.pipe = None;
            st.queue.clear();
            return;
        }
    }
}

/// Writes `bytes` to the non-blocking `file`, waiting for room in between.
fn write_all_waiting(mut file: &std::fs::File, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let mut fds = libc::pollfd {
                    fd: file.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for the duration of the call.
                if unsafe { libc::poll(&mut fds, 1, -1) } < 0
                    && std::io::Error::last_os_error().kind() != ErrorKind::Interrupted
                {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

fn set_nonblocking(file: &std::fs::File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this file owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Frames far larger than a pipe holds, sent while no one reads, arrive whole and in order.
    #[test]
    fn frames_that_do_not_fit_are_queued_in_order() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let out = Outbox::start("test-out", writer).unwrap();
        let big = "x".repeat(100_000);
        for i in 0..20u64 {
            out.send(&(i, &big)).unwrap();
        }
        out.close();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        let mut r = &got[..];
        let mut buf = Vec::new();
        for i in 0..20u64 {
            let (n, s): (u64, String) = wire::read(&mut r, &mut buf).unwrap().unwrap();
            assert_eq!((n, s.len()), (i, big.len()));
        }
        assert!(wire::read::<(u64, String)>(&mut r, &mut buf)
            .unwrap()
            .is_none());
    }
}
