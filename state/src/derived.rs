//! Properties every homeplane kind contributes without a catalogue: what an object declares
//! versus what its status reports, read from the objects as the API returns them (so they
//! start reporting as each kind's controller fills its status). An absent status is
//! `Unknown`, never drift.

use homeplane_crds::registry::Severity;
use jiff::Timestamp;
use serde_json::Value;

use crate::catalogue::{Checked, Desired, Observe};
use crate::compare::Comparison;
use crate::duration;
use crate::observation::{Observation, number};

/// One derived property with its observation.
pub type Derived = (Checked, Observation);

/// The derived properties of the objects of `kind` (as JSON, e.g. from a list call). Objects
/// of the registry's own namespace `home` give `<kind>.<name>.…`, others
/// `<kind>.<namespace>.<name>.…`.
pub fn properties(kind: &str, objects: &[Value], home: &str, now: Timestamp) -> Vec<Derived> {
    let mut out = Vec::new();
    for object in objects {
        let Some(name) = object["metadata"]["name"].as_str() else {
            continue;
        };
        let prefix = match object["metadata"]["namespace"].as_str() {
            Some(ns) if ns != home => format!("{}.{ns}.{name}", kind.to_ascii_lowercase()),
            _ => format!("{}.{name}", kind.to_ascii_lowercase()),
        };
        let has_status = object.get("status").is_some_and(|s| !s.is_null());
        let derived = Derivation {
            kind,
            name,
            prefix: &prefix,
            object,
            has_status,
        };
        out.push(derived.ready());
        match kind {
            "Database" => out.push(derived.migrations()),
            "Workflow" => {
                out.push(derived.workflow_active());
                out.push(derived.workflow_matches());
            }
            "BackupPolicy" => {
                out.push(derived.backup_age(now));
                if object["spec"]["verify"].is_object() {
                    out.push(derived.verified_age(now));
                }
            }
            "VoicePipeline" => out.push(derived.voice_latency()),
            "NodeClass" => out.push(derived.overcommit()),
            _ => {}
        }
    }
    out
}

struct Derivation<'a> {
    kind: &'a str,
    name: &'a str,
    prefix: &'a str,
    object: &'a Value,
    has_status: bool,
}

