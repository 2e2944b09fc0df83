//! Prometheus metrics of the operator, prefixed `homeplane_`. Label values are bounded: the
//! controller name, the error category, the names of objects a person declared — never error
//! text.

pub mod cached;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::cache::Caches;
use crate::conditions::{READY, STALLED};

/// Labels of per-controller metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller, e.g. `nodeclass`.
    pub controller: &'static str,
}

/// Labels of error metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller, e.g. `nodeclass`.
    pub controller: &'static str,
    /// The error's category, e.g. `kube`.
    pub category: &'static str,
}

/// Labels of watch failures: the controller and a bounded category (`watch`, `unreadable`,
/// `runner`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// The controller, e.g. `workflow`.
    pub controller: &'static str,
    /// What failed: `watch` (the stream), `unreadable` (an object that cannot be read) or
    /// `runner`.
    pub category: &'static str,
}

/// Labels of state-registry metrics per severity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeverityLabels {
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
}

/// Labels of correction metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `applied` or `failed`.
    pub outcome: &'static str,
}

/// Labels of per-BackupPolicy metrics (one series per policy the owner declared).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
}

/// Labels of backup failures: the policy and a bounded reason (e.g. `CredentialsRefused`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackupFailureLabels {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
    /// CamelCase reason of the failure.
    pub reason: &'static str,
}

/// Labels of per-object metrics: one series per homeplane object a person declared.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    /// The kind, e.g. `Database`.
    pub kind: &'static str,
    /// The namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// The name.
    pub name: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The health of every homeplane object, read from the shared watch caches at each scrape, so
/// that a deleted object leaves no series behind. Empty until the caches are attached.
#[derive(Default)]
struct ObjectHealth(OnceLock<Caches>);

impl std::fmt::Debug for ObjectHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectHealth")
    }
}

