//! Properties every homeplane kind contributes without a catalogue: what an object declares
//! versus what its status reports, read from the objects through their typed API structs (so a
//! renamed field breaks the build, not the registry), and starting to report as each kind's
//! controller fills its status. An absent status is `Unknown`, never drift.

use homeplane_crds::common::Condition;
use homeplane_crds::registry::Severity;
use homeplane_crds::{
    Agent, AgentRun, Backup, BackupPolicy, Database, MemoryServer, NodeClass, StateRegistry,
    VoicePipeline, Workflow,
};
use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::catalogue::{Checked, Desired, Observe};
use crate::compare::Comparison;
use crate::duration;
use crate::observation::{Observation, number};

/// One derived property with its observation.
pub type Derived = (Checked, Observation);

/// The derived properties of the objects of `kind` (as the API returns them, e.g. from a list
/// call). Objects of the registry's own namespace `home` give `<kind>.<name>.…`, others
/// `<kind>.<namespace>.<name>.…`. An object that does not read as its kind gives a `ready`
/// property that says why it is Unknown.
pub fn properties(kind: &str, objects: &[Value], home: &str, now: Timestamp) -> Vec<Derived> {
    let mut out = Vec::new();
    for object in objects {
        let derived = match kind {
            "Database" => typed(object, home, |d: &Database, v| {
                vec![v.ready(), v.migrations(d)]
            }),
            "Workflow" => typed(object, home, |w: &Workflow, v| {
                vec![v.ready(), v.workflow_active(w), v.workflow_matches()]
            }),
            "BackupPolicy" => typed(object, home, |p: &BackupPolicy, v| {
                let mut all = vec![v.ready(), v.backup_age(p, now)];
                if p.spec.verify.is_some() {
                    all.push(v.verified_age(p, now));
                }
                all
            }),
            "VoicePipeline" => typed(object, home, |p: &VoicePipeline, v| {
                vec![v.ready(), v.voice_latency(p)]
            }),
            "NodeClass" => typed(object, home, |_: &NodeClass, v| {
                vec![v.ready(), v.overcommit()]
            }),
            "Agent" => typed(object, home, |_: &Agent, v| vec![v.ready()]),
            "AgentRun" => typed(object, home, |_: &AgentRun, v| vec![v.ready()]),
            "Backup" => typed(object, home, |_: &Backup, v| vec![v.ready()]),
            "MemoryServer" => typed(object, home, |_: &MemoryServer, v| vec![v.ready()]),
            "StateRegistry" => typed(object, home, |_: &StateRegistry, v| vec![v.ready()]),
            _ => None,
        };
        out.extend(derived.unwrap_or_default());
    }
    out
}

/// A homeplane object's name, namespace and status conditions.
trait Kind: DeserializeOwned {
    const KIND: &'static str;
    /// The status's conditions; `None` before the controller wrote a status.
    fn conditions(&self) -> Option<&[Condition]>;
}

macro_rules! kind {
    ($($kind:ident),*) => {$(
        impl Kind for $kind {
            const KIND: &'static str = stringify!($kind);
            fn conditions(&self) -> Option<&[Condition]> {
                self.status.as_ref().map(|s| s.conditions.as_slice())
            }
        }
    )*};
}

kind!(
    Database,
    Workflow,
    BackupPolicy,
    VoicePipeline,
    NodeClass,
    Agent,
    AgentRun,
    Backup,
    MemoryServer,
    StateRegistry
);

/// Reads `object` as `K` and derives its properties with `derive`; an object that does not
/// read as `K` gives its `ready` property, Unknown with the reason. `None` without a name.
fn typed<K: Kind>(
    object: &Value,
    home: &str,
    derive: impl FnOnce(&K, &Derivation) -> Vec<Derived>,
) -> Option<Vec<Derived>> {
    let name = object.pointer("/metadata/name")?.as_str()?.to_string();
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str);
    let typed: Result<K, _> = serde_json::from_value(object.clone());
    let (conditions, has_status) = match &typed {
        Ok(k) => (
            k.conditions()
                .map(<[Condition]>::to_vec)
                .unwrap_or_default(),
            k.conditions().is_some(),
        ),
        Err(_) => (Vec::new(), false),
    };
    let kind = K::KIND;
    let prefix = match namespace {
        Some(ns) if ns != home => format!("{}.{ns}.{name}", kind.to_ascii_lowercase()),
        _ => format!("{}.{name}", kind.to_ascii_lowercase()),
    };
    let derivation = Derivation {
        kind,
        name,
        prefix,
        conditions,
        has_status,
    };
    Some(match typed {
        Ok(k) => derive(&k, &derivation),
        Err(e) => {
            let (p, _) = derivation.ready();
            let why = format!("{kind} {} cannot be read: {e}", derivation.name);
            vec![(p, Observation::failed(why))]
        }
    })
}