impl Derivation<'_> {
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

    fn condition(&self, kind: &str) -> Option<&Value> {
        self.object["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
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
            Some(c) => Observation {
                value: Ok(Value::Bool(c["status"] == "True")),
                message: c["message"].as_str().map(str::to_string),
            },
            None => self.no_status("Ready condition"),
        };
        (p, o)
    }

    /// Database: migrations applied versus declared.
    fn migrations(&self) -> Derived {
        let status = &self.object["status"];
        let declared_inline = self.object["spec"]["migrations"]["inline"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter(|m| !m["id"].as_str().is_some_and(|id| id.ends_with(".down")))
                    .count()
            });
        let applied = status["migrationsApplied"].as_i64();
        let pending = status["migrationsPending"].as_i64();
        let declared = match (declared_inline, applied, pending) {
            (Some(n), _, _)
                if self.object["spec"]["migrations"]["configMaps"]
                    .as_array()
                    .is_none_or(Vec::is_empty) =>
            {
                Some(i64::try_from(n).unwrap_or(i64::MAX))
            }
            (_, Some(a), Some(p)) => Some(a + p),
            _ => None,
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
        let o = match (declared, applied) {
            _ if self.has_status && ready.is_some_and(|c| c["status"] != "True") => {
                Observation::failed(format!(
                    "Database {} is not Ready, so its applied migrations are not known: {}",
                    self.name,
                    ready
                        .and_then(|c| c["message"].as_str())
                        .unwrap_or("no message")
                ))
            }
            (Some(_), Some(a)) if self.has_status => Observation {
                value: Ok(Value::from(a)),
                message: status["lastMigration"]
                    .as_str()
                    .map(|m| format!("last applied: {m}")),
            },
            _ => self.no_status("applied migrations"),
        };
        (p, o)
    }

    /// Workflow: active in n8n as declared.
    fn workflow_active(&self) -> Derived {
        let declared = self.object["spec"]["active"].as_bool().unwrap_or(false);
        let p = self.property(
            "active",
            format!("Workflow {} is active in n8n as declared", self.name),
            Value::Bool(declared),
            Comparison::Equals,
            Severity::Warning,
        );
        let drifted = self.condition("Drifted");
        let o = match (self.object["status"]["active"].as_bool(), drifted) {
            (Some(active), _) => Observation::value(Value::Bool(active)),
            // The controller compares the whole workflow, active flag included, with n8n.
            (None, Some(c)) if c["status"] == "False" => Observation {
                value: Ok(Value::Bool(declared)),
                message: c["message"].as_str().map(str::to_string),
            },
            (None, Some(c)) => Observation::failed(format!(
                "n8n differs from the declaration: {}",
                c["message"].as_str().unwrap_or("no message")
            )),
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
                value: Ok(Value::Bool(c["status"] == "True")),
                message: c["message"].as_str().map(str::to_string),
            },
            None => self.no_status("Drifted condition"),
        };
        (p, o)
    }

    /// BackupPolicy: hours since the last successful backup, at most the schedule's period
    /// and half of it again.
    fn backup_age(&self, now: Timestamp) -> Derived {
        let schedule = self.object["spec"]["schedule"].as_str().unwrap_or("");
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
        let last = self.object["status"]["lastSuccessfulTime"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok());
        let o = match last {
            Some(t) => {
                #[allow(clippy::cast_precision_loss)]
                let hours = now.duration_since(t).as_secs() as f64 / 3600.0;
                Observation {
                    value: Ok(number((hours * 10.0).round() / 10.0)),
                    message: Some(format!("last successful backup at {t}")),
                }
            }
            None => self.no_status("successful backup"),
        };
        (p, o)
    }

    /// BackupPolicy with restore drills: hours since a drill last proved a backup restores, at
    /// most 1.5 drill periods. A policy never verified counts from its creation, so drills
    /// that never succeed become drift, not silence.
    fn verified_age(&self, now: Timestamp) -> Derived {
        let schedule = self.object["spec"]["verify"]["schedule"]
            .as_str()
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
        let stamp = |path: &str| {
            self.object
                .pointer(path)
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<Timestamp>().ok())
        };
        let hours = |t: Timestamp| {
            #[allow(clippy::cast_precision_loss)]
            let h = now.duration_since(t).as_secs() as f64 / 3600.0;
            number((h * 10.0).round() / 10.0)
        };
        let o = match (
            stamp("/status/lastVerifiedTime"),
            stamp("/metadata/creationTimestamp"),
        ) {
            (Some(t), _) => Observation {
                value: Ok(hours(t)),
                message: Some(format!("last verified at {t}")),
            },
            (None, Some(created)) => Observation {
                value: Ok(hours(created)),
                message: Some(format!(
                    "never verified since the policy was created at {created}"
                )),
            },
            (None, None) => self.no_status("verified backup"),
        };
        (p, o)
    }

    /// VoicePipeline: p95 end-to-end latency within the budget, in milliseconds.
    fn voice_latency(&self) -> Derived {
        let budget = self.object["spec"]["latencyBudget"]
            .as_str()
            .and_then(|b| duration::parse(b).ok());
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
        let p95 = self.object["status"]["latencyP95"]
            .as_str()
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
                value: Ok(Value::Bool(c["status"] == "True")),
                message: c["message"].as_str().map(str::to_string),
            },
            None => self.no_status("Overcommitted condition"),
        };
        (p, o)
    }
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

    #[test]
    fn an_absent_status_is_unknown() {
        let db = json!({"metadata": {"name": "homelab"}, "spec": {"migrations": {"inline": [{"id": "0001_init"}]}}});
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

    #[test]
    fn database_migrations_applied_versus_declared() {
        let db = json!({
            "metadata": {"name": "homelab"},
            "spec": {"migrations": {"inline": [{"id": "0001_a"}, {"id": "0001_a.down"}, {"id": "0002_b"}]}},
            "status": {"migrationsApplied": 1, "migrationsPending": 1, "lastMigration": "0001_a",
                       "conditions": [{"type": "Ready", "status": "True", "message": "ok"}]}
        });
        let props = properties("Database", &[db], "homelab", now());
        let (p, o) = &props[1];
        assert_eq!(p.desired, Desired::Literal(json!(2)));
        assert_eq!(o.value, Ok(json!(1)));
        assert_eq!(props[0].1.value, Ok(json!(true)));
    }

    #[test]
    fn workflow_voice_backup_and_nodeclass() {
        let wf = json!({"metadata": {"name": "email"}, "spec": {"active": true}, "status": {"active": false}});
        let (p, o) = &properties("Workflow", &[wf], "homelab", now())[1];
        assert_eq!(
            (p.desired.clone(), o.value.clone()),
            (Desired::Literal(json!(true)), Ok(json!(false)))
        );

        let vp = json!({"metadata": {"name": "voice"}, "spec": {"latencyBudget": "2s"}, "status": {"latencyP95": "1.4s"}});
        let (p, o) = &properties("VoicePipeline", &[vp], "homelab", now())[1];
        assert_eq!(p.desired, Desired::Literal(json!(2000)));
        assert_eq!(o.value, Ok(json!(1400)));
        assert_eq!(p.comparison, Comparison::AtMost);

        let bp = json!({"metadata": {"name": "nightly"}, "spec": {"schedule": "0 3 * * *"},
                        "status": {"lastSuccessfulTime": "2026-11-23T03:00:00Z"}});
        let (p, o) = &properties("BackupPolicy", &[bp], "homelab", now())[1];
        assert_eq!(p.desired, Desired::Literal(json!(36)));
        assert_eq!(o.value, Ok(json!(28)));

        // Restore drills: a weekly drill never verified, created two weeks ago, is drift.
        let bp = json!({"metadata": {"name": "nightly", "creationTimestamp": "2026-11-10T07:00:00Z"},
                        "spec": {"schedule": "0 3 * * *", "verify": {"schedule": "0 4 * * 0"}},
                        "status": {"lastSuccessfulTime": "2026-11-24T03:00:00Z"}});
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

        let nc = json!({"metadata": {"name": "pi"}, "status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "Overcommitted", "status": "True", "message": "limits 5 CPU > 4"}]}});
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
