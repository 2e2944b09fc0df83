//! The Backup controller: one Backup object is one run. A new Backup (made by a policy's
//! schedule or by `kubectl create`) is run at once: dereference (policy, bucket credentials,
//! source) -> status `Running` with the object key -> the source streamed through the pipeline
//! -> `Succeeded` only after the upload was completed and checked, else `Failed` with the
//! reason (and nothing that looks complete left in the bucket).
//!
//! A Database source is dumped by the operator itself, inside one reconciliation: a Backup found
//! `Running` without a Job was interrupted (the operator stopped mid-run); whatever it uploaded
//! is removed and it is marked `Failed`. A PersistentVolumeClaim source is archived by a Job
//! ([`job`]) that mounts the claim and runs `homeplane backup pvc`; the run follows the Job, and
//! when the Job says it succeeded the operator checks the object and its manifest in the bucket
//! itself before the Backup is `Succeeded`.

pub mod job;
pub mod resolve;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use homeplane_backups::archive::{ArchiveStats, JobReport};
use homeplane_backups::manifest::{Manifest, SourceInfo};
use homeplane_backups::pipeline::{self, BackupRequest};
use homeplane_backups::postgres;
use homeplane_crds::backup::{ArchiveSummary, Backup, BackupPhase, BackupPolicy, BackupStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use super::{Context, Error, apply_status, error_policy, now};
use crate::conditions::{self, DEGRADED, Desired, READY};
use crate::metrics::PolicyLabels;
use resolve::Invalid;

const CONTROLLER: &str = "backup";
/// How often a running PVC backup's Job is looked at when nothing wakes the controller.
const JOB_POLL: Duration = Duration::from_secs(60);

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let jobs = watcher::Config::default().labels(job::RUN_LABEL);
    Controller::new(ctx.watched::<Backup>(), watcher::Config::default())
        .owns(ctx.watched::<Job>(), jobs)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile,
            |b, error, ctx| error_policy(CONTROLLER, b, error, ctx),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn api(b: &Backup, ctx: &Context) -> Api<Backup> {
    Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default())
}

/// The object key of a run: `<prefix><namespace>/<policy>/<time>-<backup>.<format>[.zst].age`,
/// where the format is `pgdump` or `tar`.
pub fn object_key(
    prefix: &str,
    ns: &str,
    policy: &str,
    backup: &str,
    format: &str,
    zstd: bool,
    at: jiff::Timestamp,
) -> String {
    let stamp = at.strftime("%Y%m%dT%H%M%SZ");
    let zst = if zstd { ".zst" } else { "" };
    format!("{prefix}{ns}/{policy}/{stamp}-{backup}.{format}{zst}.age")
}

/// Bytes in a short human form, e.g. `1.2 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[instrument(skip_all, fields(backup = %b.name_any(), namespace = b.namespace().unwrap_or_default()))]
async fn reconcile(b: Arc<Backup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // Build on the stored status, not a cached one that may predate our last write.
    let Some(b) = api(&b, &ctx)
        .get_opt(&b.name_any())
        .await
        .map_err(Error::kube("read the Backup"))?
    else {
        return Ok(Action::await_change());
    };
    let status = b.status.clone().unwrap_or_default();
    let action = match status.phase {
        BackupPhase::Succeeded | BackupPhase::Failed => Action::await_change(),
        BackupPhase::Running if status.job.is_some() => follow_job(&b, &ctx, status).await?,
        BackupPhase::Running => interrupted(&b, &ctx, status).await?,
        BackupPhase::Pending => start(&b, &ctx, status).await?,
    };
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    ctx.succeeded(&super::key(&b));
    Ok(action)
}

/// Marks an interrupted run failed after removing what it uploaded.
async fn interrupted(b: &Backup, ctx: &Context, status: BackupStatus) -> Result<Action, Error> {
    let key = status.object_key.clone().unwrap_or_default();
    let cleaned = discard(b, ctx, &key).await?;
    let message = format!(
        "The run was interrupted (the operator stopped while it ran).{cleaned} Create a new Backup to try again."
    );
    finish_failed(b, ctx, status, "Interrupted", message).await?;
    Ok(Action::await_change())
}

