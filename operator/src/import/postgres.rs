//! Reads a PostgreSQL database into a `Database`: its roles, the schemas they may use and at
//! which level, its extensions and its migration history. Tiers are inferred: schemas that the
//! same roles may read and write at the same levels form one tier. The access level of a role
//! on a schema is the one whose privileges (homeplane's definition of `read` and `write`,
//! default privileges included) differ least from what the role holds, so the plan homeplane
//! makes on its first pass — computed here with the controller's own planner — is empty when
//! the database already follows a tier model, and otherwise lists exactly what would change.
//! Only reads: one transaction, rolled back.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use anyhow::{Context as _, Result};
use homeplane_crds::database::{
    Access, AdoptHistory, Database, DatabaseSpec, Extension, ExternalServer, Migrations, Role,
    Server, SslMode, Tier, TierAccess,
};
use homeplane_crds::registry::{Comparison, Property, Severity};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{Connection, PgConnection};

use super::names::dns_label;
use super::registry::{self, compared, severity};
use super::report::Report;
use crate::controllers::database::catalog;
use crate::controllers::database::plan::{self, Catalog, DefaultGrant, Grant, ObjectKind};
use crate::controllers::database::sql::{literal, qualified};

/// The admin Secret the Database names.
pub const ADMIN_SECRET: &str = "pg-admin";
/// Tables shown with their row counts in the state registry.
const LARGEST_TABLES: i64 = 5;

/// A migration history table found in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// `schema.table` (or `table` in `public`).
    pub table: String,
    /// Whose table it is.
    pub kind: HistoryKind,
    /// The highest version recorded.
    pub max_version: Option<i64>,
    /// Rows.
    pub count: i64,
    /// golang-migrate's `dirty` flag is set: a migration failed half-way.
    pub dirty: bool,
}

/// Whose history table it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryKind {
    /// homeplane's own (`version, description, checksum, applied_at, execution_ms, applied_by`).
    Homeplane,
    /// sqlx's `_sqlx_migrations`.
    Sqlx,
    /// Another runner's `schema_migrations` with a `version` column (golang-migrate, Rails,
    /// a hand-rolled one).
    Other,
}

/// What the server holds, as far as the import needs it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Database name on the server.
    pub database: String,
    /// The role the import connected as (the admin homeplane will use).
    pub admin: String,
    /// Host, port and TLS mode of the URL.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS mode.
    pub ssl_mode: SslMode,
    /// `SHOW server_version`.
    pub version: String,
    /// Schemas other than PostgreSQL's own.
    pub schemas: Vec<String>,
    /// Schemas on which PUBLIC holds a privilege.
    pub public_schemas: BTreeSet<String>,
    /// Roles (not superusers, not `pg_*`, not the admin) and the privileges on the schemas.
    pub catalog: Catalog,
    /// Grantees of an explicit CONNECT on the database.
    pub connect_grantees: BTreeSet<String>,
    /// PUBLIC may connect.
    pub public_connect: bool,
    /// (member, group) role memberships of the roles.
    pub memberships: Vec<(String, String)>,
    /// Installed extensions (plpgsql left out).
    pub extensions: Vec<String>,
    /// Migration history tables.
    pub histories: Vec<History>,
    /// The largest tables: (schema, table, rows).
    pub largest: Vec<(String, String, i64)>,
}

fn ssl_mode(mode: PgSslMode) -> SslMode {
    match mode {
        PgSslMode::Disable => SslMode::Disable,
        PgSslMode::Allow | PgSslMode::Prefer => SslMode::Prefer,
        PgSslMode::Require => SslMode::Require,
        PgSslMode::VerifyCa => SslMode::VerifyCa,
        PgSslMode::VerifyFull => SslMode::VerifyFull,
    }
}

