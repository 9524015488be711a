//! [`Health`]: how one generation does on live traffic — transform calls and errors, delivery
//! attempts and failures, and their latency — and [`compare`], which decides whether a new
//! generation does worse than the previous one (see [`super::rollout`]).
//!
//! Counted per generation, not per object: a carried-over transform serves both generations,
//! and the comparison is about which generation an event went through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::config::spec::Thresholds;

/// Latency buckets: four per doubling, from 1 µs; the last one takes everything longer
/// (2^32 µs, over an hour).
const BUCKETS: usize = 129;

/// A p99 this much over the previous one is never "worse" however large the ratio: a few
/// milliseconds more of a fast actor is noise.
const LATENCY_SLACK: Duration = Duration::from_millis(50);

/// Attempts that all failed, with deliveries held back behind them, that make a dead target:
/// the one case judged before `min_samples` attempts (see `Health::held`).
const DEAD_AFTER: u64 = 3;

/// The confidence of a rate's lower bound: 95%.
const Z: f64 = 1.96;

/// The lower bound of the true rate behind `hits` of `n` (Wilson score interval). A rate is
/// judged by it, so that a few unlucky calls cannot make a generation worse — 1 failure of 1
/// attempt is "at least 21%" — while every probe to a dead target failing soon is: 3 of 3 is at
/// least 44%.
fn lower_bound(hits: u64, n: u64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let (n, p) = (n as f64, hits as f64 / n as f64);
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - spread) / (1.0 + z2 / n)).max(0.0)
}

