//! The access plan of a Database: a pure function from the declared tiers and roles and the
//! observed catalog to the ordered SQL that makes the server allow exactly what the spec says.
//! Grants are diffed, so the plan of a database already in its declared state is empty, and
//! every privilege granted by hand in a tier schema shows up as a REVOKE.

use std::collections::{BTreeMap, BTreeSet};

use homeplane_crds::database::{Access, DatabaseSpec, RoleRemovalPolicy};

use super::sql::{ident, literal, qualified};

/// Marker homeplane writes as the comment of every role it manages.
pub const ROLE_COMMENT_PREFIX: &str = "managed by homeplane: ";

/// One statement of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// The SQL; may hold a password, so it is never logged or shown.
    pub sql: String,
    /// What the statement does, safe to log and to put in status.
    pub summary: String,
}

impl Statement {
    fn new(sql: String) -> Self {
        Self {
            summary: sql.clone(),
            sql,
        }
    }

    fn secret(sql: String, summary: String) -> Self {
        Self { sql, summary }
    }
}

/// A role as the server has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedRole {
    /// `rolcanlogin`.
    pub login: bool,
    /// `rolsuper`.
    pub superuser: bool,
    /// `rolconnlimit` (-1: unlimited).
    pub connection_limit: i32,
    /// The role's comment.
    pub comment: Option<String>,
}

/// Kinds of object privileges are granted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// A schema.
    Schema,
    /// A table, view or materialized view.
    Table,
    /// A sequence.
    Sequence,
    /// A function or procedure; its name is `name(identity arguments)`.
    Routine,
}

/// One privilege of one grantee on one object (`PUBLIC` is the grantee `public`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    /// Role name, or `public`.
    pub grantee: String,
    /// What the object is.
    pub kind: ObjectKind,
    /// Schema of the object (the schema itself for `Schema`).
    pub schema: String,
    /// Name of the object (empty for `Schema`).
    pub name: String,
    /// `USAGE`, `CREATE`, `SELECT`, `INSERT`, `UPDATE`, `DELETE`, `TRUNCATE`, …
    pub privilege: String,
}

/// A default privilege: objects of `kind` created later by `owner` in `schema` grant
/// `privilege` to `grantee`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DefaultGrant {
    /// The role whose future objects it applies to.
    pub owner: String,
    /// The schema.
    pub schema: String,
    /// Tables or sequences.
    pub kind: ObjectKind,
    /// Role name, or `public`.
    pub grantee: String,
    /// The privilege.
    pub privilege: String,
}

/// What the server has, as far as the plan needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// The roles named in the spec, and the roles homeplane manages for this Database.
    pub roles: BTreeMap<String, ObservedRole>,
    /// Schemas that exist.
    pub schemas: BTreeSet<String>,
    /// Tables and sequences in the tier schemas: (schema, name, kind).
    pub objects: BTreeSet<(String, String, ObjectKind)>,
    /// Privileges granted on the tier schemas and their objects to anyone but their owner.
    pub grants: BTreeSet<Grant>,
    /// Default privileges of the admin role in the tier schemas.
    pub default_grants: BTreeSet<DefaultGrant>,
}

/// Inputs besides the spec.
pub struct Context<'a> {
    /// The role homeplane connects as; it owns the schemas it creates and runs migrations.
    pub admin: &'a str,
    /// The database name on the server.
    pub database: &'a str,
    /// The role comment that marks this Database's roles (`managed by homeplane: ns/name`).
    pub owner_mark: &'a str,
    /// New passwords to set, per role (generated or rotated).
    pub passwords: &'a BTreeMap<String, String>,
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A declared role exists as a superuser: homeplane will not manage it.
    #[error(
        "role {0:?} exists and is a superuser; homeplane does not manage superusers, choose another name"
    )]
    Superuser(String),
    /// A schema is claimed by two tiers.
    #[error(
        "schema {schema:?} belongs to both tier {first:?} and tier {second:?}; a schema belongs to one tier"
    )]
    SchemaInTwoTiers {
        schema: String,
        first: String,
        second: String,
    },
    /// A role named like a PostgreSQL built-in or the admin.
    #[error("role name {0:?} is reserved (the admin role, or a name starting with pg_)")]
    ReservedRole(String),
}