struct Derivation {
    kind: &'static str,
    name: String,
    prefix: String,
    conditions: Vec<Condition>,
    has_status: bool,
}

impl Derivation {
    fn property(
        &self,
        suffix: &str,
        description: String,
        desired: Value,
        comparison: Comparison,
        severity: Severity,
    ) -> Checked {
        Checked {
            id: format!("{}.{suffix}", self.prefix),
            description: Some(description),
            desired: Desired::Literal(desired),
            observe: Observe::Derived {
                kind: self.kind.to_string(),
                name: self.name.to_string(),
            },
            comparison,
            severity,
            grace: None,
            corrector: None,
        }
    }

    fn no_status(&self, what: &str) -> Observation {
        if self.has_status {
            Observation::failed(format!("{} {} reports no {what} yet", self.kind, self.name))
        } else {
            Observation::failed(format!(
                "{} {} has no status yet (its controller has not reported)",
                self.kind, self.name
            ))
        }
    }

    fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Every kind: `Ready` is `True`.
    fn ready(&self) -> Derived {
        let p = self.property(
            "ready",
            format!("{} {} is Ready", self.kind, self.name),
            Value::Bool(true),
            Comparison::Equals,
            Severity::Warning,
        );
        let o = match self.condition("Ready") {
            // homeplane is looking at a new generation and has not concluded yet.
            Some(c) if c.status == "Unknown" => Observation::failed(format!(
                "{} {} is being reconciled; Ready is not known yet ({})",
                self.kind, self.name, c.message
            )),
            Some(c) => Observation {
                value: Ok(Value::Bool(c.status == "True")),
                message: Some(c.message.clone()).filter(|m| !m.is_empty()),
            },
            None => self.no_status("Ready condition"),
        };
        (p, o)
    }

    /// Database: migrations applied versus declared.
    fn migrations(&self, db: &Database) -> Derived {
        let spec = db.spec.migrations.as_ref();
        let status = db.status.as_ref();
        let inline_only = spec.is_some_and(|m| m.config_maps.is_empty());
        let declared_inline =
            spec.map(|m| m.inline.iter().filter(|m| !m.id.ends_with(".down")).count());
        let counted =
            status.map(|s| i64::from(s.migrations_applied) + i64::from(s.migrations_pending));
        let declared = match (declared_inline, counted) {
            (Some(n), _) if inline_only => Some(i64::try_from(n).unwrap_or(i64::MAX)),
            (None, _) => Some(0),
            (_, counted) => counted,
        };
        let p = self.property(
            "migrations.applied",
            format!(
                "every declared migration of Database {} is applied",
                self.name
            ),
            declared.map_or(Value::Null, Value::from),
            Comparison::Equals,
            Severity::Critical,
        );
        let ready = self.condition("Ready");
        let o = match (ready, status) {
            (Some(c), _) if c.status != "True" => Observation::failed(format!(
                "Database {} is not Ready, so its applied migrations are not known: {}",
                self.name,
                if c.message.is_empty() {
                    "no message"
                } else {
                    c.message.as_str()
                }
            )),
            (Some(_), Some(s)) => Observation {
                value: Ok(Value::from(s.migrations_applied)),
                message: s
                    .last_migration
                    .as_ref()
                    .map(|m| format!("last applied: {m}")),
            },
            _ => self.no_status("applied migrations"),
        };
        (p, o)
    }

    /// Workflow: active in n8n as declared.
    fn workflow_active(&self, wf: &Workflow) -> Derived {
        let declared = wf.spec.active;
        let p = self.property(
            "active",
            format!("Workflow {} is active in n8n as declared", self.name),
            Value::Bool(declared),
            Comparison::Equals,
            Severity::Warning,
        );
        let active = wf.status.as_ref().and_then(|s| s.active);
        let o = match (active, self.condition("Drifted")) {
            (Some(active), _) => Observation::value(Value::Bool(active)),
            // The controller compares the whole workflow, active flag included, with n8n.
            (None, Some(c)) if c.status == "False" => Observation {
                value: Ok(Value::Bool(declared)),
                message: Some(c.message.clone()),
            },
            (None, Some(c)) => {
                Observation::failed(format!("n8n differs from the declaration: {}", c.message))
            }
            (None, None) => self.no_status("active flag"),
        };
        (p, o)
    }

