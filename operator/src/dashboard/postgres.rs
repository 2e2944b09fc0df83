//! What a Database's PostgreSQL server enforces, read for the Database page only when it is
//! asked and kept for a few seconds: the role × tier matrix from the grants in the catalog (the
//! Database controller's own catalog reader), the installed extensions and the migration
//! history. The connection is the controller's (admin credentials from the Database's Secret),
//! in a read-only session; no password is ever kept, shown or logged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeplane_crds::database::{Access, Database};
use kube::ResourceExt;
use serde::Serialize;
use sqlx::{ConnectOptions, Connection};

use crate::controllers::Context;
use crate::controllers::database::{self, catalog, plan};

/// How long a reading is shown before the server is asked again.
pub const FRESH_FOR: Duration = Duration::from_secs(15);

/// One reading of a Database's server.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reading {
    /// Why the server could not be read, if it could not.
    pub error: Option<String>,
    /// The tiers, in the spec's order (the matrix's columns).
    pub tiers: Vec<String>,
    /// One row per declared role.
    pub rows: Vec<MatrixRow>,
    /// Privileges in tier schemas that no declared role should have (granted by hand and not
    /// revoked yet).
    pub stray: Vec<String>,
    /// Installed extensions and their versions.
    pub extensions: Vec<(String, String)>,
    /// Applied migrations, oldest first.
    pub applied: Vec<AppliedMigration>,
    /// Declared migrations not applied yet.
    pub pending: Vec<String>,
    /// When it was read (RFC 3339).
    pub read_at: String,
}

/// One role's access per tier.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MatrixRow {
    /// The role.
    pub role: String,
    /// One cell per tier.
    pub cells: Vec<Cell>,
}

/// What one role may do in one tier.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cell {
    /// The tier.
    pub tier: String,
    /// `none`, `read` or `write`, as declared.
    pub declared: &'static str,
    /// `none`, `read`, `write` or `partial`, as the server's grants allow.
    pub enforced: &'static str,
    /// Whether the two differ.
    pub differs: bool,
    /// Whether the role holds grants in the tier beyond its declared level (made by hand; the
    /// controller revokes them at its next pass).
    pub extra: bool,
}

/// One applied migration.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppliedMigration {
    /// Its version.
    pub version: i64,
    /// What it does.
    pub description: String,
    /// When it was applied (RFC 3339).
    pub applied_at: String,
    /// How long it took.
    pub execution_ms: i64,
}

/// Readings per Database (`namespace/name`), each kept [`FRESH_FOR`].
#[derive(Default)]
pub struct Readings(Mutex<HashMap<String, (Instant, Arc<Reading>)>>);

impl Readings {
    /// The reading of `db`: a recent one, or a new one.
    pub async fn of(&self, ctx: &Context, db: &Database) -> Arc<Reading> {
        let key = format!("{}/{}", db.namespace().unwrap_or_default(), db.name_any());
        if let Ok(readings) = self.0.lock()
            && let Some((at, reading)) = readings.get(&key)
            && at.elapsed() < FRESH_FOR
        {
            return reading.clone();
        }
        let reading = Arc::new(read(ctx, db).await);
        if let Ok(mut readings) = self.0.lock() {
            readings.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
            readings.insert(key, (Instant::now(), reading.clone()));
        }
        reading
    }
}

fn level_word(access: Access) -> &'static str {
    match access {
        Access::None => "none",
        Access::Read => "read",
        Access::Write => "write",
    }
}

async fn read(ctx: &Context, db: &Database) -> Reading {
    let mut reading = Reading {
        tiers: db.spec.tiers.iter().map(|t| t.name.clone()).collect(),
        read_at: k8s_openapi::jiff::Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        ..Reading::default()
    };
    let options = match database::observer_options(ctx, db).await {
        Ok(options) => options,
        Err(why) => {
            reading.error = Some(why);
            return reading;
        }
    };
    let mut conn = match tokio::time::timeout(Duration::from_secs(5), options.connect()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            reading.error = Some(format!(
                "cannot connect to the server: {}",
                sql_message(&error)
            ));
            return reading;
        }
        Err(_) => {
            reading.error = Some("the server did not answer within 5 s".into());
            return reading;
        }
    };
    if let Err(error) = observe(&mut conn, ctx, db, &mut reading).await {
        reading.error = Some(format!(
            "reading the server failed: {}",
            sql_message(&error)
        ));
    }
    let _ = conn.close().await;
    reading
}

/// The server's own words, without the connection details sqlx adds.
fn sql_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => e.message().to_string(),
        other => other.to_string(),
    }
}

