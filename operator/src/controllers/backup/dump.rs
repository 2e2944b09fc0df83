//! A database run: `pg_dump` of the policy's Database streamed through the pipeline (zstd, age,
//! S3 multipart) inside the operator, after taking the run's share of the memory budget. A run
//! that does not fit the budget now waits (`WaitingForMemory`) and starts when others end.

use homeplane_backups::manifest::SourceInfo;
use homeplane_backups::memory;
use homeplane_backups::pipeline::{self, BackupRequest};
use homeplane_backups::postgres;
use homeplane_crds::backup::{Backup, BackupPolicy, BackupStatus, DatabaseSource};
use kube::ResourceExt;

use super::budget::Refusal;
use super::resolve::{self, Destination};
use super::{fail, mark_running, object_key, succeed};
use crate::controllers::{Context, Error, now};
use crate::reconcile::Outcome;

/// How often a run waiting for the memory budget looks again.
const BUDGET_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// Dumps `source` into the policy's bucket.
pub async fn run(
    b: &Backup,
    ctx: &Context,
    status: &mut BackupStatus,
    policy: &BackupPolicy,
    dest: &Destination,
    source: &DatabaseSource,
) -> Result<Outcome, Error> {
    let ns = b.namespace().unwrap_or_default();
    let conn = match resolve::database(ctx, &ns, &source.name, source.role.as_deref()).await? {
        Ok(conn) => conn,
        Err(invalid) => return Ok(fail(b, ctx, status, invalid.reason, invalid.message).await),
    };
    let cost = memory::backup_mib(dest.plan, dest.compress);
    let _share = match ctx.backup_budget.take(cost) {
        Ok(share) => share,
        Err(refusal @ Refusal::Busy { .. }) => {
            let message = refusal.message("this backup");
            return Ok(Outcome::progressing("WaitingForMemory", message).after(BUDGET_POLL));
        }
        Err(refusal) => {
            let message = refusal.message("this backup");
            return Ok(fail(b, ctx, status, "OverMemoryBudget", message).await);
        }
    };
    let zstd = matches!(dest.compress, homeplane_backups::crypto::Compress::Zstd(_));
    let key = object_key(
        &dest.prefix,
        &ns,
        &policy.name_any(),
        &b.name_any(),
        "pgdump",
        zstd,
        now(),
    );
    let bucket = dest.store.bucket().to_string();
    let message = format!(
        "Dumping {ns}/{} and uploading to {bucket}/{key}",
        source.name
    );
    mark_running(b, ctx, status, &key, None, message).await?;
    let dump = match postgres::pg_dump(&conn) {
        Ok(dump) => dump,
        Err(e) => {
            let message =
                format!("pg_dump could not be started: {e}; is the PostgreSQL client installed?");
            return Ok(fail(b, ctx, status, "SourceFailed", message).await);
        }
    };
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
    Ok(match pipeline::backup(&dest.store, dump, request).await {
        Ok(report) => succeed(b, ctx, status, &report.manifest, &bucket, None).await,
        Err(e) => fail(b, ctx, status, e.reason(), e.to_string()).await,
    })
}
