//! The migration runner: ordered SQL files applied once each, recorded with a SHA-256 checksum
//! in a history table, each in its own transaction, under a PostgreSQL advisory lock so that
//! two operator replicas (or a replica and a person) never apply a migration twice.

use std::time::Instant;

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};

use super::sql::{audited, ident, literal};

/// One migration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The file's name without `.sql`, e.g. `0001_init`.
    pub id: String,
    /// The leading number, e.g. 1.
    pub version: i64,
    /// The rest of the name, e.g. `init`.
    pub description: String,
    /// The SQL.
    pub sql: String,
    /// SHA-256 of the SQL, hex.
    pub checksum: String,
}

/// Why migrations did not all apply.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A file name is not `NNNN_description.sql`.
    #[error("migration {0:?} is not named NNNN_description.sql")]
    BadName(String),
    /// Two files share a version.
    #[error("migrations {0:?} and {1:?} have the same version")]
    DuplicateVersion(String, String),
    /// An applied migration's file changed since it was applied.
    #[error(
        "migration {id} was applied with checksum {applied} but its file now has checksum {declared}; restore the file (applied migrations are never changed) or add a new migration"
    )]
    ChecksumMismatch {
        id: String,
        applied: String,
        declared: String,
    },
    /// A migration failed; nothing of it was applied.
    #[error("migration {id} failed and was rolled back: {message}")]
    Failed { id: String, message: String },
    /// The history table could not be read or written, or the lock taken.
    #[error("failed to {action}")]
    Sql {
        action: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

impl MigrateError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            MigrateError::BadName(_) | MigrateError::DuplicateVersion(..) => "InvalidMigrations",
            MigrateError::ChecksumMismatch { .. } => "ChecksumMismatch",
            MigrateError::Failed { .. } => "MigrationFailed",
            MigrateError::Sql { .. } => "MigrationHistoryError",
        }
    }
}

fn sql_error(action: &'static str) -> impl FnOnce(sqlx::Error) -> MigrateError {
    move |source| MigrateError::Sql { action, source }
}

/// Parses `0001_init` (a `.sql` suffix is dropped) into a migration.
pub fn parse(name: &str, sql: &str) -> Result<Migration, MigrateError> {
    let id = name.strip_suffix(".sql").unwrap_or(name);
    let (number, description) = id.split_once('_').unwrap_or((id, ""));
    let version: i64 = number
        .parse()
        .map_err(|_| MigrateError::BadName(name.to_string()))?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MigrateError::BadName(name.to_string()));
    }
    Ok(Migration {
        id: id.to_string(),
        version,
        description: description.replace('_', " "),
        sql: sql.to_string(),
        checksum: hex::encode(Sha256::digest(sql.as_bytes())),
    })
}

/// Sorts migrations by version; refuses duplicates. `.down.sql` files are not migrations.
pub fn order(mut migrations: Vec<Migration>) -> Result<Vec<Migration>, MigrateError> {
    migrations.retain(|m| !m.id.ends_with(".down"));
    migrations.sort_by_key(|m| m.version);
    for pair in migrations.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(MigrateError::DuplicateVersion(
                pair[0].id.clone(),
                pair[1].id.clone(),
            ));
        }
    }
    Ok(migrations)
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Migrations recorded as applied after the run.
    pub applied: usize,
    /// Declared migrations not applied after the run.
    pub pending: usize,
    /// Id of the newest applied migration.
    pub last: Option<String>,
    /// Ids applied by this run.
    pub newly_applied: Vec<String>,
}

