//! The Database controller: makes a PostgreSQL server hold exactly the declared roles, tier
//! schemas, privileges, extensions and migrations. Pipeline: dereference (admin Secret,
//! migration ConfigMaps, role Secrets) -> connect -> observe -> plan (pure) -> apply (one
//! transaction) -> migrations -> Secrets -> status.

pub(crate) mod catalog;
pub mod managed;
pub mod migrate;
pub(crate) mod plan;
pub(crate) mod sql;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use homeplane_crds::common::DeletionPolicy;
use homeplane_crds::database::{
    Database, DatabaseStatus, ExternalServer, RoleRemovalPolicy, SslMode, TransactionMode,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument};

use super::{Context, Error, FIELD_MANAGER, apply_status, error_policy, now};
use crate::conditions::{self, DEGRADED, Desired, READY, STALLED};
use sql::audited;

const CONTROLLER: &str = "database";
/// How often a converged Database is checked again (hand-made grants are revoked by then).
const RESYNC: Duration = Duration::from_secs(120);
/// Most plan lines kept in status.
const MAX_PLAN_LINES: usize = 50;
/// Annotation on role Secrets: the `rotatePasswords` value their password was made for.
const ROTATION_ANNOTATION: &str = "homeplane.dev/rotation";
/// Annotation on role Secrets: the role whose credentials they hold.
const ROLE_ANNOTATION: &str = "homeplane.dev/role";
/// Label on role Secrets: the Database they belong to.
const OWNER_LABEL: &str = "homeplane.dev/owner";

/// Connection pools, one per server, database and admin credentials.
#[derive(Default)]
pub struct Pools(Mutex<HashMap<String, PgPool>>);

impl Pools {
    fn get_or_connect(&self, key: &str, options: PgConnectOptions) -> PgPool {
        if let Ok(mut pools) = self.0.lock() {
            return pools
                .entry(key.to_string())
                .or_insert_with(|| {
                    PgPoolOptions::new()
                        .max_connections(3)
                        .min_connections(0)
                        .acquire_timeout(Duration::from_secs(5))
                        .idle_timeout(Duration::from_secs(300))
                        .connect_lazy_with(options)
                })
                .clone();
        }
        PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options)
    }
}

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=homeplane");
    Controller::new(ctx.watched::<Database>(), watcher::Config::default())
        .owns(ctx.watched::<Secret>(), owned.clone())
        .owns(ctx.watched::<StatefulSet>(), owned)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile,
            |db, error, ctx| error_policy(CONTROLLER, db, error, ctx),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The outcome of one pass, before it becomes status.
struct Outcome {
    ready: Desired,
    degraded: Option<Desired>,
    action: Action,
    /// A failure that retrying may cure: retried with backoff.
    retry: bool,
    /// Only a person can cure it (a wrong spec, an extension the server lacks): `Stalled`.
    stalled: bool,
}

impl Outcome {
    /// Blocked until the spec or the environment changes: `Stalled`.
    fn blocked(reason: &'static str, message: String, action: Action) -> Self {
        Self {
            ready: Desired::no(READY, reason, message.clone()),
            degraded: Some(Desired::yes(DEGRADED, reason, message)),
            action,
            retry: false,
            stalled: true,
        }
    }

    /// Waiting for the world (e.g. room on a node class), looked at again after `action`:
    /// `Ready=False` and `Degraded=True`, not `Stalled`.
    fn waiting(reason: &'static str, message: String, action: Action) -> Self {
        Self {
            stalled: false,
            ..Self::blocked(reason, message, action)
        }
    }

    /// Failed for now; tried again with backoff until it passes.
    fn retrying(reason: &'static str, message: String) -> Self {
        Self {
            retry: true,
            ..Self::waiting(reason, message, Action::await_change())
        }
    }
}

/// Finalizer that lets `deletionPolicy` run before a Database object goes away.
const FINALIZER: &str = "homeplane.dev/database-cleanup";

