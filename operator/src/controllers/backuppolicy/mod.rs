//! The BackupPolicy controller: validates the policy, creates a Backup when its schedule is
//! due, applies retention (deleting old objects from the bucket and their Backup records, never
//! the newest verified backup nor one younger than the minimum age), runs restore drills into
//! the scratch database and records the result on the Backup, and keeps the policy's status and
//! metrics. Pipeline: validate (pure) -> schedule -> drill -> retention -> status.

pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use homeplane_backups::crypto;
use homeplane_backups::pipeline;
use homeplane_backups::postgres::{self, PgConn};
use homeplane_backups::retention::{self, Candidate, Rules};
use homeplane_crds::backup::{
    Backup, BackupPhase, BackupPolicy, BackupSpec, BackupTrigger, VerificationCheck,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use super::backup::resolve::{self, Invalid};
use super::{Context, Error, apply_status, error_policy, now};
use crate::conditions::{self, DEGRADED, Desired, READY};
use crate::metrics::PolicyLabels;
use plan::Schedule;

const CONTROLLER: &str = "backuppolicy";
/// Condition with the result of the latest restore drill.
const VERIFIED: &str = "Verified";
/// Label on the Backups a schedule creates.
pub const POLICY_LABEL: &str = "homeplane.dev/backup-policy";
/// Annotation that asks for a restore drill now: an RFC 3339 time; a drill runs once for a
/// time later than the last drill's (the dashboard's "run the restore drill now").
pub const VERIFY_ANNOTATION: &str = "homeplane.dev/verify-requested";
/// How often retention is looked at even when nothing else happens.
const RESYNC: Duration = Duration::from_secs(300);

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    Controller::new(ctx.watched::<BackupPolicy>(), watcher::Config::default())
        .watches(ctx.watched::<Backup>(), watcher::Config::default(), |b| {
            Some(ObjectRef::<BackupPolicy>::new(&b.spec.policy).within(&b.namespace()?))
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile,
            |p, error, ctx| error_policy(CONTROLLER, p, error, ctx),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn api(p: &BackupPolicy, ctx: &Context) -> Api<BackupPolicy> {
    Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default())
}

/// The validated, pure part of a policy.
struct Checked {
    schedule: Schedule,
    verify: Option<Schedule>,
    rules: Rules,
}

fn check(p: &BackupPolicy) -> Result<Checked, Invalid> {
    let invalid = |reason: &'static str, message: String| Invalid { reason, message };
    resolve::validate(p)?;
    let schedule = Schedule::parse(&p.spec.schedule, &p.spec.time_zone)
        .map_err(|m| invalid("InvalidSchedule", format!("spec: {m}")))?;
    let verify = match &p.spec.verify {
        Some(v) => {
            if p.spec.source.database.is_some() && v.scratch_database.is_none() {
                return Err(invalid(
                    "InvalidVerification",
                    "spec.verify.scratchDatabase is required for a database source: the restore drill restores into it".into(),
                ));
            }
            if v.scratch_database.is_some()
                && p.spec.source.database.as_ref().map(|d| &d.name) == v.scratch_database.as_ref()
            {
                return Err(invalid(
                    "InvalidVerification",
                    "spec.verify.scratchDatabase names the source database; a drill replaces the scratch database's contents, so name another Database".into(),
                ));
            }
            Some(
                Schedule::parse(&v.schedule, &p.spec.time_zone)
                    .map_err(|m| invalid("InvalidSchedule", format!("spec.verify: {m}")))?,
            )
        }
        None => None,
    };
    let r = &p.spec.retention;
    let min_age = retention::parse_min_age(&r.min_age)
        .map_err(|m| invalid("InvalidRetention", format!("spec.retention.minAge: {m}")))?;
    let count = |n: i32| usize::try_from(n).unwrap_or(0);
    Ok(Checked {
        schedule,
        verify,
        rules: Rules {
            keep_last: count(r.keep_last).max(1),
            daily: count(r.daily),
            weekly: count(r.weekly),
            monthly: count(r.monthly),
            min_age,
        },
    })
}

fn ts(t: jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

#[instrument(skip_all, fields(policy = %p.name_any(), namespace = p.namespace().unwrap_or_default()))]
async fn reconcile(p: Arc<BackupPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let Some(p) = api(&p, &ctx)
        .get_opt(&p.name_any())
        .await
        .map_err(Error::kube("read the BackupPolicy"))?
    else {
        return Ok(Action::await_change());
    };
    let ns = p.namespace().unwrap_or_default();
    let name = p.name_any();
    let generation = p.metadata.generation;
    let mut status = p.status.clone().unwrap_or_default();
    let old = status.clone();
    status.observed_generation = generation;
    let labels = PolicyLabels {
        namespace: ns.clone(),
        policy: name.clone(),
    };

    let checked = match check(&p) {
        Ok(c) => c,
        Err(invalid) => {
            conditions::set(
                &mut status.conditions,
                Desired::no(READY, invalid.reason, invalid.message.clone()),
                generation,
                now(),
            );
            conditions::set(
                &mut status.conditions,
                Desired::yes(DEGRADED, invalid.reason, invalid.message),
                generation,
                now(),
            );
            status.next_schedule_time = None;
            if status != old || p.status.is_none() {
                apply_status(&api(&p, &ctx), &p, &status).await?;
            }
            ctx.metrics.reconciled(CONTROLLER, started.elapsed());
            return Ok(Action::await_change());
        }
    };
    let backups_api = Api::<Backup>::namespaced(ctx.client.clone(), &ns);
    let now_ts = now();
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now_ts);

    // Schedule.
    if !p.spec.suspend {
        let since = status
            .last_schedule_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(created);
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
            match backups_api.create(&PostParams::default(), &backup).await {
                Ok(_) => info!(backup = %backup_name, "scheduled backup created"),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(Error::kube("create a scheduled Backup")(e)),
            }
            status.last_schedule_time = Some(Time(due));
        }
    }
    status.next_schedule_time = if p.spec.suspend {
        None
    } else {
        checked.schedule.next_after(now_ts).map(Time)
    };

    // What exists now.
    let mut backups: Vec<Backup> = backups_api
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list Backups"))?
        .items
        .into_iter()
        .filter(|b| b.spec.policy == name)
        .collect();
    backups.sort_by_key(|b| b.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let finished_at = |b: &Backup| {
        let s = b.status.as_ref();
        s.and_then(|s| s.completed_at.as_ref().map(|t| t.0))
            .or_else(|| b.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now_ts)
    };
    let phase = |b: &Backup| b.status.as_ref().map(|s| s.phase).unwrap_or_default();

    // Restore drill.
    let mut drill_result: Option<Desired> = None;
    if let (Some(verify), Some(spec)) = (&checked.verify, &p.spec.verify) {
        let since = status
            .last_verify_schedule_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(created);
        // A drill asked for by hand counts as one due at the time it was asked (at most now).
        let asked = p
            .annotations()
            .get(VERIFY_ANNOTATION)
            .and_then(|v| v.parse::<jiff::Timestamp>().ok())
            .filter(|asked| *asked > since)
            .map(|asked| asked.min(now_ts));
        if let Some(due) = verify.due(since, now_ts).max(asked) {
            status.last_verify_schedule_time = Some(Time(due));
            let newest = backups
                .iter()
                .rev()
                .find(|b| phase(b) == BackupPhase::Succeeded);
            drill_result = Some(match newest {
                None => Desired::no(
                    VERIFIED,
                    "NothingToVerify",
                    "no backup has succeeded yet, so the restore drill had nothing to restore",
                ),
                Some(b) => {
                    let result = drill(&ctx, &p, spec, b).await?;
                    let mut bs = b.status.clone().unwrap_or_default();
                    let verified_now = result.is_ok();
                    let message = match &result {
                        Ok(checks) => {
                            bs.checks = checks.clone();
                            let into = match &spec.scratch_database {
                                Some(db) => format!("into Database {ns}/{db}"),
                                None => "its whole archive".to_string(),
                            };
                            format!(
                                "restored {} {into} and {} checks passed",
                                b.name_any(),
                                checks.len()
                            )
                        }
                        Err((_, m, checks)) => {
                            bs.checks = checks.clone();
                            format!("restore drill of {} failed: {m}", b.name_any())
                        }
                    };
                    if verified_now {
                        bs.verified = true;
                        bs.verified_at = Some(Time(now()));
                        status.last_verified_time = bs.verified_at.clone();
                        ctx.metrics.backup_verified(labels.clone(), ts(now()));
                        ctx.event(&p, EventType::Normal, "Verified", message.clone())
                            .await;
                    } else {
                        ctx.event(
                            &p,
                            EventType::Warning,
                            "RestoreDrillFailed",
                            message.clone(),
                        )
                        .await;
                    }
                    apply_status(&Api::<Backup>::namespaced(ctx.client.clone(), &ns), b, &bs)
                        .await?;
                    crate::history::record_backup(&ctx, b, &bs).await;
                    match result {
                        Ok(_) => Desired::yes(VERIFIED, "Verified", message),
                        Err((reason, _, _)) => {
                            ctx.metrics.backup_failed(labels.clone(), reason);
                            Desired::no(VERIFIED, reason, message)
                        }
                    }
                }
            });
        }
        status.next_verify_time = verify.next_after(now_ts).map(Time);
    } else {
        status.next_verify_time = None;
        conditions::remove(&mut status.conditions, VERIFIED);
    }
    if let Some(d) = drill_result {
        conditions::set(&mut status.conditions, d, generation, now());
    }

    // Retention: re-read, the drill may have verified one.
    let backups: Vec<Backup> = {
        let mut list: Vec<Backup> = backups_api
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("list Backups"))?
            .items
            .into_iter()
            .filter(|b| b.spec.policy == name)
            .collect();
        list.sort_by_key(|b| b.metadata.creation_timestamp.as_ref().map(|t| t.0));
        list
    };
    let candidates: Vec<Candidate> = backups
        .iter()
        .filter(|b| matches!(phase(b), BackupPhase::Succeeded | BackupPhase::Failed))
        .map(|b| Candidate {
            name: b.name_any(),
            completed_at: finished_at(b),
            succeeded: phase(b) == BackupPhase::Succeeded,
            verified: b.status.as_ref().is_some_and(|s| s.verified),
        })
        .collect();
    let doomed = retention::to_delete(&candidates, &checked.rules, now_ts, checked.schedule.tz());
    let mut retention_problem = None;
    if !doomed.is_empty() {
        match resolve::destination(&ctx, &p).await? {
            Err(invalid) => retention_problem = Some(invalid.message),
            Ok(dest) => {
                for b in backups.iter().filter(|b| doomed.contains(&b.name_any())) {
                    if let Some(key) = b.status.as_ref().and_then(|s| s.object_key.as_deref())
                        && let Err(e) = dest.store.discard(key).await
                    {
                        retention_problem = Some(format!("retention could not delete {key}: {e}"));
                        continue;
                    }
                    match backups_api
                        .delete(&b.name_any(), &DeleteParams::default())
                        .await
                    {
                        Ok(_) | Err(kube::Error::Api(_)) => {}
                        Err(e) => return Err(Error::kube("delete a Backup")(e)),
                    }
                    crate::history::record_deleted(&ctx, b).await;
                    info!(backup = %b.name_any(), "retention deleted a backup");
                }
            }
        }
    }

    // Status.
    let kept: Vec<&Backup> = backups
        .iter()
        .filter(|b| !doomed.contains(&b.name_any()))
        .collect();
    status.last_backup = kept.last().map(|b| b.name_any());
    let newest_ok = kept
        .iter()
        .rev()
        .find(|b| phase(b) == BackupPhase::Succeeded);
    status.last_successful_time = newest_ok.and_then(|b| b.status.as_ref()?.completed_at.clone());
    if let Some(b) = newest_ok
        && let Some(s) = &b.status
    {
        ctx.metrics.backup_succeeded(
            labels.clone(),
            ts(finished_at(b)),
            s.encrypted_bytes
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0),
            s.duration_seconds.unwrap_or(0.0),
        );
    }
    if let Some(t) = kept
        .iter()
        .filter_map(|b| b.status.as_ref()?.verified_at.as_ref())
        .map(|t| t.0)
        .max()
    {
        status.last_verified_time = Some(Time(t));
        ctx.metrics.backup_verified(labels.clone(), ts(t));
    }
    let succeeded = kept
        .iter()
        .filter(|b| phase(b) == BackupPhase::Succeeded)
        .count();
    let verified = kept
        .iter()
        .filter(|b| b.status.as_ref().is_some_and(|s| s.verified))
        .count();
    let next = status
        .next_schedule_time
        .as_ref()
        .map(|t| format!("next backup at {}", t.0))
        .unwrap_or_else(|| "suspended".into());
    let history = if ctx.history.is_some() {
        ""
    } else {
        "; backup history is not recorded (the operator has no --history-database-url)"
    };
    let message =
        format!("{next}; {succeeded} successful backups kept, {verified} verified{history}");
    // What the next run would need, checked now rather than at 3 am.
    let problem = match source_problem(&ctx, &p).await? {
        Some(invalid) => Some(invalid),
        // The Secret only: the S3 client is built when a run or retention needs it.
        None => resolve::credentials(&ctx, &p).await?.err(),
    };
    match problem {
        Some(invalid) => {
            let message = format!("{} ({next})", invalid.message);
            conditions::set(
                &mut status.conditions,
                Desired::no(READY, invalid.reason, message.clone()),
                generation,
                now(),
            );
            conditions::set(
                &mut status.conditions,
                Desired::yes(DEGRADED, invalid.reason, message),
                generation,
                now(),
            );
        }
        None => {
            conditions::set(
                &mut status.conditions,
                Desired::yes(READY, "Scheduled", message),
                generation,
                now(),
            );
            match retention_problem {
                Some(m) => conditions::set(
                    &mut status.conditions,
                    Desired::yes(DEGRADED, "RetentionFailed", m),
                    generation,
                    now(),
                ),
                None => conditions::remove(&mut status.conditions, DEGRADED),
            }
        }
    }
    if status != old || p.status.is_none() {
        apply_status(&api(&p, &ctx), &p, &status).await?;
    }
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    ctx.succeeded(&super::key(&p));

    let wake = [
        status.next_schedule_time.as_ref(),
        status.next_verify_time.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|t| Duration::from_secs_f64(t.0.duration_since(now()).as_secs_f64().max(1.0)))
    .min()
    .unwrap_or(RESYNC)
    .min(RESYNC);
    Ok(Action::requeue(wake))
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

type DrillFailure = (&'static str, String, Vec<VerificationCheck>);

/// Restores `backup` into the scratch database and runs the verification queries.
async fn drill(
    ctx: &Context,
    p: &BackupPolicy,
    spec: &homeplane_crds::backup::Verification,
    backup: &Backup,
) -> Result<Result<Vec<VerificationCheck>, DrillFailure>, Error> {
    let ns = p.namespace().unwrap_or_default();
    let fail = |reason: &'static str, message: String| Ok(Err((reason, message, Vec::new())));
    let dest = match resolve::destination(ctx, p).await? {
        Ok(d) => d,
        Err(invalid) => return fail(invalid.reason, invalid.message),
    };
    let Some(status) = backup.status.as_ref() else {
        return fail("NothingToVerify", "the backup has no status".into());
    };
    let Some(key) = status.object_key.as_deref() else {
        return fail("NothingToVerify", "the backup has no object".into());
    };
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&spec.identity_secret)
        .await
        .map_err(Error::kube("read the identity Secret"))?;
    let Some(text) = secret
        .as_ref()
        .and_then(|s| super::database::secret_value(s, "identity"))
    else {
        return fail(
            "IdentitySecretMissing",
            format!(
                "Secret {ns}/{} with key identity (an age identity, AGE-SECRET-KEY-1...) is missing",
                spec.identity_secret
            ),
        );
    };
    let identities = match crypto::parse_identities(&text) {
        Ok(ids) => ids,
        Err(e) => {
            return fail(
                "InvalidIdentity",
                format!("Secret {ns}/{}: {e}", spec.identity_secret),
            );
        }
    };
    let Some(scratch) = spec.scratch_database.as_deref() else {
        return Ok(drill_archive(&dest, key, identities, status.sha256.as_deref(), spec).await);
    };
    let conn = match resolve::database(ctx, &ns, scratch, None).await? {
        Ok(c) => c,
        Err(invalid) => return fail(invalid.reason, invalid.message),
    };
    let (stdin, restore_exit) = match postgres::pg_restore(&conn, true) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                "RestoreFailed",
                format!("pg_restore could not be started: {e}"),
            );
        }
    };
    match pipeline::restore(
        &dest.store,
        key,
        identities,
        status.sha256.as_deref(),
        stdin,
    )
    .await
    {
        Ok((_, stdin)) => drop(stdin),
        Err(e) => {
            restore_exit.kill();
            return fail(e.reason(), e.to_string());
        }
    }
    if let Err(m) = restore_exit.wait().await {
        return fail("RestoreFailed", m);
    }
    Ok(run_checks(&conn, spec).await)
}

