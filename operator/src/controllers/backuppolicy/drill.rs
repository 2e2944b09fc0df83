//! Restore drills: the newest backup restored into the scratch Database (labelled as scratch)
//! and checked with the owner's read-only queries, or, for a volume, read back whole; the
//! result recorded on the Backup and the policy. A drill takes its share of the operator's
//! backup memory budget, and waits for the next pass when it cannot.

use homeplane_backups::crypto;
use homeplane_backups::memory;
use homeplane_backups::pipeline;
use homeplane_backups::postgres::{self, PgConn};
use homeplane_crds::backup::{
    Backup, BackupPhase, BackupPolicy, BackupPolicyStatus, VerificationCheck,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use sqlx::Connection;
use tracing::warn;

use super::plan::Checked;
use super::{VERIFIED, policy_labels, ts};
use crate::conditions::Desired;
use crate::controllers::backup::resolve;
use crate::controllers::{Context, Error, now};

/// Runs the drill when it is due; returns the `Verified` condition to set, if one ran.
pub async fn if_due(
    p: &BackupPolicy,
    ctx: &Context,
    status: &mut BackupPolicyStatus,
    checked: &Checked,
    backups: &[Backup],
    now_ts: jiff::Timestamp,
) -> Result<Option<Desired>, Error> {
    let (Some(verify), Some(spec)) = (&checked.verify, &p.spec.verify) else {
        return Ok(None);
    };
    let since = super::last_run(p, status.last_verify_schedule_time.as_ref(), now_ts);
    // A drill asked for by hand counts as one due at the time it was asked (at most now).
    let asked = p
        .annotations()
        .get(super::VERIFY_ANNOTATION)
        .and_then(|v| v.parse::<jiff::Timestamp>().ok())
        .filter(|asked| *asked > since)
        .map(|asked| asked.min(now_ts));
    let Some(due) = verify.due(since, now_ts).max(asked) else {
        return Ok(None);
    };
    let newest = backups
        .iter()
        .rev()
        .find(|b| b.status.as_ref().map(|s| s.phase) == Some(BackupPhase::Succeeded));
    let Some(b) = newest else {
        status.last_verify_schedule_time = Some(Time(due));
        return Ok(Some(Desired::no(
            VERIFIED,
            "NothingToVerify",
            "no backup has succeeded yet, so the restore drill had nothing to restore",
        )));
    };
    let Ok(_share) = ctx.backup_budget.take(memory::restore_mib()) else {
        // Backups hold the budget now; the drill runs on the next pass.
        return Ok(None);
    };
    status.last_verify_schedule_time = Some(Time(due));
    let result = drill(ctx, p, spec, b).await?;
    Ok(Some(record(p, ctx, status, spec, b, result).await?))
}

/// Writes a drill's result on the Backup and says it in an event; the `Verified` condition.
async fn record(
    p: &BackupPolicy,
    ctx: &Context,
    status: &mut BackupPolicyStatus,
    spec: &homeplane_crds::backup::Verification,
    b: &Backup,
    result: Result<Vec<VerificationCheck>, DrillFailure>,
) -> Result<Desired, Error> {
    let ns = p.namespace().unwrap_or_default();
    let mut bs = b.status.clone().unwrap_or_default();
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
    match &result {
        Ok(_) => {
            bs.verified = true;
            bs.verified_at = Some(Time(now()));
            status.last_verified_time = bs.verified_at.clone();
            ctx.metrics.backup_verified(policy_labels(p), ts(now()));
            ctx.event(p, EventType::Normal, "Verified", message.clone())
                .await;
        }
        Err((reason, _, _)) => {
            ctx.metrics.backup_failed(policy_labels(p), reason);
            let note = message.clone();
            ctx.event(p, EventType::Warning, "RestoreDrillFailed", note)
                .await;
        }
    }
    let backups: Api<Backup> = Api::namespaced(ctx.client.clone(), &ns);
    crate::reconcile::status::write(&backups, b, &bs).await?;
    crate::history::record_backup(ctx, b, &bs).await;
    Ok(match result {
        Ok(_) => Desired::yes(VERIFIED, "Verified", message),
        Err((reason, _, _)) => Desired::no(VERIFIED, reason, message),
    })
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
        .and_then(|s| crate::controllers::database::secret_value(s, "identity"))
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
    let conn = match resolve::scratch_database(ctx, &ns, scratch).await? {
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
