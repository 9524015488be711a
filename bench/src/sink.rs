//! The receiving end: a real HTTP server on 127.0.0.1 that the daemon's `http::webhook` actor
//! posts to, and that the generator posts to directly when measuring the harness's own ceiling.
//!
//! It reads the event's id and send time from the JSON it receives — `event.payload` of a
//! delivery (`{"event": {"payload": ...}, "delivered_by": ...}`) or the top level of a webhook
//! body — and records the arrival time on the tool's clock, so a latency is "sent by the
//! generator → arrived here", with nothing taken from the daemon's own account.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::serve::ListenerExt;
use bytes::Bytes;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use crate::clock::now_ns;

/// One request the sink accepted.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub id: u64,
    pub sent_ns: u64,
    pub at_ns: u64,
    /// Major.minor of the plugin that delivered it, as `major * 100 + minor` (0 when unknown):
    /// tells the two builds of a reload run apart.
    pub version: u16,
}

/// What the sink saw, taken out at the end of a run.
#[derive(Debug, Default)]
pub struct Record {
    pub arrivals: Vec<Arrival>,
    /// Requests answered 503 while the sink played dead (`set_down`).
    pub refused: u64,
    /// Requests without a readable id and send time.
    pub unparsed: u64,
}

#[derive(Default)]
struct Shared {
    arrivals: Mutex<Vec<Arrival>>,
    count: AtomicU64,
    refused: AtomicU64,
    unparsed: AtomicU64,
    down: AtomicBool,
}

pub struct Sink {
    pub port: u16,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Sink {
    /// Starts listening on a free port of 127.0.0.1.
    pub async fn start() -> Result<Sink, String> {
        // A deep backlog: the daemon opens a connection per concurrent delivery, and a burst of
        // connects beyond the default 128 would lose SYNs and add TCP's 1 s retry to latencies
        // the sink is supposed to observe, not cause.
        let socket = TcpSocket::new_v4().map_err(|e| format!("sink: {e}"))?;
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .map_err(|e| format!("sink: cannot bind: {e}"))?;
        let listener: TcpListener = socket
            .listen(4096)
            .map_err(|e| format!("sink: cannot listen: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(shared.clone());
        // TCP_NODELAY: answers are small, and Nagle would hold them behind delayed ACKs.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sink {
            port,
            shared,
            server,
        })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The URL the daemon's actor posts deliveries to.
    pub fn hook_url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Plays dead (answers 503 to everything) or comes back.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Requests recorded so far (duplicates included).
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Waits until `expected` requests arrived or `grace` passed, then takes the record. A short
    /// extra pause after the count is reached lets a late duplicate show up.
    pub async fn collect(&self, expected: u64, grace: Duration) -> Record {
        let deadline = Instant::now() + grace;
        while self.count() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Record {
            arrivals: std::mem::take(
                &mut *self
                    .shared
                    .arrivals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            ),
            refused: self.shared.refused.load(Ordering::Relaxed),
            unparsed: self.shared.unparsed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(shared): State<Arc<Shared>>, uri: Uri, body: Bytes) -> StatusCode {
    let at_ns = now_ns();
    if shared.down.load(Ordering::Relaxed) {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match parse(&body) {
        Some((id, sent_ns, version)) => {
            shared
                .arrivals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arrival {
                    id,
                    sent_ns,
                    at_ns,
                    version,
                });
            shared.count.fetch_add(1, Ordering::Relaxed);
        }
        None => {
            shared.unparsed.fetch_add(1, Ordering::Relaxed);
        }
    }
    if uri.path().starts_with("/webhook/") {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    }
}

/// (id, send time, plugin version) from a delivery or a webhook body.
fn parse(body: &[u8]) -> Option<(u64, u64, u16)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let payload = v.get("event").and_then(|e| e.get("payload")).unwrap_or(&v);
    let id = payload.get("load_id")?.as_u64()?;
    let sent = payload.get("sent_ns")?.as_u64()?;
    let version = v["delivered_by"]["version"]
        .as_str()
        .map_or(0, version_code);
    Some((id, sent, version))
}

/// "0.2.0" → 2, "1.3.0" → 103.
fn version_code(v: &str) -> u16 {
    let mut parts = v.split('.').map(|p| p.parse::<u16>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    major * 100 + minor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deliveries_and_webhook_bodies() {
        let delivery = br#"{"event":{"id":"evt_1","payload":{"load_id":7,"sent_ns":99,"bot":false}},"route":"r","delivered_by":{"plugin":"http","version":"0.2.0"}}"#;
        assert_eq!(parse(delivery), Some((7, 99, 2)));
        assert_eq!(parse(br#"{"load_id":3,"sent_ns":5}"#), Some((3, 5, 0)));
        assert_eq!(parse(b"{}"), None);
        assert_eq!(parse(b"not json"), None);
    }
}