async fn start(b: &Backup, ctx: &Context, mut status: BackupStatus) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let Some(policy) = Api::<BackupPolicy>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&b.spec.policy)
        .await
        .map_err(Error::kube("read the BackupPolicy"))?
    else {
        let message = format!(
            "BackupPolicy {ns}/{} does not exist; create it (this Backup runs as soon as it does)",
            b.spec.policy
        );
        let mut pending = status.clone();
        conditions::set(
            &mut pending.conditions,
            Desired::no(READY, "PolicyNotFound", message),
            b.metadata.generation,
            now(),
        );
        if b.status.as_ref() != Some(&pending) {
            apply_status(&api(b, ctx), b, &pending).await?;
        }
        return Ok(Action::requeue(std::time::Duration::from_secs(30)));
    };
    let dest = match resolve::destination(ctx, &policy).await? {
        Ok(dest) => dest,
        Err(invalid) => return fail_invalid(b, ctx, status, invalid).await,
    };
    if let Some(pvc) = policy.spec.source.pvc.as_ref() {
        return start_pvc(b, ctx, status, &policy, &dest, &pvc.claim_name).await;
    }
    let Some(source) = policy.spec.source.database.as_ref() else {
        let invalid = Invalid {
            reason: "InvalidSource",
            message: format!(
                "BackupPolicy {ns}/{} names no source; set spec.source.database or spec.source.pvc",
                policy.name_any()
            ),
        };
        return fail_invalid(b, ctx, status, invalid).await;
    };
    let conn = match resolve::database(ctx, &ns, &source.name, source.role.as_deref()).await? {
        Ok(conn) => conn,
        Err(invalid) => return fail_invalid(b, ctx, status, invalid).await,
    };

    let started_at = now();
    let key = object_key(
        &dest.prefix,
        &ns,
        &policy.name_any(),
        &b.name_any(),
        "pgdump",
        matches!(dest.compress, homeplane_backups::crypto::Compress::Zstd(_)),
        started_at,
    );
    let message = format!(
        "Dumping {ns}/{} and uploading to {}/{key}",
        source.name,
        dest.store.bucket()
    );
    mark_running(b, ctx, &mut status, started_at, &key, None, message).await?;

    let clock = Instant::now();
    let outcome = match postgres::pg_dump(&conn) {
        Err(e) => Err((
            "SourceFailed",
            format!("pg_dump could not be started: {e}; is the PostgreSQL client installed?"),
        )),
        Ok(dump) => {
            let request = BackupRequest {
                key: key.clone(),
                recipients: dest.recipients.clone(),
                compress: dest.compress,
                plan: dest.plan,
                source: SourceInfo {
                    kind: "database".into(),
                    name: source.name.clone(),
                    namespace: Some(ns.clone()),
                    format: "pg_dump-custom".into(),
                },
            };
            pipeline::backup(&dest.store, dump, request)
                .await
                .map_err(|e| (e.reason(), e.to_string()))
        }
    };
    let seconds = clock.elapsed().as_secs_f64();
    match outcome {
        Ok(report) => {
            let bucket = dest.store.bucket().to_string();
            succeed(b, ctx, status, &report.manifest, &bucket, seconds, None).await?;
        }
        Err((reason, message)) => {
            ctx.metrics.backup_failed(policy_labels(b), reason);
            finish_failed(b, ctx, status, reason, message).await?;
        }
    }
    Ok(Action::await_change())
}

fn policy_labels(b: &Backup) -> PolicyLabels {
    PolicyLabels {
        namespace: b.namespace().unwrap_or_default(),
        policy: b.spec.policy.clone(),
    }
}

