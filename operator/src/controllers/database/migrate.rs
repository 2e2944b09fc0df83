//! The migration runner: ordered SQL files applied once each, recorded with a SHA-256 checksum
//! in a history table, each in its own transaction, under a PostgreSQL advisory lock so that
//! two operator replicas (or a replica and a person) never apply a migration twice.

use std::collections::{BTreeMap, BTreeSet};
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
    /// The SQL that undoes it (`NNNN_description.down.sql`), if there is one.
    pub down: Option<String>,
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
    /// Rolling back needs a down file that is not there.
    #[error(
        "cannot roll back to version {target}: {id} has no down file (NNNN_description.down.sql); add it, or raise targetVersion"
    )]
    DownMissing { id: String, target: i64 },
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
    /// The connection to the server was lost while a migration ran (the server restarted or
    /// went away): its transaction was rolled back by the server, so it is applied again, once,
    /// when the server is back.
    #[error(
        "the connection was lost while migration {id} ran ({message}); it was rolled back and is retried"
    )]
    ConnectionLost { id: String, message: String },
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
            MigrateError::DownMissing { .. } => "DownMigrationMissing",
            MigrateError::Failed { .. } => "MigrationFailed",
            MigrateError::ConnectionLost { .. } => "ConnectionLost",
            MigrateError::Sql { .. } => "MigrationHistoryError",
        }
    }

    /// Whether retrying can cure it: the history table or the connection failed, not the SQL
    /// of a migration or the files.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            MigrateError::Sql { .. } | MigrateError::ConnectionLost { .. }
        )
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
        down: None,
    })
}

/// Sorts migrations by version, attaching each `.down` file to its migration; refuses
/// duplicates and down files without a migration.
pub fn order(all: Vec<Migration>) -> Result<Vec<Migration>, MigrateError> {
    let (downs, mut migrations): (Vec<Migration>, Vec<Migration>) =
        all.into_iter().partition(|m| m.id.ends_with(".down"));
    for down in downs {
        let up = down.id.trim_end_matches(".down");
        match migrations.iter_mut().find(|m| m.id == up) {
            Some(m) => m.down = Some(down.sql),
            None => {
                return Err(MigrateError::BadName(format!(
                    "{}.sql (no migration {up} to undo)",
                    down.id
                )));
            }
        }
    }
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
    /// Declared migrations not applied after the run (up to the target).
    pub pending: usize,
    /// Id of the newest applied migration.
    pub last: Option<String>,
    /// Ids applied by this run (or, with `dry_run`, that would be).
    pub newly_applied: Vec<String>,
    /// Ids rolled back by this run (or, with `dry_run`, that would be).
    pub rolled_back: Vec<String>,
    /// Ids recorded without running (baseline or adoption).
    pub recorded: Vec<String>,
}

/// How a run goes.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The history table, optionally schema-qualified.
    pub table: String,
    /// Apply up to this version, rolling back what is above it.
    pub target: Option<i64>,
    /// All pending migrations in one transaction.
    pub single_transaction: bool,
    /// Ids whose changed checksum is accepted.
    pub accept_changed: Vec<String>,
    /// Versions up to this are recorded as applied without running.
    pub baseline: Option<i64>,
    /// Another runner's history table and its version column.
    pub adopt: Option<(String, String)>,
    /// Say what would happen, change nothing.
    pub dry_run: bool,
    /// Who applies, recorded in the history.
    pub applied_by: String,
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

/// Brings the database to the target: applies pending migrations in order, or rolls back with
/// down files, under an advisory lock. Stops at the first failure, checksum mismatch or missing
/// down file; the error says which, and the report says what was done before it.
pub async fn run(
    conn: &mut PgConnection,
    migrations: &[Migration],
    options: &Options,
) -> Result<Report, (Report, MigrateError)> {
    let key = lock_key(&options.table);
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            (
                Report::default(),
                sql_error("take the migrations advisory lock")(e),
            )
        })?;
    let mut report = Report::default();
    let result = run_locked(conn, migrations, options, &mut report).await;
    // The lock is released with the session too; unlock now so a pooled connection is clean.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *conn)
        .await;
    match result {
        Ok(()) => Ok(report),
        Err(e) => Err((report, e)),
    }
}

