//! The diff engine: for every property, desired versus observed, with grace periods. Pure,
//! deterministic (catalogue order in, catalogue order out) and linear in the number of
//! properties. An observation or a desired value that failed is `Unknown` with the reason:
//! never drift, never in sync.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use homeplane_crds::registry::Severity;
use jiff::Timestamp;
use serde_json::Value;

use crate::catalogue::Checked;
use crate::compare::{Outcome, compare};
use crate::observation::Observation;

/// The state of one property after an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// As desired (or drifted for less than its grace period).
    InSync,
    /// Out of its desired state.
    Drifted,
    /// Could not be observed or compared.
    Unknown,
}

impl State {
    /// The word used in history and events.
    pub fn as_str(self) -> &'static str {
        match self {
            State::InSync => "InSync",
            State::Drifted => "Drifted",
            State::Unknown => "Unknown",
        }
    }
}

/// The verdict on one property.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Property id.
    pub id: String,
    /// In sync, drifted or unknown.
    pub state: State,
    /// The desired value (rendered), when it could be.
    pub desired: Option<Value>,
    /// The observed value, when it could be read.
    pub observed: Option<Value>,
    /// Since when it has been out of its desired state (drifted, or within its grace).
    pub since: Option<Timestamp>,
    /// Why it is unknown, or what the observer said.
    pub message: Option<String>,
    /// How bad drift is.
    pub severity: Severity,
    /// Drifted but still inside its grace period.
    pub in_grace: bool,
}

/// The verdicts of one evaluation and their totals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// One verdict per property, in catalogue order.
    pub verdicts: Vec<Verdict>,
    /// Properties in sync (including drift within its grace period).
    pub in_sync: usize,
    /// Properties drifted.
    pub drifted: usize,
    /// Properties unknown.
    pub unknown: usize,
    /// Drifted properties per severity.
    pub drifted_by_severity: BTreeMap<Severity, usize>,
}

/// Evaluates every property: `desired[i]` is the rendered desired value of `properties[i]`,
/// `observed` the observations by id, `since` when each property was first seen drifting
/// (from the previous evaluation), `now` the time of this one.
pub fn evaluate(
    properties: &[Checked],
    desired: &[Result<Value, String>],
    observed: &HashMap<String, Observation>,
    since: &HashMap<String, Timestamp>,
    now: Timestamp,
) -> Report {
    let mut report = Report {
        verdicts: Vec::with_capacity(properties.len()),
        ..Report::default()
    };
    for (i, property) in properties.iter().enumerate() {
        let verdict = judge(
            property,
            desired.get(i),
            observed.get(&property.id),
            since,
            now,
        );
        match verdict.state {
            State::InSync => report.in_sync += 1,
            State::Drifted => {
                report.drifted += 1;
                *report
                    .drifted_by_severity
                    .entry(verdict.severity)
                    .or_default() += 1;
            }
            State::Unknown => report.unknown += 1,
        }
        report.verdicts.push(verdict);
    }
    report
}

fn judge(
    property: &Checked,
    desired: Option<&Result<Value, String>>,
    observation: Option<&Observation>,
    since: &HashMap<String, Timestamp>,
    now: Timestamp,
) -> Verdict {
    let mut verdict = Verdict {
        id: property.id.clone(),
        state: State::Unknown,
        desired: None,
        observed: None,
        since: None,
        message: None,
        severity: property.severity,
        in_grace: false,
    };
    let desired = match desired {
        Some(Ok(d)) => d,
        Some(Err(reason)) => {
            verdict.message = Some(reason.clone());
            return verdict;
        }
        None => {
            verdict.message = Some("the desired value was not rendered".to_string());
            return verdict;
        }
    };
    verdict.desired = Some(desired.clone());
    let Some(observation) = observation else {
        verdict.message = Some("no observation was made".to_string());
        return verdict;
    };
    let observed = match &observation.value {
        Ok(v) => v,
        Err(reason) => {
            verdict.message = Some(reason.clone());
            // Drift that started earlier keeps its start while the observer fails.
            verdict.since = since.get(&property.id).copied();
            return verdict;
        }
    };
    verdict.observed = Some(observed.clone());
    verdict.message = observation.message.clone();
    match compare(property.comparison, desired, observed) {
        Outcome::InSync => verdict.state = State::InSync,
        Outcome::Unknown(reason) => {
            verdict.message = Some(reason);
            verdict.since = since.get(&property.id).copied();
        }
        Outcome::Drifted => {
            let started = since.get(&property.id).copied().unwrap_or(now);
            verdict.since = Some(started);
            let lasted = now.duration_since(started);
            let within_grace = property.grace.is_some_and(|grace| {
                lasted < jiff::SignedDuration::try_from(grace).unwrap_or(jiff::SignedDuration::MAX)
            });
            if within_grace {
                verdict.state = State::InSync;
                verdict.in_grace = true;
            } else {
                verdict.state = State::Drifted;
            }
        }
    }
    verdict
}