/// Records a checked backup: status, metrics, event and history.
async fn succeed(
    b: &Backup,
    ctx: &Context,
    mut status: BackupStatus,
    m: &Manifest,
    bucket: &str,
    seconds: f64,
    archive: Option<ArchiveStats>,
) -> Result<(), Error> {
    let done = now();
    status.phase = BackupPhase::Succeeded;
    status.completed_at = Some(Time(done));
    status.duration_seconds = Some((seconds * 100.0).round() / 100.0);
    status.source_bytes = i64::try_from(m.source_bytes).ok();
    status.encrypted_bytes = i64::try_from(m.encrypted_bytes).ok();
    status.size = Some(human_size(m.encrypted_bytes));
    status.sha256 = Some(m.sha256.clone());
    status.recipients = m.recipients.clone();
    let mut message = format!(
        "Uploaded {} ({} before compression and encryption) to {bucket}/{} in {seconds:.1}s; size and SHA-256 checked",
        human_size(m.encrypted_bytes),
        human_size(m.source_bytes),
        m.object_key,
    );
    if let Some(a) = &archive {
        message.push_str(&archive_note(a));
        status.archive = Some(summary(a));
    }
    conditions::set(
        &mut status.conditions,
        Desired::yes(READY, "Succeeded", message.clone()),
        b.metadata.generation,
        now(),
    );
    conditions::remove(&mut status.conditions, DEGRADED);
    apply_status(&api(b, ctx), b, &status).await?;
    ctx.metrics.backup_succeeded(
        policy_labels(b),
        done.as_millisecond() as f64 / 1000.0,
        m.encrypted_bytes,
        seconds,
    );
    info!(key = %m.object_key, bytes = m.encrypted_bytes, seconds, "backup succeeded");
    let changed = archive.as_ref().is_some_and(|a| a.changed.count > 0);
    if changed {
        // The backup is complete, but some files were being written while they were read.
        ctx.event(b, EventType::Warning, "FilesChanged", message)
            .await;
    } else {
        ctx.event(b, EventType::Normal, "Succeeded", message).await;
    }
    crate::history::record_backup(ctx, b, &status).await;
    Ok(())
}

fn summary(a: &ArchiveStats) -> ArchiveSummary {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    ArchiveSummary {
        files: n(a.files),
        directories: n(a.directories),
        symlinks: n(a.symlinks),
        bytes: n(a.bytes),
        changed: n(a.changed.count),
        skipped: n(a.skipped.count),
    }
}

/// What an archive held, for the condition message: counts, then what was irregular.
pub fn archive_note(a: &ArchiveStats) -> String {
    let mut note = format!(
        "; {} files, {} directories, {} symbolic links",
        a.files, a.directories, a.symlinks
    );
    if a.hard_links > 0 {
        note.push_str(&format!(", {} hard links", a.hard_links));
    }
    let named = |paths: &[String], count: u64| {
        let mut list = paths.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        if count > 3 {
            list.push_str(&format!(" and {} more", count - 3));
        }
        list
    };
    if a.changed.count > 0 {
        note.push_str(&format!(
            "; {} changed while they were read (their copies may be inconsistent; stop the writer or back up at a quiet time): {}",
            a.changed.count,
            named(&a.changed.paths, a.changed.count)
        ));
    }
    if a.skipped.count > 0 {
        note.push_str(&format!(
            "; {} sockets, FIFOs or devices not archived: {}",
            a.skipped.count,
            named(&a.skipped.paths, a.skipped.count)
        ));
    }
    if a.vanished.count > 0 {
        note.push_str(&format!(
            "; {} removed while the volume was read",
            a.vanished.count
        ));
    }
    note
}

