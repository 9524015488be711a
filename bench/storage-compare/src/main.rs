//! storebench: compare group-commit durable queue stores.
//! usage: storebench <log|logpre|redb|fjall> <producers> <datadir>
//! (`logpre`: the log with each segment filled with zeros before use)
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const MAX_RECORDS: u64 = 40_000;
const MAX_TIME: Duration = Duration::from_secs(8);
const REC_LEN: usize = 600;

enum Msg {
    Append(Vec<u8>, SyncSender<u64>),
    Ack(u64),
}

enum Op {
    Append(u64, Vec<u8>),
    Ack(u64),
}

trait Store: Send {
    /// Make all ops durable (one fsync/commit).
    fn write_batch(&mut self, ops: &[Op]);
    fn finish(&mut self) {}
}

// ---------------------------------------------------------------- log
const SEGMENT_BYTES: u64 = 8 << 20;
const ACK_FLAG: u32 = 1 << 31;

struct LogStore {
    prealloc: bool,
    dir: PathBuf,
    file: File,
    seg_no: u64,
    seg_len: u64,
    buf: Vec<u8>,
}

impl LogStore {
    fn open(dir: &Path, prealloc: bool) -> Self {
        fs::create_dir_all(dir).unwrap();
        let file = Self::new_segment(dir, 0, prealloc);
        LogStore { prealloc, dir: dir.to_path_buf(), file, seg_no: 0, seg_len: 0, buf: Vec::with_capacity(1 << 20) }
    }
    fn new_segment(dir: &Path, n: u64, prealloc: bool) -> File {
        let mut f = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(dir.join(format!("{n:016}.seg")))
            .unwrap();
        if prealloc {
            // zero-fill the whole segment once so later fdatasyncs need no size/extent metadata
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..(SEGMENT_BYTES >> 20) {
                f.write_all(&zeros).unwrap();
            }
            f.sync_all().unwrap();
        }
        // make the new directory entry durable
        File::open(dir).unwrap().sync_all().unwrap();
        f
    }
    fn push(&mut self, flags: u32, payload: &[u8]) {
        let len = payload.len() as u32 | flags;
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.buf.extend_from_slice(payload);
    }
}

impl Store for LogStore {
    fn write_batch(&mut self, ops: &[Op]) {
        if self.seg_len >= SEGMENT_BYTES - (64 << 10) && self.seg_len > 0 {
            self.seg_no += 1;
            self.file = Self::new_segment(&self.dir, self.seg_no, self.prealloc);
            self.seg_len = 0;
        }
        self.buf.clear();
        for op in ops {
            match op {
                // record seq is implicit (n-th record in the log); it is the writer's counter
                Op::Append(_seq, data) => self.push(0, data),
                Op::Ack(seq) => self.push(ACK_FLAG, &seq.to_le_bytes()),
            }
        }
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(&self.buf, self.seg_len).unwrap();
        self.file.sync_data().unwrap();
        self.seg_len += self.buf.len() as u64;
    }
}

// ---------------------------------------------------------------- redb
const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("queue");

struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    fn open(dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap();
        let db = redb::Database::create(dir.join("queue.redb")).unwrap();
        RedbStore { db }
    }
}

impl Store for RedbStore {
    fn write_batch(&mut self, ops: &[Op]) {
        let txn = self.db.begin_write().unwrap(); // default durability = Immediate
        {
            let mut t = txn.open_table(TABLE).unwrap();
            for op in ops {
                match op {
                    Op::Append(seq, data) => {
                        t.insert(*seq, data.as_slice()).unwrap();
                    }
                    Op::Ack(seq) => {
                        t.remove(*seq).unwrap();
                    }
                }
            }
        }
        txn.commit().unwrap();
    }
}

// ---------------------------------------------------------------- fjall
#[cfg(feature = "fjall")]
struct FjallStore {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

#[cfg(feature = "fjall")]
impl FjallStore {
    fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir).open().unwrap();
        let ks = db.keyspace("queue", fjall::KeyspaceCreateOptions::default).unwrap();
        FjallStore { db, ks }
    }
}