/// The start of drift to carry into the next evaluation: drifted properties and those
/// within their grace period (and unknown ones that were drifting).
pub fn carried_since(report: &Report) -> HashMap<String, Timestamp> {
    report
        .verdicts
        .iter()
        .filter(|v| v.state != State::InSync || v.in_grace)
        .filter_map(|v| v.since.map(|s| (v.id.clone(), s)))
        .collect()
}

/// One property that changed state between two evaluations.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Property id.
    pub id: String,
    /// State before (`None` for a property seen for the first time).
    pub from: Option<State>,
    /// State now.
    pub to: State,
    /// Desired value now.
    pub desired: Option<Value>,
    /// Observed value now.
    pub observed: Option<Value>,
    /// Why, for unknown.
    pub message: Option<String>,
    /// Severity of the property.
    pub severity: Severity,
}

/// The transitions between the previous states and this report. A property seen for the
/// first time is a transition only when it is not in sync.
pub fn transitions(previous: &HashMap<String, State>, report: &Report) -> Vec<Transition> {
    report
        .verdicts
        .iter()
        .filter_map(|v| {
            let from = previous.get(&v.id).copied();
            let changed = match from {
                Some(f) => f != v.state,
                None => v.state != State::InSync,
            };
            changed.then(|| Transition {
                id: v.id.clone(),
                from,
                to: v.state,
                desired: v.desired.clone(),
                observed: v.observed.clone(),
                message: v.message.clone(),
                severity: v.severity,
            })
        })
        .collect()
}

/// The states of a report, to compare with the next one.
pub fn states(report: &Report) -> HashMap<String, State> {
    report
        .verdicts
        .iter()
        .map(|v| (v.id.clone(), v.state))
        .collect()
}