#[instrument(skip_all, fields(database = %db.name_any(), namespace = db.namespace().unwrap_or_default()))]
async fn reconcile(db: Arc<Database>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api = api(&db, &ctx);
    finalizer(&api, FINALIZER, db, |event| async {
        match event {
            FinalizerEvent::Apply(db) => apply(db, ctx.clone()).await,
            FinalizerEvent::Cleanup(db) => cleanup(db, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Runs when a Database object is deleted. `Retain` keeps everything; `Delete` drops the
/// roles homeplane manages for it and the database itself if homeplane created it.
async fn cleanup(db: Arc<Database>, ctx: Arc<Context>) -> Result<Action, Error> {
    if db.spec.deletion_policy == DeletionPolicy::Retain {
        if db.spec.server.managed.is_some() {
            managed::keep_admin_secret(&db, &ctx).await?;
        }
        info!("deletionPolicy Retain: the database, its roles and data stay on the server");
        return Ok(Action::await_change());
    }
    if db.spec.server.managed.is_some() {
        // The server goes with the Database (owner references); its volume is deleted here.
        managed::delete_volume(&db, &ctx).await?;
        return Ok(Action::await_change());
    }
    let Some(server) = db.spec.server.external.as_ref() else {
        return Ok(Action::await_change());
    };
    let ns = db.namespace().unwrap_or_default();
    let Some((user, password)) = admin_credentials(ctx.as_ref(), &ns, server).await? else {
        ctx.event(db.as_ref(), EventType::Warning, "CleanupSkipped", format!("Secret {ns}/{} is gone, so nothing could be dropped; the database and roles stay on the server", server.admin_secret)).await;
        return Ok(Action::await_change());
    };
    let mut conn = pool(ctx.as_ref(), server, &user, &password, "postgres")
        .acquire()
        .await
        .map_err(|e| sql_error("connect to drop the database", e))?;
    let dbname = database_name(&db);
    // Only a database that carries homeplane's mark of creation on the server is dropped.
    let comment = database_comment(&mut conn, &dbname).await?.flatten();
    if comment.as_deref() == Some(created_mark(&db).as_str()) {
        sqlx::raw_sql(audited(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            sql::ident(&dbname)
        )))
        .execute(&mut *conn)
        .await
        .map_err(|e| sql_error("drop the database", e))?;
        info!(%dbname, "dropped database (deletionPolicy Delete)");
    }
    let roles: Vec<(String,)> = sqlx::query_as(
        "SELECT rolname::text FROM pg_roles WHERE shobj_description(oid, 'pg_authid') = $1",
    )
    .bind(role_mark(&db))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| sql_error("list the Database's roles", e))?;
    for (role,) in roles {
        if let Err(error) = sqlx::raw_sql(audited(format!("DROP ROLE {}", sql::ident(&role))))
            .execute(&mut *conn)
            .await
        {
            let note = format!("role {role} was kept: {error}");
            ctx.event(db.as_ref(), EventType::Warning, "RoleKept", note)
                .await;
        }
    }
    Ok(Action::await_change())
}

async fn apply(db: Arc<Database>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // The cached object may predate our own last status write; build on the stored status.
    let Some(db) = api(&db, &ctx)
        .get_opt(&db.name_any())
        .await
        .map_err(Error::kube("read the Database"))?
    else {
        return Ok(Action::await_change());
    };
    let db = Arc::new(db);
    let mut status = db.status.clone().unwrap_or_default();
    let old = status.clone();
    let generation = db.metadata.generation;
    let outcome = converge(&db, &ctx, &mut status).await?;
    status.observed_generation = generation;
    // A failure the world can cure (a server restarting, a Secret that arrives late) is retried
    // with the reconcile frame's backoff for as long as it takes, never counted towards a stall.
    // Nothing in the status changes from one attempt to the next, so the status write does not
    // wake the controller again at once.
    status.failed_attempts = 0;
    match (&outcome.degraded, outcome.stalled) {
        (Some(d), true) => {
            let stalled = Desired::yes(STALLED, d.reason, d.message.clone());
            conditions::set(&mut status.conditions, stalled, generation, now());
        }
        _ => conditions::remove(&mut status.conditions, STALLED),
    }
    let key = super::key(db.as_ref());
    let action = match outcome.retry {
        true => Action::requeue(ctx.retries.failed(&key).delay),
        false => {
            ctx.retries.succeeded(&key);
            outcome.action
        }
    };
    conditions::set(&mut status.conditions, outcome.ready, generation, now());
    match outcome.degraded {
        Some(degraded) => conditions::set(&mut status.conditions, degraded, generation, now()),
        None => conditions::remove(&mut status.conditions, DEGRADED),
    }
    if status != old || db.status.is_none() {
        apply_status(&api(&db, &ctx), db.as_ref(), &status).await?;
    }
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    ctx.succeeded(&super::key(db.as_ref()));
    Ok(action)
}

/// How the state registry's `sql` observer reaches a Database: its admin credentials, which
/// the observer narrows to a read-only transaction under the read-only role
/// `pg_read_all_data`. The error says why the Database cannot be read.
pub async fn observer_options(ctx: &Context, db: &Database) -> Result<PgConnectOptions, String> {
    let ns = db.namespace().unwrap_or_default();
    let Some(server) = server(ctx, db).await.map_err(|e| e.to_string())? else {
        return Err(format!(
            "Database {} has no server to read yet (a managed server without a running pod)",
            db.name_any()
        ));
    };
    let server = &server;
    match admin_credentials(ctx, &ns, server).await {
        Ok(Some((user, password))) => {
            Ok(connect_options(server, &user, &password).database(&database_name(db)))
        }
        Ok(None) => Err(format!(
            "Secret {ns}/{} with username and password is missing",
            server.admin_secret
        )),
        Err(e) => Err(format!(
            "failed to read Secret {ns}/{}: {e}",
            server.admin_secret
        )),
    }
}

fn api(db: &Database, ctx: &Context) -> Api<Database> {
    Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default())
}

/// The comment of a database homeplane created for this object.
fn created_mark(db: &Database) -> String {
    format!(
        "created by homeplane: {}/{}",
        db.namespace().unwrap_or_default(),
        db.name_any()
    )
}

/// The comment of the roles that existed before this object declared them (never dropped).
pub(crate) fn adopted_mark(db: &Database) -> String {
    format!(
        "{}{}/{}",
        plan::ADOPTED_COMMENT_PREFIX,
        db.namespace().unwrap_or_default(),
        db.name_any()
    )
}

/// Most objects named per role when a removal is refused.
const MAX_OWNED_NAMED: usize = 20;

/// What each of `roles` owns: objects of this database (described by PostgreSQL, e.g. `table
/// clinical.notes`), shared objects, and the count in other databases.
async fn owned_objects(
    conn: &mut sqlx::PgConnection,
    roles: &[String],
) -> Result<BTreeMap<String, Vec<String>>, sqlx::Error> {
    let rows: Vec<(String, Option<String>, Option<String>, i64)> = sqlx::query_as(
        "SELECT r.rolname::text,
                CASE WHEN d.dbid = 0 OR d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                     THEN pg_describe_object(d.classid, d.objid, d.objsubid) END,
                CASE WHEN d.dbid <> 0 AND d.dbid <> (SELECT oid FROM pg_database WHERE datname = current_database())
                     THEN (SELECT datname::text FROM pg_database WHERE oid = d.dbid) END,
                count(*) OVER (PARTITION BY r.rolname)
         FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid
         WHERE d.deptype = 'o' AND d.refclassid = 'pg_authid'::regclass AND r.rolname = ANY($1)
         ORDER BY 1, 2, 3",
    )
    .bind(roles)
    .fetch_all(conn)
    .await?;
    let mut owned: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (role, here, elsewhere, total) in rows {
        let list = owned.entry(role).or_default();
        if list.len() == MAX_OWNED_NAMED {
            list.push(format!("and more ({total} in all)"));
        }
        if list.len() > MAX_OWNED_NAMED {
            continue;
        }
        match (here, elsewhere) {
            (Some(object), _) => list.push(object),
            (None, Some(database)) => list.push(format!("an object in database {database}")),
            (None, None) => list.push("an object".to_string()),
        }
    }
    Ok(owned)
}

/// The comment of the roles homeplane manages for this object.
pub(crate) fn role_mark(db: &Database) -> String {
    format!(
        "{}{}/{}",
        plan::ROLE_COMMENT_PREFIX,
        db.namespace().unwrap_or_default(),
        db.name_any()
    )
}

/// How homeplane reaches the server of `db`: the external server as declared, or a managed
/// server's instance (its pod's address, with the admin Secret homeplane made for it); `None`
/// while a managed server's pod has no address.
pub(crate) async fn server(ctx: &Context, db: &Database) -> Result<Option<ExternalServer>, Error> {
    match (&db.spec.server.external, &db.spec.server.managed) {
        (Some(external), _) => Ok(Some(external.clone())),
        (None, Some(_)) => managed::instance(ctx, db).await,
        (None, None) => Ok(None),
    }
}

/// The admin username and password from `spec.server.external.adminSecret`; `None` when the
/// Secret or one of its keys is missing.
async fn admin_credentials(
    ctx: &Context,
    ns: &str,
    server: &ExternalServer,
) -> Result<Option<(String, String)>, Error> {
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(&server.admin_secret)
        .await
        .map_err(Error::kube("read the admin Secret"))?;
    Ok(secret
        .as_ref()
        .and_then(|s| Some((secret_value(s, "username")?, secret_value(s, "password")?))))
}

/// The pool for `dbname` on `server` as `user`.
fn pool(
    ctx: &Context,
    server: &ExternalServer,
    user: &str,
    password: &str,
    dbname: &str,
) -> PgPool {
    let options = connect_options(server, user, password).database(dbname);
    ctx.postgres
        .get_or_connect(&pool_key(server, user, password, dbname), options)
}

/// The comment of database `dbname`: `None` when the database does not exist.
async fn database_comment(
    conn: &mut sqlx::PgConnection,
    dbname: &str,
) -> Result<Option<Option<String>>, Error> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
    )
    .bind(dbname)
    .fetch_optional(conn)
    .await
    .map_err(|e| sql_error("look up the database", e))?;
    Ok(row.map(|(comment,)| comment))
}

