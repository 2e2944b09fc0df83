//! The API server's answer that an Agent's requester holds every right the Agent gets, kept for
//! a while so that a pass triggered by a watch event does not ask again. Each answer costs one
//! SubjectAccessReview per verb, namespace and resource — about 80 write requests for the demo's
//! Agents on every pass.
//!
//! Only the answer "holds them all" is kept: a refused Agent asks again on its next pass, so an
//! admin's grant takes effect then, as before. The answer is tied to the Agent's uid and
//! generation and to the requester, so a changed scope or tier, or another requester, asks
//! again at once. A right the requester loses later is noticed when the answer is older than
//! [`FRESH`] — shorter than the Agent's resync, so an Agent left alone asks on every resync,
//! exactly as often as before this answer was kept — or at once, when someone annotates the
//! Agent with `homeplane.dev/evaluate-requested` (a new value is a new question), as an admin
//! who has just taken a right away does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is believed.
pub const FRESH: Duration = Duration::from_secs(100);

/// What an answer is about: the Agent (uid, generation, the value of its
/// `homeplane.dev/evaluate-requested` annotation) and who asked (user, groups).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Question {
    /// The Agent's uid.
    pub uid: String,
    /// The Agent's `metadata.generation` (its spec: tier and scope).
    pub generation: i64,
    /// The Agent's `homeplane.dev/evaluate-requested` annotation: a new value asks again.
    pub requested: Option<String>,
    /// The requester's user name.
    pub user: String,
    /// The requester's groups.
    pub groups: Vec<String>,
}

/// Answers "the requester holds every right", by question, with when each was given.
#[derive(Debug, Default)]
pub struct Reviews {
    held: Mutex<HashMap<Question, Instant>>,
}

impl Reviews {
    /// Whether the API server answered `question` with "holds every right" less than
    /// [`FRESH`] before `now`.
    pub fn held(&self, question: &Question, now: Instant) -> bool {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(question)
            .is_some_and(|at| now.saturating_duration_since(*at) < FRESH)
    }

    /// Records that the API server answered `question` with "holds every right" at `now`, and
    /// forgets the answers that are no longer fresh (the map holds at most one per Agent seen
    /// in the last [`FRESH`]).
    pub fn record_held(&self, question: Question, now: Instant) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, at| now.saturating_duration_since(*at) < FRESH);
        held.insert(question, now);
    }

    /// Forgets what was answered about the Agent `uid` (it was refused, or is being deleted).
    pub fn forget(&self, uid: &str) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|q, _| q.uid != uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(generation: i64, user: &str) -> Question {
        Question {
            uid: "u-1".into(),
            generation,
            requested: None,
            user: user.into(),
            groups: vec!["system:authenticated".into()],
        }
    }

    #[test]
    fn an_answer_holds_for_its_question_until_it_is_stale() {
        let reviews = Reviews::default();
        let t0 = Instant::now();
        assert!(!reviews.held(&question(1, "alice"), t0));
        reviews.record_held(question(1, "alice"), t0);
        assert!(reviews.held(&question(1, "alice"), t0 + Duration::from_secs(99)));
        assert!(!reviews.held(&question(1, "alice"), t0 + FRESH));
        // Another spec, or another requester, is another question.
        assert!(!reviews.held(&question(2, "alice"), t0));
        assert!(!reviews.held(&question(1, "bob"), t0));
        let mut other_groups = question(1, "alice");
        other_groups.groups.push("admins".into());
        assert!(!reviews.held(&other_groups, t0));
        let mut asked_again = question(1, "alice");
        asked_again.requested = Some("1764580000".into());
        assert!(!reviews.held(&asked_again, t0));
    }

    #[test]
    fn stale_and_forgotten_answers_are_dropped() {
        let reviews = Reviews::default();
        let t0 = Instant::now();
        reviews.record_held(question(1, "alice"), t0);
        reviews.record_held(question(2, "alice"), t0 + FRESH);
        assert_eq!(reviews.held.lock().unwrap().len(), 1);
        reviews.forget("u-1");
        assert!(!reviews.held(&question(2, "alice"), t0 + FRESH));
    }

    #[test]
    fn the_answer_is_stale_before_the_agent_is_looked_at_again_by_itself() {
        assert!(FRESH < super::super::RESYNC);
    }
}
