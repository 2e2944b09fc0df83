//! Retention: the finished Backups a policy's rules no longer keep are deleted, their objects
//! first (never the newest verified backup, never one younger than the minimum age; the rules
//! are `homeplane_backups::retention`).

use homeplane_backups::retention::{self, Candidate};
use homeplane_crds::backup::{Backup, BackupPhase, BackupPolicy};
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use tracing::info;

use super::plan::Checked;
use crate::controllers::backup::resolve;
use crate::controllers::{Context, Error};

/// What retention did: the Backups it kept, and what it could not delete.
pub struct Retained {
    /// The policy's Backups that remain, oldest first.
    pub kept: Vec<Backup>,
    /// Why something due for deletion is still there, if anything is.
    pub problem: Option<String>,
}

/// The moment a Backup finished (its creation while it has not).
pub fn finished_at(b: &Backup, now: jiff::Timestamp) -> jiff::Timestamp {
    let s = b.status.as_ref();
    s.and_then(|s| s.completed_at.as_ref().map(|t| t.0))
        .or_else(|| b.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now)
}

/// The phase of a Backup (`Pending` before its first status).
pub fn phase(b: &Backup) -> BackupPhase {
    b.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// Deletes what the rules do not keep from `backups` (the policy's, oldest first).
pub async fn apply(
    p: &BackupPolicy,
    ctx: &Context,
    checked: &Checked,
    backups: Vec<Backup>,
    now: jiff::Timestamp,
) -> Result<Retained, Error> {
    let candidates: Vec<Candidate> = backups
        .iter()
        .filter(|b| matches!(phase(b), BackupPhase::Succeeded | BackupPhase::Failed))
        .map(|b| Candidate {
            name: b.name_any(),
            completed_at: finished_at(b, now),
            succeeded: phase(b) == BackupPhase::Succeeded,
            verified: b.status.as_ref().is_some_and(|s| s.verified),
        })
        .collect();
    let doomed = retention::to_delete(&candidates, &checked.rules, now, checked.schedule.tz());
    let (gone, kept): (Vec<Backup>, Vec<Backup>) = backups
        .into_iter()
        .partition(|b| doomed.contains(&b.name_any()));
    if gone.is_empty() {
        return Ok(Retained {
            kept,
            problem: None,
        });
    }
    let dest = match resolve::destination(ctx, p).await? {
        Ok(dest) => dest,
        Err(invalid) => {
            let mut kept = kept;
            kept.extend(gone);
            return Ok(Retained {
                kept,
                problem: Some(invalid.message),
            });
        }
    };
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
    let mut problem = None;
    let mut kept = kept;
    for b in gone {
        if let Some(key) = b.status.as_ref().and_then(|s| s.object_key.as_deref())
            && let Err(e) = dest.store.discard(key).await
        {
            problem = Some(format!("retention could not delete {key}: {e}"));
            kept.push(b);
            continue;
        }
        match api.delete(&b.name_any(), &DeleteParams::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(Error::kube("delete a Backup")(e)),
        }
        crate::history::record_deleted(ctx, &b).await;
        info!(backup = %b.name_any(), "retention deleted a backup");
    }
    kept.sort_by_key(|b| b.metadata.creation_timestamp.as_ref().map(|t| t.0));
    Ok(Retained { kept, problem })
}