async fn observe(
    conn: &mut sqlx::PgConnection,
    ctx: &Context,
    db: &Database,
    reading: &mut Reading,
) -> Result<(), sqlx::Error> {
    sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .execute(&mut *conn)
        .await?;
    let roles: Vec<String> = db.spec.roles.iter().map(|r| r.name.clone()).collect();
    let schemas: Vec<String> = db
        .spec
        .tiers
        .iter()
        .flat_map(|t| t.schemas.clone())
        .collect();
    let marks = [database::role_mark(db), database::adopted_mark(db)];
    let observed = catalog::observe(&mut *conn, &roles, &marks, &schemas).await?;
    matrix(db, &observed, reading);

    let extensions: Vec<(String, String)> =
        sqlx::query_as("SELECT extname::text, extversion FROM pg_extension ORDER BY extname")
            .fetch_all(&mut *conn)
            .await?;
    reading.extensions = extensions;

    if let Some(spec) = &db.spec.migrations {
        let table = quote_table(&spec.table);
        let exists: Option<(String,)> = sqlx::query_as("SELECT to_regclass($1)::text")
            .bind(&spec.table)
            .fetch_optional(&mut *conn)
            .await?
            .filter(|(t,): &(Option<String>,)| t.is_some())
            .map(|(t,)| (t.unwrap_or_default(),));
        if exists.is_some() {
            let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT version, description, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), execution_ms FROM {table} ORDER BY version"
            )))
            .fetch_all(&mut *conn)
            .await?;
            reading.applied = rows
                .into_iter()
                .map(
                    |(version, description, applied_at, execution_ms)| AppliedMigration {
                        version,
                        description,
                        applied_at,
                        execution_ms,
                    },
                )
                .collect();
        }
        // The declared migrations: the controller's own reading of the spec and ConfigMaps.
        if let Ok(Ok(declared)) = database::collect_migrations(db, ctx).await {
            let target = spec.target_version.unwrap_or(i64::MAX);
            reading.pending = declared
                .iter()
                .filter(|m| m.version <= target)
                .filter(|m| !reading.applied.iter().any(|a| a.version == m.version))
                .map(|m| m.id.clone())
                .collect();
        }
    }
    Ok(())
}