#[cfg(feature = "fjall")]
impl Store for FjallStore {
    fn write_batch(&mut self, ops: &[Op]) {
        let mut b = self.db.batch();
        for op in ops {
            match op {
                Op::Append(seq, data) => b.insert(&self.ks, seq.to_be_bytes(), data.as_slice()),
                Op::Ack(seq) => b.remove(&self.ks, seq.to_be_bytes()),
            }
        }
        b.commit().unwrap();
        self.db.persist(fjall::PersistMode::SyncData).unwrap();
    }
    fn finish(&mut self) {
        self.db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
}

// ---------------------------------------------------------------- driver
struct WriterStats {
    batches: u64,
    append_batches: u64,
    appends: u64,
    acks: u64,
    max_batch: u64,
}

fn writer(mut store: Box<dyn Store>, rx: Receiver<Msg>) -> WriterStats {
    let mut st = WriterStats { batches: 0, append_batches: 0, appends: 0, acks: 0, max_batch: 0 };
    let mut next_seq = 0u64;
    let mut ops = Vec::new();
    let mut replies: Vec<(u64, SyncSender<u64>)> = Vec::new();
    let mut take = |m: Msg, ops: &mut Vec<Op>, replies: &mut Vec<(u64, SyncSender<u64>)>| match m {
        Msg::Append(d, r) => {
            let s = next_seq;
            next_seq += 1;
            ops.push(Op::Append(s, d));
            replies.push((s, r));
        }
        Msg::Ack(s) => ops.push(Op::Ack(s)),
    };
    loop {
        let first = match rx.recv() {
            Ok(m) => m,
            Err(_) => break,
        };
        take(first, &mut ops, &mut replies);
        loop {
            match rx.try_recv() {
                Ok(m) => take(m, &mut ops, &mut replies),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        store.write_batch(&ops);
        st.batches += 1;
        let n = replies.len() as u64;
        st.appends += n;
        st.acks += ops.len() as u64 - n;
        if n > 0 {
            st.append_batches += 1;
        }
        st.max_batch = st.max_batch.max(n);
        for (s, r) in replies.drain(..) {
            let _ = r.send(s);
        }
        ops.clear();
    }
    store.finish();
    drop(store);
    st
}

fn dir_size(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut len, mut alloc) = (0, 0);
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            let (a, b) = dir_size(&e.path());
            len += a;
            alloc += b;
        } else {
            len += m.len();
            alloc += m.blocks() * 512;
        }
    }
    (len, alloc)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = args[1].clone();
    let producers: usize = args[2].parse().unwrap();
    let dir = PathBuf::from(&args[3]);
    assert!(!dir.exists(), "data dir must be fresh");

    let store: Box<dyn Store> = match kind.as_str() {
        "log" => Box::new(LogStore::open(&dir, false)),
        "logpre" => Box::new(LogStore::open(&dir, true)),
        "redb" => Box::new(RedbStore::open(&dir)),
        #[cfg(feature = "fjall")]
        "fjall" => Box::new(FjallStore::open(&dir)),
        k => panic!("unknown store {k}"),
    };

    let (tx, rx) = mpsc::channel::<Msg>();
    let w = thread::spawn(move || writer(store, rx));
    let claimed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut hs = Vec::new();
    for p in 0..producers {
        let tx: Sender<Msg> = tx.clone();
        let claimed = claimed.clone();
        hs.push(thread::spawn(move || {
            let mut lat = Vec::with_capacity(MAX_RECORDS as usize / producers + 1);
            let mut x: u64 = 0x9E3779B97F4A7C15 ^ (p as u64 + 1).wrapping_mul(0xD1B54A32D192ED03);
            loop {
                if start.elapsed() >= MAX_TIME || claimed.fetch_add(1, Ordering::Relaxed) >= MAX_RECORDS {
                    break;
                }
                let mut rec = vec![0u8; REC_LEN];
                for c in rec.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
                }
                let (rtx, rrx) = mpsc::sync_channel(1);
                let t0 = Instant::now();
                tx.send(Msg::Append(rec, rtx)).unwrap();
                let seq = rrx.recv().unwrap();
                lat.push(t0.elapsed().as_micros() as u32);
                tx.send(Msg::Ack(seq)).unwrap();
            }
            lat
        }));
    }
    drop(tx);
    let mut lat: Vec<u32> = Vec::new();
    for h in hs {
        lat.extend(h.join().unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let st = w.join().unwrap(); // drains remaining acks, closes store
    let total = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    let (len, alloc) = dir_size(&dir);
    let n = lat.len() as u64;
    // one JSON-ish line, parsed by the runner script
    println!(
        "kind={kind} P={producers} records={n} secs={elapsed:.3} total_secs={total:.3} rps={:.0} p50_ms={:.3} p99_ms={:.3} \
         batches={} batches_per_s={:.0} avg_batch={:.2} max_batch={} acks={} bytes={len} alloc_bytes={alloc} bytes_per_rec={:.0}",
        n as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        st.batches,
        st.batches as f64 / total,
        st.appends as f64 / st.append_batches.max(1) as f64,
        st.max_batch,
        st.acks,
        len as f64 / n as f64
    );
}
