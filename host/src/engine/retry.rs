//! When to try a failed delivery again, and when to give up: exponential backoff with jitter,
//! bounded by the actor's [`RetryPolicy`], never sooner than the target asked (`Retry-After`).

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::config::spec::RetryPolicy;

/// The wait after the `failures`-th failed attempt: `initial · 2^(failures-1)`, capped at `max`,
/// then drawn from its upper half (so that deliveries that failed together do not all come back
/// at the same instant), and at least `retry_after` — which is itself capped at `max`, so that
/// a receiver cannot park its deliveries beyond the policy.
pub fn delay(policy: &RetryPolicy, failures: u32, retry_after: Option<Duration>) -> Duration {
    let doubled = policy
        .initial
        .saturating_mul(1 << failures.saturating_sub(1).min(30));
    let base = doubled.min(policy.max);
    let jittered = base / 2 + base.mul_f64(random_fraction() / 2.0);
    jittered.max(retry_after.unwrap_or_default().min(policy.max))
}

/// Why no further attempt is made after `attempts` attempts, `age` after the event was accepted;
/// `None` while the policy allows another.
pub fn exhausted(policy: &RetryPolicy, attempts: u32, age: Duration) -> Option<String> {
    if policy.max_attempts.is_some_and(|max| attempts >= max) {
        return Some(format!("gave up after {attempts} attempts (max_attempts)"));
    }
    (age >= policy.max_age).then(|| {
        format!(
            "gave up after {attempts} attempts: {:.0} s since the event was accepted (max_age {:.0} s)",
            age.as_secs_f64(),
            policy.max_age.as_secs_f64()
        )
    })
}

/// A number in `[0, 1)`, from the standard library's randomly keyed hasher.
fn random_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: Some(5),
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_age: Duration::from_secs(60),
        }
    }

    #[test]
    fn waits_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let p = policy();
        for (failures, base) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..50 {
                let d = delay(&p, failures, None).as_millis() as u64;
                assert!((base / 2..=base).contains(&d), "failure {failures}: {d} ms");
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor_up_to_the_cap() {
        let p = RetryPolicy {
            max: Duration::from_secs(10),
            ..policy()
        };
        assert_eq!(
            delay(&p, 1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            delay(&p, 1, Some(Duration::from_secs(999_999))),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn gives_up_on_count_or_age() {
        let p = policy();
        assert_eq!(exhausted(&p, 4, Duration::from_secs(1)), None);
        assert!(exhausted(&p, 5, Duration::from_secs(1))
            .unwrap()
            .contains("max_attempts"));
        assert!(exhausted(&p, 1, Duration::from_secs(61))
            .unwrap()
            .contains("max_age"));
    }
}