/// `schema.table` quoted; the CRD allows only lowercase identifiers here.
fn quote_table(table: &str) -> String {
    table
        .split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Fills the matrix: for each declared role and tier, what the grants on the tier's schemas
/// and their tables allow (`PUBLIC`'s grants count for every role). A tier without tables is
/// judged by the default privileges its future tables will get.
fn matrix(db: &Database, catalog: &plan::Catalog, reading: &mut Reading) {
    use plan::ObjectKind;
    let has = |role: &str, kind: ObjectKind, schema: &str, name: &str, privilege: &str| {
        catalog.grants.iter().any(|g| {
            (g.grantee == role || g.grantee == "public")
                && g.kind == kind
                && g.schema == schema
                && g.name == name
                && g.privilege == privilege
        })
    };
    let default_has = |role: &str, schema: &str, privilege: &str| {
        catalog.default_grants.iter().any(|d| {
            (d.grantee == role || d.grantee == "public")
                && d.kind == ObjectKind::Table
                && d.schema == schema
                && d.privilege == privilege
        })
    };
    const WRITE: [&str; 3] = ["INSERT", "UPDATE", "DELETE"];
    for role in &db.spec.roles {
        let mut cells = Vec::new();
        for tier in &db.spec.tiers {
            let declared = role
                .access
                .iter()
                .find(|a| a.tier == tier.name)
                .map(|a| a.level)
                .unwrap_or(Access::None);
            // Per schema: what is reachable (nothing without USAGE on the schema), and whether
            // grants beyond the declared level exist.
            let mut levels = Vec::new();
            let mut extra = false;
            for schema in &tier.schemas {
                let usage = has(&role.name, ObjectKind::Schema, schema, "", "USAGE");
                let tables: Vec<&String> = catalog
                    .objects
                    .iter()
                    .filter(|(s, _, k)| s == schema && *k == ObjectKind::Table)
                    .map(|(_, n, _)| n)
                    .collect();
                let select = |t: &str| has(&role.name, ObjectKind::Table, schema, t, "SELECT");
                let write = |t: &str| {
                    WRITE
                        .iter()
                        .all(|p| has(&role.name, ObjectKind::Table, schema, t, p))
                };
                let any_write = tables.iter().any(|t| {
                    WRITE
                        .iter()
                        .any(|p| has(&role.name, ObjectKind::Table, schema, t, p))
                });
                let (reads, writes, some) = if tables.is_empty() {
                    let reads = default_has(&role.name, schema, "SELECT");
                    (
                        reads,
                        reads && WRITE.iter().all(|p| default_has(&role.name, schema, p)),
                        reads,
                    )
                } else {
                    (
                        tables.iter().all(|t| select(t)),
                        tables.iter().all(|t| select(t) && write(t)),
                        tables.iter().any(|t| select(t)),
                    )
                };
                levels.push(match (usage, reads, writes, some) {
                    (false, ..) => "none",
                    (true, true, true, _) => "write",
                    (true, true, false, _) => "read",
                    (true, false, _, true) => "partial",
                    (true, false, _, false) => "none",
                });
                extra |= match declared {
                    Access::None => usage || some || any_write,
                    Access::Read => any_write,
                    Access::Write => false,
                };
            }
            let enforced = match levels.first() {
                Some(first) if levels.iter().all(|l| l == first) => *first,
                Some(_) => "partial",
                None => "none",
            };
            let declared = level_word(declared);
            cells.push(Cell {
                tier: tier.name.clone(),
                declared,
                enforced,
                differs: declared != enforced,
                extra,
            });
        }
        reading.rows.push(MatrixRow {
            role: role.name.clone(),
            cells,
        });
    }
    // Grants to roles the spec does not declare, or on objects the declared level does not
    // cover, are the ones the controller revokes at its next pass.
    let declared: BTreeMap<&str, ()> = db
        .spec
        .roles
        .iter()
        .map(|r| (r.name.as_str(), ()))
        .collect();
    let tier_schemas: Vec<&String> = db.spec.tiers.iter().flat_map(|t| &t.schemas).collect();
    for g in &catalog.grants {
        if !tier_schemas.contains(&&g.schema) {
            continue;
        }
        if !declared.contains_key(g.grantee.as_str()) {
            let object = if g.name.is_empty() {
                format!("schema {}", g.schema)
            } else {
                format!("{}.{}", g.schema, g.name)
            };
            reading
                .stray
                .push(format!("{} on {object} to {}", g.privilege, g.grantee));
        }
    }
    reading.stray.sort();
    reading.stray.dedup();
}

#[cfg(test)]
mod tests {
    use super::*;
    use plan::{Catalog, Grant, ObjectKind};

    fn grant(grantee: &str, kind: ObjectKind, schema: &str, name: &str, privilege: &str) -> Grant {
        Grant {
            grantee: grantee.into(),
            kind,
            schema: schema.into(),
            name: name.into(),
            privilege: privilege.into(),
        }
    }

    #[test]
    fn the_matrix_follows_the_grants() {
        let db: Database = serde_yaml::from_str(
            r#"
apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {name: homelab, namespace: data}
spec:
  server: {external: {host: db, adminSecret: admin}}
  tiers:
  - {name: sacred, schemas: [clinical]}
  - {name: convenience, schemas: [public_data]}
  roles:
  - name: app
    access: [{tier: sacred, level: write}, {tier: convenience, level: write}]
  - name: readonly
    access: [{tier: convenience, level: read}]
"#,
        )
        .unwrap();
        let mut catalog = Catalog::default();
        catalog
            .objects
            .insert(("clinical".into(), "records".into(), ObjectKind::Table));
        catalog
            .objects
            .insert(("public_data".into(), "weather".into(), ObjectKind::Table));
        for (schema, table) in [("clinical", "records"), ("public_data", "weather")] {
            catalog
                .grants
                .insert(grant("app", ObjectKind::Schema, schema, "", "USAGE"));
            for p in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
                catalog
                    .grants
                    .insert(grant("app", ObjectKind::Table, schema, table, p));
            }
        }
        catalog.grants.insert(grant(
            "readonly",
            ObjectKind::Schema,
            "public_data",
            "",
            "USAGE",
        ));
        catalog.grants.insert(grant(
            "readonly",
            ObjectKind::Table,
            "public_data",
            "weather",
            "SELECT",
        ));
        // A hand-made grant: readonly may read a sacred table.
        catalog.grants.insert(grant(
            "readonly",
            ObjectKind::Table,
            "clinical",
            "records",
            "SELECT",
        ));
        catalog.grants.insert(grant(
            "intruder",
            ObjectKind::Table,
            "clinical",
            "records",
            "SELECT",
        ));
        let mut reading = Reading::default();
        matrix(&db, &catalog, &mut reading);
        let cell = |role: &str, tier: &str| {
            let row = reading.rows.iter().find(|r| r.role == role).unwrap();
            let c = row.cells.iter().find(|c| c.tier == tier).unwrap();
            (c.declared, c.enforced, c.differs)
        };
        assert_eq!(cell("app", "sacred"), ("write", "write", false));
        assert_eq!(cell("readonly", "convenience"), ("read", "read", false));
        // Without USAGE on the schema nothing is reachable, but the grant is there to revoke.
        assert_eq!(cell("readonly", "sacred"), ("none", "none", false));
        let extra = |role: &str, tier: &str| {
            let row = reading.rows.iter().find(|r| r.role == role).unwrap();
            row.cells.iter().find(|c| c.tier == tier).unwrap().extra
        };
        assert!(extra("readonly", "sacred"));
        assert!(!extra("readonly", "convenience"));
        assert_eq!(
            reading.stray,
            vec!["SELECT on clinical.records to intruder".to_string()]
        );
    }
}