/// Starts the Job that archives `claim`.
async fn start_pvc(
    b: &Backup,
    ctx: &Context,
    mut status: BackupStatus,
    policy: &BackupPolicy,
    dest: &resolve::Destination,
    claim: &str,
) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let pvc = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
        .get_opt(claim)
        .await
        .map_err(Error::kube("read the PersistentVolumeClaim"))?;
    let Some(pvc) = pvc else {
        let invalid = Invalid {
            reason: "SourceNotFound",
            message: format!(
                "PersistentVolumeClaim {ns}/{claim} does not exist; spec.source.pvc.claimName of BackupPolicy {ns}/{} must name a claim in the same namespace",
                policy.name_any()
            ),
        };
        return fail_invalid(b, ctx, status, invalid).await;
    };
    let consumer = consumer(ctx, &ns, claim).await?;
    let exclusive = pvc
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .is_some_and(|m| m.iter().any(|m| m == "ReadWriteOncePod"));
    if let (true, Some(user)) = (exclusive, consumer.as_ref()) {
        let invalid = Invalid {
            reason: "ClaimInUse",
            message: format!(
                "PersistentVolumeClaim {ns}/{claim} is ReadWriteOncePod and pod {} uses it, so no backup Job can mount it; stop the pod for the backup or use ReadWriteOnce",
                user.pod
            ),
        };
        return fail_invalid(b, ctx, status, invalid).await;
    }
    let started_at = now();
    let key = object_key(
        &dest.prefix,
        &ns,
        &policy.name_any(),
        &b.name_any(),
        "tar",
        matches!(dest.compress, homeplane_backups::crypto::Compress::Zstd(_)),
        started_at,
    );
    let built = job::build(job::PvcJob {
        backup: b,
        policy,
        claim,
        key: &key,
        image: &ctx.image,
        compress: dest.compress,
        plan: dest.plan,
        consumer: consumer.as_ref(),
    });
    let name = built.name_any();
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &ns);
    let key = match jobs.create(&PostParams::default(), &built).await {
        Ok(_) => key,
        // Created by an earlier reconciliation that could not record it: adopt it, with the
        // object key it writes.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = jobs
                .get(&name)
                .await
                .map_err(Error::kube("read the backup Job"))?;
            let ours = existing
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == b.metadata.uid.as_ref());
            match job_object_key(&existing).filter(|_| ours) {
                Some(key) => key,
                None => {
                    let invalid = Invalid {
                        reason: "JobConflict",
                        message: format!(
                            "Job {ns}/{name} exists and does not belong to this Backup; delete it or create the Backup under another name"
                        ),
                    };
                    return fail_invalid(b, ctx, status, invalid).await;
                }
            }
        }
        Err(kube::Error::Api(e)) => {
            let invalid = Invalid {
                reason: "JobRejected",
                message: format!("the API server refused the backup Job: {}", e.message),
            };
            return fail_invalid(b, ctx, status, invalid).await;
        }
        Err(e) => return Err(Error::kube("create the backup Job")(e)),
    };
    let place = consumer
        .map(|c| format!(" on node {} (where the claim is in use)", c.node))
        .unwrap_or_default();
    let message = format!(
        "Job {name} archives PersistentVolumeClaim {ns}/{claim}{place} and uploads it to {}/{key}",
        dest.store.bucket()
    );
    mark_running(b, ctx, &mut status, started_at, &key, Some(name), message).await?;
    Ok(Action::requeue(JOB_POLL))
}

/// Records that a run started: `Running`, the object key it writes and, for a volume, its Job.
async fn mark_running(
    b: &Backup,
    ctx: &Context,
    status: &mut BackupStatus,
    started_at: jiff::Timestamp,
    key: &str,
    job: Option<String>,
    message: String,
) -> Result<(), Error> {
    status.phase = BackupPhase::Running;
    status.started_at = Some(Time(started_at));
    status.object_key = Some(key.to_string());
    status.job = job.clone();
    status.observed_generation = b.metadata.generation;
    conditions::set(
        &mut status.conditions,
        Desired::no(READY, "Running", message),
        b.metadata.generation,
        now(),
    );
    apply_status(&api(b, ctx), b, status).await?;
    info!(key = %key, job = job.as_deref().unwrap_or(""), "backup started");
    Ok(())
}

/// The object key a backup Job writes (its `--object` argument).
fn job_object_key(job: &Job) -> Option<String> {
    let args = job
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .args
        .as_ref()?;
    let at = args.iter().position(|a| a == "--object")?;
    args.get(at + 1).cloned()
}