/// Reads the database of `url`; the returned password is the URL's (to be kept out of files).
pub async fn read(url: &str) -> Result<(Snapshot, Option<String>)> {
    let options = PgConnectOptions::from_str(url).context(
        "--database-url is not a PostgreSQL URL (postgres://user:password@host:port/database)",
    )?;
    let password = url_password(url);
    let mut conn = PgConnection::connect_with(&options)
        .await
        .with_context(|| {
            format!(
                "failed to connect to PostgreSQL at {}:{}",
                options.get_host(),
                options.get_port()
            )
        })?;
    let mut tx = conn.begin().await?;
    sqlx::raw_sql("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    let (database, admin): (String, String) =
        sqlx::query_as("SELECT current_database()::text, current_user::text")
            .fetch_one(&mut *tx)
            .await?;
    let mut s = Snapshot {
        database,
        admin,
        host: options.get_host().to_string(),
        port: options.get_port(),
        ssl_mode: ssl_mode(options.get_ssl_mode()),
        ..Snapshot::default()
    };
    s.version = catalog::server_version(&mut tx).await?;
    s.schemas = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace
         WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await?;
    s.public_schemas = sqlx::query_scalar::<_, String>(
        "SELECT DISTINCT n.nspname::text FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
         WHERE a.grantee = 0",
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let roles: Vec<String> = sqlx::query_scalar(
        "SELECT rolname::text FROM pg_roles
         WHERE NOT rolsuper AND rolname NOT LIKE 'pg\\_%' AND rolname <> current_user ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await?;
    s.catalog = catalog::observe(&mut tx, &roles, &[], &s.schemas)
        .await
        .context("failed to read the roles and privileges")?;
    let database_acl: Vec<(String, String)> = sqlx::query_as(
        "SELECT coalesce(r.rolname::text, 'public'), a.privilege_type
         FROM pg_database d CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
         LEFT JOIN pg_roles r ON r.oid = a.grantee
         WHERE d.datname = current_database() AND a.grantee <> d.datdba",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (grantee, privilege) in database_acl {
        if privilege != "CONNECT" {
            continue;
        }
        if grantee == "public" {
            s.public_connect = true;
        } else {
            s.connect_grantees.insert(grantee);
        }
    }
    s.memberships = sqlx::query_as(
        "SELECT m.rolname::text, g.rolname::text FROM pg_auth_members am
         JOIN pg_roles m ON m.oid = am.member JOIN pg_roles g ON g.oid = am.roleid
         WHERE m.rolname = ANY($1) ORDER BY 1, 2",
    )
    .bind(&roles)
    .fetch_all(&mut *tx)
    .await?;
    s.extensions = sqlx::query_scalar(
        "SELECT extname::text FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await?;
    s.histories = histories(&mut tx).await?;
    let largest: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
           AND c.relname NOT IN ('schema_migrations', '_sqlx_migrations')
         ORDER BY pg_total_relation_size(c.oid) DESC, 1, 2 LIMIT $1",
    )
    .bind(LARGEST_TABLES)
    .fetch_all(&mut *tx)
    .await?;
    for (schema, table) in largest {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            qualified(&schema, &table)
        )))
        .fetch_one(&mut *tx)
        .await
        .with_context(|| format!("failed to count the rows of {schema}.{table}"))?;
        s.largest.push((schema, table, rows));
    }
    let _ = tx.rollback().await;
    let _ = conn.close().await;
    Ok((s, password))
}

/// The password of a `postgres://user:password@…` URL, decoded.
fn url_password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    let mut out = Vec::new();
    let bytes = password.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = password.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok().filter(|p| !p.is_empty())
}

