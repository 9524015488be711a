//! The store writer's inbox: what producers send it, in the order they sent it.
//!
//! Only what someone waits for wakes the writer: a new entry, a sync, a checkpoint. The marks
//! that finish an entry (`Ack`, `Started`, `Ended`, `Done`) wait for the next batch, or for
//! [`LAZY_FOR`] when none comes. Measured (BENCHMARKS.md, "The store writer's wake-ups"): at
//! saturation a wake-up per mark made the writer thread switch in about 10 000 times a second,
//! for batches of two records. A mark written late costs nothing but, after a crash in that
//! window, one more delivery of an entry that was finished, which the log allows anyway.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::log::Op;

/// How long finishing marks wait for something that wakes the writer.
pub const LAZY_FOR: Duration = Duration::from_millis(5);

/// Most ops one batch takes, so that one sync never waits on an unbounded burst.
const BATCH: usize = 4096;

#[derive(Default)]
pub struct Inbox {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    ops: Vec<Op>,
    /// `ops` holds something that must not wait.
    urgent: bool,
    /// The writer sleeps on `wake` (a notify without a sleeper would be a wasted system call).
    sleeping: bool,
    closed: bool,
}

impl Op {
    /// Someone waits for this op to be durable.
    fn is_urgent(&self) -> bool {
        matches!(self, Op::Put { .. } | Op::Sync(_) | Op::Checkpoint { .. })
    }
}

impl Inbox {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `op`; hands it back once the inbox is closed.
    pub fn send(&self, op: Op) -> Result<(), Op> {
        let mut st = self.state();
        if st.closed {
            return Err(op);
        }
        let urgent = op.is_urgent();
        st.ops.push(op);
        st.urgent |= urgent;
        // The first op of an empty inbox also wakes the writer, which then waits at most
        // `LAZY_FOR` for something urgent instead of waiting for it without end.
        if st.sleeping && (urgent || st.ops.len() == 1) {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The writer is gone (it panicked): nothing sent is written any more. Whoever waits for
    /// an op is told so when it drops, and what is sent later is handed back.
    pub fn abandon(&self) {
        let ops = {
            let mut st = self.state();
            st.closed = true;
            std::mem::take(&mut st.ops)
        };
        drop(ops);
    }

    /// No more ops: the writer takes what is left, then stops.
    pub fn close(&self) {
        self.state().closed = true;
        self.wake.notify_one();
    }

    /// Waits for the next batch and moves it into `batch` (empty when called); `false` once the
    /// inbox is closed and empty.
    pub fn take(&self, batch: &mut Vec<Op>) -> bool {
        let mut st = self.state();
        while !st.urgent && !st.closed {
            st.sleeping = true;
            if st.ops.is_empty() {
                st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            } else {
                let (guard, waited) = self
                    .wake
                    .wait_timeout(st, LAZY_FOR)
                    .unwrap_or_else(|e| e.into_inner());
                st = guard;
                if waited.timed_out() {
                    st.sleeping = false;
                    break;
                }
            }
            st.sleeping = false;
        }
        if st.ops.len() <= BATCH {
            std::mem::swap(&mut st.ops, batch);
            st.urgent = false;
        } else {
            // The writer comes straight back for the rest if it is urgent, else within
            // `LAZY_FOR`.
            batch.extend(st.ops.drain(..BATCH));
        }
        !(batch.is_empty() && st.closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn done(seq: u64) -> Op {
        Op::Done { seq }
    }

    fn seqs(batch: &[Op]) -> Vec<u64> {
        batch
            .iter()
            .map(|op| match op {
                Op::Done { seq } => *seq,
                _ => u64::MAX,
            })
            .collect()
    }

    #[test]
    fn marks_wait_for_something_urgent_and_keep_their_order() {
        let inbox = Arc::new(Inbox::default());
        inbox.send(done(1)).ok().unwrap();
        inbox.send(done(2)).ok().unwrap();
        let sender = inbox.clone();
        let t = std::thread::spawn(move || {
            sender.send(Op::Sync(Box::new(|| {}))).ok().unwrap();
        });
        let mut batch = Vec::new();
        assert!(inbox.take(&mut batch));
        t.join().unwrap();
        // The sync may come with the marks or in the next batch, never before them.
        if batch.len() < 3 {
            let mut rest = Vec::new();
            assert!(inbox.take(&mut rest));
            batch.extend(rest);
        }
        assert_eq!(seqs(&batch), [1, 2, u64::MAX]);
    }

    #[test]
    fn a_mark_sent_to_a_sleeping_writer_is_taken_without_anything_urgent() {
        let inbox = Arc::new(Inbox::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = inbox.clone();
        std::thread::spawn(move || {
            let mut batch = Vec::new();
            writer.take(&mut batch);
            tx.send(seqs(&batch)).unwrap();
        });
        // Until the writer sleeps on an empty inbox.
        while !inbox.state().sleeping {
            std::thread::yield_now();
        }
        inbox.send(done(3)).ok().unwrap();
        let taken = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(
            taken,
            Ok(vec![3]),
            "the writer slept on with a mark waiting"
        );
    }

    #[test]
    fn an_abandoned_inbox_drops_what_it_holds_and_refuses_more() {
        let inbox = Inbox::default();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        inbox
            .send(Op::Sync(Box::new(move || drop(tx))))
            .ok()
            .unwrap();
        inbox.abandon();
        // The sync's closure was dropped, not run: its waiter learns it will never come.
        assert!(rx.recv().is_err());
        assert!(inbox.send(done(1)).is_err());
    }

    #[test]
    fn marks_alone_are_taken_after_the_lazy_wait() {
        let inbox = Inbox::default();
        inbox.send(done(7)).ok().unwrap();
        let started = Instant::now();
        let mut batch = Vec::new();
        assert!(inbox.take(&mut batch));
        assert_eq!(seqs(&batch), [7]);
        assert!(started.elapsed() >= LAZY_FOR);
    }

    #[test]
    fn a_closed_inbox_hands_back_what_is_sent_and_drains_what_it_holds() {
        let inbox = Inbox::default();
        inbox.send(done(1)).ok().unwrap();
        inbox.close();
        assert!(matches!(inbox.send(done(2)), Err(Op::Done { seq: 2 })));
        let mut batch = Vec::new();
        assert!(inbox.take(&mut batch));
        assert_eq!(seqs(&batch), [1]);
        batch.clear();
        assert!(!inbox.take(&mut batch));
    }

    #[test]
    fn a_burst_is_taken_in_bounded_batches() {
        let inbox = Inbox::default();
        for seq in 0..BATCH as u64 + 5 {
            inbox.send(done(seq)).ok().unwrap();
        }
        inbox.send(Op::Sync(Box::new(|| {}))).ok().unwrap();
        let mut batch = Vec::new();
        assert!(inbox.take(&mut batch));
        assert_eq!(batch.len(), BATCH);
        batch.clear();
        assert!(inbox.take(&mut batch));
        assert_eq!(batch.len(), 6);
    }
}
