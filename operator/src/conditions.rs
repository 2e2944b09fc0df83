//! Status conditions in the Kubernetes/kstatus convention: `Ready` always present,
//! `observedGeneration` on each condition, and `lastTransitionTime` that moves only when the
//! condition's status changes. Which conditions a pass sets is decided in one place, the
//! reconcile frame (`crate::reconcile::status`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The condition every kind carries.
pub const READY: &str = "Ready";
/// Something is wrong that the spec or the environment must fix.
pub const DEGRADED: &str = "Degraded";
/// The object's workloads are rolling out.
pub const PROGRESSING: &str = "Progressing";
/// homeplane stopped trying: a person must change the spec or the world outside (kstatus).
pub const STALLED: &str = "Stalled";
/// homeplane is working on the object: a new generation, a rollout, a retry (kstatus).
pub const RECONCILING: &str = "Reconciling";

/// A condition to set, without the bookkeeping fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type, e.g. `Ready`.
    pub type_: &'static str,
    /// True or false.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// A sentence a person can act on.
    pub message: String,
}

impl Desired {
    /// A condition that holds.
    pub fn yes(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }

    /// A condition that does not hold.
    pub fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// Sets `desired` in `conditions`: replaces the condition of the same type, keeping its
/// `lastTransitionTime` when the status did not change; adds it otherwise.
pub fn set(
    conditions: &mut Vec<Condition>,
    desired: Desired,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if desired.status { "True" } else { "False" };
    put(
        conditions,
        desired.type_,
        status,
        desired.reason,
        desired.message,
        generation,
        now,
    );
}

/// Sets the condition of `type_` to `Unknown` (nobody knows yet), as [`set`] does.
pub fn set_unknown(
    conditions: &mut Vec<Condition>,
    type_: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    put(
        conditions,
        type_,
        "Unknown",
        reason,
        message.to_string(),
        generation,
        now,
    );
}

fn put(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = status.to_string();
    let existing = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match existing.map(|i| &conditions[i]) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match existing {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// Removes the condition of `type_`, if present.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn adds_a_new_condition_with_the_current_time() {
        let mut conditions = vec![];
        set(
            &mut conditions,
            Desired::yes(READY, "NodesFound", "2 nodes"),
            Some(3),
            at(100),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].status, "True");
        assert_eq!(conditions[0].observed_generation, Some(3));
        assert_eq!(conditions[0].last_transition_time, Time(at(100)));
    }

    #[test]
    fn keeps_transition_time_when_status_is_unchanged() {
        let mut conditions = vec![];
        set(
            &mut conditions,
            Desired::yes(READY, "A", "one"),
            Some(1),
            at(100),
        );
        set(
            &mut conditions,
            Desired::yes(READY, "B", "two"),
            Some(2),
            at(200),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].reason, "B");
        assert_eq!(conditions[0].message, "two");
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert_eq!(conditions[0].last_transition_time, Time(at(100)));
    }

    #[test]
    fn moves_transition_time_when_status_changes() {
        let mut conditions = vec![];
        set(
            &mut conditions,
            Desired::yes(READY, "A", "one"),
            Some(1),
            at(100),
        );
        set(
            &mut conditions,
            Desired::no(READY, "B", "two"),
            Some(1),
            at(200),
        );
        assert_eq!(conditions[0].status, "False");
        assert_eq!(conditions[0].last_transition_time, Time(at(200)));
        assert!(!is_true(&conditions, READY));
    }

    #[test]
    fn removes_by_type() {
        let mut conditions = vec![];
        set(
            &mut conditions,
            Desired::yes(READY, "A", "one"),
            None,
            at(1),
        );
        set(
            &mut conditions,
            Desired::yes(DEGRADED, "B", "two"),
            None,
            at(1),
        );
        remove(&mut conditions, DEGRADED);
        assert_eq!(conditions.len(), 1);
        assert!(is_true(&conditions, READY));
    }
}
