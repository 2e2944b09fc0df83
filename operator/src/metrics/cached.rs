//! Series the alert rules need, computed from the shared watch caches at each scrape (so that a
//! deleted object leaves no series behind, and every replica, the standby too, exports them):
//! drift per property, the schedule periods of backup policies, failing migrations, voice
//! latency against its budget, overcommitted node classes, agent runs without a result
//! contract, and since when an object is not Ready. Every label value is a name a person
//! declared or a word from a fixed list; never an error text.

use std::sync::OnceLock;

use homeplane_crds::agent::AgentRunPhase;
use homeplane_crds::registry::Severity;
use homeplane_crds::{AgentRun, BackupPolicy, Database, Drift, NodeClass, VoicePipeline};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{FloatGauge, PolicyLabels};
use crate::cache::{Caches, Health};
use crate::conditions::READY;
use crate::controllers::backuppolicy::plan::Schedule;
use crate::controllers::nodeclass::OVERCOMMITTED;
use crate::duration;

/// Labels of a drifted property: the registry that owns it and the property's id, both
/// declared by the owner (or derived from the names of their objects).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// The registry's namespace.
    pub namespace: String,
    /// The registry's name.
    pub registry: String,
    /// The property's id, e.g. `db.server.version`.
    pub property: String,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
}

/// Labels of one namespaced object of a known kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamedLabels {
    /// The namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// The name.
    pub name: String,
}

/// Labels of a Database whose migrations fail.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationLabels {
    /// The Database's namespace.
    pub namespace: String,
    /// The Database's name.
    pub name: String,
    /// The condition reason, one of [`MIGRATION_REASONS`].
    pub reason: &'static str,
}

/// Labels of an AgentRun.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentRunLabels {
    /// The run's namespace.
    pub namespace: String,
    /// The Agent it ran for.
    pub agent: String,
    /// The run's name.
    pub name: String,
}

/// Labels of a per-object series of any kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind, e.g. `Database`.
    pub kind: &'static str,
    /// The namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// The name.
    pub name: String,
}

/// The `Ready` reasons of a Database that mean its migrations fail (set by the Database
/// controller from its migration errors).
pub const MIGRATION_REASONS: [&str; 5] = [
    "MigrationFailed",
    "ChecksumMismatch",
    "InvalidMigrations",
    "DownMigrationMissing",
    "MigrationHistoryError",
];

/// The collector: empty until the caches are attached.
#[derive(Default)]
pub struct CachedState(pub OnceLock<Caches>);

impl std::fmt::Debug for CachedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CachedState")
    }
}

