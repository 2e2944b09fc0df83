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
    let tier_schemas: BTreeSet<&String> = spec.tiers.iter().flat_map(|t| &t.schemas).collect();
    let mut plan = Vec::new();
    roles(spec, catalog, ctx, &mut plan)?;
    schemas(&tier_schemas, catalog, ctx, &mut plan);
    database(spec, ctx, &mut plan);
    grants(&access, &tier_schemas, catalog, &mut plan);
    default_grants(&access, &tier_schemas, catalog, ctx, &mut plan);
    removed_roles(spec, catalog, ctx, &mut plan)?;
    Ok(plan)
}

/// The declared roles: created or altered to their login and connection limit, with the
/// password of a new verifier, and marked as managed (made here) or adopted (there before).
fn roles(
    spec: &DatabaseSpec,
    catalog: &Catalog,
    ctx: &Context<'_>,
    plan: &mut Vec<Statement>,
) -> Result<(), PlanError> {
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

    Ok(())
}

/// The tier schemas that do not exist yet, owned by the admin role.
fn schemas(
    tier_schemas: &BTreeSet<&String>,
    catalog: &Catalog,
    ctx: &Context<'_>,
    plan: &mut Vec<Statement>,
) {
    for schema in tier_schemas {
        if !catalog.schemas.contains(*schema) {
            plan.push(Statement::new(format!(
                "CREATE SCHEMA {} AUTHORIZATION {}",
                ident(schema),
                ident(ctx.admin)
            )));
        }
    }
}

/// The database: nobody connects but the declared login roles.
fn database(spec: &DatabaseSpec, ctx: &Context<'_>, plan: &mut Vec<Statement>) {
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
}

/// Privileges on tier schemas and everything in them: exactly the declared ones (what else is
/// granted there is revoked).
fn grants(
    access: &BTreeMap<(String, String), Access>,
    tier_schemas: &BTreeSet<&String>,
    catalog: &Catalog,
    plan: &mut Vec<Statement>,
) {
    let mut desired: BTreeSet<Grant> = BTreeSet::new();
    for ((role, schema), level) in access {
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
}

/// Objects the admin role creates later (migrations) follow their tier: default privileges.
fn default_grants(
    access: &BTreeMap<(String, String), Access>,
    tier_schemas: &BTreeSet<&String>,
    catalog: &Catalog,
    ctx: &Context<'_>,
    plan: &mut Vec<Statement>,
) {
    let mut desired_defaults: BTreeSet<DefaultGrant> = BTreeSet::new();
    for ((role, schema), level) in access {
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
}

/// Roles this Database managed that the spec no longer declares: retired, dropped, or (when
/// adopted) released, by `roleRemovalPolicy`.
fn removed_roles(
    spec: &DatabaseSpec,
    catalog: &Catalog,
    ctx: &Context<'_>,
    plan: &mut Vec<Statement>,
) -> Result<(), PlanError> {
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
            "REVOKE CONNECT ON DATABASE {} FROM {role}",
            ident(ctx.database)
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
    Ok(())
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
mod tests;