/// The database name on the server.
pub(crate) fn database_name(db: &Database) -> String {
    db.spec
        .database_name
        .clone()
        .unwrap_or_else(|| db.name_any())
}

/// The Secret holding a role's credentials: `<database object>-<role>` in DNS form.
pub(crate) fn role_secret_name(db: &Database, role: &str) -> String {
    format!("{}-{}", db.name_any(), role.replace('_', "-"))
}

/// Whether `secret` may hold `role`'s credentials for `db`: made by homeplane for this
/// Database, and for this role (`a` + `b-c` and `a-b` + `c` give the same name, as do roles
/// `x_y` and `x-y`). Someone else's Secret is never read nor written over.
fn is_role_secret_of(secret: &Secret, db: &Database, role: &str) -> bool {
    let labels = secret.labels();
    let owner = format!("database.{}", db.name_any());
    labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some("homeplane")
        && labels.get(OWNER_LABEL) == Some(&owner)
        && match secret.annotations().get(ROLE_ANNOTATION) {
            Some(r) => r == role,
            // Made before the annotation existed: its username says whose it is.
            None => secret_value(secret, "username").as_deref() == Some(role),
        }
}

async fn converge(
    db: &Database,
    ctx: &Context,
    status: &mut DatabaseStatus,
) -> Result<Outcome, Error> {
    let ns = db.namespace().unwrap_or_default();
    // Where homeplane connects, and where applications do (the role Secrets' host).
    let (server, public) = match (&db.spec.server.external, &db.spec.server.managed) {
        (Some(external), _) => (external.clone(), external.clone()),
        (None, Some(managed)) => match managed::converge(db, ctx, managed).await? {
            Ok(instance) => (instance, managed::endpoint(db)),
            Err(waiting) => return Ok(waiting),
        },
        (None, None) => {
            return Ok(Outcome::blocked(
                "InvalidServer",
                "spec.server names neither an external nor a managed server".into(),
                Action::await_change(),
            ));
        }
    };
    let server = &server;
    let managed = db.spec.server.managed.is_some();

    // Dereference: the admin credentials.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some((admin_user, admin_password)) = admin_credentials(ctx, &ns, server).await? else {
        return Ok(Outcome::retrying(
            "AdminSecretMissing",
            format!(
                "Secret {ns}/{} with keys username and password is missing; create it with the server's admin credentials",
                server.admin_secret
            ),
        ));
    };

    // Connect, creating the database if needed.
    let dbname = database_name(db);
    let maintenance = pool(ctx, server, &admin_user, &admin_password, "postgres");
    let mut conn = match maintenance.acquire().await {
        Ok(conn) => conn,
        Err(error) => return Ok(unreachable(server, &error, managed)),
    };
    status.server_version = catalog::server_version(&mut conn).await.ok();
    let created = created_mark(db);
    match database_comment(&mut conn, &dbname).await? {
        Some(comment) => status.created_database = comment.as_deref() == Some(created.as_str()),
        None => {
            // The comment records, on the server itself, that homeplane made this database:
            // only such a database is ever dropped (deletionPolicy Delete).
            // CREATE DATABASE cannot share a statement string (an implicit transaction).
            let db_ident = sql::ident(&dbname);
            let create = format!(
                "CREATE DATABASE {db_ident} OWNER {}",
                sql::ident(&admin_user)
            );
            let comment = format!(
                "COMMENT ON DATABASE {db_ident} IS {}",
                sql::literal(&created)
            );
            for statement in [create, comment] {
                sqlx::raw_sql(audited(statement))
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| sql_error("create the database", e))?;
            }
            info!(%dbname, "created database");
            status.created_database = true;
        }
    }
    drop(conn);
    let mut conn = match pool(ctx, server, &admin_user, &admin_password, &dbname)
        .acquire()
        .await
    {
        Ok(conn) => conn,
        Err(error) => return Ok(unreachable(server, &error, managed)),
    };

    // Extensions.
    let available = catalog::available_extensions(&mut conn)
        .await
        .map_err(|e| sql_error("list available extensions", e))?;
    let missing: Vec<&str> = db
        .spec
        .extensions
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| !available.contains(*n))
        .collect();
    for extension in db
        .spec
        .extensions
        .iter()
        .filter(|e| available.contains(&e.name))
    {
        let installed: Option<(String,)> =
            sqlx::query_as("SELECT extversion FROM pg_extension WHERE extname = $1")
                .bind(&extension.name)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| sql_error("look up an extension", e))?;
        let name = sql::ident(&extension.name);
        let statement = match (installed, &extension.version) {
            (None, Some(version)) => {
                format!("CREATE EXTENSION {name} VERSION {}", sql::literal(version))
            }
            (None, None) => format!("CREATE EXTENSION {name}"),
            (Some((current,)), Some(version)) if &current != version => {
                format!("ALTER EXTENSION {name} UPDATE TO {}", sql::literal(version))
            }
            _ => continue,
        };
        if let Err(error) = sqlx::raw_sql(audited(statement.clone()))
            .execute(&mut *conn)
            .await
        {
            let detail = sql::message(&error);
            return Ok(Outcome::blocked(
                "ExtensionFailed",
                format!("`{statement}` failed: {detail}; check spec.extensions"),
                Action::requeue(RESYNC),
            ));
        }
    }

    // Role Secrets: which roles need a new password.
    let rotation = db.spec.rotate_passwords.clone().unwrap_or_default();
    let mut passwords = BTreeMap::new();
    for role in db.spec.roles.iter().filter(|r| r.login) {
        let name = role_secret_name(db, &role.name);
        let existing = secrets
            .get_opt(&name)
            .await
            .map_err(Error::kube("read a role Secret"))?;
        if let Some(secret) = &existing
            && !is_role_secret_of(secret, db, &role.name)
        {
            return Ok(Outcome::blocked(
                "SecretNameTaken",
                format!(
                    "Secret {ns}/{name} for role {} exists and was not made by homeplane for this Database and role; it is neither read nor written over: rename the role or the Database, remove that Secret, or hand it to homeplane with its password by labelling it app.kubernetes.io/managed-by=homeplane and {OWNER_LABEL}=database.{} and annotating it {ROLE_ANNOTATION}={}",
                    role.name,
                    db.name_any(),
                    role.name
                ),
                Action::requeue(RESYNC),
            ));
        }
        let current = existing.as_ref().filter(|s| {
            s.annotations()
                .get(ROTATION_ANNOTATION)
                .map(String::as_str)
                .unwrap_or_default()
                == rotation
        });
        if current.and_then(|s| secret_value(s, "password")).is_none() {
            passwords.insert(role.name.clone(), generate_password()?);
        }
    }

    // Observe, plan, apply in one transaction.
    let mut verifiers = BTreeMap::new();
    for (role, password) in &passwords {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| Error::Random(e.to_string()))?;
        verifiers.insert(role.clone(), sql::scram_verifier(password, &salt));
    }
    let statements =
        match converge_access(&mut conn, db, ctx, &admin_user, &dbname, &verifiers, true).await? {
            Ok(statements) => statements,
            Err(outcome) => return Ok(outcome),
        };
    let changes = plan::changes(&statements);
    if !changes.is_empty() {
        status.last_plan = changes.into_iter().take(MAX_PLAN_LINES).collect();
    }

    // Credentials for the roles that got a new password.
    for (role, password) in &passwords {
        apply_role_secret(db, ctx, &public, &dbname, role, password, &rotation).await?;
    }
    status.role_secrets = db
        .spec
        .roles
        .iter()
        .filter(|r| r.login)
        .map(|r| (r.name.clone(), role_secret_name(db, &r.name)))
        .collect();

    // Migrations.
    let migrations = match collect_migrations(db, ctx).await? {
        Ok(migrations) => migrations,
        Err(message) => {
            return Ok(Outcome::blocked(
                "InvalidMigrations",
                message,
                Action::await_change(),
            ));
        }
    };
    let mut migration_error = None;
    if let (Some(spec), false) = (db.spec.migrations.as_ref(), migrations.is_empty()) {
        let options = migrate::Options {
            table: spec.table.clone(),
            target: spec.target_version,
            single_transaction: spec.transaction == TransactionMode::All,
            accept_changed: spec.accept_changed_checksums.clone(),
            baseline: spec.baseline,
            adopt: spec
                .adopt
                .as_ref()
                .map(|a| (a.table.clone(), a.version_column.clone())),
            dry_run: false,
            applied_by: format!("homeplane ({ns}/{})", db.name_any()),
        };
        let report = match migrate::run(&mut conn, &migrations, &options).await {
            Ok(report) => report,
            Err((report, error)) => {
                migration_error = Some(error);
                report
            }
        };
        status.migrations_applied = i32::try_from(report.applied).unwrap_or(i32::MAX);
        status.migrations_pending = i32::try_from(report.pending).unwrap_or(i32::MAX);
        status.last_migration = report.last;
        if !report.rolled_back.is_empty() {
            let note = format!("rolled back {}", report.rolled_back.join(", "));
            ctx.event(db, EventType::Normal, "MigrationsRolledBack", note)
                .await;
        }
        if !report.recorded.is_empty() {
            let note = format!(
                "recorded {} migration(s) as applied without running them (baseline or adopted history)",
                report.recorded.len()
            );
            ctx.event(db, EventType::Normal, "MigrationsAdopted", note)
                .await;
        }
        if !report.newly_applied.is_empty() || !report.rolled_back.is_empty() {
            // New tables and functions follow their tier now, not at the next resync.
            match converge_access(
                &mut conn,
                db,
                ctx,
                &admin_user,
                &dbname,
                &BTreeMap::new(),
                false,
            )
            .await?
            {
                Ok(more) => status
                    .last_plan
                    .extend(plan::changes(&more).into_iter().take(MAX_PLAN_LINES)),
                Err(outcome) => return Ok(outcome),
            }
        }
        if !report.newly_applied.is_empty() {
            ctx.event(
                db,
                EventType::Normal,
                "MigrationsApplied",
                format!(
                    "applied {} migration(s), up to {}",
                    report.newly_applied.len(),
                    report
                        .newly_applied
                        .last()
                        .map(String::as_str)
                        .unwrap_or_default()
                ),
            )
            .await;
        }
    }

    if let Some(error) = migration_error {
        let reason = error.reason();
        ctx.event(db, EventType::Warning, reason, error.to_string())
            .await;
        if error.is_transient() {
            return Ok(Outcome::retrying(reason, error.to_string()));
        }
        return Ok(Outcome::blocked(
            reason,
            error.to_string(),
            Action::await_change(),
        ));
    }
    if !missing.is_empty() {
        return Ok(Outcome::blocked(
            "ExtensionUnavailable",
            format!(
                "the server has no extension {}; install it on the server or remove it from spec.extensions",
                missing.join(", ")
            ),
            Action::requeue(RESYNC),
        ));
    }
    let message = format!(
        "database {dbname} on {}:{} matches the spec: {} role(s), {} tier(s), {} migration(s) applied",
        public.host,
        public.port,
        db.spec.roles.len(),
        db.spec.tiers.len(),
        status.migrations_applied
    );
    Ok(Outcome {
        ready: Desired::yes(READY, "Reconciled", message),
        degraded: None,
        action: Action::requeue(RESYNC),
        retry: false,
        stalled: false,
    })
}

