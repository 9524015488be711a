//! The protocol between the daemon and a plugin process: frames of a 4-byte little-endian length
//! and a JSON message, over the child's stdin (to the child) and stdout (from it).
//!
//! JSON because events are JSON documents already and both ends are this binary: there is no
//! schema to evolve across versions, and a frame stays readable in a debugger. Every call carries
//! an id its reply repeats, so calls run concurrently and complete in any order; what a child
//! sends about one object (a log line, an emitted event, then the reply) arrives in the order it
//! was sent, which keeps an emitted event ahead of the ack of the delivery that emitted it.

use std::io::{self, Read, Write};

use orgloop_plugin_sdk::{Event, Manifest, SymbolKind};
use serde::{Deserialize, Serialize};

use crate::plugin::library::DeliveryRequest;
use crate::plugin::load::PluginLoadError;

/// A frame longer than this is refused (an event is at most a few MB; see the webhook limit).
pub const MAX_FRAME: usize = 64 << 20;

/// What the daemon sends a plugin process.
#[derive(Debug, Serialize, Deserialize)]
pub enum Down {
    /// Build an object, known from now on by `object`.
    New {
        call: u64,
        object: u64,
        kind: SymbolKind,
        symbol: String,
        config: String,
    },
    /// The object is no longer used.
    Drop { object: u64 },
    Apply {
        call: u64,
        object: u64,
        event: Event,
        ctx: Ctx,
    },
    Deliver {
        call: u64,
        object: u64,
        delivery: DeliveryRequest,
    },
    /// Raise the cancellation signal of the delivery `call`.
    Cancel { call: u64 },
    Poll {
        call: u64,
        object: u64,
        checkpoint: Option<String>,
    },
    /// Answered once a thread of the child's runtime is free: the child's heartbeat.
    Ping { call: u64 },
    /// The answer to the child's [`Up::Emit`] `call`: whether the module took the event.
    Emitted {
        call: u64,
        taken: Result<(), String>,
    },
}

/// A transform call's context.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ctx {
    pub source: String,
    pub route: String,
    pub actor: String,
    pub module: String,
}

/// What a plugin process sends the daemon.
#[derive(Debug, Serialize, Deserialize)]
pub enum Up {
    /// The library loaded; the first frame of a child that started well.
    Ready {
        manifest: Manifest,
    },
    /// The library did not load; the child exits after this frame.
    Refused {
        error: PluginLoadError,
    },
    Reply {
        call: u64,
        reply: Reply,
    },
    /// A log line of `object`.
    Log {
        object: u64,
        level: u8,
        message: String,
    },
    /// An event `object` emitted; a `call` other than 0 waits for [`Down::Emitted`].
    Emit {
        call: u64,
        object: u64,
        event: Event,
    },
}

/// The answer to one call.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Built(Result<(), String>),
    Verdict(Result<Verdict, String>),
    Outcome(Result<Outcome, Failure>),
    Polled(Result<Polled, String>),
    Pong,
}

impl Reply {
    /// The same kind of answer, failed with `why` (for an answer too long to send).
    pub fn failed(&self, why: String) -> Reply {
        match self {
            Reply::Built(_) => Reply::Built(Err(why)),
            Reply::Verdict(_) => Reply::Verdict(Err(why)),
            // The same delivery would give the same answer again.
            Reply::Outcome(_) => Reply::Outcome(Err(Failure {
                message: why,
                permanent: true,
                retry_after_ms: None,
            })),
            Reply::Polled(_) => Reply::Polled(Err(why)),
            Reply::Pong => Reply::Pong,
        }
    }
}

/// [`orgloop_plugin_sdk::Verdict`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub enum Verdict {
    Pass,
    Drop,
    Replace(Event),
}

/// [`orgloop_plugin_sdk::Outcome`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub enum Outcome {
    Delivered,
    Rejected(String),
}

/// [`crate::plugin::library::Failure`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct Failure {
    pub message: String,
    pub permanent: bool,
    pub retry_after_ms: Option<u64>,
}

/// [`orgloop_plugin_sdk::Polled`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct Polled {
    pub events: Vec<Event>,
    pub checkpoint: Option<String>,
}

/// A message too long for one frame: refused by its sender, so that the other end never reads
/// a frame it must refuse (which would cut the pipe, and with it every other call).
#[derive(Debug)]
pub struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a message over the {} MiB limit of the plugin process's pipe",
            MAX_FRAME >> 20
        )
    }
}

/// Appends `msg` as one frame to `out`; leaves `out` as it was when it is too long. It stops
/// writing at the limit, so the buffer of an oversized message stays within the limit (twice it
/// at most, as the buffer grows) instead of the message's size: a plugin process may run under
/// a memory limit, and its answer is often its largest allocation.
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), TooLarge> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let capped = Capped {
        out: &mut *out,
        room: MAX_FRAME,
    };
    // Serializing these types fails only at the limit: every map key is a string.
    if serde_json::to_writer(capped, msg).is_err() {
        out.truncate(start);
        return Err(TooLarge);
    }
    let len = out.len() - start - 4;
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Appends to a buffer until `room` bytes are written, then refuses.
struct Capped<'a> {
    out: &'a mut Vec<u8>,
    room: usize,
}

impl Write for Capped<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.room = self
            .room
            .checked_sub(bytes.len())
            .ok_or_else(|| io::Error::other(TooLarge.to_string()))?;
        self.out.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads one frame; `None` at a clean end of the stream.
pub fn read<T: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf)?;
    serde_json::from_slice(buf)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("a bad frame: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_back_to_back() {
        let event = Event::builder("src", orgloop_plugin_sdk::EventType::ResourceChanged).build();
        let mut buf = Vec::new();
        encode(&Down::Ping { call: 7 }, &mut buf).unwrap();
        encode(
            &Down::Apply {
                call: 8,
                object: 1,
                event: event.clone(),
                ctx: Ctx {
                    source: "src".into(),
                    route: "r".into(),
                    actor: "a".into(),
                    module: "m".into(),
                },
            },
            &mut buf,
        )
        .unwrap();
        let mut r = &buf[..];
        let mut scratch = Vec::new();
        assert!(matches!(
            read(&mut r, &mut scratch).unwrap(),
            Some(Down::Ping { call: 7 })
        ));
        match read(&mut r, &mut scratch).unwrap() {
            Some(Down::Apply {
                call: 8, event: e, ..
            }) => assert_eq!(e, event),
            other => panic!("unexpected {other:?}"),
        }
        assert!(read::<Down>(&mut r, &mut scratch).unwrap().is_none());
    }

    #[test]
    fn an_oversized_message_is_refused_by_its_sender() {
        let mut buf = vec![1, 2, 3];
        let big = "x".repeat(MAX_FRAME);
        assert!(encode(&big, &mut buf).is_err());
        assert_eq!(buf, [1, 2, 3]);
        // Two bytes of quotes leave room for exactly this much.
        let fits = "x".repeat(MAX_FRAME - 2);
        encode(&fits, &mut buf).unwrap();
        assert_eq!(buf.len(), 3 + 4 + MAX_FRAME);
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading() {
        let len = (MAX_FRAME as u32 + 1).to_le_bytes();
        let err = read::<Down>(&mut &len[..], &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
