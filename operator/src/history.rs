//! homeplane's own PostgreSQL database: its schema (sqlx migrations in `migrations/`, embedded
//! here), the drift history of the state registry and the backup history. Optional: without
//! `--history-database-url` nothing is recorded and the StateRegistry status says so.

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

/// The migrations of homeplane's own database.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Errors of homeplane's own database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached.
    #[error("failed to connect to homeplane's database")]
    Connect(#[source] sqlx::Error),
    /// Its schema could not be brought up to date.
    #[error("failed to migrate homeplane's database")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Connects to homeplane's database and applies its migrations.
pub async fn connect(url: &str) -> Result<PgPool, Error> {
    // Statement logging off, as on every pool homeplane opens.
    let options = crate::controllers::database::quiet_options(url).map_err(Error::Connect)?;
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(Error::Connect)?;
    MIGRATOR.run(&pool).await.map_err(Error::Migrate)?;
    Ok(pool)
}

/// The drift history: transitions of state-registry properties.
pub mod drift {
    use std::time::Duration;

    use homeplane_state::Transition;
    use k8s_openapi::jiff::Timestamp;
    use sqlx::PgPool;

    /// Records `transitions` of registry `namespace/registry` at `at`, in one statement.
    pub async fn record(
        pool: &PgPool,
        namespace: &str,
        registry: &str,
        transitions: &[Transition],
        at: Timestamp,
    ) -> Result<(), sqlx::Error> {
        if transitions.is_empty() {
            return Ok(());
        }
        let json = |v: &Option<serde_json::Value>| v.as_ref().map(ToString::to_string);
        let property: Vec<String> = transitions.iter().map(|t| t.id.clone()).collect();
        let from: Vec<Option<String>> = transitions
            .iter()
            .map(|t| t.from.map(|s| s.as_str().to_string()))
            .collect();
        let to: Vec<String> = transitions
            .iter()
            .map(|t| t.to.as_str().to_string())
            .collect();
        let severity: Vec<String> = transitions
            .iter()
            .map(|t| format!("{:?}", t.severity).to_lowercase())
            .collect();
        let desired: Vec<Option<String>> = transitions.iter().map(|t| json(&t.desired)).collect();
        let observed: Vec<Option<String>> = transitions.iter().map(|t| json(&t.observed)).collect();
        let message: Vec<Option<String>> = transitions.iter().map(|t| t.message.clone()).collect();
        sqlx::query(
            "INSERT INTO drift_transitions
                (namespace, registry, property, from_state, to_state, severity, desired, observed, message, at)
             SELECT $1, $2, p, f, t, s, d::jsonb, o::jsonb, m, $10::timestamptz
             FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
                  AS x(p, f, t, s, d, o, m)",
        )
        .bind(namespace)
        .bind(registry)
        .bind(property)
        .bind(from)
        .bind(to)
        .bind(severity)
        .bind(desired)
        .bind(observed)
        .bind(message)
        .bind(at.to_string())
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Deletes transitions older than `retention`.
    pub async fn prune(pool: &PgPool, retention: Duration) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM drift_transitions WHERE at < now() - make_interval(secs => $1)")
            .bind(retention.as_secs_f64())
            .execute(pool)
            .await?;
        Ok(())
    }

    /// One recorded transition.
    #[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
    pub struct Row {
        /// When, RFC 3339.
        pub at: String,
        /// `namespace/registry`.
        pub registry: String,
        /// State before (empty the first time).
        pub from_state: Option<String>,
        /// State after.
        pub to_state: String,
        /// Severity of the property.
        pub severity: String,
        /// Desired value (JSON).
        pub desired: Option<String>,
        /// Observed value (JSON).
        pub observed: Option<String>,
        /// Why, for unknown.
        pub message: Option<String>,
    }

    /// The newest `limit` transitions of `property`, oldest first; of one namespace if given.
    pub async fn list(
        pool: &PgPool,
        property: &str,
        namespace: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Row>, sqlx::Error> {
        let mut rows: Vec<Row> = sqlx::query_as(
            "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS at,
                    namespace || '/' || registry AS registry, from_state, to_state, severity,
                    desired::text AS desired, observed::text AS observed, message
             FROM drift_transitions
             WHERE property = $1 AND ($2::text IS NULL OR namespace = $2)
             ORDER BY drift_transitions.at DESC, id DESC LIMIT $3",
        )
        .bind(property)
        .bind(namespace)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.reverse();
        Ok(rows)
    }
}

/// The backup history: one row per Backup run (table `backup_runs`).
mod backups {
    use homeplane_crds::backup::{Backup, BackupStatus};
    use kube::ResourceExt;
    use tracing::warn;

    use crate::controllers::Context;

    fn ts(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<String> {
        t.as_ref().map(|t| t.0.to_string())
    }

    /// Records (or updates) the run of `backup` with `status`; a failure is logged, never fatal.
    pub async fn record_backup(ctx: &Context, backup: &Backup, status: &BackupStatus) {
        let Some(pool) = ctx.history.as_ref() else {
            return;
        };
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let checks = serde_json::to_value(&status.checks).unwrap_or_default();
        let phase = serde_json::to_value(status.phase)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let result = sqlx::query(
            "INSERT INTO backup_runs (uid, namespace, name, policy, phase, reason, message, object_key,
                 source_bytes, encrypted_bytes, sha256, started_at, completed_at, duration_seconds,
                 verified, verified_at, checks)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::timestamptz, $13::timestamptz,
                 $14, $15, $16::timestamptz, $17)
             ON CONFLICT (uid) DO UPDATE SET phase = EXCLUDED.phase, reason = EXCLUDED.reason,
                 message = EXCLUDED.message, object_key = EXCLUDED.object_key,
                 source_bytes = EXCLUDED.source_bytes, encrypted_bytes = EXCLUDED.encrypted_bytes,
                 sha256 = EXCLUDED.sha256, started_at = EXCLUDED.started_at,
                 completed_at = EXCLUDED.completed_at, duration_seconds = EXCLUDED.duration_seconds,
                 verified = EXCLUDED.verified, verified_at = EXCLUDED.verified_at,
                 checks = EXCLUDED.checks, recorded_at = now()",
        )
        .bind(backup.uid().unwrap_or_default())
        .bind(backup.namespace().unwrap_or_default())
        .bind(backup.name_any())
        .bind(&backup.spec.policy)
        .bind(phase)
        .bind(ready.map(|c| c.reason.clone()))
        .bind(ready.map(|c| c.message.clone()))
        .bind(&status.object_key)
        .bind(status.source_bytes)
        .bind(status.encrypted_bytes)
        .bind(&status.sha256)
        .bind(ts(&status.started_at))
        .bind(ts(&status.completed_at))
        .bind(status.duration_seconds)
        .bind(status.verified)
        .bind(ts(&status.verified_at))
        .bind(checks)
        .execute(pool)
        .await;
        if let Err(error) = result {
            warn!(%error, backup = %backup.name_any(), "recording backup history failed");
        }
    }

    /// Marks the run of `backup` deleted by retention (its row stays).
    pub async fn record_deleted(ctx: &Context, backup: &Backup) {
        let Some(pool) = ctx.history.as_ref() else {
            return;
        };
        let result = sqlx::query("UPDATE backup_runs SET deleted_at = now() WHERE uid = $1")
            .bind(backup.uid().unwrap_or_default())
            .execute(pool)
            .await;
        if let Err(error) = result {
            warn!(%error, backup = %backup.name_any(), "recording a backup's deletion failed");
        }
    }
}

pub use backups::{record_backup, record_deleted};