/// Reads the history: version -> checksum. An absent table is an empty history.
async fn history(
    conn: &mut PgConnection,
    table: &str,
) -> Result<BTreeMap<i64, String>, MigrateError> {
    let exists: (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
        .bind(table_sql(table))
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_error("look up the migrations history table"))?;
    if !exists.0 {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<(i64, String)> = sqlx::query_as(audited(format!(
        "SELECT version, checksum FROM {} ORDER BY version",
        table_sql(table)
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(sql_error("read the migrations history table"))?;
    Ok(rows.into_iter().collect())
}

fn record_sql(history: &str, m: &Migration, millis: i64, applied_by: &str) -> String {
    format!(
        "INSERT INTO {history} (version, description, checksum, execution_ms, applied_by) VALUES ({}, {}, {}, {millis}, {})",
        m.version,
        literal(&m.description),
        literal(&m.checksum),
        literal(applied_by)
    )
}

fn failed(id: &str, error: &sqlx::Error) -> MigrateError {
    let message = super::sql::message(error);
    let id = id.to_string();
    match connection_lost(error) {
        true => MigrateError::ConnectionLost { id, message },
        false => MigrateError::Failed { id, message },
    }
}

/// Whether `error` is the connection failing rather than the statement: I/O, the pool, or the
/// server shutting down or refusing the session (SQLSTATE classes 08 and 57P01-57P03).
fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

async fn run_locked(
    conn: &mut PgConnection,
    migrations: &[Migration],
    options: &Options,
    report: &mut Report,
) -> Result<(), MigrateError> {
    let history_table = table_sql(&options.table);
    let target = options.target.unwrap_or(i64::MAX);
    if !options.dry_run {
        if let Some((schema, _)) = options.table.split_once('.') {
            sqlx::raw_sql(audited(format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                ident(schema)
            )))
            .execute(&mut *conn)
            .await
            .map_err(sql_error("create the migrations schema"))?;
        }
        sqlx::raw_sql(audited(format!(
            "CREATE TABLE IF NOT EXISTS {history_table} (
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
        .map_err(sql_error("create the migrations history table"))?;
    }
    let mut applied = history(conn, &options.table).await?;

    // Adoption and baseline: record, do not run.
    let mut adopted: BTreeSet<i64> = BTreeSet::new();
    if let (Some((table, column)), true) = (&options.adopt, applied.is_empty()) {
        let rows: Vec<(i64,)> = sqlx::query_as(audited(format!(
            "SELECT {}::bigint FROM {}",
            ident(column),
            table_sql(table)
        )))
        .fetch_all(&mut *conn)
        .await
        .map_err(sql_error("read the history table to adopt"))?;
        adopted.extend(rows.into_iter().map(|(v,)| v));
    }
    let baseline = options.baseline.unwrap_or(i64::MIN);
    for m in migrations {
        if applied.contains_key(&m.version)
            || !(m.version <= baseline || adopted.contains(&m.version))
        {
            continue;
        }
        if !options.dry_run {
            sqlx::raw_sql(audited(record_sql(
                &history_table,
                m,
                0,
                "baseline (recorded, not run)",
            )))
            .execute(&mut *conn)
            .await
            .map_err(sql_error("record a baseline migration"))?;
        }
        applied.insert(m.version, m.checksum.clone());
        report.recorded.push(m.id.clone());
    }

    // Checksums of what is applied.
    for m in migrations
        .iter()
        .filter(|m| applied.contains_key(&m.version))
    {
        let recorded = applied.get(&m.version).cloned().unwrap_or_default();
        if recorded == m.checksum {
            continue;
        }
        if !options.accept_changed.contains(&m.id) {
            return Err(MigrateError::ChecksumMismatch {
                id: m.id.clone(),
                applied: recorded,
                declared: m.checksum.clone(),
            });
        }
        if !options.dry_run {
            sqlx::raw_sql(audited(format!(
                "UPDATE {history_table} SET checksum = {} WHERE version = {}",
                literal(&m.checksum),
                m.version
            )))
            .execute(&mut *conn)
            .await
            .map_err(sql_error("accept a changed checksum"))?;
        }
    }

    let count = |applied: &BTreeMap<i64, String>, report: &mut Report| {
        report.applied = applied.len();
        report.pending = migrations
            .iter()
            .filter(|m| m.version <= target && !applied.contains_key(&m.version))
            .count();
        report.last = migrations
            .iter()
            .filter(|m| applied.contains_key(&m.version))
            .map(|m| m.id.clone())
            .next_back();
    };
    count(&applied, report);

    // Roll back what is above the target, newest first; refuse up front if a down file is missing.
    let to_undo: Vec<&Migration> = migrations
        .iter()
        .rev()
        .filter(|m| m.version > target && applied.contains_key(&m.version))
        .collect();
    if let Some(m) = to_undo.iter().find(|m| m.down.is_none()) {
        return Err(MigrateError::DownMissing {
            id: m.id.clone(),
            target,
        });
    }
    let unknown_above: Vec<i64> = applied
        .keys()
        .copied()
        .filter(|v| *v > target && !migrations.iter().any(|m| m.version == *v))
        .collect();
    if let Some(v) = unknown_above.first() {
        return Err(MigrateError::DownMissing {
            id: format!("version {v}"),
            target,
        });
    }
    for m in to_undo {
        if !options.dry_run {
            let mut tx = conn
                .begin()
                .await
                .map_err(sql_error("begin a rollback transaction"))?;
            let down = m.down.clone().unwrap_or_default();
            if let Err(error) = sqlx::raw_sql(audited(down)).execute(&mut *tx).await {
                let _ = tx.rollback().await;
                return Err(failed(&format!("{}.down", m.id), &error));
            }
            sqlx::raw_sql(audited(format!(
                "DELETE FROM {history_table} WHERE version = {}",
                m.version
            )))
            .execute(&mut *tx)
            .await
            .map_err(sql_error("remove a rolled-back migration from the history"))?;
            tx.commit().await.map_err(sql_error("commit a rollback"))?;
        }
        applied.remove(&m.version);
        report.rolled_back.push(m.id.clone());
        count(&applied, report);
    }

    // Apply what is pending up to the target.
    let pending: Vec<&Migration> = migrations
        .iter()
        .filter(|m| m.version <= target && !applied.contains_key(&m.version))
        .collect();
    if options.dry_run {
        report.newly_applied = pending.iter().map(|m| m.id.clone()).collect();
        return Ok(());
    }
    // One transaction per migration, or one for all of them.
    let batches: Vec<&[&Migration]> = if options.single_transaction {
        vec![pending.as_slice()]
    } else {
        pending.chunks(1).collect()
    };
    for batch in batches.into_iter().filter(|b| !b.is_empty()) {
        let mut tx = conn
            .begin()
            .await
            .map_err(sql_error("begin a migration transaction"))?;
        for m in batch {
            let started = Instant::now();
            if let Err(error) = sqlx::raw_sql(audited(m.sql.as_str()))
                .execute(&mut *tx)
                .await
            {
                let _ = tx.rollback().await;
                return Err(failed(&m.id, &error));
            }
            let millis = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
            sqlx::raw_sql(audited(record_sql(
                &history_table,
                m,
                millis,
                &options.applied_by,
            )))
            .execute(&mut *tx)
            .await
            .map_err(sql_error("record a migration"))?;
        }
        tx.commit().await.map_err(sql_error("commit a migration"))?;
        for m in batch {
            applied.insert(m.version, m.checksum.clone());
            report.newly_applied.push(m.id.clone());
        }
        count(&applied, report);
    }
    Ok(())
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
    fn orders_by_version_and_attaches_down_files() {
        let ms = vec![
            parse("0010_b", "").unwrap(),
            parse("0002_a", "up").unwrap(),
            parse("0002_a.down", "down").unwrap(),
        ];
        let ordered = order(ms).unwrap();
        assert_eq!(
            ordered.iter().map(|m| m.version).collect::<Vec<_>>(),
            vec![2, 10]
        );
        assert_eq!(ordered[0].down.as_deref(), Some("down"));
        let orphan = vec![parse("0003_x.down", "").unwrap()];
        assert!(matches!(order(orphan), Err(MigrateError::BadName(_))));
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