async fn histories(conn: &mut PgConnection) -> Result<Vec<History>> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND c.relname IN ('schema_migrations', '_sqlx_migrations')
           AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 2, 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for (schema, table) in tables {
        let columns: BTreeSet<String> = sqlx::query_scalar::<_, String>(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        if !columns.contains("version") {
            continue;
        }
        let homeplane = [
            "description",
            "checksum",
            "applied_at",
            "execution_ms",
            "applied_by",
        ]
        .iter()
        .all(|c| columns.contains(*c));
        let kind = if table == "_sqlx_migrations" {
            HistoryKind::Sqlx
        } else if homeplane {
            HistoryKind::Homeplane
        } else {
            HistoryKind::Other
        };
        let q = qualified(&schema, &table);
        let filter = if kind == HistoryKind::Sqlx && columns.contains("success") {
            " WHERE success"
        } else {
            ""
        };
        let (max_version, count): (Option<i64>, i64) = sqlx::query_as(sqlx::AssertSqlSafe(
            format!("SELECT max(version::bigint), count(*) FROM {q}{filter}"),
        ))
        .fetch_one(&mut *conn)
        .await
        .with_context(|| format!("failed to read the migration history in {schema}.{table}"))?;
        let dirty: bool = if columns.contains("dirty") {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT coalesce(bool_or(dirty), false) FROM {q}"
            )))
            .fetch_one(&mut *conn)
            .await?
        } else {
            false
        };
        out.push(History {
            table: if schema == "public" {
                table
            } else {
                format!("{schema}.{table}")
            },
            kind,
            max_version,
            count,
            dirty,
        });
    }
    Ok(out)
}

/// The grants of `role` on `schema` and its objects (and the admin's default privileges for
/// it there) that homeplane's `level` would give.
fn desired(
    catalog: &Catalog,
    admin: &str,
    role: &str,
    schema: &str,
    level: Access,
) -> (BTreeSet<Grant>, BTreeSet<DefaultGrant>) {
    let mut grants = BTreeSet::new();
    let mut defaults = BTreeSet::new();
    for p in plan::privileges(ObjectKind::Schema, level) {
        grants.insert(Grant {
            grantee: role.into(),
            kind: ObjectKind::Schema,
            schema: schema.into(),
            name: String::new(),
            privilege: p.to_string(),
        });
    }
    for (s, name, kind) in catalog.objects.iter().filter(|(s, _, _)| s == schema) {
        for p in plan::privileges(*kind, level) {
            grants.insert(Grant {
                grantee: role.into(),
                kind: *kind,
                schema: s.clone(),
                name: name.clone(),
                privilege: p.to_string(),
            });
        }
    }
    for kind in [ObjectKind::Table, ObjectKind::Sequence, ObjectKind::Routine] {
        for p in plan::privileges(kind, level) {
            defaults.insert(DefaultGrant {
                owner: admin.into(),
                schema: schema.into(),
                kind,
                grantee: role.into(),
                privilege: p.to_string(),
            });
        }
    }
    (grants, defaults)
}

/// The level whose privileges differ least from what `role` holds on `schema` (the lower
/// level on a tie: least privilege).
fn level(catalog: &Catalog, admin: &str, role: &str, schema: &str) -> Access {
    let held: BTreeSet<Grant> = catalog
        .grants
        .iter()
        .filter(|g| g.grantee == role && g.schema == schema)
        .cloned()
        .collect();
    let held_defaults: BTreeSet<DefaultGrant> = catalog
        .default_grants
        .iter()
        .filter(|d| d.grantee == role && d.schema == schema && d.owner == admin)
        .cloned()
        .collect();
    [Access::None, Access::Read, Access::Write]
        .into_iter()
        .min_by_key(|level| {
            let (g, d) = desired(catalog, admin, role, schema, *level);
            g.symmetric_difference(&held).count() + d.symmetric_difference(&held_defaults).count()
        })
        .unwrap_or(Access::None)
}

fn valid_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A tier name from a schema name.
fn tier_name(schema: &str) -> String {
    let label = dns_label(schema, "tier");
    if label.starts_with(|c: char| c.is_ascii_lowercase()) {
        label
    } else {
        format!("t-{label}")
    }
}

/// What the import makes of a database.
pub struct Imported {
    /// The Database object.
    pub database: Database,
    /// State-registry properties.
    pub properties: Vec<Property>,
    /// Statements homeplane's first pass would run that change something, besides marking the
    /// roles as managed (empty when the import is faithful).
    pub differences: Vec<String>,
}

