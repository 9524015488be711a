//! The load: POSTs small JSON webhook bodies over a fixed set of keep-alive HTTP/1.1
//! connections, either open loop (a fixed rate, sent on schedule whatever the answers do — the
//! way real webhooks arrive) or closed loop (N senders, each waiting for its answer — the way to
//! find a maximum).
//!
//! Every body carries a unique `load_id` (0, 1, 2, ... in the order events are taken for
//! sending) and `sent_ns`, the moment it is written to its connection on the tool's clock, so the
//! sink can match deliveries to sends and measure latency without trusting the daemon.
//!
//! The connection count is fixed on purpose. A pooled client opens a new connection for every
//! request while all are busy, so one short stall turns into a storm of connects that overflows
//! the listen backlog (128 on Linux for a socket bound through std or tokio); dropped SYNs are
//! retried after 1 s and 3 s, and the benchmark ends up measuring TCP's retransmission timer.
//! With a fixed set, events that find every connection busy wait in the tool's queue, and that
//! wait is reported as schedule lag.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

use crate::clock::now_ns;

/// How hard to push.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Open loop: this many events per second.
    Rate(f64),
    /// Closed loop: this many senders in parallel, one connection each.
    Closed(usize),
}

impl Load {
    pub fn describe(self) -> String {
        match self {
            Load::Rate(r) => format!("open loop, {r:.0} events/s"),
            Load::Closed(n) => format!("closed loop, {n} senders"),
        }
    }
}

/// One run of the generator.
#[derive(Clone)]
pub struct Plan {
    /// Where to send: 127.0.0.1 and a port, or several (the nodes of a cluster): sender `k`
    /// starts on the `k`-th, and moves to the next when it cannot connect, as a load balancer
    /// would.
    pub addrs: Vec<SocketAddr>,
    /// `/webhook/<source>`.
    pub path: String,
    pub load: Load,
    /// Open loop: the number of connections (closed loop uses one per sender).
    pub connections: usize,
    /// Stop sending after this long...
    pub duration: Duration,
    /// ...or after this many events...
    pub max_events: u64,
    /// ...or when this is set (the reload run stops the load when its reloads are done).
    pub stop: Arc<AtomicBool>,
    /// Every Nth event (0: none) says `"bot": true`, which the module's filter drops.
    pub bot_every: u64,
    /// Open loop: at most this many events waiting for a free connection; beyond that a
    /// scheduled event is skipped and counted, so an overloaded daemon shows up as a number.
    pub max_queued: usize,
}

/// An event the daemon (or the sink, for the ceiling) answered 202.
#[derive(Clone, Copy, Debug)]
pub struct Accepted {
    pub id: u64,
    pub sent_ns: u64,
    pub answered_ns: u64,
}

/// What the generator did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub started_ns: u64,
    /// When the last answer came back.
    pub ended_ns: u64,
    pub sent: u64,
    pub accepted: Vec<Accepted>,
    /// Answers by status ("202", "503", ...) and failures ("timeout", "connect error", ...).
    pub statuses: BTreeMap<String, u64>,
    /// Open loop: scheduled events not sent because `max_queued` were already waiting.
    pub skipped: u64,
    /// Open loop: how late each event was written against its schedule, in ns.
    pub lag_ns: Vec<u64>,
    /// Connections opened (more than the plan's count means some broke and were reopened).
    pub connects: u64,
}

impl Outcome {
    pub fn is_bot(&self, id: u64, bot_every: u64) -> bool {
        is_bot(id, bot_every)
    }
}

fn is_bot(id: u64, bot_every: u64) -> bool {
    bot_every > 0 && id % bot_every == bot_every - 1
}

/// What one sender recorded; merged at the end, so senders never share a lock.
#[derive(Default)]
struct Tally {
    accepted: Vec<Accepted>,
    statuses: BTreeMap<String, u64>,
    lag_ns: Vec<u64>,
    last_ns: u64,
    connects: u64,
}

impl Tally {
    fn count(&mut self, key: &str) {
        match self.statuses.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                self.statuses.insert(key.to_owned(), 1);
            }
        }
    }
}

/// Where a sender gets its next event: a shared counter (closed loop) or the schedule's queue
/// (open loop, with each event's planned send time).
enum Jobs {
    Counter(Arc<AtomicU64>, Instant),
    Queue(
        Arc<Mutex<mpsc::UnboundedReceiver<(u64, u64)>>>,
        Arc<AtomicUsize>,
    ),
}

