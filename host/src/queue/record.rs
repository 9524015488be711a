//! The records of the store's log and their framing on disk.
//!
//! A record is `[length u32][crc32 u32][kind u8][body]`, little endian, where the length counts
//! the kind and the body and the checksum covers both. Strings are `[length u32][bytes]`. A record
//! that runs past the end of the file or whose checksum does not match ends the readable part of
//! a segment: that is what a write torn by a crash looks like.

/// The first bytes of every segment file: tells a segment from any other file, and its version.
pub const MAGIC: &[u8; 8] = b"orglog1\n";

/// One record of the log.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// An entry was accepted. Stored before it is routed; written again, with the routes it
    /// finished, when compaction moves it out of an old segment.
    Put(Put),
    /// Route `route` of entry `seq` is finished: delivered, or in the dead letters.
    Ack { seq: u64, route: String },
    /// An attempt along route `route` of entry `seq` starts, for an actor that must not run a
    /// delivery twice (`interrupted: dead_letter`): after a crash, it is dead-lettered instead.
    Started { seq: u64, route: String },
    /// That attempt ended (and the delivery waits for a retry): no longer interrupted by a crash.
    Ended { seq: u64, route: String },
    /// Entry `seq` is finished: every route it took is.
    Done { seq: u64 },
    /// The latest checkpoint of a polled source.
    Checkpoint {
        module: String,
        source: String,
        value: String,
    },
}

/// An accepted entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Put {
    pub seq: u64,
    /// Unix milliseconds when it was accepted (a retry policy's `max_age` counts from here).
    pub accepted_ms: i64,
    pub module: String,
    /// `None`: an event to route. `Some(route)`: a delivery along that route only, which skips
    /// routing and transforms (a replayed dead letter holds the event as it was delivered).
    pub route: Option<String>,
    /// Routes already finished.
    pub done: Vec<String>,
    /// Routes with an attempt started and not finished (see [`Record::Started`]).
    pub started: Vec<String>,
    /// The event as JSON text.
    pub event: Vec<u8>,
}

const PUT: u8 = 1;
const ACK: u8 = 2;
const DONE: u8 = 3;
const CHECKPOINT: u8 = 4;
const STARTED: u8 = 5;
const ENDED: u8 = 6;

/// Bytes of framing before the kind.
pub const HEADER: usize = 8;

/// Appends the framed `record` to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    match record {
        Record::Put(p) => {
            out.push(PUT);
            out.extend_from_slice(&p.seq.to_le_bytes());
            out.extend_from_slice(&p.accepted_ms.to_le_bytes());
            put_str(out, &p.module);
            put_str(out, p.route.as_deref().unwrap_or(""));
            out.push(p.route.is_some() as u8);
            put_list(out, &p.done);
            put_list(out, &p.started);
            out.extend_from_slice(&p.event);
        }
        Record::Ack { seq, route }
        | Record::Started { seq, route }
        | Record::Ended { seq, route } => {
            out.push(match record {
                Record::Ack { .. } => ACK,
                Record::Started { .. } => STARTED,
                _ => ENDED,
            });
            out.extend_from_slice(&seq.to_le_bytes());
            put_str(out, route);
        }
        Record::Done { seq } => {
            out.push(DONE);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        Record::Checkpoint {
            module,
            source,
            value,
        } => {
            out.push(CHECKPOINT);
            put_str(out, module);
            put_str(out, source);
            put_str(out, value);
        }
    }
    let body = &out[start + HEADER..];
    let (len, crc) = (body.len() as u32, crc32fast::hash(body));
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_list(out: &mut Vec<u8>, items: &[String]) {
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for s in items {
        put_str(out, s);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Why a record could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// The bytes end inside the record.
    Truncated,
    /// The checksum does not match, or the body makes no sense.
    Corrupt,
}

/// Reads the record at the start of `buf`; returns it and its framed length.
pub fn decode(buf: &[u8]) -> Result<(Record, usize), Unreadable> {
    if buf.len() < HEADER {
        return Err(Unreadable::Truncated);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap_or_default());
    let body = buf.get(HEADER..HEADER + len).ok_or(Unreadable::Truncated)?;
    if len == 0 || crc32fast::hash(body) != crc {
        return Err(Unreadable::Corrupt);
    }
    let mut r = Reader(&body[1..]);
    let record = match body[0] {
        PUT => {
            let seq = r.u64()?;
            let accepted_ms = r.u64()? as i64;
            let module = r.string()?;
            let route = r.string()?;
            let route = (r.byte()? == 1).then_some(route);
            let done = r.list()?;
            let started = r.list()?;
            Record::Put(Put {
                seq,
                accepted_ms,
                module,
                route,
                done,
                started,
                event: r.0.to_vec(),
            })
        }
        ACK => Record::Ack {
            seq: r.u64()?,
            route: r.string()?,
        },
        STARTED => Record::Started {
            seq: r.u64()?,
            route: r.string()?,
        },
        ENDED => Record::Ended {
            seq: r.u64()?,
            route: r.string()?,
        },
        DONE => Record::Done { seq: r.u64()? },
        CHECKPOINT => Record::Checkpoint {
            module: r.string()?,
            source: r.string()?,
            value: r.string()?,
        },
        _ => return Err(Unreadable::Corrupt),
    };
    Ok((record, HEADER + len))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Unreadable> {
        if self.0.len() < n {
            return Err(Unreadable::Corrupt);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, Unreadable> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Unreadable> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| Unreadable::Corrupt)?,
        ))
    }

    fn u64(&mut self) -> Result<u64, Unreadable> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| Unreadable::Corrupt)?,
        ))
    }

    fn list(&mut self) -> Result<Vec<String>, Unreadable> {
        (0..self.u32()?).map(|_| self.string()).collect()
    }

    fn string(&mut self) -> Result<String, Unreadable> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Unreadable::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(seq: u64) -> Record {
        Record::Put(Put {
            seq,
            accepted_ms: 1_700_000_000_000,
            module: "m".into(),
            route: Some("r".into()),
            done: vec!["a".into(), "b".into()],
            started: vec!["c".into()],
            event: br#"{"id":"evt_1"}"#.to_vec(),
        })
    }

    #[test]
    fn every_kind_reads_back_as_written() {
        let records = [
            put(7),
            Record::Ack {
                seq: 7,
                route: "r".into(),
            },
            Record::Started {
                seq: 7,
                route: "c".into(),
            },
            Record::Ended {
                seq: 7,
                route: "c".into(),
            },
            Record::Done { seq: 7 },
            Record::Checkpoint {
                module: "m".into(),
                source: "feed".into(),
                value: "42".into(),
            },
        ];
        let mut buf = Vec::new();
        for r in &records {
            encode(r, &mut buf);
        }
        let mut at = 0;
        for r in &records {
            let (got, len) = decode(&buf[at..]).unwrap();
            assert_eq!(&got, r);
            at += len;
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn a_cut_or_changed_record_is_refused() {
        let mut buf = Vec::new();
        encode(&put(1), &mut buf);
        for cut in [0, 3, HEADER, buf.len() - 1] {
            assert_eq!(
                decode(&buf[..cut]),
                Err(Unreadable::Truncated),
                "cut at {cut}"
            );
        }
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert_eq!(decode(&buf), Err(Unreadable::Corrupt));
    }
}
