//! The Backup controller: one Backup object is one run. A new Backup (made by a policy's
//! schedule or by `kubectl create`) is run at once. Pipeline: dereference (policy, bucket
//! credentials, source) -> status `Running` with the object key -> the run (a database dump
//! streamed through the pipeline inside the operator, within its memory budget, [`dump`]; or a
//! Job that archives a volume, [`pvc`]) -> `Succeeded` only after the upload was completed and
//! checked, else `Failed` with the reason (and nothing that looks complete left in the bucket).
//!
//! A database run lives inside one pass: a Backup found `Running` without a Job was interrupted
//! (the operator stopped or lost its lease mid-run); whatever it uploaded is removed and it is
//! marked `Failed`. A volume's run follows its Job, and when the Job says it succeeded the
//! operator checks the object and its manifest in the bucket itself.

pub mod budget;
mod dump;
pub mod job;
mod pvc;
pub mod resolve;

use std::sync::Arc;
use std::time::Duration;

use homeplane_backups::archive::ArchiveStats;
use homeplane_backups::manifest::Manifest;
use homeplane_crds::backup::{ArchiveSummary, Backup, BackupPhase, BackupPolicy, BackupStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::Controller;
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, Error, now};
use crate::metrics::PolicyLabels;
use crate::reconcile::{self, Outcome, Reconciler, watch};

/// How often a running volume backup's Job is looked at when nothing wakes the controller.
const JOB_POLL: Duration = Duration::from_secs(60);
/// How often a Backup whose policy does not exist (yet) is looked at again.
const POLICY_POLL: Duration = Duration::from_secs(30);

/// The Backup controller.
pub struct Backups;

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let jobs = watcher::Config::default().labels(job::RUN_LABEL);
    let controller =
        Controller::new(ctx.watched::<Backup>(), watch::config()).owns(ctx.watched::<Job>(), jobs);
    reconcile::run(Backups, controller, ctx, shutdown).await;
}

impl Reconciler for Backups {
    type Object = Backup;
    const NAME: &'static str = "backup";
    const RESYNC: Duration = JOB_POLL;
    /// A finished run's result exists only in its pass: it waits for the API server.
    const STATUS_PATIENCE: Duration = Duration::from_secs(180);

    fn settled(&self, b: &Backup) -> bool {
        let phase = b.status.as_ref().map(|s| s.phase);
        matches!(phase, Some(BackupPhase::Succeeded | BackupPhase::Failed))
    }

    async fn reconcile(
        &self,
        b: &Backup,
        status: &mut BackupStatus,
        ctx: &Context,
    ) -> Result<Outcome, Error> {
        match (status.phase, status.job.is_some()) {
            (BackupPhase::Running, true) => pvc::follow(b, ctx, status).await,
            (BackupPhase::Running, false) => interrupted(b, ctx, status).await,
            _ => start(b, ctx, status).await,
        }
    }
}

/// The BackupPolicy a Backup belongs to, if it exists.
async fn policy_of(b: &Backup, ctx: &Context) -> Result<Option<BackupPolicy>, Error> {
    Api::<BackupPolicy>::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default())
        .get_opt(&b.spec.policy)
        .await
        .map_err(Error::kube("read the BackupPolicy"))
}

/// Starts a run: its policy, bucket and source, then a dump or a volume Job.
async fn start(b: &Backup, ctx: &Context, status: &mut BackupStatus) -> Result<Outcome, Error> {
    let ns = b.namespace().unwrap_or_default();
    let Some(policy) = policy_of(b, ctx).await? else {
        let message = format!(
            "BackupPolicy {ns}/{} does not exist; create it (this Backup runs as soon as it does)",
            b.spec.policy
        );
        return Ok(Outcome::progressing("PolicyNotFound", message).after(POLICY_POLL));
    };
    let dest = match resolve::destination(ctx, &policy).await? {
        Ok(dest) => dest,
        Err(invalid) => return Ok(fail(b, ctx, status, invalid.reason, invalid.message).await),
    };
    if let Some(pvc) = policy.spec.source.pvc.as_ref() {
        return pvc::start(b, ctx, status, &policy, &dest, &pvc.claim_name).await;
    }
    let Some(source) = policy.spec.source.database.as_ref() else {
        let message = format!(
            "BackupPolicy {ns}/{} names no source; set spec.source.database or spec.source.pvc",
            policy.name_any()
        );
        return Ok(fail(b, ctx, status, "InvalidSource", message).await);
    };
    dump::run(b, ctx, status, &policy, &dest, source).await
}

