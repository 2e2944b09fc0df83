//! The access plan of a Database: a pure function from the declared tiers and roles and the
//! observed catalog to the ordered SQL that makes the server allow exactly what the spec says.
//! Grants are diffed, so the plan of a database already in its declared state is empty, and
//! every privilege granted by hand in a tier schema shows up as a REVOKE. Passwords are never in
//! a statement: a role's password is set as the SCRAM-SHA-256 verifier homeplane computed.

use std::collections::{BTreeMap, BTreeSet};

use homeplane_crds::database::{Access, DatabaseSpec, RoleRemovalPolicy};

use super::sql::{ident, literal, qualified};

/// Marker homeplane writes as the comment of every role it created and manages.
pub const ROLE_COMMENT_PREFIX: &str = "managed by homeplane: ";
/// Marker of a declared role that existed before homeplane: managed, never dropped.
pub const ADOPTED_COMMENT_PREFIX: &str = "adopted by homeplane: ";

/// One statement of a plan.
#[derive(Clone, PartialEq, Eq)]
pub struct Statement {
    /// The SQL; may hold a password verifier, so it is never logged or shown.
    pub sql: String,
    /// What the statement does, safe to log and to put in status.
    pub summary: String,
}

/// Only the summary: the SQL may hold a verifier.
impl std::fmt::Debug for Statement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statement")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
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
    /// What each role this Database may remove owns, described (`table app.notes`).
    pub owned: BTreeMap<String, Vec<String>>,
}