/// Seconds since the Unix epoch.
fn seconds(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

fn time(t: &Option<Time>) -> Option<Timestamp> {
    t.as_ref().map(|t| t.0)
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

/// Each Drift object: when its property started to drift.
pub fn drift_since(drifts: &[impl AsRef<Drift>]) -> Vec<(DriftLabels, f64)> {
    drifts
        .iter()
        .map(|d| {
            let d = d.as_ref();
            let labels = DriftLabels {
                namespace: d.namespace().unwrap_or_default(),
                registry: d.spec.registry.clone(),
                property: d.spec.property.clone(),
                severity: severity_word(d.spec.severity),
            };
            (labels, seconds(d.spec.since.0))
        })
        .collect()
}

/// The period of `schedule` around `anchor`: from the scheduled time `anchor` belongs to (the
/// latest one at or before it) to the next one. So a weekday schedule allows the weekend after
/// Friday's backup, and a nightly one a day. `None` for a schedule that cannot be read (the
/// policy's own condition says why).
pub fn schedule_period(schedule: &str, time_zone: &str, anchor: Timestamp) -> Option<f64> {
    let schedule = Schedule::parse(schedule, time_zone).ok()?;
    let slot = schedule
        .due(Timestamp::UNIX_EPOCH, anchor)
        .or_else(|| schedule.next_after(anchor))?;
    let next = schedule.next_after(slot)?;
    Some(next.duration_since(slot).as_secs_f64())
}

/// What the backup alerts compare with: per policy, its creation time, the period of its
/// backup schedule and, with restore drills, of its drill schedule (each around the last
/// success, or the creation when there was none).
#[derive(Debug, Default, PartialEq)]
pub struct PolicySeries {
    /// `homeplane_backup_policy_created_timestamp_seconds`.
    pub created: Vec<(PolicyLabels, f64)>,
    /// `homeplane_backup_schedule_period_seconds`.
    pub period: Vec<(PolicyLabels, f64)>,
    /// `homeplane_backup_verify_period_seconds`.
    pub verify_period: Vec<(PolicyLabels, f64)>,
}

/// The backup policies' series.
pub fn policy_series(policies: &[impl AsRef<BackupPolicy>]) -> PolicySeries {
    let mut out = PolicySeries::default();
    for p in policies {
        let p = p.as_ref();
        let labels = PolicyLabels {
            namespace: p.namespace().unwrap_or_default(),
            policy: p.name_any(),
        };
        let Some(created) = time(&p.metadata.creation_timestamp) else {
            continue;
        };
        out.created.push((labels.clone(), seconds(created)));
        let status = p.status.as_ref();
        let last_success = status.and_then(|s| time(&s.last_successful_time));
        if let Some(period) = schedule_period(
            &p.spec.schedule,
            &p.spec.time_zone,
            last_success.unwrap_or(created),
        ) {
            out.period.push((labels.clone(), period));
        }
        if let Some(verify) = &p.spec.verify {
            let last_verified = status.and_then(|s| time(&s.last_verified_time));
            if let Some(period) = schedule_period(
                &verify.schedule,
                &p.spec.time_zone,
                last_verified.unwrap_or(created),
            ) {
                out.verify_period.push((labels, period));
            }
        }
    }
    out
}

/// Databases whose `Ready` condition says their migrations fail.
pub fn migrations_failing(databases: &[impl AsRef<Database>]) -> Vec<MigrationLabels> {
    databases
        .iter()
        .filter_map(|db| {
            let db = db.as_ref();
            let ready = db
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == READY && c.status != "True")?;
            let reason = MIGRATION_REASONS
                .iter()
                .find(|r| **r == ready.reason.as_str())?;
            Some(MigrationLabels {
                namespace: db.namespace().unwrap_or_default(),
                name: db.name_any(),
                reason,
            })
        })
        .collect()
}

/// Per VoicePipeline with a measured latency: (labels, p50, p95, budget) in seconds.
pub fn voice_latency(pipelines: &[impl AsRef<VoicePipeline>]) -> Vec<(NamedLabels, f64, f64, f64)> {
    pipelines
        .iter()
        .filter_map(|vp| {
            let vp = vp.as_ref();
            let status = vp.status.as_ref()?;
            let p50 = duration::parse(status.latency_p50.as_deref()?).ok()?;
            let p95 = duration::parse(status.latency_p95.as_deref()?).ok()?;
            let budget = duration::parse(&vp.spec.latency_budget).ok()?;
            let labels = NamedLabels {
                namespace: vp.namespace().unwrap_or_default(),
                name: vp.name_any(),
            };
            Some((
                labels,
                p50.as_secs_f64(),
                p95.as_secs_f64(),
                budget.as_secs_f64(),
            ))
        })
        .collect()
}

/// Per NodeClass with a status: 1 while its `Overcommitted` condition is True.
pub fn overcommitted(classes: &[impl AsRef<NodeClass>]) -> Vec<(NamedLabels, i64)> {
    classes
        .iter()
        .filter_map(|nc| {
            let nc = nc.as_ref();
            let status = nc.status.as_ref()?;
            let over = status
                .conditions
                .iter()
                .any(|c| c.type_ == OVERCOMMITTED && c.status == "True");
            Some((
                NamedLabels {
                    namespace: String::new(),
                    name: nc.name_any(),
                },
                i64::from(over),
            ))
        })
        .collect()
}

/// AgentRuns that ended without a valid result contract.
pub fn runs_without_contract(runs: &[impl AsRef<AgentRun>]) -> Vec<AgentRunLabels> {
    runs.iter()
        .filter(|r| {
            r.as_ref()
                .status
                .as_ref()
                .is_some_and(|s| s.phase == AgentRunPhase::NoContract)
        })
        .map(|r| {
            let r = r.as_ref();
            AgentRunLabels {
                namespace: r.namespace().unwrap_or_default(),
                agent: r.spec.agent.clone(),
                name: r.name_any(),
            }
        })
        .collect()
}

/// Objects whose `Ready` condition is present and not True: since when.
pub fn not_ready_since(health: &[Health]) -> Vec<(KindLabels, f64)> {
    health
        .iter()
        .filter_map(|h| {
            let ready = h.condition(READY).filter(|c| c.status != "True")?;
            Some((
                KindLabels {
                    kind: h.kind,
                    namespace: h.namespace.clone(),
                    name: h.name.clone(),
                },
                seconds(ready.last_transition_time.0),
            ))
        })
        .collect()
}

/// Encodes `family` under `name` with `help`.
fn encode<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &M,
) -> Result<(), std::fmt::Error> {
    family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)
}

fn floats<L>(series: impl IntoIterator<Item = (L, f64)>) -> Family<L, FloatGauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, FloatGauge>::default();
    for (labels, value) in series {
        family.get_or_create(&labels).set(value);
    }
    family
}

fn ints<L>(series: impl IntoIterator<Item = (L, i64)>) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge>::default();
    for (labels, value) in series {
        family.get_or_create(&labels).set(value);
    }
    family
}