/// Counters of one generation.
pub struct Health {
    transform_calls: AtomicU64,
    transform_errors: AtomicU64,
    attempts: AtomicU64,
    failures: AtomicU64,
    /// Deliveries held back by their actor's failing target before a first attempt. They are
    /// not failures: while a flaky target's gate is shut for a moment, a burst of held
    /// deliveries says nothing about either generation. But while a target is down its gate
    /// lets only a probe through now and then, so a generation whose every attempt failed would
    /// wait minutes for `min_samples` attempts: [`DEAD_AFTER`] failed attempts with enough held
    /// deliveries behind them are judged at once.
    held: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Default for Health {
    fn default() -> Self {
        Health {
            transform_calls: AtomicU64::new(0),
            transform_errors: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            held: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Health {
    pub fn transform_call(&self, error: bool) {
        self.transform_calls.fetch_add(1, Ordering::Relaxed);
        if error {
            self.transform_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One delivery attempt that ended (delivered, rejected or failed; not interrupted).
    pub fn attempt(&self, failed: bool, took: Duration) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[bucket(took)].fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery that waits for a failing target before its first attempt.
    pub fn held(&self) {
        self.held.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            transform_calls: load(&self.transform_calls),
            transform_errors: load(&self.transform_errors),
            attempts: load(&self.attempts),
            failures: load(&self.failures),
            held: load(&self.held),
            latency: self.latency.iter().map(load).collect(),
        }
    }
}

fn bucket(took: Duration) -> usize {
    let us = took.as_secs_f64() * 1e6;
    if us < 1.0 {
        return 0;
    }
    ((us.log2() * 4.0) as usize + 1).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`.
fn bucket_top(i: usize) -> Duration {
    Duration::from_secs_f64(2f64.powf(i as f64 / 4.0) / 1e6)
}

/// The counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub transform_calls: u64,
    pub transform_errors: u64,
    pub attempts: u64,
    pub failures: u64,
    pub held: u64,
    latency: Vec<u64>,
}

impl Snapshot {
    /// What to compare a new generation with: per figure, `live` (the previous generation on
    /// the same traffic as the new one) when it has `min` samples of it, else `lifetime` (all
    /// the previous generation served: after a full swap it gets no live traffic).
    pub fn baseline(live: Snapshot, lifetime: Snapshot, min: u64) -> Snapshot {
        let (transforms, deliveries) = (
            if live.transform_calls >= min {
                &live
            } else {
                &lifetime
            },
            if live.attempts >= min {
                &live
            } else {
                &lifetime
            },
        );
        Snapshot {
            transform_calls: transforms.transform_calls,
            transform_errors: transforms.transform_errors,
            attempts: deliveries.attempts,
            failures: deliveries.failures,
            held: deliveries.held,
            latency: deliveries.latency.clone(),
        }
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            transform_calls: self.transform_calls - earlier.transform_calls,
            transform_errors: self.transform_errors - earlier.transform_errors,
            attempts: self.attempts - earlier.attempts,
            failures: self.failures - earlier.failures,
            held: self.held - earlier.held,
            latency: self
                .latency
                .iter()
                .zip(earlier.latency.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a - b)
                .collect(),
        }
    }

    /// The 99th percentile of attempt latency (within a quarter of a doubling).
    fn p99(&self) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (total * 99).div_ceil(100);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_top(i));
            }
        }
        None
    }

    pub fn figures(&self) -> Figures {
        let rate = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
        Figures {
            transform_calls: self.transform_calls,
            transform_error_rate: rate(self.transform_errors, self.transform_calls),
            attempts: self.attempts,
            held: self.held,
            failure_rate: rate(self.failures, self.attempts),
            p99_ms: self.p99().map(|d| d.as_secs_f64() * 1000.0),
        }
    }
}

/// One generation's figures, as reports show them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figures {
    pub transform_calls: u64,
    pub transform_error_rate: f64,
    pub attempts: u64,
    /// Deliveries held back by a failing target before their first attempt.
    pub held: u64,
    /// Of the attempts.
    pub failure_rate: f64,
    pub p99_ms: Option<f64>,
}

/// The new generation against the previous one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub previous: Figures,
    pub new: Figures,
    /// Why the new generation is worse, when it is.
    pub worse: Option<String>,
}

/// Compares `new` with `previous` under `t`.
pub fn compare(previous: &Snapshot, new: &Snapshot, t: &Thresholds) -> Comparison {
    let (p, n) = (previous.figures(), new.figures());
    let points = |r: f64| r * 100.0;
    let mut worse = Vec::new();
    let errors_at_least = lower_bound(new.transform_errors, n.transform_calls);
    if n.transform_calls >= t.min_samples
        && errors_at_least - p.transform_error_rate > t.max_error_rate_increase
    {
        worse.push(format!(
            "transform error rate {:.1}% ({} of {} calls, at least {:.1}% at 95% confidence) against {:.1}% before, more than {:.1} points up",
            points(n.transform_error_rate),
            new.transform_errors,
            n.transform_calls,
            points(errors_at_least),
            points(p.transform_error_rate),
            points(t.max_error_rate_increase)
        ));
    }
    let failures_at_least = lower_bound(new.failures, n.attempts);
    let dead = n.attempts >= DEAD_AFTER
        && new.failures == n.attempts
        && n.attempts + n.held >= t.min_samples;
    if (n.attempts >= t.min_samples || dead)
        && failures_at_least - p.failure_rate > t.max_failure_rate_increase
    {
        worse.push(format!(
            "delivery failure rate {:.1}% ({} of {} attempts, at least {:.1}% at 95% confidence{}) against {:.1}% before, more than {:.1} points up",
            points(n.failure_rate),
            new.failures,
            n.attempts,
            points(failures_at_least),
            if n.held > 0 {
                format!("; {} more deliveries held back by the failing target", n.held)
            } else {
                String::new()
            },
            points(p.failure_rate),
            points(t.max_failure_rate_increase)
        ));
    }
    if let (Some(np), Some(pp)) = (new.p99(), previous.p99()) {
        let enough = n.attempts >= t.min_samples && p.attempts >= t.min_samples;
        if enough
            && np.as_secs_f64() > pp.as_secs_f64() * t.max_latency_ratio
            && np > pp + LATENCY_SLACK
        {
            worse.push(format!(
                "p99 delivery latency {:.1} ms against {:.1} ms before, more than {}× as long",
                np.as_secs_f64() * 1000.0,
                pp.as_secs_f64() * 1000.0,
                t.max_latency_ratio
            ));
        }
    }
    Comparison {
        previous: p,
        new: n,
        worse: (!worse.is_empty()).then(|| worse.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(attempts: u64, failures: u64, took: Duration) -> Snapshot {
        let h = Health::default();
        for i in 0..attempts {
            h.attempt(i < failures, took);
        }
        h.snapshot()
    }

    #[test]
    fn a_failing_generation_is_worse_once_it_has_enough_samples() {
        let t = Thresholds::default();
        let before = traffic(100, 1, Duration::from_millis(2));
        let few = traffic(5, 5, Duration::from_millis(2));
        assert_eq!(compare(&before, &few, &t).worse, None);
        let many = traffic(30, 30, Duration::from_millis(2));
        let c = compare(&before, &many, &t);
        assert!(c
            .worse
            .unwrap()
            .contains("delivery failure rate 100.0% (30 of 30"));
        assert_eq!(c.previous.failure_rate, 0.01);
    }

    #[test]
    fn a_rate_is_judged_by_its_lower_bound_and_held_deliveries_only_add_samples() {
        let t = Thresholds::default();
        let flaky = traffic(100, 25, Duration::from_millis(2));
        let h = Health::default();
        h.attempt(true, Duration::from_millis(2));
        for _ in 0..30 {
            h.held();
        }
        let healthy = traffic(100, 0, Duration::from_millis(2));
        // One failed attempt and a crowd waiting: a blip, not enough to judge, even against a
        // target that never failed before.
        assert_eq!(compare(&healthy, &h.snapshot(), &t).worse, None);
        assert_eq!(compare(&flaky, &h.snapshot(), &t).worse, None);
        // One success among three: not a dead target.
        h.attempt(false, Duration::from_millis(2));
        h.attempt(true, Duration::from_millis(2));
        assert_eq!(compare(&healthy, &h.snapshot(), &t).worse, None);
        // Every probe to a dead target failing is, soon, against a healthy one.
        let dead = Health::default();
        for _ in 0..3 {
            dead.attempt(true, Duration::from_millis(2));
        }
        for _ in 0..30 {
            dead.held();
        }
        let c = compare(&healthy, &dead.snapshot(), &t);
        assert!(c.worse.unwrap().contains("3 of 3 attempts, at least 43.8%"));
        assert!((lower_bound(1, 1) - 0.2065).abs() < 1e-3);
        assert_eq!(lower_bound(0, 0), 0.0);
    }

    #[test]
    fn latency_counts_only_when_far_and_much_longer() {
        let t = Thresholds::default();
        let before = traffic(100, 0, Duration::from_millis(2));
        // 4× as long but only 6 ms more: not worse.
        assert_eq!(
            compare(&before, &traffic(100, 0, Duration::from_millis(8)), &t).worse,
            None
        );
        let slow = compare(&before, &traffic(100, 0, Duration::from_millis(300)), &t);
        assert!(slow.worse.unwrap().contains("p99 delivery latency"));
    }

    #[test]
    fn p99_is_within_a_quarter_doubling_and_since_subtracts() {
        let h = Health::default();
        h.attempt(false, Duration::from_millis(10));
        let first = h.snapshot();
        for _ in 0..99 {
            h.attempt(false, Duration::from_millis(10));
        }
        let p99 = h.snapshot().since(&first).p99().unwrap();
        assert!(p99 >= Duration::from_millis(10) && p99 < Duration::from_micros(12_000));
        assert_eq!(h.snapshot().since(&first).attempts, 99);
    }
}