/// The drill of a PVC backup: download, verify the checksum, decrypt, decompress and read the
/// whole archive (every header and every file's data to its end); it must hold at least
/// `minFiles` files.
async fn drill_archive(
    dest: &resolve::Destination,
    key: &str,
    identities: Vec<crypto::Identity>,
    sha256: Option<&str>,
    spec: &homeplane_crds::backup::Verification,
) -> Result<Vec<VerificationCheck>, DrillFailure> {
    use homeplane_backups::archive;
    let (sink, read) = archive::spawn_reader(|input| archive::check(input));
    let restored = pipeline::restore(&dest.store, key, identities, sha256, sink).await;
    let read = read.await;
    if let Err(e) = restored {
        return Err((e.reason(), e.to_string(), Vec::new()));
    }
    let stats = match read {
        Ok(Ok(stats)) => stats,
        Ok(Err(e)) => return Err(("Damaged", e.to_string(), Vec::new())),
        Err(e) => return Err(("Internal", e.to_string(), Vec::new())),
    };
    let min = spec.min_files.unwrap_or(1);
    let files = i64::try_from(stats.files).unwrap_or(i64::MAX);
    let checks = vec![VerificationCheck {
        name: "files".into(),
        value: Some(files),
        min,
        passed: files >= min,
    }];
    if files >= min {
        Ok(checks)
    } else {
        Err((
            "VerificationFailed",
            format!("the archive holds {files} files (at least {min} expected)"),
            checks,
        ))
    }
}