/// Marks an interrupted run failed after removing what it uploaded.
async fn interrupted(
    b: &Backup,
    ctx: &Context,
    status: &mut BackupStatus,
) -> Result<Outcome, Error> {
    let key = status.object_key.clone().unwrap_or_default();
    let cleaned = discard(b, ctx, &key).await?;
    let message = format!(
        "The run was interrupted (the operator stopped or lost its lease while it ran).{cleaned} Create a new Backup to try again."
    );
    Ok(fail(b, ctx, status, "Interrupted", message).await)
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

fn policy_labels(b: &Backup) -> PolicyLabels {
    PolicyLabels {
        namespace: b.namespace().unwrap_or_default(),
        policy: b.spec.policy.clone(),
    }
}

/// Records that a run started, before it does anything: `Running`, the object key it writes
/// and, for a volume, its Job. A run found `Running` later was interrupted.
async fn mark_running(
    b: &Backup,
    ctx: &Context,
    status: &mut BackupStatus,
    key: &str,
    job: Option<String>,
    message: String,
) -> Result<(), Error> {
    status.phase = BackupPhase::Running;
    status.started_at = Some(Time(now()));
    status.object_key = Some(key.to_string());
    status.job = job.clone();
    crate::conditions::set(
        &mut status.conditions,
        crate::conditions::Desired::no(crate::conditions::READY, "Running", message),
        b.metadata.generation,
        now(),
    );
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    reconcile::status::write(&api, b, status).await?;
    info!(key = %key, job = job.as_deref().unwrap_or(""), "backup started");
    Ok(())
}

/// Records a checked backup: status, metrics, event and history.
async fn succeed(
    b: &Backup,
    ctx: &Context,
    status: &mut BackupStatus,
    m: &Manifest,
    bucket: &str,
    archive: Option<ArchiveStats>,
) -> Outcome {
    let done = now();
    let seconds = seconds_since(status.started_at.as_ref(), done);
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
    let at = done.as_millisecond() as f64 / 1000.0;
    ctx.metrics
        .backup_succeeded(policy_labels(b), at, m.encrypted_bytes, seconds);
    info!(key = %m.object_key, bytes = m.encrypted_bytes, seconds, "backup succeeded");
    // The backup is complete, but some files may have been written while they were read.
    crate::conditions::set(
        &mut status.conditions,
        crate::conditions::Desired::yes(crate::conditions::READY, "Succeeded", message.clone()),
        b.metadata.generation,
        now(),
    );
    let changed = archive.as_ref().is_some_and(|a| a.changed.count > 0);
    let (kind, reason) = match changed {
        true => (EventType::Warning, "FilesChanged"),
        false => (EventType::Normal, "Succeeded"),
    };
    ctx.event(b, kind, reason, message.clone()).await;
    crate::history::record_backup(ctx, b, status).await;
    Outcome::ready("Succeeded", message)
}

/// Ends a run `Failed` with `reason`: status, metrics and history (the frame publishes the
/// Warning event and sets `Stalled`: a failed run stays failed, a new Backup replaces it).
async fn fail(
    b: &Backup,
    ctx: &Context,
    status: &mut BackupStatus,
    reason: &'static str,
    message: String,
) -> Outcome {
    let done = now();
    status.phase = BackupPhase::Failed;
    status.completed_at = Some(Time(done));
    if status.started_at.is_some() {
        let secs = seconds_since(status.started_at.as_ref(), done);
        status.duration_seconds = Some((secs * 100.0).round() / 100.0);
    }
    // The condition goes out with the status; history records it too.
    crate::conditions::set(
        &mut status.conditions,
        crate::conditions::Desired::no(crate::conditions::READY, reason, message.clone()),
        b.metadata.generation,
        now(),
    );
    ctx.metrics.backup_failed(policy_labels(b), reason);
    warn!(reason, %message, "backup failed");
    crate::history::record_backup(ctx, b, status).await;
    Outcome::blocked(reason, message)
}

fn seconds_since(start: Option<&Time>, end: jiff::Timestamp) -> f64 {
    start
        .map(|Time(t)| end.duration_since(*t).as_secs_f64())
        .unwrap_or(0.0)
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

/// Removes whatever a run may have left under `key`; says how that went, for a message.
async fn discard(b: &Backup, ctx: &Context, key: &str) -> Result<&'static str, Error> {
    if key.is_empty() {
        return Ok("");
    }
    let Some(policy) = policy_of(b, ctx).await? else {
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
    fn sizes_read_well() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }
}
