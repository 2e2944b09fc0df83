//! Database: a PostgreSQL database with roles, data-classification tiers, extensions and
//! migrations.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{DeletionPolicy, Placement};

/// A PostgreSQL database that homeplane makes match its declaration: roles, tiers of schemas
/// with per-role access, extensions and migrations.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "homeplane.dev",
    version = "v1alpha1",
    kind = "Database",
    namespaced,
    shortname = "db",
    category = "homeplane",
    status = "DatabaseStatus",
    doc = "A PostgreSQL database: roles, data-classification tiers, extensions and migrations, made to match by homeplane.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Applied",
        type_ = "integer",
        json_path = ".status.migrationsApplied"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.migrationsPending"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.roles) || self.roles.all(r, !has(r.access) || r.access.all(a, has(self.tiers) && self.tiers.exists(x, x.name == a.tier)))").message("every tier named in a role's access must be declared in spec.tiers").field_path(".roles"))]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// The PostgreSQL server: either `external` (an existing server) or `managed` (a
    /// StatefulSet that homeplane runs). Exactly one.
    pub server: Server,
    /// Name of the database on the server. Defaults to the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z_][a-z0-9_]{0,62}$')").message("databaseName must be a lowercase SQL identifier (letters, digits, underscore; at most 63)"))]
    #[schemars(length(max = 63))]
    pub database_name: Option<String>,
    /// Extensions that must be installed, e.g. `pg_trgm` or `vector`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub extensions: Vec<Extension>,
    /// Data-classification tiers (e.g. `sacred`, `sensitive`, `convenience`); each tier owns
    /// schemas, and roles are granted access per tier.
    #[serde(default)]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub tiers: Vec<Tier>,
    /// Roles and their access per tier. Each gets a generated password in a Secret named
    /// `<database>-<role>` with a connection URI.
    #[serde(default)]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub roles: Vec<Role>,
    /// What happens to a role that is removed from `roles`.
    #[serde(default)]
    pub role_removal_policy: RoleRemovalPolicy,
    /// With `roleRemovalPolicy: Drop`: the role (declared, or the admin) that takes over what
    /// a removed role owns (`REASSIGN OWNED`) before it is dropped. Without it, a removed role
    /// that owns objects is not dropped, and the Database says which objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub reassign_owned_to: Option<String>,
    /// Change this value to rotate every role's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_passwords: Option<String>,
    /// Migrations, applied in order of their id, each in its own transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<Migrations>,
    /// What happens to the data when this object is deleted. `Retain` (default) keeps the
    /// database and its data.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Which PostgreSQL server holds the database.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.external) != has(self.managed)").message("server must set exactly one of external or managed"))]
#[serde(rename_all = "camelCase")]
pub struct Server {
    /// An existing PostgreSQL server that homeplane connects to with admin credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalServer>,
    /// A PostgreSQL server that homeplane runs as a StatefulSet with a volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedServer>,
}

/// An existing PostgreSQL server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalServer {
    /// Host name or address of the server.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// TCP port of the server.
    #[serde(default = "default_pg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret with the admin credentials, keys `username` and `password`.
    #[schemars(length(min = 1, max = 253))]
    pub admin_secret: String,
    /// TLS mode of the connection.
    #[serde(default)]
    pub ssl_mode: SslMode,
}

fn default_pg_port() -> i32 {
    5432
}

/// TLS mode of a PostgreSQL connection, as libpq names them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it.
    #[default]
    Prefer,
    /// TLS always, without verifying the certificate.
    Require,
    /// TLS with a verified certificate chain.
    VerifyCa,
    /// TLS with a verified certificate chain and host name.
    VerifyFull,
}

/// A PostgreSQL server that homeplane runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedServer {
    /// Container image of the server, e.g. `postgres:16` or `pgvector/pgvector:pg16`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Size of the data volume, e.g. `20Gi`.
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("storage must be a positive quantity such as 20Gi"))]
    pub storage: String,
    /// StorageClass of the data volume; the cluster default when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Node class, CPU and memory of the server.
    pub placement: Placement,
}

/// A PostgreSQL extension.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Extension {
    /// Name of the extension, e.g. `pg_trgm`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Version to install; the server's default version when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A data-classification tier: a set of schemas whose access is granted together.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    /// Name of the tier, e.g. `sacred`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z][a-z0-9-]*$"))]
    pub name: String,
    /// What the tier holds, for people reading the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Schemas that belong to the tier; each is created if missing.
    #[schemars(length(min = 1, max = 64))]
    pub schemas: Vec<String>,
}