/// Observes the catalog, plans the access and applies it in one transaction. The inner error is
/// the outcome to report when the plan cannot be made or applied.
#[allow(clippy::too_many_arguments)]
async fn converge_access(
    conn: &mut sqlx::PgConnection,
    db: &Database,
    ctx: &Context,
    admin_user: &str,
    dbname: &str,
    verifiers: &BTreeMap<String, String>,
    report_revokes: bool,
) -> Result<Result<Vec<plan::Statement>, Outcome>, Error> {
    let role_names: Vec<String> = db.spec.roles.iter().map(|r| r.name.clone()).collect();
    let tier_schemas: Vec<String> = db
        .spec
        .tiers
        .iter()
        .flat_map(|t| t.schemas.clone())
        .collect();
    let ns = db.namespace().unwrap_or_default();
    let marks = [role_mark(db), adopted_mark(db)];
    let mut observed = catalog::observe(&mut *conn, &role_names, &marks, &tier_schemas)
        .await
        .map_err(|e| sql_error("read the catalog", e))?;
    // What the roles about to be removed own, so that Drop never drops data.
    let removed: Vec<String> = observed
        .roles
        .keys()
        .filter(|r| !role_names.contains(r))
        .cloned()
        .collect();
    if !removed.is_empty() && db.spec.role_removal_policy == RoleRemovalPolicy::Drop {
        observed.owned = owned_objects(&mut *conn, &removed)
            .await
            .map_err(|e| sql_error("list what removed roles own", e))?;
    }
    let owner_mark = format!("{ns}/{}", db.name_any());
    let plan_ctx = plan::Context {
        admin: admin_user,
        database: dbname,
        owner_mark: &owner_mark,
        verifiers,
    };
    let statements = match plan::build(&db.spec, &observed, &plan_ctx) {
        Ok(statements) => statements,
        Err(invalid) => {
            return Ok(Err(Outcome::blocked(
                "InvalidSpec",
                format!("{invalid}; fix the spec and apply again"),
                Action::await_change(),
            )));
        }
    };
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| sql_error("begin the access transaction", e))?;
    for statement in &statements {
        if let Err(error) = sqlx::raw_sql(audited(statement.sql.as_str()))
            .execute(&mut *tx)
            .await
        {
            let _ = tx.rollback().await;
            let detail = sql::message(&error);
            return Ok(Err(Outcome::retrying(
                "AccessPlanFailed",
                format!(
                    "`{}` failed: {detail}; nothing of the plan was applied",
                    statement.summary
                ),
            )));
        }
    }
    tx.commit()
        .await
        .map_err(|e| sql_error("commit the access transaction", e))?;
    let revoked: Vec<&str> = statements
        .iter()
        .filter(|s| plan::is_revoke(s))
        .map(|s| s.summary.as_str())
        .collect();
    if report_revokes && !revoked.is_empty() && db.status.is_some() {
        ctx.event(
            db,
            EventType::Warning,
            "UndeclaredPrivilegesRevoked",
            format!(
                "revoked what the spec does not declare: {}",
                revoked.join("; ")
            ),
        )
        .await;
    }
    Ok(Ok(statements))
}