/// Builds the Database `name` in namespace `ns` from a snapshot (pure).
pub fn infer(s: &Snapshot, name: &str, ns: &str, report: &mut Report) -> Imported {
    // Schemas that can be tiers.
    let mut tier_schemas = Vec::new();
    for schema in &s.schemas {
        let granted = s.catalog.grants.iter().any(|g| &g.schema == schema)
            || s.catalog
                .default_grants
                .iter()
                .any(|d| &d.schema == schema && d.owner == s.admin);
        if s.public_schemas.contains(schema) {
            report.left_out.push(format!(
                "schema {schema} of database {}: PUBLIC (every role) may use it; as a tier, homeplane would revoke that — declare it in a tier by hand if that is what you want",
                s.database
            ));
        } else if !granted {
            if s.catalog.objects.iter().any(|(sch, _, _)| sch == schema) {
                report.left_out.push(format!(
                    "schema {schema} of database {}: no role but its owner may use it (no tier needed)",
                    s.database
                ));
            }
        } else {
            tier_schemas.push(schema.clone());
        }
    }

    // Roles that take part.
    let mut roles: Vec<String> = Vec::new();
    for role in s.catalog.roles.keys() {
        let involved = s.connect_grantees.contains(role)
            || s.catalog
                .grants
                .iter()
                .any(|g| &g.grantee == role && tier_schemas.contains(&g.schema))
            || s.catalog
                .default_grants
                .iter()
                .any(|d| &d.grantee == role && tier_schemas.contains(&d.schema));
        if !involved {
            continue;
        }
        if !valid_role_name(role) {
            report.left_out.push(format!(
                "role {role:?}: homeplane's role names are lowercase SQL identifiers; manage it by hand"
            ));
            continue;
        }
        roles.push(role.clone());
    }

    // Levels, and tiers from schemas with the same levels for every role.
    let rank = |a: Access| match a {
        Access::None => 0u8,
        Access::Read => 1,
        Access::Write => 2,
    };
    let mut by_vector: BTreeMap<Vec<u8>, (Vec<Access>, Vec<String>)> = BTreeMap::new();
    for schema in &tier_schemas {
        let vector: Vec<Access> = roles
            .iter()
            .map(|r| level(&s.catalog, &s.admin, r, schema))
            .collect();
        by_vector
            .entry(vector.iter().map(|a| rank(*a)).collect())
            .or_insert_with(|| (vector, Vec::new()))
            .1
            .push(schema.clone());
    }
    let readers = |v: &Vec<Access>| v.iter().filter(|a| **a != Access::None).count();
    let mut groups: Vec<(Vec<Access>, Vec<String>)> = by_vector.into_values().collect();
    groups.sort_by(|a, b| {
        readers(&a.0)
            .cmp(&readers(&b.0))
            .then_with(|| a.1.cmp(&b.1))
    });
    let mut tiers = Vec::new();
    let mut used_names = BTreeSet::new();
    let mut access: BTreeMap<String, Vec<TierAccess>> = BTreeMap::new();
    for (vector, schemas) in &groups {
        let mut tier = tier_name(&schemas[0]);
        while !used_names.insert(tier.clone()) {
            tier = format!("{tier}-x");
        }
        let names = |want: &dyn Fn(Access) -> bool| -> Vec<&str> {
            roles
                .iter()
                .zip(vector)
                .filter(|(_, a)| want(**a))
                .map(|(r, _)| r.as_str())
                .collect()
        };
        let read = names(&|a| a != Access::None);
        let write = names(&|a| a == Access::Write);
        let describe = |list: &[&str]| {
            if list.is_empty() {
                "nobody".to_string()
            } else {
                list.join(", ")
            }
        };
        tiers.push(Tier {
            name: tier.clone(),
            description: Some(format!(
                "inferred by homeplane import: readable by {}, writable by {}; confirm the classification (e.g. sacred, sensitive, convenience) and rename the tier",
                describe(&read),
                describe(&write)
            )),
            schemas: schemas.clone(),
        });
        for (role, level) in roles.iter().zip(vector) {
            if *level != Access::None {
                access.entry(role.clone()).or_default().push(TierAccess {
                    tier: tier.clone(),
                    level: *level,
                });
            }
        }
        report.imported.push(format!(
            "tier {tier} (schemas {}): read by {}, written by {}",
            schemas.join(", "),
            describe(&read),
            describe(&write)
        ));
    }
    let role_specs: Vec<Role> = roles
        .iter()
        .map(|r| {
            let observed = s.catalog.roles.get(r).cloned().unwrap_or_default();
            Role {
                name: r.clone(),
                login: observed.login,
                access: access.remove(r).unwrap_or_default(),
                connection_limit: (observed.connection_limit >= 0)
                    .then_some(observed.connection_limit),
            }
        })
        .collect();

    // Migration history: adopted as a baseline.
    let migrations = migrations(s, report);
    let database_name = (name != s.database).then(|| s.database.clone());
    let spec = DatabaseSpec {
        server: Server {
            external: Some(ExternalServer {
                host: s.host.clone(),
                port: i32::from(s.port),
                admin_secret: ADMIN_SECRET.into(),
                ssl_mode: s.ssl_mode,
            }),
            managed: None,
        },
        database_name,
        extensions: s
            .extensions
            .iter()
            .map(|e| Extension {
                name: e.clone(),
                version: None,
            })
            .collect(),
        tiers,
        roles: role_specs,
        role_removal_policy: Default::default(),
        reassign_owned_to: None,
        rotate_passwords: None,
        migrations,
        deletion_policy: Default::default(),
    };
    let mut database = Database::new(name, spec);
    database.metadata.namespace = Some(ns.to_string());

    // What homeplane's first pass would do: the controller's own plan on what was read.
    let owner_mark = format!("{ns}/{name}");
    let no_verifiers = BTreeMap::new();
    let ctx = plan::Context {
        admin: &s.admin,
        database: &s.database,
        owner_mark: &owner_mark,
        verifiers: &no_verifiers,
    };
    let differences = match plan::build(&database.spec, &s.catalog, &ctx) {
        Ok(statements) => plan::changes(&statements)
            .into_iter()
            .filter(|line| !line.starts_with("COMMENT ON ROLE "))
            .collect(),
        Err(e) => vec![format!("homeplane could not plan this database: {e}")],
    };

    // Secrets, and what to check.
    report.secret(
        ns,
        ADMIN_SECRET,
        "username",
        &format!("admin of database {}", s.database),
    );
    report.secret(ns, ADMIN_SECRET, "password", "");
    report.known(ns, ADMIN_SECRET, "username", &s.admin);
    for role in database.spec.roles.iter().filter(|r| r.login) {
        let secret = format!("{name}-{}", role.name.replace('_', "-"));
        report.secret(
            ns,
            &secret,
            "username",
            &format!(
                "role {} with its current password, marked as the Database's so that homeplane keeps it (without this Secret homeplane sets a new password)",
                role.name
            ),
        );
        report.secret(ns, &secret, "password", "");
        report.known(ns, &secret, "username", &role.name);
        report.role_secret(ns, &secret, name, &role.name);
    }
    if s.public_connect {
        report.check.push(format!(
            "database {}: PUBLIC (every role) may connect today; homeplane revokes that and grants CONNECT to the declared login roles only",
            s.database
        ));
    }
    for (member, group) in &s.memberships {
        report.check.push(format!(
            "role {member} is a member of {group}: homeplane does not manage memberships, and what {member} gets through {group} is not part of its tiers"
        ));
    }
    if matches!(s.host.as_str(), "localhost" | "127.0.0.1" | "::1") {
        report.check.push(format!(
            "Database {ns}/{name} points at {}:{} (the address the import used); the operator must reach the server there — change spec.server.external.host if it runs elsewhere",
            s.host, s.port
        ));
    }
    if differences.is_empty() {
        report.imported.push(format!(
            "database {} → {ns}/{name}: {} role(s), {} tier(s), {} extension(s); homeplane's first pass changes no privilege (it only marks the roles as managed)",
            s.database,
            database.spec.roles.len(),
            database.spec.tiers.len(),
            database.spec.extensions.len()
        ));
    } else {
        report.imported.push(format!(
            "database {} → {ns}/{name}: {} role(s), {} tier(s), {} extension(s)",
            s.database,
            database.spec.roles.len(),
            database.spec.tiers.len(),
            database.spec.extensions.len()
        ));
        report.check.push(format!(
            "database {}: the roles' privileges do not follow tiers exactly; homeplane's first pass would run: {}",
            s.database,
            differences.join("; ")
        ));
    }

    let properties = properties(s, &database, name);
    Imported {
        database,
        properties,
        differences,
    }
}

