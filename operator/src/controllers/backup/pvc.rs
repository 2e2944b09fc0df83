//! A volume's run: a Job ([`super::job`]) archives the claim on the node that uses it, and the
//! run follows the Job. The Job's word is a claim to check, not a fact: when it says it
//! succeeded, the object and its manifest are checked in the bucket before the Backup is
//! `Succeeded`; when it fails, its own reason (or OOM, deadline, exit code) is reported and
//! whatever it uploaded is removed.

use homeplane_backups::archive::JobReport;
use homeplane_backups::pipeline;
use homeplane_crds::backup::{Backup, BackupPolicy, BackupStatus};
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, PersistentVolumeClaim, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};

use super::resolve::{self, Destination, Invalid};
use super::{JOB_POLL, discard, discard_in, fail, job, mark_running, object_key, succeed};
use crate::controllers::{Context, Error, now};
use crate::reconcile::Outcome;

/// Starts the Job that archives `claim`.
pub async fn start(
    b: &Backup,
    ctx: &Context,
    status: &mut BackupStatus,
    policy: &BackupPolicy,
    dest: &Destination,
    claim: &str,
) -> Result<Outcome, Error> {
    let ns = b.namespace().unwrap_or_default();
    let consumer = match usable_claim(ctx, &ns, claim, policy).await? {
        Ok(consumer) => consumer,
        Err(invalid) => return Ok(fail(b, ctx, status, invalid.reason, invalid.message).await),
    };
    let zstd = matches!(dest.compress, homeplane_backups::crypto::Compress::Zstd(_));
    let key = object_key(
        &dest.prefix,
        &ns,
        &policy.name_any(),
        &b.name_any(),
        "tar",
        zstd,
        now(),
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
    let key = match create(b, ctx, &built, key).await? {
        Ok(key) => key,
        Err(invalid) => return Ok(fail(b, ctx, status, invalid.reason, invalid.message).await),
    };
    let place = consumer
        .map(|c| format!(" on node {} (where the claim is in use)", c.node))
        .unwrap_or_default();
    let message = format!(
        "Job {name} archives PersistentVolumeClaim {ns}/{claim}{place} and uploads it to {}/{key}",
        dest.store.bucket()
    );
    mark_running(b, ctx, status, &key, Some(name), message.clone()).await?;
    Ok(Outcome::progressing("Running", message).after(JOB_POLL))
}

/// The claim and where it is used now; the error says why no Job could mount it.
async fn usable_claim(
    ctx: &Context,
    ns: &str,
    claim: &str,
    policy: &BackupPolicy,
) -> Result<Result<Option<job::Consumer>, Invalid>, Error> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
        .get_opt(claim)
        .await
        .map_err(Error::kube("read the PersistentVolumeClaim"))?;
    let Some(pvc) = pvc else {
        return Ok(Err(Invalid {
            reason: "SourceNotFound",
            message: format!(
                "PersistentVolumeClaim {ns}/{claim} does not exist; spec.source.pvc.claimName of BackupPolicy {ns}/{} must name a claim in the same namespace",
                policy.name_any()
            ),
        }));
    };
    let consumer = consumer(ctx, ns, claim).await?;
    let exclusive = pvc
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .is_some_and(|m| m.iter().any(|m| m == "ReadWriteOncePod"));
    if let (true, Some(user)) = (exclusive, consumer.as_ref()) {
        return Ok(Err(Invalid {
            reason: "ClaimInUse",
            message: format!(
                "PersistentVolumeClaim {ns}/{claim} is ReadWriteOncePod and pod {} uses it, so no backup Job can mount it; stop the pod for the backup or use ReadWriteOnce",
                user.pod
            ),
        }));
    }
    Ok(Ok(consumer))
}

