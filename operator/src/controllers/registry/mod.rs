//! The StateRegistry controller: on every interval, read the catalogue (inline and ConfigMaps)
//! and the derived properties of homeplane's own kinds, observe everything in batches
//! ([`inputs`]), compare (pure, in `homeplane_state`), then publish: one Drift object per
//! drifted property and Events on transitions ([`publish`]), in `Correct` mode the correctors
//! of drifted properties ([`correct`]), history in PostgreSQL, status totals and metrics per
//! severity.

mod correct;
mod flux;
mod inputs;
mod observe;
mod publish;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeplane_crds::drift::Drift;
use homeplane_crds::registry::{Severity, StateRegistry, StateRegistryStatus, UnknownProperty};
use homeplane_state::PropertyError;
use homeplane_state::engine::{self, Report, State, Transition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::Controller;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, Error, now};
use crate::conditions::{self, Desired as Condition};
use crate::reconcile::{self, Outcome, Reconciler, watch};
pub use publish::drift_name;

/// Condition saying whether transitions reach the history database.
const HISTORY: &str = "HistoryRecorded";
/// Most unknown properties listed with their reason in status.
const MAX_UNKNOWN_LISTED: usize = 50;
/// Annotation that asks for an evaluation now (any new value), e.g. after changing the world.
pub const EVALUATE_ANNOTATION: &str = "homeplane.dev/evaluate-requested";
/// Annotation that asks a homeplane object's controller to apply it again.
pub const REAPPLY_ANNOTATION: &str = "homeplane.dev/reapply-requested";

/// Where transitions are recorded.
pub struct History {
    /// homeplane's own database.
    pub pool: sqlx::PgPool,
    /// How long transitions are kept.
    pub retention: Duration,
}

/// What the controller remembers between evaluations of one registry (rebuilt from the Drift
/// objects after a restart).
#[derive(Default)]
struct Memory {
    since: HashMap<String, Timestamp>,
    states: HashMap<String, State>,
    drifted_by_severity: BTreeMap<Severity, usize>,
    unknown: usize,
    /// When the last evaluation ran, for which generation and evaluation request, and what it
    /// concluded.
    evaluated: Option<(Instant, Option<i64>, Option<String>, Outcome)>,
    corrections: i32,
}

/// The StateRegistry controller: where transitions are recorded, and what it remembers of each
/// registry.
pub struct Registries {
    history: Option<History>,
    memory: Mutex<HashMap<String, Memory>>,
}

/// Runs the controller until `shutdown` is cancelled. One registry that cannot be read (JSON
/// nested too deep) does not stop the others: the frame's watch reads them one by one.
pub async fn run(ctx: Arc<Context>, history: Option<History>, shutdown: CancellationToken) {
    let registries = Registries {
        history,
        memory: Mutex::default(),
    };
    let controller = Controller::new(ctx.watched::<StateRegistry>(), watch::config());
    reconcile::run(registries, controller, ctx, shutdown).await;
}

impl Reconciler for Registries {
    type Object = StateRegistry;
    const NAME: &'static str = "stateregistry";

