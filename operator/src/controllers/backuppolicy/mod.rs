//! The BackupPolicy controller: validates the policy, creates a Backup when its schedule is
//! due, runs restore drills into the scratch database and records the result on the Backup
//! ([`drill`]), applies retention ([`retention`]), and keeps the policy's status and metrics.
//! Pipeline: validate (pure, [`plan`]) -> schedule -> drill -> retention -> status.

pub mod cron;
mod drill;
pub mod plan;
mod retention;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use homeplane_crds::backup::{
    Backup, BackupPhase, BackupPolicy, BackupPolicyStatus, BackupSpec, BackupTrigger,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::backup::resolve::{self, Invalid};
use super::{Context, Error, now};
use crate::conditions;
use crate::metrics::PolicyLabels;
use crate::reconcile::{self, Outcome, Reconciler, watch};
use plan::Checked;
use retention::{finished_at, phase};

/// Condition with the result of the latest restore drill.
const VERIFIED: &str = "Verified";
/// Label on the Backups a schedule creates.
pub const POLICY_LABEL: &str = "homeplane.dev/backup-policy";
/// Annotation that asks for a restore drill now: an RFC 3339 time; a drill runs once for a
/// time later than the last drill's (the dashboard's "run the restore drill now").
pub const VERIFY_ANNOTATION: &str = "homeplane.dev/verify-requested";
/// How often retention is looked at even when nothing else happens.
const RESYNC: Duration = Duration::from_secs(300);

/// The BackupPolicy controller.
pub struct BackupPolicies;

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let controller = Controller::new(ctx.watched::<BackupPolicy>(), watch::config()).watches(
        ctx.watched::<Backup>(),
        watcher::Config::default(),
        |b| Some(ObjectRef::<BackupPolicy>::new(&b.spec.policy).within(&b.namespace()?)),
    );
    reconcile::run(BackupPolicies, controller, ctx, shutdown).await;
}

impl Reconciler for BackupPolicies {
    type Object = BackupPolicy;
    const NAME: &'static str = "backuppolicy";
    const RESYNC: Duration = RESYNC;

    async fn reconcile(
        &self,
        p: &BackupPolicy,
        status: &mut BackupPolicyStatus,
        ctx: &Context,
    ) -> Result<Outcome, Error> {
        let checked = match plan::check(p) {
            Ok(checked) => checked,
            Err(invalid) => {
                status.next_schedule_time = None;
                return Ok(Outcome::invalid(invalid.reason, invalid.message));
            }
        };
        let now_ts = now();
        schedule(p, ctx, status, &checked, now_ts).await?;
        let verified =
            drill::if_due(p, ctx, status, &checked, &backups_of(p, ctx).await?, now_ts).await?;
        match (&checked.verify, verified) {
            (None, _) => {
                status.next_verify_time = None;
                conditions::remove(&mut status.conditions, VERIFIED);
            }
            (Some(verify), result) => {
                status.next_verify_time = verify.next_after(now_ts).map(Time);
                if let Some(d) = result {
                    conditions::set(&mut status.conditions, d, p.metadata.generation, now());
                }
            }
        }
        // Re-read: the drill may have verified one.
        let retained =
            retention::apply(p, ctx, &checked, backups_of(p, ctx).await?, now_ts).await?;
        let summary = summarize(p, ctx, status, &retained.kept, now_ts);
        let outcome = match problem(ctx, p).await? {
            Some(invalid) => {
                let message = format!("{} ({})", invalid.message, next_run(status));
                Outcome::retry(invalid.reason, message)
            }
            None => match retained.problem {
                Some(m) => Outcome::ready("Scheduled", summary).degraded("RetentionFailed", m),
                None => Outcome::ready("Scheduled", summary),
            },
        };
        Ok(outcome.after(wake(status)))
    }
}