    /// Workflow: the workflow in n8n matches its declaration (nobody edited it in the UI).
    fn workflow_matches(&self) -> Derived {
        let p = self.property(
            "matches-n8n",
            format!(
                "Workflow {} in n8n is as declared (not edited in the n8n UI)",
                self.name
            ),
            Value::Bool(false),
            Comparison::Equals,
            Severity::Warning,
        );
        let o = match self.condition("Drifted") {
            Some(c) => Observation {
                value: Ok(Value::Bool(c.status == "True")),
                message: Some(c.message.clone()),
            },
            None => self.no_status("Drifted condition"),
        };
        (p, o)
    }

    /// BackupPolicy: hours since the last successful backup, at most the schedule's period
    /// and half of it again.
    fn backup_age(&self, policy: &BackupPolicy, now: Timestamp) -> Derived {
        let schedule = policy.spec.schedule.as_str();
        let allowed = cron_period_hours(schedule) * 1.5;
        let p = self.property(
            "age-hours",
            format!(
                "the last successful backup of {} is younger than its schedule ({schedule}) allows",
                self.name
            ),
            number(allowed),
            Comparison::AtMost,
            Severity::Critical,
        );
        let last = policy
            .status
            .as_ref()
            .and_then(|s| s.last_successful_time.as_ref())
            .map(|t| t.0);
        let o = match last {
            Some(t) => Observation {
                value: Ok(hours_since(t, now)),
                message: Some(format!("last successful backup at {t}")),
            },
            None => self.no_status("successful backup"),
        };
        (p, o)
    }

    /// BackupPolicy with restore drills: hours since a drill last proved a backup restores, at
    /// most 1.5 drill periods. A policy never verified counts from its creation, so drills
    /// that never succeed become drift, not silence.
    fn verified_age(&self, policy: &BackupPolicy, now: Timestamp) -> Derived {
        let schedule = policy
            .spec
            .verify
            .as_ref()
            .map(|v| v.schedule.as_str())
            .unwrap_or("");
        let allowed = cron_period_hours(schedule) * 1.5;
        let p = self.property(
            "verified-age-hours",
            format!(
                "a restore drill proved a backup of {} restorable as recently as its drill schedule ({schedule}) allows",
                self.name
            ),
            number(allowed),
            Comparison::AtMost,
            Severity::Critical,
        );
        let verified = policy
            .status
            .as_ref()
            .and_then(|s| s.last_verified_time.as_ref())
            .map(|t| t.0);
        let created = policy.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let o = match (verified, created) {
            (Some(t), _) => Observation {
                value: Ok(hours_since(t, now)),
                message: Some(format!("last verified at {t}")),
            },
            (None, Some(created)) => Observation {
                value: Ok(hours_since(created, now)),
                message: Some(format!(
                    "never verified since the policy was created at {created}"
                )),
            },
            (None, None) => self.no_status("verified backup"),
        };
        (p, o)
    }

    /// VoicePipeline: p95 end-to-end latency within the budget, in milliseconds.
    fn voice_latency(&self, vp: &VoicePipeline) -> Derived {
        let budget = duration::parse(&vp.spec.latency_budget).ok();
        let p = self.property(
            "latency-p95-ms",
            format!(
                "the p95 latency of VoicePipeline {} is within its budget",
                self.name
            ),
            budget.map_or(Value::Null, |b| Value::from(millis(b))),
            Comparison::AtMost,
            Severity::Warning,
        );
        let p95 = vp
            .status
            .as_ref()
            .and_then(|s| s.latency_p95.as_deref())
            .and_then(|l| duration::parse(l).ok());
        let o = match (budget, p95) {
            (None, _) => Observation::failed("the VoicePipeline declares no latencyBudget"),
            (Some(_), Some(l)) => Observation::value(Value::from(millis(l))),
            (Some(_), None) => self.no_status("p95 latency"),
        };
        (p, o)
    }

    /// NodeClass: not overcommitted.
    fn overcommit(&self) -> Derived {
        let p = self.property(
            "overcommitted",
            format!(
                "the workloads on NodeClass {} fit within its capacity",
                self.name
            ),
            Value::Bool(false),
            Comparison::Equals,
            Severity::Critical,
        );
        let o = match self.condition("Overcommitted") {
            Some(c) => Observation {
                value: Ok(Value::Bool(c.status == "True")),
                message: Some(c.message.clone()),
            },
            None => self.no_status("Overcommitted condition"),
        };
        (p, o)
    }
}

