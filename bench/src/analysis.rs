//! Matches what the generator sent with what the sink received: loss, duplicates, rates and
//! latency. Works on ids, so it needs no help from the daemon.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::clock::secs;
use crate::generator::Outcome;
use crate::sink::{Arrival, Record};
use crate::stats::Summary;

/// The result of one load run.
#[derive(Debug, Default)]
pub struct Analysis {
    /// When the generator started, on the tool's clock.
    pub started_ns: u64,
    pub sent: u64,
    pub accepted: u64,
    /// Accepted and not a bot event: what should reach the sink.
    pub expected: u64,
    /// Distinct expected events that reached the sink.
    pub delivered: u64,
    /// Arrivals beyond the first of an id.
    pub duplicates: u64,
    /// Expected but never arrived within the grace period.
    pub lost: u64,
    /// Arrived without a 202 for it (the answer was lost or timed out), or a bot event that got
    /// through the filter.
    pub unexpected: u64,
    pub refused_by_sink: u64,
    pub unparsed: u64,
    pub skipped: u64,
    /// Connections the generator opened.
    pub connects: u64,
    pub statuses: BTreeMap<String, u64>,
    /// From the first send to the last answer.
    pub send_secs: f64,
    pub accepted_per_s: f64,
    /// Distinct deliveries per second, from the first send to the last delivery.
    pub delivered_per_s: f64,
    /// Send → arrival at the sink, for the first arrival of each expected event.
    pub latency: Summary,
    /// Send → 202.
    pub answer: Summary,
    /// Open loop: how late sends went out against the schedule.
    pub lag: Summary,
    /// First arrivals of expected events, in arrival order (for windowed views).
    pub deliveries: Vec<Arrival>,
    /// Arrivals by delivering plugin version code (see `sink::Arrival::version`).
    pub versions: BTreeMap<u16, u64>,
}

/// Rates and latency over a stretch of consecutive deliveries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub events: usize,
    pub delivered_per_s: f64,
    pub latency: Summary,
}

impl Window {
    pub fn to_json(self) -> Value {
        json!({"events": self.events, "delivered_per_s": self.delivered_per_s.round(), "latency": self.latency.to_json()})
    }
}

pub fn analyze(gen: &Outcome, sink: Record, bot_every: u64) -> Analysis {
    let n = gen.sent as usize;
    // 0: not accepted, 1: accepted and expected, 2: accepted bot event.
    let mut state = vec![0u8; n];
    let mut expected = 0;
    for a in &gen.accepted {
        if let Some(s) = state.get_mut(a.id as usize) {
            *s = if gen.is_bot(a.id, bot_every) { 2 } else { 1 };
            expected += u64::from(*s == 1);
        }
    }
    let mut seen = vec![false; n];
    let (mut duplicates, mut unexpected) = (0, 0);
    let mut versions = BTreeMap::new();
    let mut arrivals = sink.arrivals;
    arrivals.sort_unstable_by_key(|a| a.at_ns);
    let mut deliveries = Vec::with_capacity(arrivals.len());
    for a in arrivals {
        *versions.entry(a.version).or_insert(0) += 1;
        let i = a.id as usize;
        if i >= n {
            unexpected += 1;
            continue;
        }
        if seen[i] {
            duplicates += 1;
            continue;
        }
        seen[i] = true;
        if state[i] == 1 {
            deliveries.push(a);
        } else {
            unexpected += 1;
        }
    }
    let delivered = deliveries.len() as u64;
    let send_secs = secs(gen.started_ns, gen.ended_ns);
    let last_delivery = deliveries.last().map_or(gen.started_ns, |a| a.at_ns);
    Analysis {
        started_ns: gen.started_ns,
        sent: gen.sent,
        accepted: gen.accepted.len() as u64,
        expected,
        delivered,
        duplicates,
        lost: expected.saturating_sub(delivered),
        unexpected,
        refused_by_sink: sink.refused,
        unparsed: sink.unparsed,
        skipped: gen.skipped,
        connects: gen.connects,
        statuses: gen.statuses.clone(),
        send_secs,
        accepted_per_s: gen.accepted.len() as f64 / send_secs.max(1e-9),
        delivered_per_s: delivered as f64 / secs(gen.started_ns, last_delivery).max(1e-9),
        latency: Summary::of_ns(
            deliveries
                .iter()
                .map(|a| a.at_ns.saturating_sub(a.sent_ns))
                .collect(),
        ),
        answer: Summary::of_ns(
            gen.accepted
                .iter()
                .map(|a| a.answered_ns.saturating_sub(a.sent_ns))
                .collect(),
        ),
        lag: Summary::of_ns(gen.lag_ns.clone()),
        deliveries,
        versions,
    }
}