impl Collector for CachedState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(caches) = self.0.get() else {
            return Ok(());
        };
        let e = &mut encoder;
        encode(
            e,
            "drift_since_timestamp_seconds",
            "Unix time a property of a StateRegistry started to drift, per Drift object (past its grace period)",
            &floats(drift_since(&caches.drifts.state())),
        )?;
        let policies = policy_series(&caches.backup_policies.state());
        encode(
            e,
            "backup_policy_created_timestamp_seconds",
            "Unix time a BackupPolicy was created (the age of a policy that never succeeded counts from it)",
            &floats(policies.created),
        )?;
        encode(
            e,
            "backup_schedule_period_seconds",
            "Seconds between the scheduled backup the last success belongs to and the next one",
            &floats(policies.period),
        )?;
        encode(
            e,
            "backup_verify_period_seconds",
            "Seconds between the restore drill the last verification belongs to and the next one",
            &floats(policies.verify_period),
        )?;
        encode(
            e,
            "database_migration_failing",
            "1 while a Database's migrations fail, with the reason of its Ready condition",
            &ints(
                migrations_failing(&caches.databases.state())
                    .into_iter()
                    .map(|l| (l, 1)),
            ),
        )?;
        let voice = voice_latency(&caches.voice_pipelines.state());
        encode(
            e,
            "voice_latency_p50_seconds",
            "Median end-to-end latency of a VoicePipeline's recent probes",
            &floats(voice.iter().map(|(l, p50, _, _)| (l.clone(), *p50))),
        )?;
        encode(
            e,
            "voice_latency_p95_seconds",
            "95th-percentile end-to-end latency of a VoicePipeline's recent probes",
            &floats(voice.iter().map(|(l, _, p95, _)| (l.clone(), *p95))),
        )?;
        encode(
            e,
            "voice_latency_budget_seconds",
            "The end-to-end latency budget a VoicePipeline declares",
            &floats(voice.into_iter().map(|(l, _, _, budget)| (l, budget))),
        )?;
        encode(
            e,
            "nodeclass_overcommitted",
            "1 while the limits of what runs on a NodeClass exceed its allocatable minus its reserve",
            &ints(overcommitted(&caches.nodeclasses.state())),
        )?;
        encode(
            e,
            "agentrun_no_contract",
            "1 for each AgentRun that ended without a valid result contract (until it is deleted)",
            &ints(
                runs_without_contract(&caches.agent_runs.state())
                    .into_iter()
                    .map(|l| (l, 1)),
            ),
        )?;
        encode(
            e,
            "object_not_ready_since_timestamp_seconds",
            "Unix time a homeplane object's Ready condition last changed, while it is not True",
            &floats(not_ready_since(&caches.health())),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
        serde_json::from_value(value).unwrap()
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn policy(schedule: &str, status: serde_json::Value) -> BackupPolicy {
        object(json!({
            "apiVersion": "homeplane.dev/v1alpha1", "kind": "BackupPolicy",
            "metadata": {"name": "postgres", "namespace": "data", "creationTimestamp": "2026-11-20T10:00:00Z"},
            "spec": {
                "schedule": schedule, "timeZone": "UTC",
                "source": {"database": {"name": "homelab"}},
                "destination": {"endpoint": "https://r2.example", "bucket": "b", "credentialsSecret": "r2"},
                "recipients": ["age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq"],
                "verify": {"schedule": "0 5 * * 0", "identitySecret": "id", "scratchDatabase": "scratch"}
            },
            "status": status
        }))
    }

    #[test]
    fn schedule_periods_follow_the_slot_of_the_last_success() {
        // Nightly: a day, whenever the last success was.
        assert_eq!(
            schedule_period("0 3 * * *", "UTC", t("2026-11-24T03:05:00Z")),
            Some(86_400.0)
        );
        // Weekdays: Friday's backup is followed by Monday's, so the weekend is allowed ...
        assert_eq!(
            schedule_period("0 3 * * 1-5", "UTC", t("2026-11-27T03:05:00Z")),
            Some(3.0 * 86_400.0)
        );
        // ... and a Tuesday backup is followed by Wednesday's.
        assert_eq!(
            schedule_period("0 3 * * 1-5", "UTC", t("2026-11-24T03:05:00Z")),
            Some(86_400.0)
        );
        assert_eq!(
            schedule_period("* * * * *", "UTC", t("2026-11-24T03:05:10Z")),
            Some(60.0)
        );
        assert_eq!(
            schedule_period("@weekly", "UTC", t("2026-11-24T03:05:10Z")),
            Some(7.0 * 86_400.0)
        );
        assert_eq!(
            schedule_period("not a cron", "UTC", t("2026-11-24T03:05:10Z")),
            None
        );
    }

    #[test]
    fn policies_export_creation_and_both_periods() {
        let never = policy("0 3 * * *", json!({}));
        let verified = policy(
            "0 3 * * *",
            json!({"lastSuccessfulTime": "2026-11-24T03:04:00Z", "lastVerifiedTime": "2026-11-22T05:10:00Z"}),
        );
        let labels = PolicyLabels {
            namespace: "data".into(),
            policy: "postgres".into(),
        };
        let series = policy_series(&[Arc::new(never)]);
        assert_eq!(
            series.created,
            vec![(labels.clone(), seconds(t("2026-11-20T10:00:00Z")))]
        );
        assert_eq!(series.period, vec![(labels.clone(), 86_400.0)]);
        assert_eq!(series.verify_period, vec![(labels.clone(), 7.0 * 86_400.0)]);
        let series = policy_series(&[Arc::new(verified)]);
        assert_eq!(series.period, vec![(labels.clone(), 86_400.0)]);
        assert_eq!(series.verify_period, vec![(labels, 7.0 * 86_400.0)]);
    }

    #[test]
    fn drift_objects_become_one_series_each_with_their_start() {
        let drift: Drift = object(json!({
            "apiVersion": "homeplane.dev/v1alpha1", "kind": "Drift",
            "metadata": {"name": "homelab.db.server.version", "namespace": "monitoring"},
            "spec": {"registry": "homelab", "property": "db.server.version", "desired": "16",
                     "observed": "15.14", "severity": "critical", "since": "2026-11-24T07:00:00Z"}
        }));
        let series = drift_since(&[Arc::new(drift)]);
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].0.property, "db.server.version");
        assert_eq!(series[0].0.severity, "critical");
        assert_eq!(series[0].1, seconds(t("2026-11-24T07:00:00Z")));
    }

    fn database(ready: &str, reason: &str) -> Database {
        object(json!({
            "apiVersion": "homeplane.dev/v1alpha1", "kind": "Database",
            "metadata": {"name": "homelab", "namespace": "data"},
            "spec": {"server": {"external": {"host": "pg", "adminSecret": "pg-admin"}}},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": reason,
                "message": "migration 0004_x failed and was rolled back: syntax error at or near \"SELEC\"",
                "lastTransitionTime": "2026-11-24T07:00:00Z"}]}
        }))
    }

    #[test]
    fn only_migration_reasons_count_and_never_the_message() {
        let failing = migrations_failing(&[Arc::new(database("False", "MigrationFailed"))]);
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].reason, "MigrationFailed");
        assert!(
            migrations_failing(&[Arc::new(database("False", "AuthenticationFailed"))]).is_empty()
        );
        assert!(migrations_failing(&[Arc::new(database("True", "Reconciled"))]).is_empty());
    }

    #[test]
    fn voice_latency_and_budget_in_seconds() {
        let vp: VoicePipeline = object(json!({
            "apiVersion": "homeplane.dev/v1alpha1", "kind": "VoicePipeline",
            "metadata": {"name": "assistant", "namespace": "ai"},
            "spec": {"stages": [], "latencyBudget": "2s"},
            "status": {"latencyP50": "850ms", "latencyP95": "2.40s"}
        }));
        let series = voice_latency(&[Arc::new(vp)]);
        assert_eq!(series.len(), 1);
        let (_, p50, p95, budget) = &series[0];
        assert!(
            (p50 - 0.85).abs() < 1e-9 && (p95 - 2.4).abs() < 1e-9 && (budget - 2.0).abs() < 1e-9
        );
    }

    #[test]
    fn runs_without_contract_only() {
        let run = |phase: &str| -> AgentRun {
            object(json!({
                "apiVersion": "homeplane.dev/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": format!("run-{phase}"), "namespace": "ai"},
                "spec": {"agent": "auditor", "task": "audit"},
                "status": {"phase": phase}
            }))
        };
        let found = runs_without_contract(&[
            Arc::new(run("NoContract")),
            Arc::new(run("Done")),
            Arc::new(run("Failed")),
        ]);
        assert_eq!(
            found,
            vec![AgentRunLabels {
                namespace: "ai".into(),
                agent: "auditor".into(),
                name: "run-NoContract".into()
            }]
        );
    }

    #[test]
    fn overcommitted_classes_read_their_condition() {
        let class = |over: &str| -> NodeClass {
            object(json!({
                "apiVersion": "homeplane.dev/v1alpha1", "kind": "NodeClass",
                "metadata": {"name": format!("pi-{over}")},
                "spec": {"nodeSelector": {"homeplane.dev/class": "pi"}},
                "status": {"conditions": [{"type": "Overcommitted", "status": over, "reason": "x",
                    "message": "", "lastTransitionTime": "2026-11-24T07:00:00Z"}]}
            }))
        };
        let series = overcommitted(&[Arc::new(class("True")), Arc::new(class("False"))]);
        assert_eq!(
            series.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            vec![1, 0]
        );
    }
}