    async fn reconcile(
        &self,
        registry: &StateRegistry,
        status: &mut StateRegistryStatus,
        ctx: &Context,
    ) -> Result<Outcome, Error> {
        let key = reconcile::driver::key(registry);
        let (every, _) = interval(registry);
        // Our own status write wakes us too: evaluate only when the interval is up, the spec
        // changed or an evaluation was requested.
        if let Some(outcome) = self.not_due(registry, &key, every) {
            return Ok(outcome);
        }
        let started = Instant::now();
        let ns = registry.namespace().unwrap_or_default();
        let name = registry.name_any();
        let existing = publish::existing(ctx, registry).await?;
        let scope = observe::Scope::new(ctx, &ns);
        let mut resources = observe::Resources::new();
        let now_ts = now();
        let inputs = inputs::gather(ctx, registry, &scope, &mut resources, now_ts).await?;
        let properties = &inputs.catalogue.properties;

        // Compare (pure).
        let (since, previous) = self.previous(&key, &existing.0);
        let report = engine::evaluate(
            properties,
            &inputs.desired,
            &inputs.observed,
            &since,
            now_ts,
        );
        let transitions = engine::transitions(&previous, &report);

        let published = publish::drifts(ctx, registry, &report, &existing, now_ts).await?;
        publish::transitions(ctx, registry, &transitions).await;
        let corrected =
            correct::drifted(ctx, registry, &scope, properties, &report, &mut resources).await;
        let history = self.record(&ns, &name, &transitions, now_ts).await;
        conditions::set(
            &mut status.conditions,
            history,
            registry.metadata.generation,
            now_ts,
        );

        totals(
            status,
            &report,
            published.not_materialised,
            &inputs.catalogue.errors,
        );
        status.corrections = self.corrections(&key) + corrected;
        let took = started.elapsed();
        status.last_evaluation_time = Some(Time(now()));
        status.last_evaluation_millis = Some(i64::try_from(took.as_millis()).unwrap_or(i64::MAX));
        let summary = format!(
            "{} properties: {} in sync, {} drifted, {} unknown",
            report.verdicts.len(),
            report.in_sync,
            report.drifted,
            report.unknown
        );
        info!(%summary, took_ms = took.as_millis(), transitions = transitions.len(), "evaluated");
        let problems = problems(
            registry,
            &scope,
            &published.collisions,
            &inputs.catalogue.errors,
        );
        let outcome = match problems {
            None => Outcome::ready("Evaluated", summary),
            Some((reason, message)) => {
                Outcome::ready("Evaluated", summary).degraded(reason, message)
            }
        }
        .after(every);
        self.remember(ctx, &key, registry, &report, status.corrections, &outcome);
        Ok(outcome)
    }

    fn gone(&self, key: &str, ctx: &Context) {
        if let Ok(mut memories) = self.memory.lock() {
            memories.remove(key);
            publish_metrics(ctx, &memories);
        }
    }
}

impl Registries {
    /// The last evaluation's outcome, looked at again when the interval is up, if nothing asks
    /// for an evaluation before: the spec is the one evaluated, no new evaluation request, the
    /// status written.
    fn not_due(&self, registry: &StateRegistry, key: &str, every: Duration) -> Option<Outcome> {
        let memories = self.memory.lock().ok()?;
        let (at, seen, asked, outcome) = memories.get(key)?.evaluated.as_ref()?;
        let requested = registry.annotations().get(EVALUATE_ANNOTATION);
        let waiting = *seen == registry.metadata.generation
            && asked.as_ref() == requested
            && registry.status.is_some()
            && at.elapsed() < every;
        waiting.then(|| outcome.clone().after(every - at.elapsed()))
    }

    /// Since when each property has been drifting, and the state it was in: remembered, or
    /// after a restart read back from the registry's Drift objects.
    fn previous(
        &self,
        key: &str,
        existing: &[Drift],
    ) -> (HashMap<String, Timestamp>, HashMap<String, State>) {
        let remembered = self
            .memory
            .lock()
            .ok()
            .and_then(|m| m.get(key).map(|m| (m.since.clone(), m.states.clone())));
        remembered.unwrap_or_else(|| {
            (
                existing
                    .iter()
                    .map(|d| (d.spec.property.clone(), d.spec.since.0))
                    .collect(),
                existing
                    .iter()
                    .map(|d| (d.spec.property.clone(), State::Drifted))
                    .collect(),
            )
        })
    }

    fn corrections(&self, key: &str) -> i32 {
        self.memory
            .lock()
            .ok()
            .and_then(|m| m.get(key).map(|m| m.corrections))
            .unwrap_or(0)
    }