/// Creates the scheduled Backup when one is due (named after its time, so a retry finds the
/// first instead of making another) and sets the next schedule time.
async fn schedule(
    p: &BackupPolicy,
    ctx: &Context,
    status: &mut BackupPolicyStatus,
    checked: &Checked,
    now_ts: jiff::Timestamp,
) -> Result<(), Error> {
    if p.spec.suspend {
        status.next_schedule_time = None;
        return Ok(());
    }
    let ns = p.namespace().unwrap_or_default();
    let name = p.name_any();
    let since = last_run(p, status.last_schedule_time.as_ref(), now_ts);
    if let Some(due) = checked.schedule.due(since, now_ts) {
        let backup_name = plan::scheduled_name(&name, due);
        let backup = Backup {
            metadata: ObjectMeta {
                name: Some(backup_name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(BTreeMap::from([(POLICY_LABEL.to_string(), name.clone())])),
                ..ObjectMeta::default()
            },
            spec: BackupSpec {
                policy: name.clone(),
                trigger: BackupTrigger::Scheduled,
            },
            status: None,
        };
        let backups: Api<Backup> = Api::namespaced(ctx.client.clone(), &ns);
        match backups.create(&PostParams::default(), &backup).await {
            Ok(_) => info!(backup = %backup_name, "scheduled backup created"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(Error::kube("create a scheduled Backup")(e)),
        }
        status.last_schedule_time = Some(Time(due));
    }
    status.next_schedule_time = checked.schedule.next_after(now_ts).map(Time);
    Ok(())
}

/// The scheduled time of the last run, `last`, or before any, the policy's creation (`now`
/// when it has none yet): runs due after it are made.
fn last_run(p: &BackupPolicy, last: Option<&Time>, now_ts: jiff::Timestamp) -> jiff::Timestamp {
    let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    last.map(|t| t.0).or(created).unwrap_or(now_ts)
}

/// The policy's Backups (by `spec.policy`, a selectable field), oldest first.
async fn backups_of(p: &BackupPolicy, ctx: &Context) -> Result<Vec<Backup>, Error> {
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
    let name = p.name_any();
    let params = ListParams::default().fields(&format!("spec.policy={name}"));
    let mut backups: Vec<Backup> = super::list_capped(&api, params, "list Backups")
        .await?
        .into_iter()
        .filter(|b| b.spec.policy == name)
        .collect();
    backups.sort_by_key(|b| b.metadata.creation_timestamp.as_ref().map(|t| t.0));
    Ok(backups)
}

/// Fills the status from the Backups retention kept (and their metrics); the summary sentence.
fn summarize(
    p: &BackupPolicy,
    ctx: &Context,
    status: &mut BackupPolicyStatus,
    kept: &[Backup],
    now_ts: jiff::Timestamp,
) -> String {
    let labels = policy_labels(p);
    status.last_backup = kept.last().map(|b| b.name_any());
    let newest_ok = kept
        .iter()
        .rev()
        .find(|b| phase(b) == BackupPhase::Succeeded);
    status.last_successful_time = newest_ok.and_then(|b| b.status.as_ref()?.completed_at.clone());
    if let Some(b) = newest_ok
        && let Some(s) = &b.status
    {
        let bytes = s
            .encrypted_bytes
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0);
        let at = ts(finished_at(b, now_ts));
        let took = s.duration_seconds.unwrap_or(0.0);
        ctx.metrics
            .backup_succeeded(labels.clone(), at, bytes, took);
    }
    let verified_at = kept
        .iter()
        .filter_map(|b| b.status.as_ref()?.verified_at.as_ref())
        .map(|t| t.0)
        .max();
    if let Some(t) = verified_at {
        status.last_verified_time = Some(Time(t));
        ctx.metrics.backup_verified(labels, ts(t));
    }
    let succeeded = kept
        .iter()
        .filter(|b| phase(b) == BackupPhase::Succeeded)
        .count();
    let verified = kept
        .iter()
        .filter(|b| b.status.as_ref().is_some_and(|s| s.verified))
        .count();
    let history = match ctx.history.is_some() {
        true => "",
        false => "; backup history is not recorded (the operator has no --history-database-url)",
    };
    let next = next_run(status);
    format!("{next}; {succeeded} successful backups kept, {verified} verified{history}")
}

/// "next backup at …", or "suspended".
fn next_run(status: &BackupPolicyStatus) -> String {
    status
        .next_schedule_time
        .as_ref()
        .map(|t| format!("next backup at {}", t.0))
        .unwrap_or_else(|| "suspended".into())
}

/// When to look again: the next backup or drill, at the latest the resync.
fn wake(status: &BackupPolicyStatus) -> Duration {
    [
        status.next_schedule_time.as_ref(),
        status.next_verify_time.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|t| Duration::from_secs_f64(t.0.duration_since(now()).as_secs_f64().max(1.0)))
    .min()
    .unwrap_or(RESYNC)
    .min(RESYNC)
}

/// What the next run would need and is missing, checked now rather than at 3 am: the source,
/// then the credentials Secret (only the Secret: the S3 client is built when a run needs it).
async fn problem(ctx: &Context, p: &BackupPolicy) -> Result<Option<Invalid>, Error> {
    if let Some(invalid) = source_problem(ctx, p).await? {
        return Ok(Some(invalid));
    }
    Ok(resolve::credentials(ctx, p).await?.err())
}

fn policy_labels(p: &BackupPolicy) -> PolicyLabels {
    PolicyLabels {
        namespace: p.namespace().unwrap_or_default(),
        policy: p.name_any(),
    }
}

fn ts(t: jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// Whether the policy's source exists: its Database or its PersistentVolumeClaim.
async fn source_problem(ctx: &Context, p: &BackupPolicy) -> Result<Option<Invalid>, Error> {
    let ns = p.namespace().unwrap_or_default();
    let source = &p.spec.source;
    if let Some(db) = &source.database {
        let found = Api::<homeplane_crds::database::Database>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&db.name)
            .await
            .map_err(Error::kube("read the source Database"))?;
        if found.is_none() {
            return Ok(Some(Invalid {
                reason: "SourceNotFound",
                message: format!(
                    "Database {ns}/{} (spec.source.database) does not exist; its backups will fail until it does",
                    db.name
                ),
            }));
        }
    }
    if let Some(pvc) = &source.pvc {
        let found = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(
            ctx.client.clone(),
            &ns,
        )
        .get_opt(&pvc.claim_name)
        .await
        .map_err(Error::kube("read the source PersistentVolumeClaim"))?;
        if found.is_none() {
            return Ok(Some(Invalid {
                reason: "SourceNotFound",
                message: format!(
                    "PersistentVolumeClaim {ns}/{} (spec.source.pvc.claimName) does not exist; its backups will fail until it does",
                    pvc.claim_name
                ),
            }));
        }
    }
    Ok(None)
}