/// Runs the verification queries read-only on the restored database.
async fn run_checks(
    conn: &PgConn,
    spec: &homeplane_crds::backup::Verification,
) -> Result<Vec<VerificationCheck>, DrillFailure> {
    let options = sqlx::postgres::PgConnectOptions::new()
        .host(&conn.host)
        .port(conn.port)
        .username(&conn.user)
        .password(&conn.password)
        .database(&conn.dbname)
        .ssl_mode(
            conn.sslmode
                .parse()
                .unwrap_or(sqlx::postgres::PgSslMode::Prefer),
        )
        .application_name("homeplane-restore-drill");
    let mut db = sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(|e| {
            (
                "VerificationFailed",
                format!("connecting to the scratch database failed: {e}"),
                Vec::new(),
            )
        })?;
    let mut checks = Vec::new();
    let mut failed = Vec::new();
    for q in &spec.queries {
        let sql = format!("SELECT ({})::bigint", q.sql.trim().trim_end_matches(';'));
        let value: Result<Option<i64>, sqlx::Error> = async {
            let mut tx = db.begin().await?;
            sqlx::query("SET TRANSACTION READ ONLY")
                .execute(&mut *tx)
                .await?;
            // The owner's own query, run read-only on the scratch database.
            let v: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_one(&mut *tx)
                .await?;
            tx.rollback().await?;
            Ok(v)
        }
        .await;
        let (value, passed) = match value {
            Ok(v) => (v, v.is_some_and(|v| v >= q.min)),
            Err(e) => {
                warn!(check = %q.name, error = %e, "a verification query failed");
                failed.push(format!("{} failed: {e}", q.name));
                (None, false)
            }
        };
        if passed {
        } else if value.is_some() {
            failed.push(format!(
                "{} returned {} (at least {} expected)",
                q.name,
                value.unwrap_or_default(),
                q.min
            ));
        }
        checks.push(VerificationCheck {
            name: q.name.clone(),
            value,
            min: q.min,
            passed,
        });
    }
    let _ = db.close().await;
    if failed.is_empty() {
        Ok(checks)
    } else {
        Err(("VerificationFailed", failed.join("; "), checks))
    }
}