fn migrations(s: &Snapshot, report: &mut Report) -> Option<Migrations> {
    let pick = s
        .histories
        .iter()
        .find(|h| h.kind == HistoryKind::Homeplane)
        .or_else(|| s.histories.iter().find(|h| h.kind == HistoryKind::Sqlx))
        .or_else(|| s.histories.first())?;
    if pick.dirty {
        report.check.push(format!(
            "migration history {}: the last migration is marked dirty (it failed half-way); fix the database before adding migrations",
            pick.table
        ));
    }
    let version = pick
        .max_version
        .map(|v| format!("up to version {v}"))
        .unwrap_or_else(|| "empty".into());
    report.imported.push(format!(
        "migration history {} ({} row(s), {version}) adopted as the baseline",
        pick.table, pick.count
    ));
    report.check.push(
        "migrations: put the migration files (NNNN_description.sql) in a ConfigMap and name it in spec.migrations.configMaps; versions up to the baseline are recorded as applied, never run again".to_string(),
    );
    Some(match pick.kind {
        HistoryKind::Homeplane => Migrations {
            table: pick.table.clone(),
            ..Migrations::default()
        },
        HistoryKind::Sqlx | HistoryKind::Other => {
            let table = if s.histories.iter().any(|h| h.table == "schema_migrations") {
                "homeplane_migrations".to_string()
            } else {
                "schema_migrations".to_string()
            };
            Migrations {
                table,
                baseline: pick.max_version,
                adopt: Some(AdoptHistory {
                    table: pick.table.clone(),
                    version_column: "version".into(),
                }),
                ..Migrations::default()
            }
        }
    })
}