const TABLE_READ: &[&str] = &["SELECT"];
const TABLE_WRITE: &[&str] = &["SELECT", "INSERT", "UPDATE", "DELETE"];
const SEQUENCE_READ: &[&str] = &["SELECT", "USAGE"];
const SEQUENCE_WRITE: &[&str] = &["SELECT", "USAGE", "UPDATE"];

/// The privileges `access` means on an object of `kind`.
pub(crate) fn privileges(kind: ObjectKind, access: Access) -> &'static [&'static str] {
    match (kind, access) {
        (_, Access::None) => &[],
        (ObjectKind::Schema, _) => &["USAGE"],
        (ObjectKind::Table, Access::Read) => TABLE_READ,
        (ObjectKind::Table, Access::Write) => TABLE_WRITE,
        (ObjectKind::Sequence, Access::Read) => SEQUENCE_READ,
        (ObjectKind::Sequence, Access::Write) => SEQUENCE_WRITE,
        (ObjectKind::Routine, _) => &["EXECUTE"],
    }
}

fn keyword(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Schema => "SCHEMA",
        ObjectKind::Table => "TABLE",
        ObjectKind::Sequence => "SEQUENCE",
        ObjectKind::Routine => "ROUTINE",
    }
}

fn plural(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Schema => "SCHEMAS",
        ObjectKind::Table => "TABLES",
        ObjectKind::Sequence => "SEQUENCES",
        ObjectKind::Routine => "ROUTINES",
    }
}

fn grantee_sql(grantee: &str) -> String {
    if grantee == "public" {
        "PUBLIC".to_string()
    } else {
        ident(grantee)
    }
}

fn object_sql(g: &Grant) -> String {
    match g.kind {
        ObjectKind::Schema => format!("SCHEMA {}", ident(&g.schema)),
        ObjectKind::Routine => {
            // `name(argument types)`: quote the name; the types come from PostgreSQL itself.
            let (name, args) = g.name.split_once('(').unwrap_or((&g.name, ")"));
            format!("ROUTINE {}({args}", qualified(&g.schema, name))
        }
        kind => format!("{} {}", keyword(kind), qualified(&g.schema, &g.name)),
    }
}

/// The access each declared role has to each tier schema.
fn desired_access(spec: &DatabaseSpec) -> Result<BTreeMap<(String, String), Access>, PlanError> {
    let mut tier_of_schema: BTreeMap<&str, &str> = BTreeMap::new();
    for tier in &spec.tiers {
        for schema in &tier.schemas {
            if let Some(first) = tier_of_schema.insert(schema, &tier.name) {
                return Err(PlanError::SchemaInTwoTiers {
                    schema: schema.clone(),
                    first: first.to_string(),
                    second: tier.name.clone(),
                });
            }
        }
    }
    let mut access = BTreeMap::new();
    for role in &spec.roles {
        for entry in &role.access {
            let Some(tier) = spec.tiers.iter().find(|t| t.name == entry.tier) else {
                continue;
            };
            for schema in &tier.schemas {
                access.insert((role.name.clone(), schema.clone()), entry.level);
            }
        }
    }
    Ok(access)
}

