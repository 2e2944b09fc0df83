//! Reading what a PostgreSQL server has: roles, schemas, the objects and privileges in the tier
//! schemas, default privileges and extensions.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgConnection;

use super::plan::{Catalog, DefaultGrant, Grant, ObjectKind, ObservedRole};

/// `pg_class.relkind` as text: `S` is a sequence, the rest
/// (tables, views, materialized views, foreign tables) take table privileges.
fn kind(relkind: &str) -> ObjectKind {
    if relkind == "S" {
        ObjectKind::Sequence
    } else {
        ObjectKind::Table
    }
}

/// `pg_default_acl.defaclobjtype`: `r` tables, `S` sequences, `f` functions.
fn default_kind(objtype: &str) -> ObjectKind {
    match objtype {
        "S" => ObjectKind::Sequence,
        "f" => ObjectKind::Routine,
        _ => ObjectKind::Table,
    }
}

/// Reads the catalog the plan needs. `roles` are the declared role names, `marks` the comments
/// of the roles this Database manages (created or adopted), `schemas` the tier schemas.
pub async fn observe(
    conn: &mut PgConnection,
    roles: &[String],
    marks: &[String],
    schemas: &[String],
) -> Result<Catalog, sqlx::Error> {
    let mut catalog = Catalog::default();
    let rows: Vec<(String, bool, bool, i32, Option<String>)> = sqlx::query_as(
        "SELECT rolname::text, rolcanlogin, rolsuper, rolconnlimit, shobj_description(oid, 'pg_authid')
         FROM pg_roles WHERE rolname = ANY($1) OR shobj_description(oid, 'pg_authid') = ANY($2)",
    )
    .bind(roles)
    .bind(marks)
    .fetch_all(&mut *conn)
    .await?;
    catalog.roles = rows
        .into_iter()
        .map(|(name, login, superuser, connection_limit, comment)| {
            (
                name,
                ObservedRole {
                    login,
                    superuser,
                    connection_limit,
                    comment,
                },
            )
        })
        .collect::<BTreeMap<_, _>>();

    let names: Vec<(String,)> = sqlx::query_as("SELECT nspname::text FROM pg_namespace")
        .fetch_all(&mut *conn)
        .await?;
    catalog.schemas = names.into_iter().map(|(n,)| n).collect::<BTreeSet<_>>();

    let objects: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')",
    )
    .bind(schemas)
    .fetch_all(&mut *conn)
    .await?;
    catalog.objects = objects
        .into_iter()
        .map(|(schema, name, relkind)| (schema, name, kind(&relkind)))
        .collect();

    // Functions and procedures, named with their argument types; a function without an ACL
    // has the default one, which lets PUBLIC execute it.
    let routines: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, p.proname::text || '(' || pg_get_function_identity_arguments(p.oid) || ')'
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = ANY($1) AND p.prokind IN ('f', 'p')",
    )
    .bind(schemas)
    .fetch_all(&mut *conn)
    .await?;
    catalog.objects.extend(
        routines
            .into_iter()
            .map(|(schema, name)| (schema, name, ObjectKind::Routine)),
    );
    let routine_grants: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, p.proname::text || '(' || pg_get_function_identity_arguments(p.oid) || ')',
                coalesce(r.rolname::text, 'public'), a.privilege_type
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
         LEFT JOIN pg_roles r ON r.oid = a.grantee
         WHERE n.nspname = ANY($1) AND p.prokind IN ('f', 'p') AND a.grantee <> p.proowner",
    )
    .bind(schemas)
    .fetch_all(&mut *conn)
    .await?;
    for (schema, name, grantee, privilege) in routine_grants {
        catalog.grants.insert(Grant {
            grantee,
            kind: ObjectKind::Routine,
            schema,
            name,
            privilege,
        });
    }

    let schema_grants: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, coalesce(r.rolname::text, 'public'), a.privilege_type
         FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
         LEFT JOIN pg_roles r ON r.oid = a.grantee
         WHERE n.nspname = ANY($1) AND a.grantee <> n.nspowner",
    )
    .bind(schemas)
    .fetch_all(&mut *conn)
    .await?;
    for (schema, grantee, privilege) in schema_grants {
        catalog.grants.insert(Grant {
            grantee,
            kind: ObjectKind::Schema,
            schema,
            name: String::new(),
            privilege,
        });
    }

    let object_grants: Vec<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text, coalesce(r.rolname::text, 'public'), a.privilege_type
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN LATERAL aclexplode(c.relacl) a
         LEFT JOIN pg_roles r ON r.oid = a.grantee
         WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND a.grantee <> c.relowner",
    )
    .bind(schemas)
    .fetch_all(&mut *conn)
    .await?;
    for (schema, name, relkind, grantee, privilege) in object_grants {
        let kind = kind(&relkind);
        catalog.grants.insert(Grant {
            grantee,
            kind,
            schema,
            name,
            privilege,
        });
    }

    let defaults: Vec<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT o.rolname::text, n.nspname::text, d.defaclobjtype::text, coalesce(g.rolname::text, 'public'), a.privilege_type
         FROM pg_default_acl d
         JOIN pg_roles o ON o.oid = d.defaclrole
         JOIN pg_namespace n ON n.oid = d.defaclnamespace
         CROSS JOIN LATERAL aclexplode(d.defaclacl) a
         LEFT JOIN pg_roles g ON g.oid = a.grantee
         WHERE n.nspname = ANY($1) AND d.defaclobjtype IN ('r', 'S', 'f')",
    )
    .bind(schemas)
    .fetch_all(&mut *conn)
    .await?;
    for (owner, schema, objtype, grantee, privilege) in defaults {
        let kind = default_kind(&objtype);
        catalog.default_grants.insert(DefaultGrant {
            owner,
            schema,
            kind,
            grantee,
            privilege,
        });
    }
    Ok(catalog)
}

/// Names of the extensions the server can install.
pub async fn available_extensions(
    conn: &mut PgConnection,
) -> Result<BTreeSet<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT name::text FROM pg_available_extensions")
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|(n,)| n).collect())
}

/// The server's version string, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
pub async fn server_version(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    let (version,): (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(conn)
        .await?;
    Ok(version)
}