fn sql_error(action: &'static str, source: sqlx::Error) -> Error {
    Error::Postgres { action, source }
}

/// The condition for a server that did not let us in.
/// The outcome of a failed connection. A managed server that does not answer yet is waited
/// for (it is homeplane's own, starting or restarting); anything else is a failure retried with
/// backoff.
fn unreachable(server: &ExternalServer, error: &sqlx::Error, managed: bool) -> Outcome {
    let auth = match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c == "28P01" || c == "28000"),
        _ => false,
    };
    if auth {
        Outcome::retrying(
            "AuthenticationFailed",
            format!(
                "{}:{} refused the admin credentials; check the username and password in spec.server.external.adminSecret",
                server.host, server.port
            ),
        )
    } else if managed {
        managed::waiting(format!(
            "{}:{} does not accept connections yet: {error}",
            server.host, server.port
        ))
    } else {
        Outcome::retrying(
            "ServerUnreachable",
            format!(
                "cannot connect to PostgreSQL at {}:{}: {error}",
                server.host, server.port
            ),
        )
    }
}

fn connect_options(server: &ExternalServer, user: &str, password: &str) -> PgConnectOptions {
    let ssl = match server.ssl_mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    };
    sql::quiet(
        PgConnectOptions::new()
            .host(&server.host)
            .port(u16::try_from(server.port).unwrap_or(5432))
            .username(user)
            .password(password)
            .ssl_mode(ssl)
            .application_name("homeplane"),
    )
}