fn properties(s: &Snapshot, database: &Database, name: &str) -> Vec<Property> {
    let id = format!("db.{}", super::names::id_segment(name));
    let major = s
        .version
        .split(['.', ' '])
        .next()
        .unwrap_or_default()
        .to_string();
    let mut out = vec![compared(
        registry::property(
            format!("{id}.version"),
            format!("PostgreSQL {major}, as at import ({})", s.version),
            json!(major),
            registry::sql(name, "SELECT current_setting('server_version')".into()),
        ),
        Comparison::SemverMajor,
    )];
    let roles: Vec<&str> = database
        .spec
        .roles
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    if !roles.is_empty() {
        let list = roles
            .iter()
            .map(|r| literal(r))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(severity(
            compared(
                registry::property(
                    format!("{id}.roles"),
                    format!("the roles of {} exist", s.database),
                    json!(roles),
                    registry::sql(
                        name,
                        format!("SELECT coalesce(array_agg(rolname::text ORDER BY rolname), '{{}}') FROM pg_roles WHERE rolname IN ({list})"),
                    ),
                ),
                Comparison::SetEquals,
            ),
            Severity::Critical,
        ));
        for tier in &database.spec.tiers {
            let readers: Vec<&str> = database
                .spec
                .roles
                .iter()
                .filter(|r| r.access.iter().any(|a| a.tier == tier.name))
                .map(|r| r.name.as_str())
                .collect();
            let Some(schema) = tier.schemas.first() else {
                continue;
            };
            out.push(severity(
                compared(
                    registry::property(
                        format!("{id}.tier.{}.readers", super::names::id_segment(&tier.name)),
                        format!("only {} may use schema {schema}", if readers.is_empty() { "its owner".to_string() } else { readers.join(", ") }),
                        json!(readers),
                        registry::sql(
                            name,
                            format!(
                                "SELECT coalesce(array_agg(rolname::text ORDER BY rolname), '{{}}') FROM pg_roles WHERE rolname IN ({list}) AND has_schema_privilege(oid, {}, 'USAGE')",
                                literal(schema)
                            ),
                        ),
                    ),
                    Comparison::SetEquals,
                ),
                Severity::Critical,
            ));
        }
    }
    for (schema, table, rows) in &s.largest {
        out.push(compared(
            registry::property(
                format!(
                    "{id}.rows.{}.{}",
                    super::names::id_segment(schema),
                    super::names::id_segment(table)
                ),
                format!("{schema}.{table} keeps at least the {rows} rows it had at import"),
                json!(rows),
                registry::sql(
                    name,
                    format!("SELECT count(*) FROM {}", qualified(schema, table)),
                ),
            ),
            Comparison::AtLeast,
        ));
    }
    if let Some(history) = s.histories.first()
        && let Some(max) = history.max_version
    {
        let table = match history.table.split_once('.') {
            Some((schema, table)) => qualified(schema, table),
            None => qualified("public", &history.table),
        };
        out.push(compared(
            registry::property(
                format!("{id}.migration-head"),
                format!(
                    "the migration history {} reaches version {max}",
                    history.table
                ),
                json!(max),
                registry::sql(name, format!("SELECT max(version::bigint) FROM {table}")),
            ),
            Comparison::AtLeast,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::database::plan::ObservedRole;

    fn grant(grantee: &str, kind: ObjectKind, schema: &str, name: &str, privilege: &str) -> Grant {
        Grant {
            grantee: grantee.into(),
            kind,
            schema: schema.into(),
            name: name.into(),
            privilege: privilege.into(),
        }
    }

    fn defaults(out: &mut BTreeSet<DefaultGrant>, role: &str, schema: &str, write: bool) {
        let table: &[&str] = if write {
            &["SELECT", "INSERT", "UPDATE", "DELETE"]
        } else {
            &["SELECT"]
        };
        let seq: &[&str] = if write {
            &["SELECT", "USAGE", "UPDATE"]
        } else {
            &["SELECT", "USAGE"]
        };
        for p in table {
            out.insert(DefaultGrant {
                owner: "postgres".into(),
                schema: schema.into(),
                kind: ObjectKind::Table,
                grantee: role.into(),
                privilege: p.to_string(),
            });
        }
        for p in seq {
            out.insert(DefaultGrant {
                owner: "postgres".into(),
                schema: schema.into(),
                kind: ObjectKind::Sequence,
                grantee: role.into(),
                privilege: p.to_string(),
            });
        }
        out.insert(DefaultGrant {
            owner: "postgres".into(),
            schema: schema.into(),
            kind: ObjectKind::Routine,
            grantee: role.into(),
            privilege: "EXECUTE".into(),
        });
    }

    /// The seed's shape: app writes everything, readonly reads convenience, mcp reads
    /// sensitive and convenience; one table per schema.
    fn seed() -> Snapshot {
        let mut c = Catalog::default();
        for role in ["app", "readonly", "mcp"] {
            c.roles.insert(
                role.into(),
                ObservedRole {
                    login: true,
                    connection_limit: -1,
                    ..ObservedRole::default()
                },
            );
        }
        let access: [(&str, &[(&str, bool)]); 3] = [
            ("clinical", &[("app", true)]),
            ("messages", &[("app", true), ("mcp", false)]),
            (
                "public_data",
                &[("app", true), ("mcp", false), ("readonly", false)],
            ),
        ];
        for (schema, roles) in access {
            c.schemas.insert(schema.into());
            c.objects
                .insert((schema.into(), "t".into(), ObjectKind::Table));
            for (role, write) in roles {
                c.grants
                    .insert(grant(role, ObjectKind::Schema, schema, "", "USAGE"));
                let privileges: &[&str] = if *write {
                    &["SELECT", "INSERT", "UPDATE", "DELETE"]
                } else {
                    &["SELECT"]
                };
                for p in privileges {
                    c.grants
                        .insert(grant(role, ObjectKind::Table, schema, "t", p));
                }
                defaults(&mut c.default_grants, role, schema, *write);
            }
        }
        Snapshot {
            database: "homelab".into(),
            admin: "postgres".into(),
            host: "db".into(),
            port: 5432,
            version: "16.4".into(),
            schemas: vec![
                "clinical".into(),
                "messages".into(),
                "public".into(),
                "public_data".into(),
            ],
            public_schemas: ["public".to_string()].into(),
            catalog: c,
            connect_grantees: ["app", "readonly", "mcp"].map(String::from).into(),
            histories: vec![History {
                table: "schema_migrations".into(),
                kind: HistoryKind::Other,
                max_version: Some(227),
                count: 227,
                dirty: false,
            }],
            largest: vec![("messages".into(), "t".into(), 446_000)],
            ..Snapshot::default()
        }
    }

    #[test]
    fn tiers_are_inferred_from_who_may_read_what() {
        let mut report = Report::default();
        let imported = infer(&seed(), "homelab", "data", &mut report);
        let spec = &imported.database.spec;
        let tiers: Vec<(&str, &Vec<String>)> = spec
            .tiers
            .iter()
            .map(|t| (t.name.as_str(), &t.schemas))
            .collect();
        assert_eq!(
            tiers,
            [
                ("clinical", &vec!["clinical".to_string()]),
                ("messages", &vec!["messages".to_string()]),
                ("public-data", &vec!["public_data".to_string()]),
            ],
            "most restricted first"
        );
        let app = spec.roles.iter().find(|r| r.name == "app").unwrap();
        assert!(app.access.iter().all(|a| a.level == Access::Write));
        let readonly = spec.roles.iter().find(|r| r.name == "readonly").unwrap();
        assert_eq!(
            readonly.access,
            [TierAccess {
                tier: "public-data".into(),
                level: Access::Read
            }]
        );
        assert!(
            imported.differences.is_empty(),
            "{:?}",
            imported.differences
        );
        let m = spec.migrations.as_ref().unwrap();
        assert_eq!(m.baseline, Some(227));
        assert_eq!(m.adopt.as_ref().unwrap().table, "schema_migrations");
        assert_eq!(
            m.table, "homeplane_migrations",
            "the adopted table keeps its name"
        );
        assert!(report.left_out.iter().any(|l| l.contains("schema public")));
        assert!(report.secrets.iter().any(|s| s.name == "homelab-readonly"));
        assert!(
            report
                .secrets
                .iter()
                .any(|s| s.command().contains("--from-literal=username=postgres"))
        );
        let ids: Vec<&str> = imported.properties.iter().map(|p| p.id.as_str()).collect();
        assert!(ids.contains(&"db.homelab.tier.clinical.readers"), "{ids:?}");
        assert!(ids.contains(&"db.homelab.rows.messages.t"));
        registry::check("data", &imported.properties).unwrap();
    }

    #[test]
    fn a_privilege_outside_the_tier_model_is_named() {
        let mut s = seed();
        // readonly was also given one table of the sacred schema by hand.
        s.catalog.grants.insert(grant(
            "readonly",
            ObjectKind::Table,
            "clinical",
            "t",
            "SELECT",
        ));
        let mut report = Report::default();
        let imported = infer(&s, "homelab", "data", &mut report);
        assert_eq!(
            imported.differences,
            ["REVOKE SELECT ON TABLE \"clinical\".\"t\" FROM \"readonly\""],
            "the least change keeps the tier and revokes the stray grant"
        );
        assert!(report.check.iter().any(|l| l.contains("REVOKE SELECT")));
    }

    #[test]
    fn url_passwords_are_decoded() {
        assert_eq!(
            url_password("postgres://u:p%40ss@h:5432/d"),
            Some("p@ss".into())
        );
        assert_eq!(url_password("postgres://u@h/d"), None);
    }
}