impl Analysis {
    /// The first and the last `size` deliveries: does throughput hold up over a long run?
    pub fn first_and_last(&self, size: usize) -> Option<(Window, Window)> {
        let d = &self.deliveries;
        if size < 2 || d.len() < 2 * size {
            return None;
        }
        Some((window(&d[..size]), window(&d[d.len() - size..])))
    }

    /// Deliveries per second in consecutive tenths of the run (by arrival order).
    pub fn tenths(&self) -> Vec<f64> {
        let step = self.deliveries.len() / 10;
        if step < 2 {
            return Vec::new();
        }
        self.deliveries
            .chunks_exact(step)
            .map(|c| window(c).delivered_per_s.round())
            .collect()
    }

    /// Latency of deliveries grouped by when they were sent, in buckets of `bucket_ms` from the
    /// first send: (bucket start in s, deliveries, p50, p99, max) — where a stall begins.
    pub fn timeline(&self, start_ns: u64, bucket_ms: u64) -> Vec<(f64, Summary)> {
        let bucket_ns = bucket_ms.max(1) * 1_000_000;
        let mut buckets: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for a in &self.deliveries {
            buckets
                .entry(a.sent_ns.saturating_sub(start_ns) / bucket_ns)
                .or_default()
                .push(a.at_ns.saturating_sub(a.sent_ns));
        }
        buckets
            .into_iter()
            .map(|(b, v)| ((b * bucket_ns) as f64 / 1e9, Summary::of_ns(v)))
            .collect()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "sent": self.sent,
            "accepted": self.accepted,
            "expected": self.expected,
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "refused_by_sink": self.refused_by_sink,
            "unparsed": self.unparsed,
            "skipped_by_generator": self.skipped,
            "connections_opened": self.connects,
            "statuses": self.statuses,
            "send_secs": (self.send_secs * 100.0).round() / 100.0,
            "accepted_per_s": self.accepted_per_s.round(),
            "delivered_per_s": self.delivered_per_s.round(),
            "latency": self.latency.to_json(),
            "answer_latency": self.answer.to_json(),
            "schedule_lag": self.lag.to_json(),
        })
    }

    /// The human summary, a few indented lines.
    pub fn lines(&self) -> Vec<String> {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let mut out = vec![
            format!(
                "sent {}  accepted {} ({:.0}/s)  delivered {} ({:.0}/s)",
                self.sent, self.accepted, self.accepted_per_s, self.delivered, self.delivered_per_s
            ),
            format!(
                "lost {}  duplicates {}  unexpected {}  answers: {}  (connections opened: {})",
                self.lost,
                self.duplicates,
                self.unexpected,
                statuses.join(", "),
                self.connects
            ),
            format!("send → delivered  {}", self.latency.line()),
            format!("send → 202        {}", self.answer.line()),
        ];
        if self.lag.count > 0 {
            out.push(format!("schedule lag      {}", self.lag.line()));
        }
        if self.skipped > 0 || self.refused_by_sink > 0 || self.unparsed > 0 {
            out.push(format!(
                "skipped by the generator (too many awaiting an answer) {}  refused by the sink {}  unparsed {}",
                self.skipped, self.refused_by_sink, self.unparsed
            ));
        }
        out
    }
}

fn window(d: &[Arrival]) -> Window {
    let span = secs(d[0].at_ns, d[d.len() - 1].at_ns);
    Window {
        events: d.len(),
        delivered_per_s: (d.len() - 1) as f64 / span.max(1e-9),
        latency: Summary::of_ns(
            d.iter()
                .map(|a| a.at_ns.saturating_sub(a.sent_ns))
                .collect(),
        ),
    }
}