/// Inputs besides the spec.
pub struct Context<'a> {
    /// The role homeplane connects as; it owns the schemas it creates and runs migrations.
    pub admin: &'a str,
    /// The database name on the server.
    pub database: &'a str,
    /// The role comment that marks this Database's roles (`managed by homeplane: ns/name`).
    pub owner_mark: &'a str,
    /// SCRAM-SHA-256 verifiers of the new passwords to set, per role (generated or rotated):
    /// the password itself never reaches the server.
    pub verifiers: &'a BTreeMap<String, String>,
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
    /// `roleRemovalPolicy: Drop` of a role that owns objects, without `reassignOwnedTo`.
    #[error(
        "role {role:?} is no longer declared and roleRemovalPolicy is Drop, but it owns {}; homeplane never drops data: set spec.reassignOwnedTo to the role that should own them (or use roleRemovalPolicy Retire)",
        objects.join(", ")
    )]
    RoleOwnsObjects { role: String, objects: Vec<String> },
    /// `reassignOwnedTo` names a role that is being removed or does not exist.
    #[error(
        "spec.reassignOwnedTo names {0:?}, which is not a declared role nor the admin role; name the role that should own the objects of removed roles"
    )]
    InvalidReassign(String),
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
                if let Some(verifier) = ctx.verifiers.get(&role.name) {
                    sql.push_str(&format!(" PASSWORD {}", literal(verifier)));
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
                if let Some(verifier) = ctx.verifiers.get(&role.name) {
                    plan.push(Statement::secret(
                        format!("ALTER ROLE {name} PASSWORD {}", literal(verifier)),
                        format!("ALTER ROLE {name} PASSWORD '<redacted>'"),
                    ));
                }
            }
        }
        // A role homeplane creates is `managed`; one that existed before is `adopted` and is
        // never dropped (its objects and its other uses are not homeplane's to judge).
        let managed = format!("{ROLE_COMMENT_PREFIX}{}", ctx.owner_mark);
        let adopted = format!("{ADOPTED_COMMENT_PREFIX}{}", ctx.owner_mark);
        let current = catalog
            .roles
            .get(&role.name)
            .and_then(|r| r.comment.as_deref());
        let comment = match (catalog.roles.contains_key(&role.name), current) {
            (false, _) => managed,
            (true, Some(c)) if c == managed || c == adopted => c.to_string(),
            (true, _) => adopted,
        };
        if current != Some(comment.as_str()) {
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
    let adopted_mark = format!("{ADOPTED_COMMENT_PREFIX}{}", ctx.owner_mark);
    if let Some(target) = &spec.reassign_owned_to
        && target != ctx.admin
        && !declared.contains(target.as_str())
    {
        return Err(PlanError::InvalidReassign(target.clone()));
    }
    for (name, observed) in &catalog.roles {
        if declared.contains(name.as_str()) {
            continue;
        }
        let adopted = observed.comment.as_deref() == Some(adopted_mark.as_str());
        if observed.comment.as_deref() != Some(mark.as_str()) && !adopted {
            continue;
        }
        let role = ident(name);
        // Its privileges in tier schemas were revoked above (not declared).
        plan.push(Statement::new(format!(
            "REVOKE CONNECT ON DATABASE {db} FROM {role}"
        )));
        match spec.role_removal_policy {
            // An adopted role is released, never dropped: it goes back to what it was, minus
            // what homeplane granted.
            _ if adopted => {
                plan.push(Statement::new(format!("COMMENT ON ROLE {role} IS NULL")));
            }
            RoleRemovalPolicy::Retire => {
                if observed.login {
                    plan.push(Statement::new(format!("ALTER ROLE {role} NOLOGIN")));
                }
                plan.push(Statement::new(format!(
                    "COMMENT ON ROLE {role} IS {}",
                    literal(&format!("retired by homeplane: {}", ctx.owner_mark))
                )));
            }
            RoleRemovalPolicy::Drop => {
                let owned = catalog.owned.get(name).filter(|o| !o.is_empty());
                match (owned, &spec.reassign_owned_to) {
                    (Some(objects), None) => {
                        return Err(PlanError::RoleOwnsObjects {
                            role: name.clone(),
                            objects: objects.clone(),
                        });
                    }
                    (Some(_), Some(target)) => plan.push(Statement::new(format!(
                        "REASSIGN OWNED BY {role} TO {}",
                        ident(target)
                    ))),
                    (None, _) => {}
                }
                // No DROP OWNED: it drops whatever the role owns. PostgreSQL refuses DROP ROLE
                // while the role still owns something or holds a privilege, and says which.
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

    fn ctx<'a>(verifiers: &'a BTreeMap<String, String>) -> Context<'a> {
        Context {
            admin: "postgres",
            database: "homelab",
            owner_mark: "home/homelab",
            verifiers,
        }
    }

    fn sql(plan: &[Statement]) -> Vec<String> {
        plan.iter().map(|s| s.sql.clone()).collect()
    }

    #[test]
    fn a_fresh_server_gets_roles_schemas_grants_and_defaults() {
        let passwords =
            BTreeMap::from([("app".to_string(), "SCRAM-SHA-256$4096:s3cret".to_string())]);
        let plan = build(&spec(), &Catalog::default(), &ctx(&passwords)).unwrap();
        let sql = sql(&plan);
        assert_eq!(
            sql[0],
            "CREATE ROLE \"app\" LOGIN CONNECTION LIMIT -1 PASSWORD 'SCRAM-SHA-256$4096:s3cret'"
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

    fn removed(comment: &str) -> Catalog {
        let mut catalog = Catalog::default();
        catalog.roles.insert(
            "old".into(),
            ObservedRole {
                login: true,
                comment: Some(format!("{comment}home/homelab")),
                ..Default::default()
            },
        );
        catalog
    }

    #[test]
    fn drop_never_drops_what_a_role_owns() {
        let mut spec = spec();
        spec.role_removal_policy = RoleRemovalPolicy::Drop;
        // Owns nothing: privileges revoked, role dropped, never DROP OWNED.
        let dropped =
            sql(&build(&spec, &removed(ROLE_COMMENT_PREFIX), &ctx(&BTreeMap::new())).unwrap());
        assert!(
            dropped.contains(&"REVOKE CONNECT ON DATABASE \"homelab\" FROM \"old\"".to_string())
        );
        assert!(dropped.contains(&"DROP ROLE \"old\"".to_string()));
        assert!(
            !dropped.iter().any(|s| s.contains("DROP OWNED")),
            "{dropped:#?}"
        );
        // Owns a table: refused, naming it.
        let mut catalog = removed(ROLE_COMMENT_PREFIX);
        catalog
            .owned
            .insert("old".into(), vec!["table clinical.notes".into()]);
        let refused = build(&spec, &catalog, &ctx(&BTreeMap::new())).unwrap_err();
        assert_eq!(
            refused,
            PlanError::RoleOwnsObjects {
                role: "old".into(),
                objects: vec!["table clinical.notes".into()]
            }
        );
        assert!(refused.to_string().contains("table clinical.notes"));
        assert!(refused.to_string().contains("spec.reassignOwnedTo"));
        // Unless the spec says who takes them over.
        spec.reassign_owned_to = Some("app".into());
        let reassigned = sql(&build(&spec, &catalog, &ctx(&BTreeMap::new())).unwrap());
        let reassign = reassigned
            .iter()
            .position(|s| s == "REASSIGN OWNED BY \"old\" TO \"app\"")
            .unwrap();
        let drop = reassigned
            .iter()
            .position(|s| s == "DROP ROLE \"old\"")
            .unwrap();
        assert!(reassign < drop);
        assert!(!reassigned.iter().any(|s| s.contains("DROP OWNED")));
        spec.reassign_owned_to = Some("nobody".into());
        assert!(matches!(
            build(&spec, &catalog, &ctx(&BTreeMap::new())),
            Err(PlanError::InvalidReassign(_))
        ));
    }

    #[test]
    fn roles_that_existed_before_are_adopted_and_never_dropped() {
        let mut catalog = Catalog::default();
        catalog.roles.insert(
            "app".into(),
            ObservedRole {
                login: true,
                comment: Some("the clinic's application".into()),
                ..Default::default()
            },
        );
        let adopted = sql(&build(&spec(), &catalog, &ctx(&BTreeMap::new())).unwrap());
        assert!(
            adopted.contains(
                &"COMMENT ON ROLE \"app\" IS 'adopted by homeplane: home/homelab'".to_string()
            ),
            "{adopted:#?}"
        );
        let mut dropping = spec();
        dropping.role_removal_policy = RoleRemovalPolicy::Drop;
        let released = sql(&build(
            &dropping,
            &removed(ADOPTED_COMMENT_PREFIX),
            &ctx(&BTreeMap::new()),
        )
        .unwrap());
        assert!(
            !released.iter().any(|s| s.contains("DROP")),
            "{released:#?}"
        );
        assert!(released.contains(&"COMMENT ON ROLE \"old\" IS NULL".to_string()));
    }

    #[test]
    fn statements_never_show_their_sql_in_debug() {
        let passwords = BTreeMap::from([("app".to_string(), "SCRAM-SHA-256$verifier".to_string())]);
        let plan = build(&spec(), &Catalog::default(), &ctx(&passwords)).unwrap();
        let debug = format!("{plan:?}");
        assert!(!debug.contains("verifier"), "{debug}");
        assert!(debug.contains("<redacted>"));
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

    /// Applies a plan to a model of the server's catalog, reading back the statements the plan
    /// writes (their grammar is the plan's own).
    fn apply(catalog: &mut Catalog, plan: &[Statement]) {
        fn ident(text: &str) -> (String, &str) {
            let body = text.strip_prefix('"').unwrap();
            let mut out = String::new();
            let mut chars = body.char_indices();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if body[i + 1..].starts_with('"') {
                        out.push('"');
                        chars.next();
                        continue;
                    }
                    return (out, &body[i + 1..]);
                }
                out.push(c);
            }
            panic!("unclosed identifier in {text}")
        }
        fn grantee(text: &str) -> String {
            if text == "PUBLIC" {
                "public".into()
            } else {
                ident(text).0
            }
        }
        fn kind_of(word: &str) -> ObjectKind {
            match word {
                "SCHEMA" => ObjectKind::Schema,
                "TABLE" | "TABLES" => ObjectKind::Table,
                "SEQUENCE" | "SEQUENCES" => ObjectKind::Sequence,
                _ => ObjectKind::Routine,
            }
        }
        for statement in plan {
            let sql = statement.sql.as_str();
            if sql.contains(" ON DATABASE ") {
                continue;
            }
            if let Some(rest) = sql.strip_prefix("CREATE ROLE ") {
                let (name, rest) = ident(rest);
                let login = rest.trim_start().starts_with("LOGIN");
                let limit = rest
                    .split("CONNECTION LIMIT ")
                    .nth(1)
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|l| l.parse().ok())
                    .unwrap();
                catalog.roles.insert(
                    name,
                    ObservedRole {
                        login,
                        superuser: false,
                        connection_limit: limit,
                        comment: None,
                    },
                );
            } else if let Some(rest) = sql.strip_prefix("ALTER ROLE ") {
                let (name, rest) = ident(rest);
                let rest = rest.trim_start();
                let role = catalog.roles.get_mut(&name).unwrap();
                if rest.starts_with("LOGIN") || rest.starts_with("NOLOGIN") {
                    role.login = rest.starts_with("LOGIN");
                    if let Some(limit) = rest.split("CONNECTION LIMIT ").nth(1) {
                        role.connection_limit = limit.trim().parse().unwrap();
                    }
                }
            } else if let Some(rest) = sql.strip_prefix("COMMENT ON ROLE ") {
                let (name, rest) = ident(rest);
                let value = rest.trim_start().strip_prefix("IS ").unwrap();
                catalog.roles.get_mut(&name).unwrap().comment = if value == "NULL" {
                    None
                } else {
                    Some(value.trim_matches('\'').replace("''", "'"))
                };
            } else if let Some(rest) = sql.strip_prefix("CREATE SCHEMA ") {
                catalog.schemas.insert(ident(rest).0);
            } else if let Some(rest) = sql.strip_prefix("DROP ROLE ") {
                catalog.roles.remove(&ident(rest).0);
            } else if sql.starts_with("REASSIGN OWNED") {
            } else if let Some(rest) = sql.strip_prefix("ALTER DEFAULT PRIVILEGES FOR ROLE ") {
                let (owner, rest) = ident(rest);
                let (schema, rest) = ident(rest.strip_prefix(" IN SCHEMA ").unwrap());
                let words: Vec<&str> = rest.split_whitespace().collect();
                // [GRANT|REVOKE, priv, ON, KIND, TO|FROM, grantee]
                let grant = DefaultGrant {
                    owner,
                    schema,
                    kind: kind_of(words[3]),
                    grantee: grantee(words[5]),
                    privilege: words[1].to_string(),
                };
                if words[0] == "GRANT" {
                    catalog.default_grants.insert(grant);
                } else {
                    catalog.default_grants.remove(&grant);
                }
            } else {
                let (verb, rest) = sql.split_once(' ').unwrap();
                let (privilege, rest) = rest.split_once(" ON ").unwrap();
                let (kind_word, rest) = rest.split_once(' ').unwrap();
                let kind = kind_of(kind_word);
                let (schema, rest) = ident(rest);
                let (name, rest) = match kind {
                    ObjectKind::Schema => (String::new(), rest),
                    _ => {
                        let (name, rest) = ident(rest.strip_prefix('.').unwrap());
                        if kind == ObjectKind::Routine {
                            let (args, rest) = rest.split_once(')').unwrap();
                            (format!("{name}{args})"), rest)
                        } else {
                            (name, rest)
                        }
                    }
                };
                let who = rest
                    .strip_prefix(if verb == "GRANT" { " TO " } else { " FROM " })
                    .unwrap();
                let g = Grant {
                    grantee: grantee(who),
                    kind,
                    schema,
                    name,
                    privilege: privilege.to_string(),
                };
                if verb == "GRANT" {
                    catalog.grants.insert(g);
                } else {
                    catalog.grants.remove(&g);
                }
            }
        }
    }

    mod properties {
        use super::*;
        use homeplane_crds::database::{Role, Tier, TierAccess};
        use proptest::prelude::*;

        const TIERS: [(&str, &[&str]); 3] = [
            ("sacred", &["clinical"]),
            ("sensitive", &["messages", "health"]),
            ("convenience", &["public_data"]),
        ];
        const ROLES: [&str; 4] = ["app", "reader", "select", "we\"ird"];
        const SCHEMAS: [&str; 5] = ["clinical", "messages", "health", "public_data", "other"];

        fn access() -> impl Strategy<Value = Access> {
            prop_oneof![Just(Access::None), Just(Access::Read), Just(Access::Write)]
        }

        fn spec() -> impl Strategy<Value = DatabaseSpec> {
            (
                proptest::collection::vec(any::<bool>(), 3),
                proptest::collection::vec(
                    (
                        any::<bool>(),
                        any::<bool>(),
                        proptest::collection::vec(access(), 3),
                    ),
                    4,
                ),
                any::<bool>(),
            )
                .prop_map(|(tiers_on, roles, drop)| {
                    let tiers: Vec<Tier> = TIERS
                        .iter()
                        .zip(&tiers_on)
                        .filter(|(_, on)| **on)
                        .map(|((name, schemas), _)| Tier {
                            name: name.to_string(),
                            schemas: schemas.iter().map(|s| s.to_string()).collect(),
                            ..Tier::default()
                        })
                        .collect();
                    let roles = ROLES
                        .iter()
                        .zip(roles)
                        .filter(|(_, (declared, _, _))| *declared)
                        .map(|(name, (_, login, levels))| Role {
                            name: name.to_string(),
                            login,
                            access: tiers
                                .iter()
                                .zip(&levels)
                                .map(|(t, level)| TierAccess {
                                    tier: t.name.clone(),
                                    level: *level,
                                })
                                .collect(),
                            ..Role::default()
                        })
                        .collect();
                    DatabaseSpec {
                        tiers,
                        roles,
                        role_removal_policy: if drop {
                            RoleRemovalPolicy::Drop
                        } else {
                            RoleRemovalPolicy::Retire
                        },
                        ..DatabaseSpec::default()
                    }
                })
        }

        fn privilege(kind: ObjectKind) -> impl Strategy<Value = String> {
            let options: &'static [&'static str] = match kind {
                ObjectKind::Schema => &["USAGE", "CREATE"],
                ObjectKind::Table => &["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"],
                ObjectKind::Sequence => &["SELECT", "USAGE", "UPDATE"],
                ObjectKind::Routine => &["EXECUTE"],
            };
            proptest::sample::select(options).prop_map(str::to_string)
        }

        fn kind() -> impl Strategy<Value = ObjectKind> {
            prop_oneof![
                Just(ObjectKind::Schema),
                Just(ObjectKind::Table),
                Just(ObjectKind::Sequence),
                Just(ObjectKind::Routine)
            ]
        }

        /// A server as someone left it: objects in the tier schemas, privileges granted by
        /// hand (to declared roles, to others, to PUBLIC), default privileges, roles of this
        /// Database that the spec may no longer declare, and roles that existed before.
        fn catalog() -> impl Strategy<Value = Catalog> {
            let object = (proptest::sample::select(&SCHEMAS[..]), 0u8..3, kind());
            let grantee = proptest::sample::select(
                &["app", "reader", "select", "we\"ird", "public", "stranger"][..],
            );
            let target = (proptest::sample::select(&SCHEMAS[..]), 0u8..3, kind());
            let grant =
                (target, grantee, kind()).prop_flat_map(|((schema, n, kind), grantee, _)| {
                    privilege(kind).prop_map(move |privilege| Grant {
                        grantee: grantee.to_string(),
                        kind,
                        schema: schema.to_string(),
                        name: match kind {
                            ObjectKind::Schema => String::new(),
                            ObjectKind::Routine => format!("f{n}(integer)"),
                            _ => format!("t{n}"),
                        },
                        privilege,
                    })
                });
            let role = (proptest::sample::select(&ROLES[..]), 0u8..3, any::<bool>());
            (
                proptest::collection::vec(object, 0..8),
                proptest::collection::vec(grant, 0..12),
                proptest::collection::vec(role, 0..4),
            )
                .prop_map(|(objects, grants, roles)| {
                    let mut catalog = Catalog::default();
                    for (schema, n, kind) in objects {
                        if kind == ObjectKind::Schema {
                            catalog.schemas.insert(schema.to_string());
                            continue;
                        }
                        let name = if kind == ObjectKind::Routine {
                            format!("f{n}(integer)")
                        } else {
                            format!("t{n}")
                        };
                        catalog.schemas.insert(schema.to_string());
                        catalog.objects.insert((schema.to_string(), name, kind));
                    }
                    for g in grants {
                        let exists = g.kind == ObjectKind::Schema
                            || catalog.objects.contains(&(
                                g.schema.clone(),
                                g.name.clone(),
                                g.kind,
                            ));
                        if exists && catalog.schemas.contains(&g.schema) {
                            catalog.grants.insert(g);
                        }
                    }
                    for (name, mark, login) in roles {
                        let comment = match mark {
                            0 => Some(format!("{ROLE_COMMENT_PREFIX}home/homelab")),
                            1 => Some(format!("{ADOPTED_COMMENT_PREFIX}home/homelab")),
                            _ => Some("made by hand".to_string()),
                        };
                        catalog.roles.insert(
                            name.to_string(),
                            ObservedRole {
                                login,
                                superuser: false,
                                connection_limit: -1,
                                comment,
                            },
                        );
                    }
                    catalog
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// A plan applied, then planned again, leaves nothing to do (but the idempotent
            /// database-level statements every plan carries).
            #[test]
            fn a_plan_applied_then_replanned_is_empty(spec in spec(), mut catalog in catalog()) {
                let verifiers = BTreeMap::new();
                let first = build(&spec, &catalog, &ctx(&verifiers)).unwrap();
                apply(&mut catalog, &first);
                // Roles that were declared now exist; what PostgreSQL would hold after the
                // statements, read again.
                let second = build(&spec, &catalog, &ctx(&verifiers)).unwrap();
                let left = changes(&second);
                prop_assert!(left.is_empty(), "left after applying: {left:#?}\nfirst: {:#?}", changes(&first));
            }
        }
    }
}