/// The node and tolerations of a running pod that mounts `claim`, if there is one.
async fn consumer(ctx: &Context, ns: &str, claim: &str) -> Result<Option<job::Consumer>, Error> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().fields("status.phase=Running"))
        .await
        .map_err(Error::kube("list the pods that may use the claim"))?;
    Ok(pods.items.into_iter().find_map(|p| {
        let spec = p.spec?;
        let mounts = spec.volumes.iter().flatten().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == claim)
        });
        let node = spec.node_name.filter(|_| mounts)?;
        Some(job::Consumer {
            pod: p.metadata.name.unwrap_or_default(),
            node,
            tolerations: spec.tolerations.unwrap_or_default(),
        })
    }))
}

/// Follows the Job of a running PVC backup.
async fn follow_job(b: &Backup, ctx: &Context, status: BackupStatus) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let name = status.job.clone().unwrap_or_default();
    let key = status.object_key.clone().unwrap_or_default();
    let Some(found) = Api::<Job>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&name)
        .await
        .map_err(Error::kube("read the backup Job"))?
    else {
        let cleaned = discard(b, ctx, &key).await?;
        let message = format!(
            "Job {ns}/{name} was deleted before it finished.{cleaned} Create a new Backup to try again."
        );
        ctx.metrics.backup_failed(policy_labels(b), "JobDeleted");
        finish_failed(b, ctx, status, "JobDeleted", message).await?;
        return Ok(Action::await_change());
    };
    let job_status = found.status.clone().unwrap_or_default();
    let ended = job_status
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
    let Some(ended) = ended else {
        return still_running(b, ctx, status, &ns, &name).await;
    };
    let end = super::job_container_end(ctx, &ns, &name, job::CONTAINER).await?;
    let report: Option<JobReport> = end
        .as_ref()
        .and_then(|t| t.message.as_deref())
        .and_then(|m| serde_json::from_str(m).ok());
    let seconds = status
        .started_at
        .as_ref()
        .map(|Time(t)| now().duration_since(*t).as_secs_f64())
        .unwrap_or(0.0);

    if ended.type_ == "Complete" {
        let policy = Api::<BackupPolicy>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&b.spec.policy)
            .await
            .map_err(Error::kube("read the BackupPolicy"))?;
        let dest = match policy {
            Some(p) => resolve::destination(ctx, &p).await?,
            None => Err(Invalid {
                reason: "PolicyNotFound",
                message: format!(
                    "BackupPolicy {ns}/{} was deleted while the backup ran; its bucket cannot be checked",
                    b.spec.policy
                ),
            }),
        };
        let dest = match dest {
            Ok(d) => d,
            Err(invalid) => return fail_invalid(b, ctx, status, invalid).await,
        };
        let checked = match pipeline::check_published(&dest.store, &key).await {
            Ok(m) => match report.as_ref().and_then(|r| r.sha256.as_ref()) {
                Some(reported) if *reported != m.sha256 => Err((
                    "ChecksumMismatch",
                    format!(
                        "the Job reported SHA-256 {reported} but the bucket's object records {}",
                        m.sha256
                    ),
                )),
                _ => Ok(m),
            },
            Err(e) => Err((e.reason(), e.to_string())),
        };
        return match checked {
            Ok(m) => {
                let archive = report.and_then(|r| r.archive);
                succeed(b, ctx, status, &m, dest.store.bucket(), seconds, archive).await?;
                Ok(Action::await_change())
            }
            Err((reason, message)) => {
                let cleaned = discard_in(&dest.store, &key).await;
                let message = format!(
                    "Job {name} finished, but its backup does not check out: {message}.{cleaned}"
                );
                ctx.metrics.backup_failed(policy_labels(b), reason);
                finish_failed(b, ctx, status, reason, message).await?;
                Ok(Action::await_change())
            }
        };
    }

    // The Job failed: say why, in the pod's words when it gave any.
    let oom = end
        .as_ref()
        .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
    let limit = match oom {
        true => resolve_plan(ctx, b)
            .await?
            .map(|plan| format!(" (limit {} MiB)", job::memory_bytes(plan) >> 20)),
        false => None,
    };
    let (reason, message): (&'static str, String) = match (&report, &end) {
        (
            Some(JobReport {
                reason: Some(reason),
                message: Some(message),
                ..
            }),
            _,
        ) => (known_reason(reason), message.clone()),
        _ if oom => (
            "OutOfMemory",
            format!(
                "the backup container ran out of memory{}; its limit follows spec.destination.partSizeMiB × concurrency",
                limit.unwrap_or_default()
            ),
        ),
        _ if ended.reason.as_deref() == Some("DeadlineExceeded") => (
            "DeadlineExceeded",
            format!(
                "the backup did not finish within {} hours and its Job was stopped",
                job::DEADLINE_SECONDS / 3600
            ),
        ),
        (_, Some(t)) => (
            "JobFailed",
            format!(
                "the backup container exited with code {}{}",
                t.exit_code,
                t.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        ),
        (_, None) => (
            "JobFailed",
            format!(
                "Job {name} failed: {}",
                ended
                    .message
                    .clone()
                    .unwrap_or_else(|| "no reason given".into())
            ),
        ),
    };
    let cleaned = discard(b, ctx, &key).await?;
    ctx.metrics.backup_failed(policy_labels(b), reason);
    finish_failed(b, ctx, status, reason, format!("{message}.{cleaned}")).await?;
    Ok(Action::await_change())
}