    /// Records the transitions in homeplane's database and prunes what is older than its
    /// retention; the `HistoryRecorded` condition says how that went.
    async fn record(
        &self,
        ns: &str,
        name: &str,
        transitions: &[Transition],
        now_ts: Timestamp,
    ) -> Condition {
        match &self.history {
            None => Condition::no(
                HISTORY,
                "NoHistoryDatabase",
                "transitions are not recorded: run the operator with --history-database-url",
            ),
            Some(history) => {
                let recorded =
                    crate::history::drift::record(&history.pool, ns, name, transitions, now_ts)
                        .await;
                let pruned = crate::history::drift::prune(&history.pool, history.retention).await;
                match recorded.and(pruned) {
                    Ok(()) => Condition::yes(
                        HISTORY,
                        "Recorded",
                        "every transition is recorded in homeplane's database",
                    ),
                    Err(e) => {
                        warn!(error = %e, "failed to record drift history");
                        Condition::no(
                            HISTORY,
                            "HistoryFailed",
                            format!("failed to record transitions: {e}"),
                        )
                    }
                }
            }
        }
    }

    /// Remembers what this evaluation found, and publishes the drift metrics of every registry.
    fn remember(
        &self,
        ctx: &Context,
        key: &str,
        registry: &StateRegistry,
        report: &Report,
        corrections: i32,
        outcome: &Outcome,
    ) {
        if let Ok(mut memories) = self.memory.lock() {
            let m = memories.entry(key.to_string()).or_default();
            m.since = engine::carried_since(report);
            m.states = engine::states(report);
            m.drifted_by_severity = report.drifted_by_severity.clone();
            m.unknown = report.unknown;
            m.evaluated = Some((
                Instant::now(),
                registry.metadata.generation,
                registry.annotations().get(EVALUATE_ANNOTATION).cloned(),
                outcome.clone(),
            ));
            m.corrections = corrections;
            publish_metrics(ctx, &memories);
        }
    }
}

/// The status totals of `report`.
fn totals(
    status: &mut StateRegistryStatus,
    report: &Report,
    not_materialised: usize,
    refused: &[PropertyError],
) {
    status.properties = count(report.verdicts.len());
    status.in_sync = count(report.in_sync);
    status.drifted = count(report.drifted);
    status.unknown = count(report.unknown);
    status.drifted_by_severity = report
        .drifted_by_severity
        .iter()
        .map(|(s, n)| (severity_word(*s).to_string(), count(*n)))
        .collect();
    status.not_materialized = count(not_materialised);
    let mut unknown: Vec<UnknownProperty> = report
        .verdicts
        .iter()
        .filter(|v| v.state == State::Unknown)
        .map(|v| UnknownProperty {
            property: v.id.clone(),
            reason: publish::clip(v.message.clone().unwrap_or_default()),
        })
        .collect();
    unknown.sort_by(|a, b| a.property.cmp(&b.property));
    unknown.truncate(MAX_UNKNOWN_LISTED);
    status.unknown_properties = unknown;
    status.refused = count(refused.len());
}

