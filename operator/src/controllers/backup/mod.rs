//! The Backup controller: one Backup object is one run. A new Backup (made by a policy's
//! schedule or by `kubectl create`) is run at once: dereference (policy, bucket credentials,
//! source database and role) -> status `Running` with the object key -> pg_dump streamed
//! through the pipeline -> `Succeeded` only after the upload was completed and checked, else
//! `Failed` with the reason (and nothing that looks complete left in the bucket). A Backup found
//! `Running` when it is reconciled was interrupted (the operator stopped mid-run: a run lives
//! inside one reconciliation): whatever it uploaded is removed and it is marked `Failed`.

pub mod resolve;

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use homeplane_backups::manifest::SourceInfo;
use homeplane_backups::pipeline::{self, BackupRequest};
use homeplane_backups::postgres;
use homeplane_crds::backup::{Backup, BackupPhase, BackupPolicy, BackupStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    Controller::new(ctx.watched::<Backup>(), watcher::Config::default())
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

/// The object key of a run: `<prefix><namespace>/<policy>/<time>-<backup>.pgdump[.zst].age`.
pub fn object_key(
    prefix: &str,
    ns: &str,
    policy: &str,
    backup: &str,
    zstd: bool,
    at: jiff::Timestamp,
) -> String {
    let stamp = at.strftime("%Y%m%dT%H%M%SZ");
    let ext = if zstd { "pgdump.zst.age" } else { "pgdump.age" };
    format!("{prefix}{ns}/{policy}/{stamp}-{backup}.{ext}")
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
        BackupPhase::Running => interrupted(&b, &ctx, status).await?,
        BackupPhase::Pending => start(&b, &ctx, status).await?,
    };
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    ctx.succeeded(&super::key(&b));
    Ok(action)
}

/// Marks an interrupted run failed after removing what it uploaded.
async fn interrupted(b: &Backup, ctx: &Context, status: BackupStatus) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let policy = Api::<BackupPolicy>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&b.spec.policy)
        .await
        .map_err(Error::kube("read the BackupPolicy"))?;
    let mut cleaned = "";
    if let (Some(policy), Some(key)) = (policy, status.object_key.as_deref())
        && let Ok(dest) = resolve::destination(ctx, &policy).await?
    {
        cleaned = match dest.store.discard(key).await {
            Ok(()) => " What it had uploaded was removed.",
            Err(e) => {
                warn!(error = %e, "removing the upload of an interrupted backup failed");
                " Removing what it had uploaded failed; retention removes it later."
            }
        };
    }
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
    let Some(source) = policy.spec.source.database.as_ref() else {
        let invalid = Invalid {
            reason: "NotImplemented",
            message: "PVC sources are not implemented yet; back up a Database".into(),
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
        matches!(dest.compress, homeplane_backups::crypto::Compress::Zstd(_)),
        started_at,
    );
    status.phase = BackupPhase::Running;
    status.started_at = Some(Time(started_at));
    status.object_key = Some(key.clone());
    status.observed_generation = b.metadata.generation;
    let message = format!(
        "Dumping {ns}/{} and uploading to {}/{key}",
        source.name,
        dest.store.bucket()
    );
    conditions::set(
        &mut status.conditions,
        Desired::no(READY, "Running", message),
        b.metadata.generation,
        now(),
    );
    apply_status(&api(b, ctx), b, &status).await?;
    info!(key = %key, "backup started");

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
    let labels = PolicyLabels {
        namespace: ns.clone(),
        policy: policy.name_any(),
    };
    match outcome {
        Ok(report) => {
            let m = report.manifest;
            let done = now();
            status.phase = BackupPhase::Succeeded;
            status.completed_at = Some(Time(done));
            status.duration_seconds = Some((seconds * 100.0).round() / 100.0);
            status.source_bytes = i64::try_from(m.source_bytes).ok();
            status.encrypted_bytes = i64::try_from(m.encrypted_bytes).ok();
            status.size = Some(human_size(m.encrypted_bytes));
            status.sha256 = Some(m.sha256.clone());
            status.recipients = m.recipients.clone();
            let message = format!(
                "Uploaded {} ({} before compression and encryption) to {}/{key} in {seconds:.1}s; size and SHA-256 checked",
                human_size(m.encrypted_bytes),
                human_size(m.source_bytes),
                dest.store.bucket()
            );
            conditions::set(
                &mut status.conditions,
                Desired::yes(READY, "Succeeded", message.clone()),
                b.metadata.generation,
                now(),
            );
            conditions::remove(&mut status.conditions, DEGRADED);
            apply_status(&api(b, ctx), b, &status).await?;
            ctx.metrics.backup_succeeded(
                labels,
                done.as_millisecond() as f64 / 1000.0,
                m.encrypted_bytes,
                seconds,
            );
            info!(key = %key, bytes = m.encrypted_bytes, seconds, "backup succeeded");
            ctx.event(b, EventType::Normal, "Succeeded", message).await;
            crate::history::record_backup(ctx, b, &status).await;
        }
        Err((reason, message)) => {
            ctx.metrics.backup_failed(labels, reason);
            finish_failed(b, ctx, status, reason, message).await?;
        }
    }
    Ok(Action::await_change())
}

async fn fail_invalid(
    b: &Backup,
    ctx: &Context,
    status: BackupStatus,
    invalid: Invalid,
) -> Result<Action, Error> {
    ctx.metrics.backup_failed(
        PolicyLabels {
            namespace: b.namespace().unwrap_or_default(),
            policy: b.spec.policy.clone(),
        },
        invalid.reason,
    );
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
            object_key("r2/", "homelab", "postgres", "nightly-1", true, at),
            "r2/homelab/postgres/20261124T070509Z-nightly-1.pgdump.zst.age"
        );
        assert!(object_key("", "a", "b", "c", false, at).ends_with("-c.pgdump.age"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }
}