/// The plan. Order: roles, schemas, database-level privileges, revokes, grants, default
/// privileges, retired roles.
pub fn build(
    spec: &DatabaseSpec,
    catalog: &Catalog,
    ctx: &Context<'_>,
) -> Result<Vec<Statement>, PlanError> {
    let access = desired_access(spec)?;
    let mut plan = Vec::new();

    // Roles.
    for role in &spec.roles {
        if role.name == ctx.admin || role.name.starts_with("pg_") {
            return Err(PlanError::ReservedRole(role.name.clone()));
        }
        let login = if role.login { "LOGIN" } else { "NOLOGIN" };
        let limit = role.connection_limit.unwrap_or(-1);
        let name = ident(&role.name);
        match catalog.roles.get(&role.name) {
            Some(observed) if observed.superuser => {
                return Err(PlanError::Superuser(role.name.clone()));
            }
            None => {
                let mut sql = format!("CREATE ROLE {name} {login} CONNECTION LIMIT {limit}");
                let mut summary = sql.clone();
                if let Some(password) = ctx.passwords.get(&role.name) {
                    sql.push_str(&format!(" PASSWORD {}", literal(password)));
                    summary.push_str(" PASSWORD '<redacted>'");
                }
                plan.push(Statement::secret(sql, summary));
            }
            Some(observed) => {
                if observed.login != role.login || observed.connection_limit != limit {
                    plan.push(Statement::new(format!(
                        "ALTER ROLE {name} {login} CONNECTION LIMIT {limit}"
                    )));
                }
                if let Some(password) = ctx.passwords.get(&role.name) {
                    plan.push(Statement::secret(
                        format!("ALTER ROLE {name} PASSWORD {}", literal(password)),
                        format!("ALTER ROLE {name} PASSWORD '<redacted>'"),
                    ));
                }
            }
        }
        let comment = format!("{ROLE_COMMENT_PREFIX}{}", ctx.owner_mark);
        if catalog
            .roles
            .get(&role.name)
            .and_then(|r| r.comment.as_deref())
            != Some(comment.as_str())
        {
            plan.push(Statement::new(format!(
                "COMMENT ON ROLE {name} IS {}",
                literal(&comment)
            )));
        }
    }

    // Schemas, owned by the admin role.
    let tier_schemas: BTreeSet<&String> = spec.tiers.iter().flat_map(|t| &t.schemas).collect();
    for schema in &tier_schemas {
        if !catalog.schemas.contains(*schema) {
            plan.push(Statement::new(format!(
                "CREATE SCHEMA {} AUTHORIZATION {}",
                ident(schema),
                ident(ctx.admin)
            )));
        }
    }

    // The database: nobody connects but the declared login roles.
    let db = ident(ctx.database);
    plan.push(Statement::new(format!(
        "REVOKE ALL ON DATABASE {db} FROM PUBLIC"
    )));
    for role in spec.roles.iter().filter(|r| r.login) {
        plan.push(Statement::new(format!(
            "GRANT CONNECT ON DATABASE {db} TO {}",
            ident(&role.name)
        )));
    }

    // Privileges on tier schemas and everything in them: exactly the declared ones.
    let mut desired: BTreeSet<Grant> = BTreeSet::new();
    for ((role, schema), level) in &access {
        for privilege in privileges(ObjectKind::Schema, *level) {
            desired.insert(Grant {
                grantee: role.clone(),
                kind: ObjectKind::Schema,
                schema: schema.clone(),
                name: String::new(),
                privilege: privilege.to_string(),
            });
        }
        for (object_schema, name, kind) in catalog.objects.iter().filter(|(s, _, _)| s == schema) {
            for privilege in privileges(*kind, *level) {
                desired.insert(Grant {
                    grantee: role.clone(),
                    kind: *kind,
                    schema: object_schema.clone(),
                    name: name.clone(),
                    privilege: privilege.to_string(),
                });
            }
        }
    }
    let observed: BTreeSet<Grant> = catalog
        .grants
        .iter()
        .filter(|g| tier_schemas.contains(&g.schema))
        .cloned()
        .collect();
    for extra in observed.difference(&desired) {
        plan.push(Statement::new(format!(
            "REVOKE {} ON {} FROM {}",
            extra.privilege,
            object_sql(extra),
            grantee_sql(&extra.grantee)
        )));
    }
    for missing in desired.difference(&observed) {
        plan.push(Statement::new(format!(
            "GRANT {} ON {} TO {}",
            missing.privilege,
            object_sql(missing),
            grantee_sql(&missing.grantee)
        )));
    }

    // Objects created later by the admin role (migrations) follow their tier.
    let mut desired_defaults: BTreeSet<DefaultGrant> = BTreeSet::new();
    for ((role, schema), level) in &access {
        for kind in [ObjectKind::Table, ObjectKind::Sequence, ObjectKind::Routine] {
            for privilege in privileges(kind, *level) {
                desired_defaults.insert(DefaultGrant {
                    owner: ctx.admin.to_string(),
                    schema: schema.clone(),
                    kind,
                    grantee: role.clone(),
                    privilege: privilege.to_string(),
                });
            }
        }
    }
    let observed_defaults: BTreeSet<DefaultGrant> = catalog
        .default_grants
        .iter()
        .filter(|d| d.owner == ctx.admin && tier_schemas.contains(&d.schema))
        .cloned()
        .collect();
    let alter_default = |d: &DefaultGrant, verb: &str, preposition: &str| {
        format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} {verb} {} ON {} {preposition} {}",
            ident(&d.owner),
            ident(&d.schema),
            d.privilege,
            plural(d.kind),
            grantee_sql(&d.grantee)
        )
    };
    for extra in observed_defaults.difference(&desired_defaults) {
        plan.push(Statement::new(alter_default(extra, "REVOKE", "FROM")));
    }
    for missing in desired_defaults.difference(&observed_defaults) {
        plan.push(Statement::new(alter_default(missing, "GRANT", "TO")));
    }

    // Roles this Database managed that the spec no longer declares.
    let declared: BTreeSet<&str> = spec.roles.iter().map(|r| r.name.as_str()).collect();
    let mark = format!("{ROLE_COMMENT_PREFIX}{}", ctx.owner_mark);
    for (name, observed) in &catalog.roles {
        if declared.contains(name.as_str()) || observed.comment.as_deref() != Some(mark.as_str()) {
            continue;
        }
        let role = ident(name);
        match spec.role_removal_policy {
            RoleRemovalPolicy::Retire => {
                if observed.login {
                    plan.push(Statement::new(format!("ALTER ROLE {role} NOLOGIN")));
                }
                // Its privileges in tier schemas were revoked above (not declared).
                plan.push(Statement::new(format!(
                    "REVOKE CONNECT ON DATABASE {db} FROM {role}"
                )));
                plan.push(Statement::new(format!(
                    "COMMENT ON ROLE {role} IS {}",
                    literal(&format!("retired by homeplane: {}", ctx.owner_mark))
                )));
            }
            RoleRemovalPolicy::Drop => {
                plan.push(Statement::new(format!("DROP OWNED BY {role}")));
                plan.push(Statement::new(format!("DROP ROLE {role}")));
            }
        }
    }
    Ok(plan)
}