/// What the registry asks for that is not done as written (`Degraded` beside `Ready`): the
/// first problem's reason, and every problem's message.
fn problems(
    registry: &StateRegistry,
    scope: &observe::Scope,
    collisions: &[String],
    refused: &[PropertyError],
) -> Option<(&'static str, String)> {
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    if let (_, Some(message)) = interval(registry) {
        problems.push(("InvalidInterval", message));
    }
    if let Some(message) = inputs::derived_scope(scope, registry) {
        problems.push(("NamespaceNotTrusted", message));
    }
    if !collisions.is_empty() {
        problems.push((
            "DriftNameTaken",
            format!(
                "no Drift object for {}: rename the registry or the property",
                collisions.join(", ")
            ),
        ));
    }
    if !refused.is_empty() {
        let shown: Vec<String> = refused.iter().take(5).map(ToString::to_string).collect();
        let more = refused.len().saturating_sub(5);
        let mut message = format!(
            "{} refused (the others are evaluated): {}",
            plural(refused.len(), "property", "properties"),
            shown.join("; ")
        );
        if more > 0 {
            message.push_str(&format!("; and {more} more"));
        }
        problems.push(("InvalidProperties", message));
    }
    let (reason, _) = problems.first()?;
    let message = problems
        .iter()
        .map(|(_, m)| m.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Some((reason, publish::clip(message)))
}

/// Shortest and longest interval between evaluations (the CRD refuses the rest).
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// How often the registry is evaluated, and why `spec.interval` was not used as written (an
/// object stored before the CRD bounded it): a text that is not a duration evaluates every
/// minute, a duration out of bounds is clamped.
fn interval(registry: &StateRegistry) -> (Duration, Option<String>) {
    let text = &registry.spec.interval;
    match homeplane_state::duration::parse(text) {
        Ok(d) if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) => (d, None),
        Ok(d) => {
            let clamped = d.clamp(MIN_INTERVAL, MAX_INTERVAL);
            let message = format!(
                "spec.interval {text:?} is outside 1s..24h; evaluating every {}s until it is fixed",
                clamped.as_secs()
            );
            (clamped, Some(message))
        }
        Err(e) => (
            Duration::from_secs(60),
            Some(format!(
                "spec.interval: {e}; evaluating every 60s until it is fixed"
            )),
        ),
    }
}

fn publish_metrics(ctx: &Context, memories: &HashMap<String, Memory>) {
    let mut by_severity: BTreeMap<&'static str, i64> = BTreeMap::new();
    for s in [Severity::Info, Severity::Warning, Severity::Critical] {
        by_severity.insert(severity_word(s), 0);
    }
    let mut unknown = 0i64;
    for m in memories.values() {
        for (s, n) in &m.drifted_by_severity {
            *by_severity.entry(severity_word(*s)).or_default() +=
                i64::try_from(*n).unwrap_or(i64::MAX);
        }
        unknown += i64::try_from(m.unknown).unwrap_or(i64::MAX);
    }
    ctx.metrics.set_drift(&by_severity, unknown);
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::publish::{drift_name, materialised};
    use super::*;
    use homeplane_state::engine::Verdict;
    use serde_json::json;

    fn verdict(id: &str, severity: Severity, state: State) -> Verdict {
        Verdict {
            id: id.to_string(),
            state,
            desired: Some(json!(1)),
            observed: Some(json!(2)),
            since: None,
            message: None,
            severity,
            in_grace: false,
        }
    }

    #[test]
    fn worst_drift_is_materialised_first_and_the_rest_counted() {
        let verdicts = vec![
            verdict("a", Severity::Info, State::Drifted),
            verdict("b", Severity::Critical, State::Drifted),
            verdict("c", Severity::Warning, State::InSync),
            verdict("d", Severity::Warning, State::Drifted),
            verdict("e", Severity::Critical, State::Drifted),
        ];
        let (kept, rest) = materialised(&verdicts, 3);
        let ids: Vec<_> = kept.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["b", "e", "d"]);
        assert_eq!(rest, 1);
    }

    #[test]
    fn drift_names_are_valid_object_names() {
        assert_eq!(
            drift_name("homelab", "pi.containers.cpu-limits"),
            "homelab.pi.containers.cpu-limits"
        );
        assert_eq!(drift_name("r", "db.tier_sacred"), "r.db.tier-sacred");
        let long = drift_name("r", &"x".repeat(400));
        assert!(long.len() <= 253, "{}", long.len());
        assert_ne!(long, drift_name("r", &"x".repeat(401)));
    }

    #[test]
    fn template_context_counts_kinds_and_active_workflows() {
        let objects = vec![(
            "Workflow",
            vec![
                json!({"spec": {"active": true}}),
                json!({"spec": {"active": false}}),
            ],
        )];
        let ctx = inputs::template_context("homelab", "seed", &objects);
        assert_eq!(ctx["count"]["Workflow"], 2);
        assert_eq!(ctx["active"]["Workflow"], 1);
        assert_eq!(ctx["namespace"], "homelab");
    }
}