impl Collector for ObjectHealth {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(caches) = self.0.get() else {
            return Ok(());
        };
        let ready = Family::<ObjectLabels, Gauge>::default();
        let stalled = Family::<ObjectLabels, Gauge>::default();
        for health in caches.health() {
            let labels = ObjectLabels {
                kind: health.kind,
                namespace: health.namespace.clone(),
                name: health.name.clone(),
            };
            ready
                .get_or_create(&labels)
                .set(i64::from(health.is_true(READY)));
            stalled
                .get_or_create(&labels)
                .set(i64::from(health.is_true(STALLED)));
        }
        let help = "1 while a homeplane object's Ready condition is True, 0 otherwise (also before its first status)";
        ready.encode(encoder.encode_descriptor(
            "object_ready",
            help,
            None,
            ready.metric_type(),
        )?)?;
        let help = "1 while a homeplane object's Stalled condition is True: a person must change something";
        stalled.encode(encoder.encode_descriptor(
            "object_stalled",
            help,
            None,
            stalled.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The process itself: resident memory, read from `/proc/self/status` at each scrape, and the
/// start time (a restart shows as a new value).
#[derive(Debug)]
struct Process {
    started: f64,
}

impl Process {
    /// Resident set size in bytes, from the `VmRSS` line of `/proc/self/status`.
    fn resident_bytes() -> Option<i64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib: i64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(bytes) = Self::resident_bytes() {
            let rss = Gauge::<i64>::default();
            rss.set(bytes);
            rss.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the operator process",
                None,
                rss.metric_type(),
            )?)?;
        }
        let started = FloatGauge::default();
        started.set(self.started);
        started.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Unix time the operator process started",
            None,
            started.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The operator's metrics and the registry that serves them.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    watch_errors: Family<WatchLabels, Counter>,
    durations: Family<ControllerLabels, Histogram>,
    busy: Family<ControllerLabels, Histogram>,
    leader: Gauge,
    leader_acquisitions: Counter,
    drifted: Family<SeverityLabels, Gauge>,
    unknown: Gauge,
    corrections: Family<OutcomeLabels, Counter>,
    backup_last_success: Family<PolicyLabels, FloatGauge>,
    backup_last_verified: Family<PolicyLabels, FloatGauge>,
    backup_bytes: Family<PolicyLabels, Gauge>,
    backup_duration: Family<PolicyLabels, FloatGauge>,
    backup_failures: Family<BackupFailureLabels, Counter>,
    objects: Arc<ObjectHealth>,
    /// When each controller last finished a reconciliation (for the dashboard).
    last_reconciled: std::sync::Mutex<std::collections::BTreeMap<&'static str, jiff::Timestamp>>,
    cached: Arc<cached::CachedState>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("homeplane");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        // Fine buckets, finest around 5 ms: the goal for a reconciliation that changes nothing.
        let busy = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075,
                0.01, 0.015, 0.025, 0.1,
            ])
        });
        let leader = Gauge::default();
        let watch_errors = Family::<WatchLabels, Counter>::default();
        registry.register(
            "watch_errors",
            "Watch failures and watched objects that could not be read, per controller",
            watch_errors.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciliations run, per controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, per controller and error category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation, per controller",
            durations.clone(),
        );
        registry.register(
            "reconcile_busy_seconds",
            "CPU time one reconciliation spent computing on the async runtime (its thread's CPU clock during its polls), without the time it waited for the API server or another server, per controller",
            busy.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let drifted = Family::<SeverityLabels, Gauge>::default();
        let unknown = Gauge::default();
        let corrections = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "drifted_properties",
            "State-registry properties out of their desired state, per severity",
            drifted.clone(),
        );
        registry.register(
            "unknown_properties",
            "State-registry properties that could not be observed",
            unknown.clone(),
        );
        registry.register(
            "drift_corrections",
            "Corrections run by state registries in Correct mode, per outcome",
            corrections.clone(),
        );
        let backup_last_success = Family::<PolicyLabels, FloatGauge>::default();
        let backup_last_verified = Family::<PolicyLabels, FloatGauge>::default();
        let backup_bytes = Family::<PolicyLabels, Gauge>::default();
        let backup_duration = Family::<PolicyLabels, FloatGauge>::default();
        let backup_failures = Family::<BackupFailureLabels, Counter>::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time the newest successful backup of a policy completed",
            backup_last_success.clone(),
        );
        registry.register(
            "backup_last_verified_timestamp_seconds",
            "Unix time a restore drill last verified a backup of a policy",
            backup_last_verified.clone(),
        );
        registry.register(
            "backup_last_size_bytes",
            "Encrypted bytes of the newest successful backup of a policy",
            backup_bytes.clone(),
        );
        registry.register(
            "backup_last_duration_seconds",
            "Duration of the newest successful backup of a policy",
            backup_duration.clone(),
        );
        registry.register(
            "backup_failures",
            "Backups and restore drills that failed, per policy and reason",
            backup_failures.clone(),
        );
        let objects = Arc::new(ObjectHealth::default());
        registry.register_collector(Box::new(objects.clone()));
        let cached = Arc::new(cached::CachedState::default());
        registry.register_collector(Box::new(cached.clone()));
        registry.register(
            "owned_applies",
            "Objects homeplane owns that a reconciliation applied (a write request) or found already as asked (unchanged: read, not written), by kind",
            crate::workload::ssa::APPLIES.clone(),
        );
        let leader_acquisitions = Counter::default();
        registry.register(
            "leader_acquisitions",
            "Times this replica became the leader (a standby taking over counts one)",
            leader_acquisitions.clone(),
        );
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        registry.register_collector(Box::new(Process { started }));
        Self {
            registry,
            objects,
            cached,
            leader_acquisitions,
            reconciles,
            busy,
            errors,
            watch_errors,
            durations,
            leader,
            drifted,
            unknown,
            corrections,
            backup_last_success,
            backup_last_verified,
            backup_bytes,
            backup_duration,
            backup_failures,
            last_reconciled: Default::default(),
        }
    }
}

impl Metrics {
    /// Records one finished reconciliation: how long it `took`, and how much of that it was
    /// `busy` computing (the rest it waited for a server).
    pub fn reconciled(&self, controller: &'static str, took: Duration, busy: Duration) {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.busy.get_or_create(&labels).observe(busy.as_secs_f64());
        if let Ok(mut last) = self.last_reconciled.lock() {
            last.insert(controller, jiff::Timestamp::now());
        }
    }

    /// When each controller last finished a reconciliation, by controller name.
    pub fn last_reconciles(&self) -> Vec<(&'static str, jiff::Timestamp)> {
        self.last_reconciled
            .lock()
            .map(|last| last.iter().map(|(c, t)| (*c, *t)).collect())
            .unwrap_or_default()
    }