/// Runs the plan to its end and waits (up to 15 s) for the answers still outstanding.
pub async fn run(plan: Plan) -> Result<Outcome, String> {
    let plan = Arc::new(plan);
    let started_ns = now_ns();
    let mut senders = tokio::task::JoinSet::new();
    let mut skipped = 0;
    let next_id = Arc::new(AtomicU64::new(0));
    match plan.load {
        Load::Closed(n) => {
            let started = Instant::now();
            for k in 0..n.max(1) {
                senders.spawn(sender(
                    plan.clone(),
                    k,
                    Jobs::Counter(next_id.clone(), started),
                ));
            }
        }
        Load::Rate(rate) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let (rx, queued) = (Arc::new(Mutex::new(rx)), Arc::new(AtomicUsize::new(0)));
            for k in 0..plan.connections.max(1) {
                senders.spawn(sender(
                    plan.clone(),
                    k,
                    Jobs::Queue(rx.clone(), queued.clone()),
                ));
            }
            skipped = schedule(&plan, rate, &tx, &queued, &next_id).await;
            // Dropping the sending side lets the senders finish the queue and stop.
        }
    }
    let mut tally = Tally::default();
    let deadline = tokio::time::Instant::now() + plan.duration + Duration::from_secs(15);
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, senders.join_next()).await {
        let t = joined.map_err(|e| format!("a sender failed: {e}"))?;
        tally.accepted.extend(t.accepted);
        for (k, v) in t.statuses {
            *tally.statuses.entry(k).or_default() += v;
        }
        tally.lag_ns.extend(t.lag_ns);
        tally.last_ns = tally.last_ns.max(t.last_ns);
        tally.connects += t.connects;
    }
    senders.abort_all();
    let sent = match plan.load {
        Load::Closed(_) => next_id.load(Ordering::SeqCst).min(plan.max_events),
        Load::Rate(_) => next_id.load(Ordering::SeqCst),
    };
    Ok(Outcome {
        started_ns,
        ended_ns: tally.last_ns.max(started_ns),
        sent,
        accepted: tally.accepted,
        statuses: tally.statuses,
        skipped,
        lag_ns: tally.lag_ns,
        connects: tally.connects,
    })
}

/// Queues on a 1 ms tick whatever the schedule says is due by now (tokio's timer has
/// millisecond resolution, so 10 000 events/s go out as bursts of 10 every millisecond).
/// Returns how many events were skipped because too many were already waiting.
async fn schedule(
    plan: &Plan,
    rate: f64,
    tx: &mpsc::UnboundedSender<(u64, u64)>,
    queued: &AtomicUsize,
    next_id: &AtomicU64,
) -> u64 {
    let started = Instant::now();
    let start_ns = now_ns();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut scheduled, mut skipped) = (0u64, 0u64);
    while scheduled < plan.max_events {
        tick.tick().await;
        if plan.stop.load(Ordering::Relaxed) || started.elapsed() >= plan.duration {
            break;
        }
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(plan.max_events);
        while scheduled < due {
            let planned_ns = start_ns + (scheduled as f64 / rate * 1e9) as u64;
            scheduled += 1;
            if queued.load(Ordering::Relaxed) >= plan.max_queued {
                skipped += 1;
                continue;
            }
            queued.fetch_add(1, Ordering::Relaxed);
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            if tx.send((id, planned_ns)).is_err() {
                return skipped;
            }
        }
    }
    skipped
}

/// One connection's worth of sending (sender `k`): takes events until there are none,
/// reconnecting when the connection breaks.
async fn sender(plan: Arc<Plan>, k: usize, jobs: Jobs) -> Tally {
    let mut tally = Tally::default();
    let mut at = k % plan.addrs.len().max(1);
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let (id, planned_ns) = match &jobs {
            Jobs::Counter(next, started) => {
                if plan.stop.load(Ordering::Relaxed) || started.elapsed() >= plan.duration {
                    break;
                }
                let id = next.fetch_add(1, Ordering::SeqCst);
                if id >= plan.max_events {
                    break;
                }
                (id, None)
            }
            Jobs::Queue(rx, queued) => {
                let Some((id, planned)) = rx.lock().await.recv().await else {
                    break;
                };
                queued.fetch_sub(1, Ordering::Relaxed);
                (id, Some(planned))
            }
        };
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            match connect(plan.addrs[at]).await {
                Ok(c) => {
                    conn = Some(c);
                    tally.connects += 1;
                }
                Err(_) => {
                    tally.count("connect error");
                    at = (at + 1) % plan.addrs.len();
                    tally.last_ns = now_ns();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let sent_ns = now_ns();
        if let Some(planned) = planned_ns {
            tally.lag_ns.push(sent_ns.saturating_sub(planned));
        }
        let result = send(c, &plan, id, sent_ns).await;
        let answered_ns = now_ns();
        tally.last_ns = tally.last_ns.max(answered_ns);
        match result {
            Ok(202) => {
                tally.accepted.push(Accepted {
                    id,
                    sent_ns,
                    answered_ns,
                });
                tally.count("202");
            }
            Ok(status) => tally.count(&status.to_string()),
            Err(e) => {
                conn = None;
                tally.count(e);
            }
        }
    }
    tally
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends event `id` on `conn`; the answer's status.
async fn send(
    conn: &mut SendRequest<Full<Bytes>>,
    plan: &Plan,
    id: u64,
    sent_ns: u64,
) -> Result<u16, &'static str> {
    let bot = is_bot(id, plan.bot_every);
    let body = format!(r#"{{"kind":"load","bot":{bot},"load_id":{id},"sent_ns":{sent_ns}}}"#);
    let request = hyper::Request::post(plan.path.as_str())
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| "bad request")?;
    let exchange = async {
        conn.ready().await.map_err(|_| "connection error")?;
        let response = conn
            .send_request(request)
            .await
            .map_err(|_| "request error")?;
        let status = response.status().as_u16();
        // Read the body to the end so the connection can carry the next request.
        response
            .into_body()
            .collect()
            .await
            .map_err(|_| "body error")?;
        Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or(Err("timeout"))
}
