//! What one pass over an object concluded, in the one vocabulary every controller reports in:
//! ready, still working, failed for now (retried), or stalled until a person changes the spec
//! or the world outside. The frame turns it into kstatus conditions, an event and the next
//! wake-up; a controller never writes `Ready`, `Reconciling`, `Stalled` or `Degraded` itself.

use std::time::Duration;

use crate::controllers::Error;

/// Where an object stands after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The world matches the spec: `Ready=True`.
    Ready,
    /// Work is in flight (a rollout, a queued run, a server starting): `Ready=False`,
    /// `Reconciling=True`, looked at again soon.
    Progressing,
    /// Failed in a way the world fixes by itself (a server restarting, a Secret that arrives a
    /// moment later, a refused connection): `Ready=False`, `Reconciling=True`, `Degraded=True`,
    /// retried with the frame's backoff for as long as it takes.
    Retry,
    /// Only a change can cure it: `Ready=False`, `Stalled=True`, `Degraded=True`.
    Stalled(Cure),
}

/// What must change for a stalled object to move again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cure {
    /// The object's own spec (an invalid value, a source that is named wrongly). The object
    /// waits for its next change.
    Spec,
    /// Something outside homeplane (capacity of a node class, an extension the server lacks, a
    /// failed run that a new one must replace). Looked at again on the resync.
    World,
}

impl Cure {
    /// The sentence the `Stalled` condition ends with.
    pub fn hint(self) -> &'static str {
        match self {
            Cure::Spec => "homeplane waits for a change of the spec",
            Cure::World => {
                "homeplane waits for a change outside this object and looks again on its resync"
            }
        }
    }
}

/// The conclusion of one pass: a state, a CamelCase reason, a message a person can act on, and
/// optionally when to look again and a warning to keep beside a working object.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Where the object stands.
    pub state: State,
    /// CamelCase reason of the `Ready` condition (and of `Stalled`/`Degraded` when they apply).
    pub reason: &'static str,
    /// A sentence a person can act on.
    pub message: String,
    /// When to look again without a change (the controller's resync when `None`). A retry's
    /// delay is the frame's backoff and ignores this.
    pub requeue: Option<Duration>,
    /// `Degraded=True` beside a working object (e.g. a latency budget exceeded, retention that
    /// could not delete), as (reason, message).
    pub degraded: Option<(&'static str, String)>,
}

impl Outcome {
    fn new(state: State, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            state,
            reason,
            message: message.into(),
            requeue: None,
            degraded: None,
        }
    }

    /// The world matches the spec.
    pub fn ready(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(State::Ready, reason, message)
    }

    /// Work in flight; looked at again after `requeue` (10 s unless set with [`Self::after`]).
    pub fn progressing(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(State::Progressing, reason, message)
    }

    /// A failure the world fixes by itself: retried with backoff.
    pub fn retry(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(State::Retry, reason, message)
    }

    /// The spec is wrong: stalled until it changes.
    pub fn invalid(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(State::Stalled(Cure::Spec), reason, message)
    }

    /// Something outside the object must change: stalled, looked at again on the resync.
    pub fn blocked(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(State::Stalled(Cure::World), reason, message)
    }

    /// Looks again after `after` (for ready, progressing and world-stalled outcomes).
    #[must_use]
    pub fn after(mut self, after: Duration) -> Self {
        self.requeue = Some(after);
        self
    }

    /// Keeps `Degraded=True` with `reason` and `message` beside a working object.
    #[must_use]
    pub fn degraded(mut self, reason: &'static str, message: impl Into<String>) -> Self {
        self.degraded = Some((reason, message.into()));
        self
    }

    /// Whether the object is in trouble (retried or stalled).
    pub fn is_failure(&self) -> bool {
        matches!(self.state, State::Retry | State::Stalled(_))
    }

    /// An error that ended a pass, as an outcome: a spec the API server should have refused
    /// stalls; everything else (API calls, SQL, n8n, serialisation) is retried.
    pub fn from_error(error: &Error) -> Self {
        let message = with_causes(error);
        match error {
            Error::Spec(_) => Self::invalid(error.reason(), format!("{message}; fix the spec")),
            _ => Self::retry(error.reason(), message),
        }
    }
}

/// An error and its chain of causes in one line: "failed to list the nodes: ...: ...".
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_the_world_are_retried_and_a_bad_spec_stalls() {
        let api = Error::Kube {
            action: "list the nodes",
            source: kube::Error::LinesCodecMaxLineLengthExceeded,
        };
        let outcome = Outcome::from_error(&api);
        assert_eq!(outcome.state, State::Retry);
        assert_eq!(outcome.reason, "KubernetesApiError");
        assert!(
            outcome.message.starts_with("failed to list the nodes: "),
            "{outcome:?}"
        );
        let spec = Outcome::from_error(&Error::Spec("spec.latencyBudget: not a duration".into()));
        assert_eq!(spec.state, State::Stalled(Cure::Spec));
        assert!(spec.message.ends_with("; fix the spec"), "{spec:?}");
    }

    #[test]
    fn only_retries_and_stalls_are_failures() {
        assert!(!Outcome::ready("Ready", "ok").is_failure());
        assert!(!Outcome::progressing("RollingOut", "1 of 2").is_failure());
        assert!(Outcome::retry("ServerUnreachable", "down").is_failure());
        assert!(Outcome::blocked("Unschedulable", "full").is_failure());
        let kept = Outcome::ready("Ready", "ok").degraded("LatencyBudgetExceeded", "p95 3s");
        assert_eq!(
            kept.degraded,
            Some(("LatencyBudgetExceeded", "p95 3s".into()))
        );
    }
}