/// A reason the Job reported, as one of the pipeline's known reasons.
fn known_reason(reason: &str) -> &'static str {
    const KNOWN: [&str; 13] = [
        "SourceFailed",
        "EncryptionFailed",
        "SizeMismatch",
        "ChecksumMismatch",
        "TooManyParts",
        "NotUploaded",
        "Internal",
        "InvalidArguments",
        "EndpointUnreachable",
        "CredentialsRefused",
        "NotFound",
        "AlreadyExists",
        "S3Error",
    ];
    KNOWN
        .iter()
        .find(|k| **k == reason)
        .copied()
        .unwrap_or("JobFailed")
}

async fn resolve_plan(
    ctx: &Context,
    b: &Backup,
) -> Result<Option<homeplane_backups::PartPlan>, Error> {
    let ns = b.namespace().unwrap_or_default();
    Ok(Api::<BackupPolicy>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&b.spec.policy)
        .await
        .map_err(Error::kube("read the BackupPolicy"))?
        .and_then(|p| resolve::validate(&p).ok())
        .map(|(_, _, plan)| plan))
}

/// Keeps a running Job's Backup up to date: says when its pod cannot be scheduled.
async fn still_running(
    b: &Backup,
    ctx: &Context,
    mut status: BackupStatus,
    ns: &str,
    name: &str,
) -> Result<Action, Error> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
        .await
        .map_err(Error::kube("list the backup Job's pods"))?;
    let unschedulable = pods.items.iter().find_map(|p| {
        p.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
            .map(|c| c.message.clone().unwrap_or_default())
    });
    let desired = match unschedulable {
        Some(why) => Desired::no(
            READY,
            "Unschedulable",
            format!("Job {name} cannot start: {why}"),
        ),
        None => {
            let current = status
                .conditions
                .iter()
                .find(|c| c.type_ == READY)
                .filter(|c| c.reason == "Running")
                .map(|c| c.message.clone())
                .unwrap_or_else(|| format!("Job {name} is running"));
            Desired::no(READY, "Running", current)
        }
    };
    let before = status.clone();
    conditions::set(
        &mut status.conditions,
        desired,
        b.metadata.generation,
        now(),
    );
    if status != before {
        apply_status(&api(b, ctx), b, &status).await?;
    }
    Ok(Action::requeue(JOB_POLL))
}