/// `url` as connection options that never log statements (homeplane's own database, the
/// migrate command).
pub fn quiet_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    url.parse::<PgConnectOptions>().map(sql::quiet)
}

fn pool_key(server: &ExternalServer, user: &str, password: &str, dbname: &str) -> String {
    let secret = hex::encode(&Sha256::digest(password.as_bytes())[..8]);
    format!(
        "{}:{}/{dbname}?user={user}&credentials={secret}&ssl={:?}",
        server.host, server.port, server.ssl_mode
    )
}

pub(crate) fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|s| !s.is_empty())
}

/// A 32-character password from the operating system's random source, letters and digits
/// only so it needs no escaping in a URI.
fn generate_password() -> Result<String, Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(32);
    while out.len() < 32 {
        let mut buf = [0u8; 64];
        getrandom::fill(&mut buf).map_err(|e| Error::Random(e.to_string()))?;
        // 248 is the largest multiple of 62 below 256: rejection keeps the choice uniform.
        out.extend(
            buf.iter()
                .filter(|&&b| b < 248)
                .map(|&b| ALPHABET[usize::from(b) % 62] as char),
        );
    }
    out.truncate(32);
    Ok(out)
}

async fn apply_role_secret(
    db: &Database,
    ctx: &Context,
    server: &ExternalServer,
    dbname: &str,
    role: &str,
    password: &str,
    rotation: &str,
) -> Result<(), Error> {
    let ns = db.namespace().unwrap_or_default();
    let name = role_secret_name(db, role);
    let uri = format!(
        "postgres://{role}:{password}@{}:{}/{dbname}",
        server.host, server.port
    );
    let data: BTreeMap<String, ByteString> = [
        ("username", role.to_string()),
        ("password", password.to_string()),
        ("host", server.host.clone()),
        ("port", server.port.to_string()),
        ("dbname", dbname.to_string()),
        ("uri", uri),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "homeplane".to_string(),
                ),
                (
                    OWNER_LABEL.to_string(),
                    format!("database.{}", db.name_any()),
                ),
            ])),
            annotations: Some(BTreeMap::from([
                (ROTATION_ANNOTATION.to_string(), rotation.to_string()),
                (ROLE_ANNOTATION.to_string(), role.to_string()),
            ])),
            owner_references: db.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/basic-auth".to_string()),
        data: Some(data),
        ..Secret::default()
    };
    let mut value = serde_json::to_value(&secret).map_err(|source| Error::Serialize {
        what: "Secret",
        source,
    })?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await
        .map_err(Error::kube("apply a role Secret"))?;
    info!(secret = %name, "role credentials written");
    Ok(())
}

