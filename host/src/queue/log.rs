//! The local store: an append-only log in segment files (`<data>/queue/<n>.seg`) with one writer
//! thread and group commit.
//!
//! Producers hand records to the writer through its inbox (`inbox.rs`). The writer takes
//! everything that arrived meanwhile, writes it with one `write` and makes it durable with one
//! `fdatasync`, and only then tells each producer its entry is stored. So one sync covers a whole burst, and the
//! order of the log is the order of the inbox: a record sent after another is never durable
//! before it (an actor's emitted event is stored before the acknowledgement of the delivery that
//! emitted it).
//!
//! Segments are written full of zeros before use ([`super::segment`]), which makes each sync
//! cheaper; a segment's data ends at the first all-zero record header.
//!
//! Compaction keeps disk use proportional to what is still waiting: segments are deleted oldest
//! first once nothing in them is live; an old segment that is at least half finished has its
//! live entries (and latest checkpoints) written again at the head, and is then deleted, so disk
//! use stays within about twice the bytes still live. Deleting
//! oldest first keeps every acknowledgement that a live entry still needs.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::inbox::Inbox;
use super::record::{decode, encode, Put, Record, Unreadable, HEADER, MAGIC};
use super::segment::{self, Spare};

/// What the writer is asked to do.
pub enum Op {
    /// Store an entry (an encoded [`Record::Put`]); `then` learns whether it is durable.
    Put {
        seq: u64,
        record: Vec<u8>,
        then: Box<dyn FnOnce(io::Result<()>) + Send>,
    },
    Ack {
        seq: u64,
        route: String,
    },
    Started {
        seq: u64,
        route: String,
    },
    Ended {
        seq: u64,
        route: String,
    },
    Done {
        seq: u64,
    },
    Checkpoint {
        module: String,
        source: String,
        value: String,
    },
    /// Runs `then` once everything sent before is durable.
    Sync(Box<dyn FnOnce() + Send>),
}

/// What an opened store held: the entries not yet finished, in the order they were accepted,
/// and the latest checkpoint of each source.
pub struct Recovered {
    pub entries: Vec<Put>,
    pub checkpoints: Vec<(String, String, String)>,
    pub next_seq: u64,
}

/// The writer's handle. Dropping it lets the writer finish what it was sent, then stop.
pub struct Log {
    inbox: Arc<Inbox>,
    thread: Option<JoinHandle<()>>,
    failing: Failing,
}

/// The error of the last write, while writes fail.
type Failing = Arc<Mutex<Option<String>>>;

impl Log {
    /// Opens (or creates) the log in `dir`, reads back what it holds, and starts the writer.
    /// A torn record at the end of the last segment is cut off, with a log line.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<(Log, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let mut writer = Writer::recover(dir, segment_bytes)?;
        let failing = writer.failing.clone();
        let recovered = writer.recovered()?;
        writer.start_segment()?;
        let inbox = Arc::new(Inbox::default());
        let writer_inbox = inbox.clone();
        let thread = std::thread::Builder::new()
            .name("orgloop-store".into())
            .spawn(move || writer.run(&writer_inbox))?;
        Ok((
            Log {
                inbox,
                thread: Some(thread),
                failing,
            },
            recovered,
        ))
    }

    /// Why writes fail, while they do.
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn send(&self, op: Op) {
        // The writer is gone only once the log is dropped.
        if let Err(Op::Put { then, .. }) = self.inbox.send(op) {
            then(Err(io::Error::other("the store is closed")));
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Closing the inbox ends the writer after its last batch.
        self.inbox.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Abandons the inbox when the writer panics, so that producers are refused instead of
/// waiting for a writer that is gone.
struct AbandonOnPanic<'a>(&'a Inbox);

impl Drop for AbandonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abandon();
        }
    }
}

/// A segment's bookkeeping.
#[derive(Default)]
struct Segment {
    len: u64,
    /// Bytes and count of the live entries whose latest `Put` is in this segment.
    live_bytes: u64,
    live: usize,
}

/// Where a live entry's latest `Put` is, and which of its routes are finished.
struct Live {
    segment: u64,
    offset: u64,
    len: u64,
    done: Vec<String>,
    started: Vec<String>,
}

/// Size of the head segment made without a spare (at start).
const FIRST_SEGMENT: u64 = 1 << 20;

struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    head: Option<File>,
    head_id: u64,
    /// Bytes the head was zeroed to; it rolls over once they are used.
    head_capacity: u64,
    /// The segment after the head, being zeroed.
    spare: Option<Spare>,
    live: HashMap<u64, Live>,
    /// Latest checkpoint per (module, source), and the segment that holds it.
    checkpoints: HashMap<(String, String), (u64, String)>,
    next_seq: u64,
    failing: Failing,
}

impl Writer {
    /// Reads every segment in order and rebuilds the index.
    fn recover(dir: &Path, segment_bytes: u64) -> io::Result<Writer> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(segment::PREPARING) {
                // A spare segment a previous run did not get to use.
                let _ = std::fs::remove_file(entry.path());
            } else if let Some(id) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut w = Writer {
            dir: dir.to_owned(),
            segment_bytes,
            segments: BTreeMap::new(),
            head: None,
            head_id: ids.last().copied().unwrap_or(0),
            head_capacity: 0,
            spare: None,
            live: HashMap::new(),
            checkpoints: HashMap::new(),
            next_seq: 1,
            failing: Failing::default(),
        };
        let last = ids.last().copied();
        for id in ids {
            w.read_segment(id, Some(id) == last)?;
        }
        Ok(w)
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016}.seg"))
    }

    fn read_segment(&mut self, id: u64, is_last: bool) -> io::Result<()> {
        let path = self.path(id);
        let bytes = std::fs::read(&path)?;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            tracing::error!(file = %path.display(), "store: not a segment of this store; ignored");
            return Ok(());
        }
        let mut at = MAGIC.len();
        self.segments.insert(id, Segment::default());
        while at < bytes.len() {
            // The zeros of a pre-zeroed segment: the data ends here.
            if bytes[at..].iter().take(HEADER).all(|b| *b == 0) {
                break;
            }
            match decode(&bytes[at..]) {
                Ok((record, len)) => {
                    self.apply(record, id, at as u64, len as u64);
                    at += len;
                }
                Err(why) => {
                    let lost = bytes.len() - at;
                    if is_last {
                        tracing::warn!(file = %path.display(), offset = at, bytes = lost, "store: cut a {} record at the end of the last segment (a write torn by a crash); every record before it is intact", describe(&why));
                        OpenOptions::new()
                            .write(true)
                            .open(&path)?
                            .set_len(at as u64)?;
                    } else {
                        tracing::error!(file = %path.display(), offset = at, bytes = lost, "store: a {} record in the middle of the log; the rest of this segment is skipped", describe(&why));
                    }
                    break;
                }
            }
        }
        if let Some(s) = self.segments.get_mut(&id) {
            s.len = at as u64;
        }
        Ok(())
    }

    /// Applies one record to the index, as the writer does after writing it.
    fn apply(&mut self, record: Record, segment: u64, offset: u64, len: u64) {
        match record {
            Record::Put(p) => {
                self.next_seq = self.next_seq.max(p.seq + 1);
                self.index(p.seq, segment, offset, len, (p.done, p.started));
            }
            Record::Ack { seq, route } => {
                if let Some(l) = self.live.get_mut(&seq) {
                    push_once(&mut l.done, route);
                }
            }
            Record::Started { seq, route } => {
                if let Some(l) = self.live.get_mut(&seq) {
                    push_once(&mut l.started, route);
                }
            }
            Record::Ended { seq, route } => {
                if let Some(l) = self.live.get_mut(&seq) {
                    l.started.retain(|r| *r != route);
                }
            }
            Record::Done { seq } => {
                self.forget(seq);
            }
            Record::Checkpoint {
                module,
                source,
                value,
            } => {
                self.checkpoints.insert((module, source), (segment, value));
            }
        }
    }

    /// Records that the latest `Put` of `seq` is at `offset` in `segment`, with its finished and
    /// started routes.
    fn index(&mut self, seq: u64, segment: u64, offset: u64, len: u64, routes: Routes) {
        let (done, started) = routes;
        self.forget(seq);
        if let Some(s) = self.segments.get_mut(&segment) {
            s.live += 1;
            s.live_bytes += len;
        }
        let live = Live {
            segment,
            offset,
            len,
            done,
            started,
        };
        self.live.insert(seq, live);
    }

    /// Drops `seq` from the index (it is done, or about to be written again).
    fn forget(&mut self, seq: u64) -> Option<Live> {
        let old = self.live.remove(&seq)?;
        if let Some(s) = self.segments.get_mut(&old.segment) {
            s.live -= 1;
            s.live_bytes -= old.len;
        }
        Some(old)
    }

    /// The live entries (read back from their segments) and checkpoints.
    fn recovered(&self) -> io::Result<Recovered> {
        let mut entries = Vec::with_capacity(self.live.len());
        for (&seq, live) in &self.live {
            entries.push(self.read_put(seq, live)?);
        }
        entries.sort_unstable_by_key(|p| p.seq);
        let checkpoints = self
            .checkpoints
            .iter()
            .map(|((m, s), (_, v))| (m.clone(), s.clone(), v.clone()))
            .collect();
        Ok(Recovered {
            entries,
            checkpoints,
            next_seq: self.next_seq,
        })
    }

    /// Entry `seq` as it stands now: its latest `Put`, with the routes finished and started since.
    fn read_put(&self, seq: u64, live: &Live) -> io::Result<Put> {
        let file = File::open(self.path(live.segment))?;
        let mut buf = vec![0; live.len as usize];
        file.read_exact_at(&mut buf, live.offset)?;
        match decode(&buf) {
            Ok((Record::Put(mut p), _)) if p.seq == seq => {
                p.done.clone_from(&live.done);
                p.started.clone_from(&live.started);
                Ok(p)
            }
            _ => Err(io::Error::other(format!(
                "store: entry {seq} is no longer readable at its place"
            ))),
        }
    }

    /// Bytes of data in the head segment.
    fn head_len(&self) -> u64 {
        self.segments.get(&self.head_id).map_or(0, |s| s.len)
    }

    /// Starts a new head segment (every start writes to a fresh one).
    fn start_segment(&mut self) -> io::Result<()> {
        if let Some(head) = self.head.take() {
            head.sync_data()?;
        }
        self.head_id += 1;
        let path = self.path(self.head_id);
        // Without a spare ready (at start), a small one now: zeroing a whole segment would hold
        // up the first write; it fills soon and the full-size spare takes over.
        let (file, capacity) = match self.spare.take() {
            Some(spare) => (spare.install(&path)?, self.segment_bytes),
            None => {
                let capacity = self.segment_bytes.min(FIRST_SEGMENT);
                let file = segment::create(&path, capacity)?;
                File::open(&self.dir)?.sync_all()?;
                (file, capacity)
            }
        };
        // The next one, zeroed while this one fills.
        self.spare = Some(Spare::start(
            &self.dir,
            self.head_id + 1,
            self.segment_bytes,
        )?);
        self.segments.insert(
            self.head_id,
            Segment {
                len: MAGIC.len() as u64,
                ..Segment::default()
            },
        );
        self.head = Some(file);
        self.head_capacity = capacity;
        Ok(())
    }

    fn run(mut self, inbox: &Inbox) {
        let _abandon = AbandonOnPanic(inbox);
        let mut batch = Vec::new();
        while inbox.take(&mut batch) {
            self.commit(batch.drain(..));
            if let Err(e) = self.maintain() {
                tracing::error!(
                    "store: compaction failed (it is tried again after the next write): {e}"
                );
            }
        }
        if let Some(head) = &self.head {
            let _ = head.sync_data();
        }
    }

    /// Writes one batch with one write and at most one sync, then tells the producers.
    fn commit(&mut self, batch: impl Iterator<Item = Op>) {
        let mut buf = Vec::new();
        let mut puts = Vec::new();
        let mut syncs = Vec::new();
        let mut applied = Vec::new();
        let mut needs_sync = false;
        let start = self.head_len();
        for op in batch {
            let record = match op {
                Op::Put { seq, record, then } => {
                    puts.push((seq, start + buf.len() as u64, record.len() as u64, then));
                    buf.extend_from_slice(&record);
                    needs_sync = true;
                    continue;
                }
                Op::Sync(then) => {
                    syncs.push(then);
                    needs_sync = true;
                    continue;
                }
                // Finishing an entry the log no longer holds changes nothing.
                Op::Ack { seq, .. }
                | Op::Started { seq, .. }
                | Op::Ended { seq, .. }
                | Op::Done { seq }
                    if !self.live.contains_key(&seq) =>
                {
                    continue
                }
                Op::Ack { seq, route } => Record::Ack { seq, route },
                Op::Started { seq, route } => Record::Started { seq, route },
                Op::Ended { seq, route } => Record::Ended { seq, route },
                Op::Done { seq } => Record::Done { seq },
                Op::Checkpoint {
                    module,
                    source,
                    value,
                } => {
                    needs_sync = true;
                    Record::Checkpoint {
                        module,
                        source,
                        value,
                    }
                }
            };
            encode(&record, &mut buf);
            applied.push(record);
        }
        let written = self.write(&buf, needs_sync);
        if written.is_ok() {
            for (seq, offset, len, _) in &puts {
                self.index(*seq, self.head_id, *offset, *len, Routes::default());
            }
        }
        // Finished entries and checkpoints are applied either way: a finished entry that could
        // not be marked on disk is only delivered again after a crash, never lost.
        for r in applied {
            self.apply(r, self.head_id, 0, 0);
        }
        for (_, _, _, then) in puts {
            then(match &written {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
        syncs.into_iter().for_each(|then| then());
    }

    /// Appends `buf` to the head segment; on failure, zeros what it wrote, so that the data still
    /// ends where it did and the next write goes to the same place.
    fn write(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        let start = self.head_len();
        let Some(head) = self.head.as_ref() else {
            return Err(io::Error::other("the store has no open segment"));
        };
        let result =
            head.write_all_at(buf, start)
                .and_then(|()| if sync { head.sync_data() } else { Ok(()) });
        let failing = &mut *self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if let Some(s) = self.segments.get_mut(&self.head_id) {
                    s.len += buf.len() as u64;
                }
                *failing = None;
                Ok(())
            }
            Err(e) => {
                // The next write goes to the same place; zeros mark where the data ends.
                tracing::error!("store: writing failed: {e}");
                let _ = head.write_all_at(&vec![0; buf.len()], start);
                *failing = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Rolls the head over when it is full, then compacts from the oldest segment on.
    fn maintain(&mut self) -> io::Result<()> {
        if self.head_len() >= self.head_capacity {
            self.start_segment()?;
        }
        while let Some((&oldest, s)) = self.segments.first_key_value() {
            if oldest == self.head_id {
                break;
            }
            let pinned_checkpoints: Vec<(String, String)> = self
                .checkpoints
                .iter()
                .filter(|(_, (seg, _))| *seg == oldest)
                .map(|(k, _)| k.clone())
                .collect();
            if s.live > 0 || !pinned_checkpoints.is_empty() {
                // Still in use. Newer segments can only go after this one, so once at most half of
                // it is live its entries are moved forward: a backlog of one failing actor never
                // holds the finished segments of all the others, and disk use stays within about
                // twice what is live. More than half live: it empties by itself as they finish.
                if s.live_bytes * 2 > s.len {
                    break;
                }
                self.rewrite(oldest, pinned_checkpoints)?;
            }
            std::fs::remove_file(self.path(oldest))?;
            self.segments.remove(&oldest);
        }
        Ok(())
    }

    /// Writes the live entries and latest checkpoints of segment `id` again at the head.
    fn rewrite(&mut self, id: u64, checkpoints: Vec<(String, String)>) -> io::Result<()> {
        let mut seqs: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, l)| l.segment == id)
            .map(|(&s, _)| s)
            .collect();
        seqs.sort_unstable();
        let mut buf = Vec::new();
        let mut placed = Vec::new();
        let start = self.head_len();
        for seq in seqs {
            let put = self.read_put(seq, &self.live[&seq])?;
            let at = buf.len();
            encode(&Record::Put(put), &mut buf);
            placed.push((seq, start + at as u64, (buf.len() - at) as u64));
        }
        let mut moved = Vec::new();
        for key in checkpoints {
            let value = self.checkpoints[&key].1.clone();
            let record = Record::Checkpoint {
                module: key.0,
                source: key.1,
                value,
            };
            encode(&record, &mut buf);
            moved.push(record);
        }
        self.write(&buf, true)?;
        for (seq, offset, len) in placed {
            let routes = self
                .forget(seq)
                .map(|l| (l.done, l.started))
                .unwrap_or_default();
            self.index(seq, self.head_id, offset, len, routes);
        }
        for r in moved {
            self.apply(r, self.head_id, 0, 0);
        }
        Ok(())
    }
}

/// An entry's finished and started routes.
type Routes = (Vec<String>, Vec<String>);

fn push_once(routes: &mut Vec<String>, route: String) {
    if !routes.contains(&route) {
        routes.push(route);
    }
}

fn describe(why: &Unreadable) -> &'static str {
    match why {
        Unreadable::Truncated => "truncated",
        Unreadable::Corrupt => "damaged",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc, Mutex};

    fn put_record(seq: u64, module: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        let put = Put {
            seq,
            accepted_ms: 1,
            module: module.into(),
            route: None,
            done: vec![],
            started: vec![],
            event: format!(r#"{{"n":{seq}}}"#).into_bytes(),
        };
        encode(&Record::Put(put), &mut buf);
        buf
    }

    /// Stores `seqs` and waits until each is durable.
    fn store(log: &Log, seqs: impl IntoIterator<Item = u64>) {
        let results = Arc::new(Mutex::new(Vec::new()));
        for seq in seqs {
            let r = results.clone();
            log.send(Op::Put {
                seq,
                record: put_record(seq, "m"),
                then: Box::new(move |res| r.lock().unwrap().push(res.is_ok())),
            });
        }
        sync(log);
        assert!(results.lock().unwrap().iter().all(|ok| *ok));
    }

    fn sync(log: &Log) {
        let (tx, rx) = mpsc::channel();
        log.send(Op::Sync(Box::new(move || tx.send(()).unwrap())));
        rx.recv().unwrap();
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("orgloop-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The segment files in `d`, oldest first.
    fn segments(d: &Path) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        all.sort();
        all
    }

    fn seqs(r: &Recovered) -> Vec<u64> {
        r.entries.iter().map(|p| p.seq).collect()
    }

    #[test]
    fn unfinished_entries_come_back_with_their_finished_routes() {
        let d = dir("recover");
        let (log, r) = Log::open(&d, 1 << 20).unwrap();
        assert!(r.entries.is_empty());
        store(&log, 1..=4);
        log.send(Op::Done { seq: 2 });
        log.send(Op::Ack {
            seq: 3,
            route: "a".into(),
        });
        log.send(Op::Started {
            seq: 4,
            route: "s".into(),
        });
        // An attempt that ended (waiting for a retry) is no longer interrupted by a crash.
        log.send(Op::Started {
            seq: 1,
            route: "x".into(),
        });
        log.send(Op::Ended {
            seq: 1,
            route: "x".into(),
        });
        log.send(Op::Checkpoint {
            module: "m".into(),
            source: "feed".into(),
            value: "9".into(),
        });
        sync(&log);
        drop(log);
        let (_log, r) = Log::open(&d, 1 << 20).unwrap();
        assert_eq!(seqs(&r), [1, 3, 4]);
        assert_eq!(r.entries[1].done, ["a"]);
        assert_eq!(r.entries[2].started, ["s"]);
        assert!(r.entries[0].started.is_empty());
        assert_eq!(r.entries[2].event, br#"{"n":4}"#);
        assert_eq!(r.checkpoints, [("m".into(), "feed".into(), "9".into())]);
        assert_eq!(r.next_seq, 5);
    }

    #[test]
    fn a_torn_last_record_is_cut_and_the_rest_survives() {
        let d = dir("torn");
        let (log, _) = Log::open(&d, 1 << 20).unwrap();
        store(&log, 1..=3);
        drop(log);
        let last = segments(&d).pop().unwrap();
        // Damage the last record's final bytes, as a write cut short by a crash leaves it.
        let end = MAGIC.len() + (1..=3).map(|s| put_record(s, "m").len()).sum::<usize>();
        OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .write_all_at(&[0xff; 3], (end - 3) as u64)
            .unwrap();
        let (log, r) = Log::open(&d, 1 << 20).unwrap();
        assert_eq!(seqs(&r), [1, 2]);
        // The cut segment stays readable, and new entries go on after it.
        store(&log, [10]);
        drop(log);
        let (_log, r) = Log::open(&d, 1 << 20).unwrap();
        assert_eq!(seqs(&r), [1, 2, 10]);
    }

    #[test]
    fn finished_segments_are_deleted_and_stragglers_move_forward() {
        let d = dir("compact");
        let segment = 4096;
        let (log, _) = Log::open(&d, segment).unwrap();
        let files = || segments(&d).len();
        // One entry stays live while 2000 others come and go.
        store(&log, [1]);
        log.send(Op::Checkpoint {
            module: "m".into(),
            source: "feed".into(),
            value: "first".into(),
        });
        for seq in 2..2000 {
            store(&log, [seq]);
            log.send(Op::Done { seq });
        }
        sync(&log);
        assert!(files() <= 3, "{} segment files left", files());
        drop(log);
        let (_log, r) = Log::open(&d, segment).unwrap();
        assert_eq!(seqs(&r), [1]);
        assert_eq!(r.checkpoints[0].2, "first");
    }
}