/// Removes whatever a run may have left under `key`; says how that went, for a message.
async fn discard(b: &Backup, ctx: &Context, key: &str) -> Result<&'static str, Error> {
    if key.is_empty() {
        return Ok("");
    }
    let ns = b.namespace().unwrap_or_default();
    let Some(policy) = Api::<BackupPolicy>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&b.spec.policy)
        .await
        .map_err(Error::kube("read the BackupPolicy"))?
    else {
        return Ok("");
    };
    let Ok(dest) = resolve::destination(ctx, &policy).await? else {
        return Ok("");
    };
    Ok(discard_in(&dest.store, key).await)
}

/// Removes what a run left under `key` in `store`; says how that went, for a message.
async fn discard_in(store: &homeplane_backups::store::Store, key: &str) -> &'static str {
    match store.discard(key).await {
        Ok(()) => " What it had uploaded was removed.",
        Err(e) => {
            warn!(error = %e, "removing the upload of a failed backup failed");
            " Removing what it had uploaded failed; retention removes it later."
        }
    }
}

async fn fail_invalid(
    b: &Backup,
    ctx: &Context,
    status: BackupStatus,
    invalid: Invalid,
) -> Result<Action, Error> {
    ctx.metrics.backup_failed(policy_labels(b), invalid.reason);
    finish_failed(b, ctx, status, invalid.reason, invalid.message).await?;
    Ok(Action::await_change())
}

async fn finish_failed(
    b: &Backup,
    ctx: &Context,
    mut status: BackupStatus,
    reason: &'static str,
    message: String,
) -> Result<(), Error> {
    let done = now();
    status.phase = BackupPhase::Failed;
    status.completed_at = Some(Time(done));
    if let Some(Time(start)) = &status.started_at {
        let secs = done.duration_since(*start).as_secs_f64();
        status.duration_seconds = Some((secs * 100.0).round() / 100.0);
    }
    status.observed_generation = b.metadata.generation;
    conditions::set(
        &mut status.conditions,
        Desired::no(READY, reason, message.clone()),
        b.metadata.generation,
        now(),
    );
    conditions::set(
        &mut status.conditions,
        Desired::yes(DEGRADED, reason, message.clone()),
        b.metadata.generation,
        now(),
    );
    apply_status(&api(b, ctx), b, &status).await?;
    warn!(reason, %message, "backup failed");
    ctx.event(b, EventType::Warning, reason, message).await;
    crate::history::record_backup(ctx, b, &status).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_time_and_say_what_they_hold() {
        let at: jiff::Timestamp = "2026-11-24T07:05:09Z"
            .parse()
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(
            object_key(
                "r2/",
                "homelab",
                "postgres",
                "nightly-1",
                "pgdump",
                true,
                at
            ),
            "r2/homelab/postgres/20261124T070509Z-nightly-1.pgdump.zst.age"
        );
        assert!(object_key("", "a", "b", "c", "pgdump", false, at).ends_with("-c.pgdump.age"));
        assert!(object_key("", "a", "b", "c", "tar", true, at).ends_with("-c.tar.zst.age"));
    }

    #[test]
    fn archive_notes_name_what_was_irregular() {
        let mut a = ArchiveStats {
            files: 12,
            directories: 3,
            symlinks: 1,
            ..ArchiveStats::default()
        };
        assert_eq!(
            archive_note(&a),
            "; 12 files, 3 directories, 1 symbolic links"
        );
        a.changed.count = 5;
        a.changed.paths = (1..=5).map(|i| format!("db/{i}.wal")).collect();
        let note = archive_note(&a);
        assert!(
            note.contains("5 changed while they were read")
                && note.contains("db/1.wal, db/2.wal, db/3.wal and 2 more"),
            "{note}"
        );
    }

    #[test]
    fn reasons_from_a_job_are_known_ones() {
        assert_eq!(known_reason("SourceFailed"), "SourceFailed");
        assert_eq!(known_reason("made up by a container"), "JobFailed");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }
}