fn lock_key(table: &str) -> i64 {
    let digest = Sha256::digest(format!("homeplane:migrations:{table}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

fn table_sql(table: &str) -> String {
    match table.split_once('.') {
        Some((schema, name)) => format!("{}.{}", ident(schema), ident(name)),
        None => ident(table),
    }
}

/// Applies every pending migration in order, stopping at the first failure or checksum
/// mismatch (the error says which); on error, the report of what was applied before it is
/// lost only in the sense that the history table holds it.
pub async fn run(
    conn: &mut PgConnection,
    table: &str,
    migrations: &[Migration],
    applied_by: &str,
) -> Result<Report, (Report, MigrateError)> {
    let key = lock_key(table);
    let fail = |e: MigrateError| (Report::default(), e);
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut *conn)
        .await
        .map_err(|e| fail(sql_error("take the migrations advisory lock")(e)))?;
    let result = run_locked(conn, table, migrations, applied_by).await;
    // The lock is released with the session too; unlock now so a pooled connection is clean.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *conn)
        .await;
    result
}

async fn run_locked(
    conn: &mut PgConnection,
    table: &str,
    migrations: &[Migration],
    applied_by: &str,
) -> Result<Report, (Report, MigrateError)> {
    let history = table_sql(table);
    let fail = |r: &Report, e: MigrateError| (r.clone(), e);
    let mut report = Report::default();
    if let Some((schema, _)) = table.split_once('.') {
        sqlx::raw_sql(audited(format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            ident(schema)
        )))
        .execute(&mut *conn)
        .await
        .map_err(|e| fail(&report, sql_error("create the migrations schema")(e)))?;
    }
    sqlx::raw_sql(audited(format!(
        "CREATE TABLE IF NOT EXISTS {history} (
            version bigint PRIMARY KEY,
            description text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            execution_ms bigint NOT NULL,
            applied_by text NOT NULL
        )"
    )))
    .execute(&mut *conn)
    .await
    .map_err(|e| fail(&report, sql_error("create the migrations history table")(e)))?;
    let applied: Vec<(i64, String)> = sqlx::query_as(audited(format!(
        "SELECT version, checksum FROM {history} ORDER BY version"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| fail(&report, sql_error("read the migrations history table")(e)))?;
    let applied: std::collections::BTreeMap<i64, String> = applied.into_iter().collect();
    report.applied = applied.len();
    report.last = migrations
        .iter()
        .filter(|m| applied.contains_key(&m.version))
        .map(|m| m.id.clone())
        .next_back();
    report.pending = migrations
        .iter()
        .filter(|m| !applied.contains_key(&m.version))
        .count();

    for migration in migrations {
        if let Some(checksum) = applied.get(&migration.version) {
            if checksum != &migration.checksum {
                return Err(fail(
                    &report,
                    MigrateError::ChecksumMismatch {
                        id: migration.id.clone(),
                        applied: checksum.clone(),
                        declared: migration.checksum.clone(),
                    },
                ));
            }
            continue;
        }
        let started = Instant::now();
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| fail(&report, sql_error("begin a migration transaction")(e)))?;
        if let Err(error) = sqlx::raw_sql(audited(migration.sql.as_str()))
            .execute(&mut *tx)
            .await
        {
            let message = match &error {
                sqlx::Error::Database(db) => db.message().to_string(),
                other => other.to_string(),
            };
            let _ = tx.rollback().await;
            return Err(fail(
                &report,
                MigrateError::Failed {
                    id: migration.id.clone(),
                    message,
                },
            ));
        }
        let millis = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let record = format!(
            "INSERT INTO {history} (version, description, checksum, execution_ms, applied_by) VALUES ({}, {}, {}, {millis}, {})",
            migration.version,
            literal(&migration.description),
            literal(&migration.checksum),
            literal(applied_by)
        );
        sqlx::raw_sql(audited(record))
            .execute(&mut *tx)
            .await
            .map_err(|e| fail(&report, sql_error("record a migration")(e)))?;
        tx.commit()
            .await
            .map_err(|e| fail(&report, sql_error("commit a migration")(e)))?;
        report.applied += 1;
        report.pending = report.pending.saturating_sub(1);
        report.last = Some(migration.id.clone());
        report.newly_applied.push(migration.id.clone());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_checksums() {
        let m = parse("0042_add_health_records.sql", "select 1").unwrap();
        assert_eq!(
            (m.id.as_str(), m.version, m.description.as_str()),
            ("0042_add_health_records", 42, "add health records")
        );
        assert_eq!(m.checksum.len(), 64);
        assert!(matches!(
            parse("init.sql", ""),
            Err(MigrateError::BadName(_))
        ));
        assert!(matches!(parse("-1_x", ""), Err(MigrateError::BadName(_))));
    }

    #[test]
    fn orders_by_version_and_refuses_duplicates() {
        let ms = vec![
            parse("0010_b", "").unwrap(),
            parse("0002_a", "").unwrap(),
            parse("0003_x.down", "").unwrap(),
        ];
        let ordered = order(ms).unwrap();
        assert_eq!(
            ordered.iter().map(|m| m.version).collect::<Vec<_>>(),
            vec![2, 10]
        );
        let dup = vec![parse("0001_a", "").unwrap(), parse("1_b", "").unwrap()];
        assert!(matches!(
            order(dup),
            Err(MigrateError::DuplicateVersion(..))
        ));
    }

    #[test]
    fn lock_keys_differ_per_table() {
        assert_ne!(lock_key("schema_migrations"), lock_key("other"));
        assert_eq!(table_sql("ops.history"), "\"ops\".\"history\"");
    }
}
