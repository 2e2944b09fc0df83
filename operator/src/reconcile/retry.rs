//! The one retry policy: a transient failure is retried after a wait as long as the object has
//! already been failing (so waits double), at least `base` and at most `cap`, with jitter so
//! that objects that failed together do not retry together. It is counted in time, never in
//! attempts: nothing gives up after N tries, and a burst of wake-ups (watch events during an
//! outage) does not stretch the wait. Per object, forgotten on the first success. The cap is
//! below every controller's resync, so an object recovers within one resync of the world
//! coming back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

/// How long to wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The shortest wait (the first retry).
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
    /// Relative spread of a wait, e.g. 0.2 for ±20 %.
    pub jitter: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            jitter: 0.2,
        }
    }
}

impl Policy {
    /// The wait after failing for `failing_for`, with `sample` in `[0, 1)` choosing the jitter.
    pub fn delay(&self, failing_for: Duration, sample: f64) -> Duration {
        let wait = failing_for.clamp(self.base, self.cap);
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * sample.clamp(0.0, 1.0);
        wait.mul_f64(factor.max(0.0))
            .clamp(self.base.mul_f64(0.5), self.cap)
    }
}

/// A run of failures of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    /// When the first failure of the run happened.
    pub since: Instant,
    /// The same moment on the wall clock, for status messages.
    pub since_wall: Timestamp,
    /// Failures so far (reported, never a limit).
    pub failures: u32,
}

/// The next attempt after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// How long to wait.
    pub delay: Duration,
    /// How long the object has been failing.
    pub failing_for: Duration,
    /// Since when, on the wall clock (stable across retries, so a status that reports it does
    /// not change, and is not rewritten, on every attempt).
    pub since: Timestamp,
    /// Failures in a row, this one included.
    pub failures: u32,
}

/// The failure streaks of every object (`kind/namespace/name`).
#[derive(Debug, Default)]
pub struct Retries {
    policy: Policy,
    streaks: Mutex<HashMap<String, Streak>>,
}

impl Retries {
    /// Streaks kept under `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            streaks: Mutex::new(HashMap::new()),
        }
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Records a failure of `key`; says when to try again.
    pub fn failed(&self, key: &str) -> Retry {
        let now = Instant::now();
        let streak = match self.streaks.lock() {
            Ok(mut streaks) => {
                let streak = streaks.entry(key.to_string()).or_insert(Streak {
                    since: now,
                    since_wall: Timestamp::now(),
                    failures: 0,
                });
                streak.failures = streak.failures.saturating_add(1);
                *streak
            }
            Err(_) => Streak {
                since: now,
                since_wall: Timestamp::now(),
                failures: 1,
            },
        };
        let failing_for = now.duration_since(streak.since);
        Retry {
            delay: self.policy.delay(failing_for, jitter_sample()),
            failing_for,
            since: streak.since_wall,
            failures: streak.failures,
        }
    }

    /// Forgets the failures of `key` after it succeeded (or reached a state that is not a
    /// failure).
    pub fn succeeded(&self, key: &str) {
        if let Ok(mut streaks) = self.streaks.lock() {
            streaks.remove(key);
        }
    }

    /// The current streak of `key`, if it is failing.
    pub fn streak(&self, key: &str) -> Option<Streak> {
        self.streaks.lock().ok()?.get(key).copied()
    }
}

/// A number in `[0, 1)` from the operating system's random source (0.5 if it fails: no jitter).
fn jitter_sample() -> f64 {
    let mut bytes = [0u8; 4];
    match getrandom::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// `12s`, `3m05s`, `1h02m`: a wait or a duration of failure in a status message.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_JITTER: Policy = Policy {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(60),
        jitter: 0.0,
    };

    #[test]
    fn waits_as_long_as_the_failure_has_lasted_between_base_and_cap() {
        let p = NO_JITTER;
        assert_eq!(p.delay(Duration::ZERO, 0.3), Duration::from_secs(1));
        assert_eq!(p.delay(Duration::from_secs(7), 0.3), Duration::from_secs(7));
        assert_eq!(
            p.delay(Duration::from_secs(3600), 0.3),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn jitter_spreads_the_wait_and_stays_within_bounds() {
        let p = Policy::default();
        let low = p.delay(Duration::from_secs(10), 0.0);
        let high = p.delay(Duration::from_secs(10), 0.999);
        assert_eq!(low, Duration::from_secs(8));
        assert!(high > Duration::from_millis(11_900) && high <= Duration::from_secs(12));
        assert_eq!(p.delay(Duration::from_secs(600), 0.999), p.cap);
        assert!(p.delay(Duration::ZERO, 0.0) >= Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_double_in_time_never_give_up_and_reset_on_success() {
        let retries = Retries::new(NO_JITTER);
        let mut waits = Vec::new();
        for _ in 0..9 {
            let retry = retries.failed("Database/ns/db");
            waits.push(retry.delay.as_secs());
            tokio::time::advance(retry.delay).await;
        }
        assert_eq!(waits, [1, 1, 2, 4, 8, 16, 32, 60, 60]);
        let streak = retries.streak("Database/ns/db").map(|s| s.failures);
        assert_eq!(streak, Some(9), "counted, never a limit");
        retries.succeeded("Database/ns/db");
        assert_eq!(retries.streak("Database/ns/db"), None);
        assert_eq!(
            retries.failed("Database/ns/db").delay,
            Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_wakeups_does_not_stretch_the_wait() {
        let retries = Retries::new(NO_JITTER);
        for _ in 0..50 {
            retries.failed("Workflow/ns/wf");
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            retries.failed("Workflow/ns/wf").delay,
            Duration::from_secs(3)
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(12)), "12s");
        assert_eq!(human(Duration::from_secs(185)), "3m05s");
        assert_eq!(human(Duration::from_secs(3720)), "1h02m");
    }
}