/// A database role and its access per tier.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    /// Name of the role, a lowercase SQL identifier.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    pub name: String,
    /// Whether the role may log in (gets a password Secret).
    #[serde(default = "default_true")]
    pub login: bool,
    /// Access per tier: `none`, `read` or `write`. Tiers not listed here are `none`.
    #[serde(default)]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["tier"]))]
    pub access: Vec<TierAccess>,
    /// Maximum concurrent connections of the role; unlimited when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub connection_limit: Option<i32>,
}

/// A role's access to one tier.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierAccess {
    /// Name of a tier declared in `spec.tiers`.
    #[schemars(length(min = 1, max = 63))]
    pub tier: String,
    /// `none`, `read` or `write`.
    pub level: Access,
}

fn default_true() -> bool {
    true
}

/// Access of a role to a tier.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// No access: privileges are revoked.
    #[default]
    None,
    /// SELECT on tables and USAGE on schemas.
    Read,
    /// Read plus INSERT, UPDATE, DELETE and sequence use.
    Write,
}

/// What happens to a role removed from the spec.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RoleRemovalPolicy {
    /// Revoke login and privileges, keep the role and the objects it owns. The default.
    #[default]
    Retire,
    /// Revoke its privileges and drop the role, only when it owns nothing: a role that owns
    /// objects is kept (and named in the Database's condition) unless `reassignOwnedTo` says
    /// who takes them over first. Nothing is ever dropped with it (no `DROP OWNED`);
    /// PostgreSQL refuses the drop while the role still holds a privilege elsewhere. A role
    /// that existed before homeplane declared it (adopted) is never dropped: only released.
    Drop,
}

/// Where migrations come from and where they are tracked.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Migrations {
    /// Table that records applied migrations.
    #[serde(default = "default_migrations_table")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$"))]
    pub table: String,
    /// ConfigMaps whose keys are migration files: `NNNN_description.sql`, and optionally
    /// `NNNN_description.down.sql` to undo it. Applied in order of the number.
    #[serde(default)]
    pub config_maps: Vec<String>,
    /// Migrations written inline (ids like `0001_init`, or `0001_init.down` for a down step).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub inline: Vec<Migration>,
    /// Apply up to this version; lower it to roll back with the down files (refused when a
    /// down file is missing). All migrations when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub target_version: Option<i64>,
    /// `PerMigration` (default): each migration in its own transaction, so the ones before a
    /// failure stay applied. `All`: every pending migration in one transaction.
    #[serde(default)]
    pub transaction: TransactionMode,
    /// Ids of applied migrations whose changed file is accepted: their recorded checksum is
    /// updated instead of the Database being refused with `ChecksumMismatch`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept_changed_checksums: Vec<String>,
    /// Treat every migration up to this version as applied already (for a database whose
    /// schema was made before homeplane); they are recorded, not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub baseline: Option<i64>,
    /// Take over the history of another runner: the versions recorded in this table are
    /// recorded as applied (e.g. sqlx's `_sqlx_migrations`, or a hand-rolled table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<AdoptHistory>,
}

/// Another runner's history table.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdoptHistory {
    /// The table, optionally schema-qualified, e.g. `_sqlx_migrations`. Must differ from
    /// `table`.
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$"))]
    pub table: String,
    /// Its column holding the version number.
    #[serde(default = "default_version_column")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    pub version_column: String,
}

fn default_version_column() -> String {
    "version".to_string()
}

/// How migrations are grouped into transactions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TransactionMode {
    /// One transaction per migration.
    #[default]
    PerMigration,
    /// One transaction for all pending migrations.
    All,
}

fn default_migrations_table() -> String {
    "schema_migrations".to_string()
}

/// One migration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    /// Ordered id, e.g. `0001_init`; migrations apply in lexical order of id.
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[0-9A-Za-z_.-]+$"))]
    pub id: String,
    /// The SQL to run, in one transaction.
    #[schemars(length(min = 1))]
    pub sql: String,
}

/// The observed state of a Database.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Version string of the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Number of migrations recorded as applied.
    #[serde(default)]
    pub migrations_applied: i32,
    /// Number of declared migrations not yet applied.
    #[serde(default)]
    pub migrations_pending: i32,
    /// Whether homeplane created the database on the server (only then does
    /// `deletionPolicy: Delete` drop it).
    #[serde(default)]
    pub created_database: bool,
    /// No longer used (always left out): failures are retried with backoff for as long as they
    /// last, never counted towards a stall. Read only from objects earlier versions wrote.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_attempts: i32,
    /// Id of the last applied migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_migration: Option<String>,
    /// What the last change did, one line per SQL statement (passwords redacted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_plan: Vec<String>,
    /// Secrets holding each login role's credentials.
    #[serde(default)]
    pub role_secrets: BTreeMap<String, String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}