/// Creates the Job; returns the object key the run writes. A Job made by an earlier pass that
/// could not record it is adopted, with the key it writes.
async fn create(
    b: &Backup,
    ctx: &Context,
    built: &Job,
    key: String,
) -> Result<Result<String, Invalid>, Error> {
    let ns = b.namespace().unwrap_or_default();
    let name = built.name_any();
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &ns);
    match jobs.create(&PostParams::default(), built).await {
        Ok(_) => Ok(Ok(key)),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = jobs
                .get(&name)
                .await
                .map_err(Error::kube("read the backup Job"))?;
            let ours = existing
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == b.metadata.uid.as_ref());
            Ok(job_object_key(&existing).filter(|_| ours).ok_or_else(|| Invalid {
                reason: "JobConflict",
                message: format!(
                    "Job {ns}/{name} exists and does not belong to this Backup; delete it or create the Backup under another name"
                ),
            }))
        }
        Err(kube::Error::Api(e)) => Ok(Err(Invalid {
            reason: "JobRejected",
            message: format!("the API server refused the backup Job: {}", e.message),
        })),
        Err(e) => Err(Error::kube("create the backup Job")(e)),
    }
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
    let lp = ListParams::default().fields("status.phase=Running");
    let api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    let action = "list the pods that may use the claim";
    let pods = crate::controllers::list_capped(&api, lp, action).await?;
    Ok(pods.into_iter().find_map(|p| {
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

/// Follows the Job of a running volume backup.
pub async fn follow(
    b: &Backup,
    ctx: &Context,
    status: &mut BackupStatus,
) -> Result<Outcome, Error> {
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
        return Ok(fail(b, ctx, status, "JobDeleted", message).await);
    };
    let conditions = found.status.as_ref().and_then(|s| s.conditions.clone());
    let ended = conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
    let Some(ended) = ended else {
        return still_running(ctx, status, &ns, &name).await;
    };
    let end = crate::controllers::job_container_end(ctx, &ns, &name, job::CONTAINER).await?;
    let report: Option<JobReport> = end
        .as_ref()
        .and_then(|t| t.message.as_deref())
        .and_then(|m| serde_json::from_str(m).ok());
    match ended.type_.as_str() {
        "Complete" => check(b, ctx, status, report).await,
        _ => job_failed(b, ctx, status, &ended, end.as_ref(), report.as_ref()).await,
    }
}

/// The Job said it succeeded: believe it only once the bucket holds the object, its manifest,
/// its size and its checksum (the one the Job reported, when it did).
async fn check(
    b: &Backup,
    ctx: &Context,
    status: &mut BackupStatus,
    report: Option<JobReport>,
) -> Result<Outcome, Error> {
    let ns = b.namespace().unwrap_or_default();
    let name = status.job.clone().unwrap_or_default();
    let key = status.object_key.clone().unwrap_or_default();
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
        Err(invalid) => return Ok(fail(b, ctx, status, invalid.reason, invalid.message).await),
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
    Ok(match checked {
        Ok(m) => {
            let archive = report.and_then(|r| r.archive);
            succeed(b, ctx, status, &m, dest.store.bucket(), archive).await
        }
        Err((reason, message)) => {
            let cleaned = discard_in(&dest.store, &key).await;
            let message = format!(
                "Job {name} finished, but its backup does not check out: {message}.{cleaned}"
            );
            fail(b, ctx, status, reason, message).await
        }
    })
}

/// The Job failed: say why, in the pod's words when it gave any, and remove what it uploaded.
async fn job_failed(
    b: &Backup,
    ctx: &Context,
    status: &mut BackupStatus,
    ended: &JobCondition,
    end: Option<&ContainerStateTerminated>,
    report: Option<&JobReport>,
) -> Result<Outcome, Error> {
    let name = status.job.clone().unwrap_or_default();
    let key = status.object_key.clone().unwrap_or_default();
    let oom = end.is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
    let limit = match oom {
        true => part_plan(ctx, b)
            .await?
            .map(|plan| format!(" (limit {} MiB)", job::memory_bytes(plan) >> 20)),
        false => None,
    };
    let (reason, message) = explain(&name, ended, end, report, oom, limit);
    let cleaned = discard(b, ctx, &key).await?;
    Ok(fail(b, ctx, status, reason, format!("{message}.{cleaned}")).await)
}

/// Why a backup Job failed: its own report, OOM, the deadline, its exit code, or the Job's word.
fn explain(
    name: &str,
    ended: &JobCondition,
    end: Option<&ContainerStateTerminated>,
    report: Option<&JobReport>,
    oom: bool,
    limit: Option<String>,
) -> (&'static str, String) {
    if let Some(JobReport {
        reason: Some(reason),
        message: Some(message),
        ..
    }) = report
    {
        let known = homeplane_backups::pipeline::known_reason(reason).unwrap_or("JobFailed");
        return (known, message.clone());
    }
    if oom {
        let limit = limit.unwrap_or_default();
        return (
            "OutOfMemory",
            format!(
                "the backup container ran out of memory{limit}; its limit follows spec.destination.partSizeMiB × concurrency"
            ),
        );
    }
    if ended.reason.as_deref() == Some("DeadlineExceeded") {
        let hours = job::DEADLINE_SECONDS / 3600;
        let message =
            format!("the backup did not finish within {hours} hours and its Job was stopped");
        return ("DeadlineExceeded", message);
    }
    match end {
        Some(t) => {
            let why = t
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            let message = format!("the backup container exited with code {}{why}", t.exit_code);
            ("JobFailed", message)
        }
        None => {
            let why = ended
                .message
                .clone()
                .unwrap_or_else(|| "no reason given".into());
            ("JobFailed", format!("Job {name} failed: {why}"))
        }
    }
}

/// The policy's part plan, if the policy still exists and is valid.
async fn part_plan(
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
    ctx: &Context,
    status: &BackupStatus,
    ns: &str,
    name: &str,
) -> Result<Outcome, Error> {
    let selector = format!("batch.kubernetes.io/job-name={name}");
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list the backup Job's pods"))?;
    let unschedulable = pods.items.iter().find_map(|p| {
        let conditions = p.status.as_ref()?.conditions.as_ref()?;
        conditions
            .iter()
            .find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
            .map(|c| c.message.clone().unwrap_or_default())
    });
    if let Some(why) = unschedulable {
        let message = format!("Job {name} cannot start: {why}");
        return Ok(Outcome::progressing("Unschedulable", message).after(JOB_POLL));
    }
    let current = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::conditions::READY && c.reason == "Running")
        .map(|c| c.message.clone())
        .unwrap_or_else(|| format!("Job {name} is running"));
    Ok(Outcome::progressing("Running", current).after(JOB_POLL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_a_job_are_known_ones() {
        let failed = JobCondition {
            type_: "Failed".into(),
            status: "True".into(),
            ..JobCondition::default()
        };
        let report = |reason: &str| JobReport {
            object_key: "k".into(),
            sha256: None,
            encrypted_bytes: None,
            archive: None,
            reason: Some(reason.into()),
            message: Some("m".into()),
        };
        let known = explain(
            "j",
            &failed,
            None,
            Some(&report("SourceFailed")),
            false,
            None,
        );
        assert_eq!(known.0, "SourceFailed");
        let made_up = explain("j", &failed, None, Some(&report("made up")), false, None);
        assert_eq!(made_up.0, "JobFailed");
        let deadline = JobCondition {
            reason: Some("DeadlineExceeded".into()),
            ..failed.clone()
        };
        assert_eq!(
            explain("j", &deadline, None, None, false, None).0,
            "DeadlineExceeded"
        );
        assert_eq!(
            explain("j", &failed, None, None, true, None).0,
            "OutOfMemory"
        );
    }
}