    /// Whether this replica holds the leader lease.
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Records one failed reconciliation.
    pub fn failed(&self, controller: &'static str, category: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller,
                category,
            })
            .inc();
    }

    /// Counts one watch failure of `controller` (`category`: `watch`, `unreadable`, `runner`).
    pub fn watch_failed(&self, controller: &'static str, category: &'static str) {
        self.watch_errors
            .get_or_create(&WatchLabels {
                controller,
                category,
            })
            .inc();
    }

    /// Records a successful backup of a policy.
    pub fn backup_succeeded(&self, policy: PolicyLabels, at: f64, bytes: u64, seconds: f64) {
        self.backup_last_success.get_or_create(&policy).set(at);
        self.backup_bytes
            .get_or_create(&policy)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.backup_duration.get_or_create(&policy).set(seconds);
    }

    /// Records a failed backup or restore drill of a policy.
    pub fn backup_failed(&self, policy: PolicyLabels, reason: &'static str) {
        self.backup_failures
            .get_or_create(&BackupFailureLabels {
                namespace: policy.namespace,
                policy: policy.policy,
                reason,
            })
            .inc();
    }

    /// Records a successful restore drill of a policy.
    pub fn backup_verified(&self, policy: PolicyLabels, at: f64) {
        self.backup_last_verified.get_or_create(&policy).set(at);
    }

    /// Exports the health of every object in `caches` (`homeplane_object_ready`,
    /// `homeplane_object_stalled`) from now on; the first caches attached stay.
    /// The series the alert rules read from the caches (`metrics::cached`) are exported too.
    pub fn watch_objects(&self, caches: Caches) {
        let _ = self.cached.0.set(caches.clone());
        let _ = self.objects.0.set(caches);
    }

    /// Records whether this replica leads; becoming the leader counts one acquisition.
    pub fn set_leader(&self, leading: bool) {
        let was = self.leader.set(i64::from(leading));
        if leading && was == 0 {
            self.leader_acquisitions.inc();
        }
    }

    /// Sets the drifted properties per severity and the unknown ones, over all registries.
    pub fn set_drift(&self, drifted: &std::collections::BTreeMap<&'static str, i64>, unknown: i64) {
        for (severity, n) in drifted {
            self.drifted
                .get_or_create(&SeverityLabels { severity })
                .set(*n);
        }
        self.unknown.set(unknown);
    }

    /// Counts one correction.
    pub fn corrected(&self, outcome: &'static str) {
        self.corrections
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            Ok(()) => out,
            Err(_) => String::from("# failed to encode metrics\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_leader() {
        let metrics = Metrics::default();
        metrics.reconciled(
            "nodeclass",
            Duration::from_millis(20),
            Duration::from_micros(300),
        );
        metrics.failed("nodeclass", "kube");
        metrics.set_leader(true);
        let text = metrics.render();
        assert!(
            text.contains("homeplane_reconciles_total{controller=\"nodeclass\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "homeplane_reconcile_errors_total{controller=\"nodeclass\",category=\"kube\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("homeplane_reconcile_duration_seconds_count{controller=\"nodeclass\"} 1")
                && text.contains(
                    "homeplane_reconcile_busy_seconds_bucket{le=\"0.0005\",controller=\"nodeclass\"} 1"
                ),
            "{text}"
        );
        assert!(text.contains("homeplane_leader 1"), "{text}");
        assert!(
            text.contains("homeplane_leader_acquisitions_total 1"),
            "{text}"
        );
        assert!(
            text.contains("homeplane_process_resident_memory_bytes "),
            "{text}"
        );
        assert!(
            text.contains("homeplane_process_start_time_seconds "),
            "{text}"
        );
    }

    #[test]
    fn only_becoming_leader_counts_an_acquisition() {
        let metrics = Metrics::default();
        let text = metrics.render();
        assert!(
            text.contains("homeplane_leader_acquisitions_total 0"),
            "{text}"
        );
        metrics.set_leader(true);
        metrics.set_leader(true);
        metrics.set_leader(false);
        metrics.set_leader(true);
        let text = metrics.render();
        assert!(
            text.contains("homeplane_leader_acquisitions_total 2"),
            "{text}"
        );
    }
}
