//! A reading taken every so often while a run goes on (the daemon's resident memory, its data
//! directory's size), in a task of its own so that the run itself never waits for it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running sampler; [`Sampler::finish`] stops it and hands over the readings.
pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Samples>,
}

/// Readings with the seconds since sampling started at which each was taken.
#[derive(Debug, Default)]
pub struct Samples {
    pub every: Duration,
    pub readings: Vec<(f64, u64)>,
}

impl Sampler {
    /// Reads `read` at once and then every `every` until finished, at most `max` times (the run's
    /// own bound divided by `every` is enough; beyond it sampling just stops). A reading of
    /// `None` (the process is gone) is skipped.
    pub fn start(
        every: Duration,
        max: usize,
        read: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) -> Sampler {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut readings = Vec::new();
            let take = |readings: &mut Vec<(f64, u64)>| {
                if let Some(v) = read() {
                    readings.push((started.elapsed().as_secs_f64(), v));
                }
            };
            for _ in 0..max {
                tokio::select! {
                    _ = tick.tick() => take(&mut readings),
                    _ = &mut stopped => break,
                }
            }
            // The state at the end, which is what "does it come back down" asks about.
            take(&mut readings);
            Samples { every, readings }
        });
        Sampler { stop, task }
    }

    /// Stops sampling (after one last reading) and returns the readings.
    pub async fn finish(self) -> Samples {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

impl Samples {
    pub fn max(&self) -> u64 {
        self.values().max().unwrap_or(0)
    }

    pub fn min(&self) -> u64 {
        self.values().min().unwrap_or(0)
    }

    pub fn last(&self) -> u64 {
        self.readings.last().map_or(0, |r| r.1)
    }

    fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.readings.iter().map(|r| r.1)
    }

    /// At most `n` readings, evenly spaced and always including the first and the last: a
    /// trend that fits on one line.
    pub fn spread(&self, n: usize) -> Vec<u64> {
        let len = self.readings.len();
        if len <= n || n < 2 {
            return self.values().collect();
        }
        (0..n)
            .map(|i| self.readings[i * (len - 1) / (n - 1)].1)
            .collect()
    }

    /// `{"every_s", "min", "max", "last", "samples": [{"t", "v"}, ...]}`, with `unit` naming
    /// the values.
    pub fn to_json(&self, unit: &str) -> Value {
        let samples: Vec<Value> = self
            .readings
            .iter()
            .map(|(t, v)| json!({"t": (t * 100.0).round() / 100.0, unit: v}))
            .collect();
        json!({
            "every_s": self.every.as_secs_f64(),
            "min": self.min(),
            "max": self.max(),
            "last": self.last(),
            "samples": samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_keeps_both_ends() {
        let s = Samples {
            every: Duration::from_secs(1),
            readings: (0..100).map(|i| (i as f64, i)).collect(),
        };
        let picked = s.spread(5);
        assert_eq!(picked.first(), Some(&0));
        assert_eq!(picked.last(), Some(&99));
        assert_eq!(picked.len(), 5);
        assert_eq!(s.spread(200).len(), 100);
        assert_eq!((s.min(), s.max(), s.last()), (0, 99, 99));
    }
}