/// The summaries of the statements that change something: all but the idempotent
/// database-level ones that every plan carries.
pub fn changes(statements: &[Statement]) -> Vec<String> {
    statements
        .iter()
        .filter(|s| !s.sql.contains(" ON DATABASE "))
        .map(|s| s.summary.clone())
        .collect()
}

/// Whether a statement is a REVOKE of a privilege somebody granted outside the spec (for
/// reporting hand-made changes).
pub fn is_revoke(statement: &Statement) -> bool {
    let sql = &statement.sql;
    (sql.starts_with("REVOKE ") && !sql.contains(" ON DATABASE "))
        || (sql.starts_with("ALTER DEFAULT PRIVILEGES") && sql.contains(" REVOKE "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DatabaseSpec {
        serde_yaml::from_str(
            r#"
server: {external: {host: db, adminSecret: admin}}
tiers:
- {name: sacred, schemas: [clinical]}
- {name: convenience, schemas: [public_data]}
roles:
- {name: app, access: [{tier: sacred, level: write}, {tier: convenience, level: write}]}
- {name: readonly, access: [{tier: convenience, level: read}]}
- {name: nologin_owner, login: false}
"#,
        )
        .unwrap()
    }

    fn ctx<'a>(passwords: &'a BTreeMap<String, String>) -> Context<'a> {
        Context {
            admin: "postgres",
            database: "homelab",
            owner_mark: "home/homelab",
            passwords,
        }
    }

    fn sql(plan: &[Statement]) -> Vec<String> {
        plan.iter().map(|s| s.sql.clone()).collect()
    }

    #[test]
    fn a_fresh_server_gets_roles_schemas_grants_and_defaults() {
        let passwords = BTreeMap::from([("app".to_string(), "s3cret".to_string())]);
        let plan = build(&spec(), &Catalog::default(), &ctx(&passwords)).unwrap();
        let sql = sql(&plan);
        assert_eq!(
            sql[0],
            "CREATE ROLE \"app\" LOGIN CONNECTION LIMIT -1 PASSWORD 's3cret'"
        );
        assert_eq!(
            plan[0].summary,
            "CREATE ROLE \"app\" LOGIN CONNECTION LIMIT -1 PASSWORD '<redacted>'"
        );
        assert!(
            sql.contains(&"CREATE ROLE \"nologin_owner\" NOLOGIN CONNECTION LIMIT -1".to_string())
        );
        assert!(sql.contains(&"CREATE SCHEMA \"clinical\" AUTHORIZATION \"postgres\"".to_string()));
        assert!(sql.contains(&"REVOKE ALL ON DATABASE \"homelab\" FROM PUBLIC".to_string()));
        assert!(sql.contains(&"GRANT USAGE ON SCHEMA \"clinical\" TO \"app\"".to_string()));
        assert!(
            !sql.iter()
                .any(|s| s.contains("\"clinical\"") && s.contains("\"readonly\"")),
            "readonly gets nothing in sacred"
        );
        assert!(sql.contains(
            &"ALTER DEFAULT PRIVILEGES FOR ROLE \"postgres\" IN SCHEMA \"public_data\" GRANT SELECT ON TABLES TO \"readonly\"".to_string()
        ));
        assert!(
            !plan.iter().any(|s| s.summary.contains("s3cret")),
            "no password in a summary"
        );
    }

    #[test]
    fn hand_granted_privileges_are_revoked_and_missing_ones_granted() {
        let mut catalog = Catalog {
            schemas: ["clinical", "public_data"].map(String::from).into(),
            ..Catalog::default()
        };
        catalog
            .objects
            .insert(("clinical".into(), "notes".into(), ObjectKind::Table));
        let grant = |grantee: &str, privilege: &str| Grant {
            grantee: grantee.into(),
            kind: ObjectKind::Table,
            schema: "clinical".into(),
            name: "notes".into(),
            privilege: privilege.into(),
        };
        catalog.grants.insert(grant("readonly", "SELECT"));
        catalog.grants.insert(grant("app", "SELECT"));
        let plan = build(&spec(), &catalog, &ctx(&BTreeMap::new())).unwrap();
        let sql = sql(&plan);
        assert!(sql.contains(
            &"REVOKE SELECT ON TABLE \"clinical\".\"notes\" FROM \"readonly\"".to_string()
        ));
        assert!(
            sql.contains(&"GRANT INSERT ON TABLE \"clinical\".\"notes\" TO \"app\"".to_string())
        );
        assert!(
            !sql.contains(&"GRANT SELECT ON TABLE \"clinical\".\"notes\" TO \"app\"".to_string()),
            "already granted"
        );
        assert!(plan.iter().filter(|s| is_revoke(s)).count() == 1);
    }

    #[test]
    fn a_converged_catalog_plans_only_the_idempotent_database_statements() {
        let passwords = BTreeMap::new();
        let first = build(&spec(), &Catalog::default(), &ctx(&passwords)).unwrap();
        // Build the catalog the first plan would leave behind.
        let mut catalog = Catalog::default();
        for role in ["app", "readonly", "nologin_owner"] {
            catalog.roles.insert(
                role.into(),
                ObservedRole {
                    login: role != "nologin_owner",
                    superuser: false,
                    connection_limit: -1,
                    comment: Some(format!("{ROLE_COMMENT_PREFIX}home/homelab")),
                },
            );
        }
        catalog.schemas = ["clinical", "public_data"].map(String::from).into();
        for s in &first {
            if let Some(rest) = s.sql.strip_prefix("GRANT USAGE ON SCHEMA ") {
                let (schema, grantee) = rest.split_once(" TO ").unwrap();
                catalog.grants.insert(Grant {
                    grantee: grantee.trim_matches('"').into(),
                    kind: ObjectKind::Schema,
                    schema: schema.trim_matches('"').into(),
                    name: String::new(),
                    privilege: "USAGE".into(),
                });
            }
        }
        let ad = |schema: &str, kind, grantee: &str, privilege: &str| DefaultGrant {
            owner: "postgres".into(),
            schema: schema.into(),
            kind,
            grantee: grantee.into(),
            privilege: privilege.into(),
        };
        for (schema, grantee, write) in [
            ("clinical", "app", true),
            ("public_data", "app", true),
            ("public_data", "readonly", false),
        ] {
            let table = if write { TABLE_WRITE } else { TABLE_READ };
            let seq = if write { SEQUENCE_WRITE } else { SEQUENCE_READ };
            for p in table {
                catalog
                    .default_grants
                    .insert(ad(schema, ObjectKind::Table, grantee, p));
            }
            for p in seq {
                catalog
                    .default_grants
                    .insert(ad(schema, ObjectKind::Sequence, grantee, p));
            }
            catalog
                .default_grants
                .insert(ad(schema, ObjectKind::Routine, grantee, "EXECUTE"));
        }
        let plan = build(&spec(), &catalog, &ctx(&passwords)).unwrap();
        let sql = sql(&plan);
        assert!(sql.iter().all(|s| s.contains("ON DATABASE")), "{sql:#?}");
    }

    #[test]
    fn refuses_superusers_reserved_names_and_shared_schemas() {
        let mut catalog = Catalog::default();
        catalog.roles.insert(
            "app".into(),
            ObservedRole {
                superuser: true,
                ..Default::default()
            },
        );
        assert_eq!(
            build(&spec(), &catalog, &ctx(&BTreeMap::new())),
            Err(PlanError::Superuser("app".into()))
        );
        let mut reserved = spec();
        reserved.roles[0].name = "postgres".into();
        assert!(matches!(
            build(&reserved, &Catalog::default(), &ctx(&BTreeMap::new())),
            Err(PlanError::ReservedRole(_))
        ));
        let mut shared = spec();
        shared.tiers[1].schemas.push("clinical".into());
        assert!(matches!(
            build(&shared, &Catalog::default(), &ctx(&BTreeMap::new())),
            Err(PlanError::SchemaInTwoTiers { .. })
        ));
    }

    #[test]
    fn removed_roles_are_retired_not_dropped_by_default() {
        let mut catalog = Catalog::default();
        catalog.roles.insert(
            "old".into(),
            ObservedRole {
                login: true,
                comment: Some(format!("{ROLE_COMMENT_PREFIX}home/homelab")),
                ..Default::default()
            },
        );
        catalog.roles.insert(
            "foreign".into(),
            ObservedRole {
                login: true,
                ..Default::default()
            },
        );
        let sql = sql(&build(&spec(), &catalog, &ctx(&BTreeMap::new())).unwrap());
        assert!(sql.contains(&"ALTER ROLE \"old\" NOLOGIN".to_string()));
        assert!(!sql.iter().any(|s| s.contains("DROP")));
        assert!(
            !sql.iter().any(|s| s.contains("\"foreign\"")),
            "roles of others are left alone"
        );
    }

    #[test]
    fn routines_lose_public_execute_and_readers_get_it() {
        let mut catalog = Catalog::default();
        catalog.objects.insert((
            "public_data".into(),
            "score(integer, text)".into(),
            ObjectKind::Routine,
        ));
        catalog.grants.insert(Grant {
            grantee: "public".into(),
            kind: ObjectKind::Routine,
            schema: "public_data".into(),
            name: "score(integer, text)".into(),
            privilege: "EXECUTE".into(),
        });
        let sql = sql(&build(&spec(), &catalog, &ctx(&BTreeMap::new())).unwrap());
        assert!(
            sql.contains(
                &"REVOKE EXECUTE ON ROUTINE \"public_data\".\"score\"(integer, text) FROM PUBLIC"
                    .to_string()
            ),
            "{sql:#?}"
        );
        assert!(sql.contains(&"GRANT EXECUTE ON ROUTINE \"public_data\".\"score\"(integer, text) TO \"readonly\"".to_string()));
    }

    #[test]
    fn keyword_role_names_are_quoted() {
        let mut spec = spec();
        spec.roles[1].name = "select".into();
        let sql = sql(&build(&spec, &Catalog::default(), &ctx(&BTreeMap::new())).unwrap());
        assert!(sql.contains(&"CREATE ROLE \"select\" LOGIN CONNECTION LIMIT -1".to_string()));
    }
}