/// Hours from `t` to `now`, to a tenth.
fn hours_since(t: Timestamp, now: Timestamp) -> Value {
    #[allow(clippy::cast_precision_loss)]
    let hours = now.duration_since(t).as_secs() as f64 / 3600.0;
    number((hours * 10.0).round() / 10.0)
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The period between runs of a cron schedule, in hours (roughly: the smallest unit that is
/// not fixed; a day when it cannot be told).
pub fn cron_period_hours(schedule: &str) -> f64 {
    match schedule.trim() {
        "@hourly" => return 1.0,
        "@daily" | "@midnight" => return 24.0,
        "@weekly" => return 168.0,
        "@monthly" => return 744.0,
        "@yearly" | "@annually" => return 8784.0,
        _ => {}
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let [minute, hour, dom, _month, dow] = fields.as_slice() else {
        return 24.0;
    };
    let fixed = |f: &str| !f.contains('*') && !f.contains('/') && !f.contains(',');
    if !fixed(minute) {
        return 1.0;
    }
    if !fixed(hour) {
        if let Some(step) = hour.strip_prefix("*/").and_then(|s| s.parse::<f64>().ok()) {
            return step;
        }
        return 1.0;
    }
    if fixed(dow) {
        return 168.0;
    }
    if fixed(dom) {
        return 744.0;
    }
    24.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-11-24T07:00:00Z"
            .parse()
            .unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn object(kind: &str, name: &str, spec: Value, status: Option<Value>) -> Value {
        let mut o = json!({"apiVersion": "homeplane.dev/v1alpha1", "kind": kind,
                           "metadata": {"name": name, "namespace": "homelab"}, "spec": spec});
        if let Some(s) = status {
            o["status"] = s;
        }
        o
    }

    fn server() -> Value {
        json!({"external": {"host": "pg", "port": 5432, "adminSecret": "pg-admin"}})
    }

    fn workflow_spec(active: bool) -> Value {
        json!({"n8n": {"url": "http://n8n:5678", "apiKeySecret": {"name": "n8n", "key": "k"}},
               "definition": {"nodes": []}, "active": active})
    }

    #[test]
    fn an_absent_status_is_unknown() {
        let spec = json!({"server": server(), "migrations": {"inline": [{"id": "0001_init", "sql": "select 1"}]}});
        let db = object("Database", "homelab", spec, None);
        let props = properties("Database", &[db], "homelab", now());
        let ids: Vec<_> = props.iter().map(|(p, _)| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "database.homelab.ready",
                "database.homelab.migrations.applied"
            ]
        );
        for (_, o) in &props {
            let reason = o.value.clone().err().unwrap_or_default();
            assert!(reason.contains("has no status yet"), "{reason}");
        }
    }

    /// The frame's first look at a new generation (`Ready=Unknown`, Reconciling) is no answer
    /// yet: Unknown, never a drift of Ready.
    #[test]
    fn ready_unknown_while_homeplane_looks_is_not_drift() {
        let status = json!({"conditions": [condition("Ready", "Unknown", "homeplane has started reconciling this object")]});
        let wf = object("Workflow", "new", workflow_spec(true), Some(status));
        let props = properties("Workflow", &[wf], "homelab", now());
        let (p, o) = &props[0];
        assert_eq!(p.id, "workflow.new.ready");
        let reason = o.value.clone().err().unwrap_or_default();
        assert!(reason.contains("Ready is not known yet"), "{reason}");
    }

    #[test]
    fn an_object_that_does_not_read_as_its_kind_is_unknown_with_the_reason() {
        let wf = object("Workflow", "broken", json!({"active": "yes"}), None);
        let props = properties("Workflow", &[wf], "homelab", now());
        assert_eq!(props.len(), 1);
        assert_eq!(props[0].0.id, "workflow.broken.ready");
        let reason = props[0].1.value.clone().err().unwrap_or_default();
        assert!(
            reason.contains("Workflow broken cannot be read"),
            "{reason}"
        );
    }

    #[test]
    fn database_migrations_applied_versus_declared() {
        let spec = json!({"server": server(), "migrations": {"inline": [
            {"id": "0001_a", "sql": "x"}, {"id": "0001_a.down", "sql": "x"}, {"id": "0002_b", "sql": "x"}]}});
        let status = json!({"migrationsApplied": 1, "migrationsPending": 1, "lastMigration": "0001_a",
                            "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled",
                                            "message": "ok", "lastTransitionTime": "2026-11-24T07:00:00Z"}]});
        let db = object("Database", "homelab", spec, Some(status));
        let props = properties("Database", &[db], "homelab", now());
        let (p, o) = &props[1];
        assert_eq!(p.desired, Desired::Literal(json!(2)));
        assert_eq!(o.value, Ok(json!(1)));
        assert_eq!(props[0].1.value, Ok(json!(true)));
    }

    fn condition(type_: &str, status: &str, message: &str) -> Value {
        json!({"type": type_, "status": status, "reason": "R", "message": message,
               "lastTransitionTime": "2026-11-24T07:00:00Z"})
    }

    #[test]
    fn workflow_voice_backup_and_nodeclass() {
        let wf = object(
            "Workflow",
            "email",
            workflow_spec(true),
            Some(json!({"active": false})),
        );
        let (p, o) = &properties("Workflow", &[wf], "homelab", now())[1];
        assert_eq!(
            (p.desired.clone(), o.value.clone()),
            (Desired::Literal(json!(true)), Ok(json!(false)))
        );

        let spec = json!({"latencyBudget": "2s", "stages": []});
        let vp = object(
            "VoicePipeline",
            "voice",
            spec,
            Some(json!({"latencyP95": "1.4s"})),
        );
        let (p, o) = &properties("VoicePipeline", &[vp], "homelab", now())[1];
        assert_eq!(p.desired, Desired::Literal(json!(2000)));
        assert_eq!(o.value, Ok(json!(1400)));
        assert_eq!(p.comparison, Comparison::AtMost);

        let policy = |verify: Option<Value>, status: Value| {
            let mut spec = json!({"schedule": "0 3 * * *",
                "source": {"database": {"name": "homelab"}},
                "destination": {"endpoint": "https://r2", "bucket": "bkt", "credentialsSecret": "r2"},
                "recipients": ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]});
            if let Some(v) = verify {
                spec["verify"] = v;
            }
            let mut o = object("BackupPolicy", "nightly", spec, Some(status));
            o["metadata"]["creationTimestamp"] = json!("2026-11-10T07:00:00Z");
            o
        };
        let bp = policy(None, json!({"lastSuccessfulTime": "2026-11-23T03:00:00Z"}));
        let (p, o) = &properties("BackupPolicy", &[bp], "homelab", now())[1];
        assert_eq!(p.desired, Desired::Literal(json!(36)));
        assert_eq!(o.value, Ok(json!(28)));

        // Restore drills: a weekly drill never verified, created two weeks ago, is drift.
        let verify = json!({"schedule": "0 4 * * 0", "identitySecret": "drill", "scratchDatabase": "scratch"});
        let bp = policy(
            Some(verify),
            json!({"lastSuccessfulTime": "2026-11-24T03:00:00Z"}),
        );
        let all = properties("BackupPolicy", &[bp], "homelab", now());
        let (p, o) = &all[2];
        assert_eq!(p.id, "backuppolicy.nightly.verified-age-hours");
        assert_eq!(p.desired, Desired::Literal(json!(252)));
        assert_eq!(o.value, Ok(json!(336)));
        assert!(
            o.message
                .as_deref()
                .is_some_and(|m| m.starts_with("never verified"))
        );

        let status = json!({"conditions": [condition("Ready", "True", "ok"),
                                           condition("Overcommitted", "True", "limits 5 CPU > 4")]});
        let mut nc = object(
            "NodeClass",
            "pi",
            json!({"nodeSelector": {"homeplane.dev/class": "pi"}}),
            Some(status),
        );
        nc["metadata"]
            .as_object_mut()
            .map(|m| m.remove("namespace"));
        let (p, o) = &properties("NodeClass", &[nc], "homelab", now())[1];
        assert_eq!(p.id, "nodeclass.pi.overcommitted");
        assert_eq!(o.value, Ok(json!(true)));
        assert_eq!(o.message.as_deref(), Some("limits 5 CPU > 4"));
    }

    #[test]
    fn cron_periods() {
        assert_eq!(cron_period_hours("0 3 * * *"), 24.0);
        assert_eq!(cron_period_hours("*/5 * * * *"), 1.0);
        assert_eq!(cron_period_hours("0 */6 * * *"), 6.0);
        assert_eq!(cron_period_hours("0 4 * * 0"), 168.0);
        assert_eq!(cron_period_hours("@hourly"), 1.0);
    }
}