/// The declared migrations, inline and from ConfigMaps, in order; the inner error says what
/// is wrong with them.
pub(crate) async fn collect_migrations(
    db: &Database,
    ctx: &Context,
) -> Result<Result<Vec<migrate::Migration>, String>, Error> {
    let Some(spec) = db.spec.migrations.as_ref() else {
        return Ok(Ok(Vec::new()));
    };
    let mut all = Vec::new();
    for m in &spec.inline {
        match migrate::parse(&m.id, &m.sql) {
            Ok(m) => all.push(m),
            Err(e) => return Ok(Err(e.to_string())),
        }
    }
    let config_maps: Api<ConfigMap> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    for name in &spec.config_maps {
        let Some(cm) = config_maps
            .get_opt(name)
            .await
            .map_err(Error::kube("read a migrations ConfigMap"))?
        else {
            return Ok(Err(format!(
                "ConfigMap {name} named in spec.migrations.configMaps does not exist"
            )));
        };
        for (file, sql) in cm.data.unwrap_or_default() {
            if !file.ends_with(".sql") {
                continue;
            }
            match migrate::parse(&file, &sql) {
                Ok(m) => all.push(m),
                Err(e) => return Ok(Err(format!("ConfigMap {name}: {e}"))),
            }
        }
    }
    Ok(migrate::order(all).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(name: &str) -> Database {
        let mut db = Database::new(name, homeplane_crds::database::DatabaseSpec::default());
        db.metadata.namespace = Some("data".into());
        db
    }

    fn secret(owner: &str, role: Option<&str>, username: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "homeplane".to_string(),
                    ),
                    (OWNER_LABEL.to_string(), format!("database.{owner}")),
                ])),
                annotations: role
                    .map(|r| BTreeMap::from([(ROLE_ANNOTATION.to_string(), r.to_string())])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                "username".to_string(),
                ByteString(username.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        }
    }

    #[test]
    fn a_role_secret_of_another_database_or_role_is_never_taken() {
        // Database `a` role `b-c` and Database `a-b` role `c` both name `a-b-c`.
        let (a, ab) = (database("a"), database("a-b"));
        assert_eq!(role_secret_name(&a, "b-c"), role_secret_name(&ab, "c"));
        let made_for_ab = secret("a-b", Some("c"), "c");
        assert!(is_role_secret_of(&made_for_ab, &ab, "c"));
        assert!(!is_role_secret_of(&made_for_ab, &a, "b-c"));
        // Roles `x_y` and `x-y` of one Database share a name too.
        assert_eq!(role_secret_name(&a, "x_y"), role_secret_name(&a, "x-y"));
        assert!(!is_role_secret_of(
            &secret("a", Some("x_y"), "x_y"),
            &a,
            "x-y"
        ));
        // A managed server's admin Secret `<db>-admin` is not the role `admin`'s.
        assert!(!is_role_secret_of(
            &secret("a", None, "postgres"),
            &a,
            "admin"
        ));
        // Made before the role annotation: its username says whose it is.
        assert!(is_role_secret_of(&secret("a", None, "app"), &a, "app"));
        // Someone else's Secret.
        let mut foreign = secret("a", Some("app"), "app");
        foreign.metadata.labels = None;
        assert!(!is_role_secret_of(&foreign, &a, "app"));
    }
}
