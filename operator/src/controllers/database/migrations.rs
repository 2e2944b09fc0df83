//! The Database's migrations: collected from the spec and its ConfigMaps, run by
//! [`super::migrate`], and access converged again for what they created.

use std::collections::BTreeMap;

use homeplane_crds::database::{Database, DatabaseStatus, TransactionMode};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::{MAX_PLAN_LINES, access, migrate, plan};
use crate::controllers::{Context, Error};
use crate::reconcile::Outcome;

/// Runs the declared migrations on `conn` and records them in `status`; the outcome to report
/// when they cannot be read or one failed (a lost connection is retried, and the migration
/// runs again exactly once; a failed migration waits for a change).
pub(super) async fn apply(
    db: &Database,
    ctx: &Context,
    conn: &mut sqlx::PgConnection,
    admin_user: &str,
    dbname: &str,
    status: &mut DatabaseStatus,
) -> Result<Option<Outcome>, Error> {
    let ns = db.namespace().unwrap_or_default();
    let migrations = match collect(db, ctx).await? {
        Ok(migrations) => migrations,
        // Possibly a ConfigMap that is yet to come: looked at again on the resync.
        Err(message) => return Ok(Some(Outcome::blocked("InvalidMigrations", message))),
    };
    let mut migration_error = None;
    if let (Some(spec), false) = (db.spec.migrations.as_ref(), migrations.is_empty()) {
        let options = migrate::Options {
            table: spec.table.clone(),
            target: spec.target_version,
            single_transaction: spec.transaction == TransactionMode::All,
            accept_changed: spec.accept_changed_checksums.clone(),
            baseline: spec.baseline,
            adopt: spec
                .adopt
                .as_ref()
                .map(|a| (a.table.clone(), a.version_column.clone())),
            dry_run: false,
            applied_by: format!("homeplane ({ns}/{})", db.name_any()),
        };
        let report = match migrate::run(&mut *conn, &migrations, &options).await {
            Ok(report) => report,
            Err((report, error)) => {
                migration_error = Some(error);
                report
            }
        };
        status.migrations_applied = i32::try_from(report.applied).unwrap_or(i32::MAX);
        status.migrations_pending = i32::try_from(report.pending).unwrap_or(i32::MAX);
        status.last_migration = report.last;
        if !report.rolled_back.is_empty() {
            let note = format!("rolled back {}", report.rolled_back.join(", "));
            ctx.event(db, EventType::Normal, "MigrationsRolledBack", note)
                .await;
        }
        if !report.recorded.is_empty() {
            let note = format!(
                "recorded {} migration(s) as applied without running them (baseline or adopted history)",
                report.recorded.len()
            );
            ctx.event(db, EventType::Normal, "MigrationsAdopted", note)
                .await;
        }
        if !report.newly_applied.is_empty() || !report.rolled_back.is_empty() {
            // New tables and functions follow their tier now, not at the next resync.
            match access::converge(conn, db, ctx, admin_user, dbname, &BTreeMap::new(), false)
                .await?
            {
                Ok(more) => status
                    .last_plan
                    .extend(plan::changes(&more).into_iter().take(MAX_PLAN_LINES)),
                Err(outcome) => return Ok(Some(outcome)),
            }
        }
        if !report.newly_applied.is_empty() {
            ctx.event(
                db,
                EventType::Normal,
                "MigrationsApplied",
                format!(
                    "applied {} migration(s), up to {}",
                    report.newly_applied.len(),
                    report
                        .newly_applied
                        .last()
                        .map(String::as_str)
                        .unwrap_or_default()
                ),
            )
            .await;
        }
    }

    Ok(migration_error.map(|error| {
        let (reason, message) = (error.reason(), error.to_string());
        if error.is_transient() {
            Outcome::retry(reason, message)
        } else {
            // The SQL of a migration or its files: a change of them (or of the server) cures
            // it; looked at again on the resync.
            Outcome::blocked(reason, message)
        }
    }))
}

/// The declared migrations, inline and from ConfigMaps, in order; the inner error says what
/// is wrong with them.
pub async fn collect(
    db: &Database,
    ctx: &Context,
) -> Result<Result<Vec<migrate::Migration>, String>, Error> {
    let Some(spec) = db.spec.migrations.as_ref() else {
        return Ok(Ok(Vec::new()));
    };
    let mut all = Vec::new();
    for m in &spec.inline {
        match migrate::parse(&m.id, &m.sql) {
            Ok(m) => all.push(m),
            Err(e) => return Ok(Err(e.to_string())),
        }
    }
    let config_maps: Api<ConfigMap> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    for name in &spec.config_maps {
        let Some(cm) = config_maps
            .get_opt(name)
            .await
            .map_err(Error::kube("read a migrations ConfigMap"))?
        else {
            return Ok(Err(format!(
                "ConfigMap {name} named in spec.migrations.configMaps does not exist"
            )));
        };
        for (file, sql) in cm.data.unwrap_or_default() {
            if !file.ends_with(".sql") {
                continue;
            }
            match migrate::parse(&file, &sql) {
                Ok(m) => all.push(m),
                Err(e) => return Ok(Err(format!("ConfigMap {name}: {e}"))),
            }
        }
    }
    Ok(migrate::order(all).map_err(|e| e.to_string()))
}