/// A value as people read it: text without quotes, absent as `<absent>`.
pub fn display(v: &Value) -> String {
    match v {
        Value::Null => "<absent>".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// How long a drift has lasted, for messages.
pub fn lasted(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{Desired, Observe};
    use crate::compare::Comparison;
    use serde_json::json;

    fn property(id: &str, grace: Option<u64>) -> Checked {
        Checked {
            id: id.to_string(),
            description: None,
            desired: Desired::Literal(json!(1)),
            observe: Observe::Declared(Box::default()),
            comparison: Comparison::Equals,
            severity: Severity::Warning,
            grace: grace.map(Duration::from_secs),
            corrector: None,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn in_sync_drifted_and_unknown() {
        let props = vec![
            property("a", None),
            property("b", None),
            property("c", None),
            property("d", None),
            property("e", None),
        ];
        let desired = vec![
            Ok(json!(1)),
            Ok(json!(1)),
            Ok(json!(1)),
            Err("desired template failed: no count.X".to_string()),
            Ok(json!(1)),
        ];
        let mut observed = HashMap::new();
        observed.insert("a".to_string(), Observation::value(json!(1)));
        observed.insert("b".to_string(), Observation::value(json!(2)));
        observed.insert("c".to_string(), Observation::failed("connection refused"));
        observed.insert("d".to_string(), Observation::value(json!(1)));
        let report = evaluate(&props, &desired, &observed, &HashMap::new(), at(0));
        let states: Vec<_> = report.verdicts.iter().map(|v| v.state).collect();
        assert_eq!(
            states,
            [
                State::InSync,
                State::Drifted,
                State::Unknown,
                State::Unknown,
                State::Unknown
            ]
        );
        assert_eq!((report.in_sync, report.drifted, report.unknown), (1, 1, 3));
        assert_eq!(report.verdicts[1].since, Some(at(0)));
        assert_eq!(report.verdicts[1].observed, Some(json!(2)));
        assert_eq!(
            report.verdicts[2].message.as_deref(),
            Some("connection refused")
        );
        assert_eq!(report.drifted_by_severity.get(&Severity::Warning), Some(&1));
    }

    #[test]
    fn grace_period_delays_drift_and_keeps_its_start() {
        let props = vec![property("a", Some(600))];
        let desired = vec![Ok(json!(1))];
        let observed: HashMap<_, _> = [("a".to_string(), Observation::value(json!(2)))].into();
        let first = evaluate(&props, &desired, &observed, &HashMap::new(), at(0));
        assert_eq!(first.verdicts[0].state, State::InSync);
        assert!(first.verdicts[0].in_grace);
        let since = carried_since(&first);
        let later = evaluate(&props, &desired, &observed, &since, at(300));
        assert_eq!(later.verdicts[0].state, State::InSync);
        let since = carried_since(&later);
        let after = evaluate(&props, &desired, &observed, &since, at(601));
        assert_eq!(after.verdicts[0].state, State::Drifted);
        assert_eq!(after.verdicts[0].since, Some(at(0)));
        // Back in sync: nothing carried, so drift starts over next time.
        let fixed: HashMap<_, _> = [("a".to_string(), Observation::value(json!(1)))].into();
        let back = evaluate(&props, &desired, &fixed, &carried_since(&after), at(700));
        assert!(carried_since(&back).is_empty());
    }

    #[test]
    fn transitions_between_evaluations() {
        let props = vec![
            property("a", None),
            property("b", None),
            property("c", None),
        ];
        let desired = vec![Ok(json!(1)), Ok(json!(1)), Ok(json!(1))];
        let observed: HashMap<_, _> = [
            ("a".to_string(), Observation::value(json!(1))),
            ("b".to_string(), Observation::value(json!(2))),
            ("c".to_string(), Observation::failed("timeout")),
        ]
        .into();
        let first = evaluate(&props, &desired, &observed, &HashMap::new(), at(0));
        let t = transitions(&HashMap::new(), &first);
        let ids: Vec<_> = t.iter().map(|t| (t.id.as_str(), t.to)).collect();
        assert_eq!(ids, [("b", State::Drifted), ("c", State::Unknown)]);
        let again = evaluate(&props, &desired, &observed, &HashMap::new(), at(60));
        assert!(transitions(&states(&first), &again).is_empty());
        let fixed: HashMap<_, _> = [
            ("a".to_string(), Observation::value(json!(1))),
            ("b".to_string(), Observation::value(json!(1))),
            ("c".to_string(), Observation::value(json!(1))),
        ]
        .into();
        let third = evaluate(&props, &desired, &fixed, &HashMap::new(), at(120));
        let t = transitions(&states(&again), &third);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].from, Some(State::Drifted));
        assert_eq!(t[0].to, State::InSync);
    }

    #[test]
    fn deterministic() {
        let props: Vec<_> = (0..100).map(|i| property(&format!("p{i}"), None)).collect();
        let desired: Vec<_> = (0..100).map(|_| Ok(json!(1))).collect();
        let observed: HashMap<_, _> = (0..100)
            .map(|i| (format!("p{i}"), Observation::value(json!(i % 3))))
            .collect();
        let a = evaluate(&props, &desired, &observed, &HashMap::new(), at(0));
        let b = evaluate(&props, &desired, &observed, &HashMap::new(), at(0));
        assert_eq!(a, b);
        assert_eq!(a.verdicts[7].id, "p7");
    }
}
