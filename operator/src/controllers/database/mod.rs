//! The Database controller: makes a PostgreSQL server hold exactly the declared roles, tier
//! schemas, privileges, extensions and migrations. Pipeline: dereference (the server, its admin
//! Secret) -> connect (creating the database) -> extensions -> role passwords ([`secrets`]) ->
//! access: observe, plan (pure, [`plan`]), apply in one transaction ([`access`]) -> role
//! Secrets -> migrations ([`migrations`]) -> status. Deletion follows `deletionPolicy`
//! ([`cleanup`]).

mod access;
pub(crate) mod catalog;
mod cleanup;
mod connect;
pub mod managed;
pub mod migrate;
mod migrations;
pub(crate) mod plan;
mod secrets;
pub(crate) mod sql;

use std::sync::Arc;
use std::time::Duration;

use homeplane_crds::database::{Database, DatabaseStatus, ExternalServer};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::{Controller, watcher};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, Postgres};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Context, Error};
use crate::reconcile::{self, Outcome, Reconciler, watch};
pub use connect::{Pools, quiet_options};
use connect::{admin_credentials, connect_options, database_comment, pool, sql_error};
pub use migrations::collect as collect_migrations;
pub(crate) use secrets::{role_secret_name, secret_value};
use sql::audited;

/// How often a converged Database is checked again (hand-made grants are revoked by then).
const RESYNC: Duration = Duration::from_secs(120);
/// Most plan lines kept in status.
const MAX_PLAN_LINES: usize = 50;
/// Finalizer that lets `deletionPolicy` run before a Database object goes away.
const FINALIZER: &str = "homeplane.dev/database-cleanup";

/// The Database controller.
pub struct Databases;

/// Runs the controller until `shutdown` is cancelled. A Database is reconciled when it
/// changes, when its role Secrets or its managed server's StatefulSet change, and every
/// [`RESYNC`].
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=homeplane");
    let controller = Controller::new(ctx.watched::<Database>(), watch::config())
        .owns(ctx.watched::<Secret>(), owned.clone())
        .owns(ctx.watched::<StatefulSet>(), owned);
    reconcile::run(Databases, controller, ctx, shutdown).await;
}

impl Reconciler for Databases {
    type Object = Database;
    const NAME: &'static str = "database";
    const RESYNC: Duration = RESYNC;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    async fn reconcile(
        &self,
        db: &Database,
        status: &mut DatabaseStatus,
        ctx: &Context,
    ) -> Result<Outcome, Error> {
        // Counted by earlier versions; the frame's retry policy counts in time, not attempts.
        status.failed_attempts = 0;
        let reached = match reach(db, ctx).await? {
            Ok(reached) => reached,
            Err(outcome) => return Ok(outcome),
        };
        let mut conn = match connect(db, ctx, &reached, status).await? {
            Ok(conn) => conn,
            Err(outcome) => return Ok(outcome),
        };
        let missing = match extensions(db, &mut conn).await? {
            Ok(missing) => missing,
            Err(outcome) => return Ok(outcome),
        };
        let passwords = match secrets::new_passwords(db, ctx).await? {
            Ok(passwords) => passwords,
            Err(outcome) => return Ok(outcome),
        };
        let verifiers = secrets::verifiers(&passwords)?;
        let dbname = database_name(db);
        let admin = reached.admin_user.as_str();
        let statements =
            match access::converge(&mut conn, db, ctx, admin, &dbname, &verifiers, true).await? {
                Ok(statements) => statements,
                Err(outcome) => return Ok(outcome),
            };
        let changes = plan::changes(&statements);
        if !changes.is_empty() {
            status.last_plan = changes.into_iter().take(MAX_PLAN_LINES).collect();
        }
        secrets::write(db, ctx, &reached.public, &dbname, &passwords).await?;
        status.role_secrets = db
            .spec
            .roles
            .iter()
            .filter(|r| r.login)
            .map(|r| (r.name.clone(), role_secret_name(db, &r.name)))
            .collect();
        if let Some(outcome) = migrations::apply(db, ctx, &mut conn, admin, &dbname, status).await?
        {
            return Ok(outcome);
        }
        if !missing.is_empty() {
            return Ok(Outcome::blocked(
                "ExtensionUnavailable",
                format!(
                    "the server has no extension {}; install it on the server or remove it from spec.extensions",
                    missing.join(", ")
                ),
            ));
        }
        let message = format!(
            "database {dbname} on {}:{} matches the spec: {} role(s), {} tier(s), {} migration(s) applied",
            reached.public.host,
            reached.public.port,
            db.spec.roles.len(),
            db.spec.tiers.len(),
            status.migrations_applied
        );
        Ok(Outcome::ready("Reconciled", message))
    }

    async fn cleanup(&self, db: &Database, ctx: &Context) -> Result<(), Error> {
        cleanup::run(db, ctx).await
    }
}

/// Where homeplane connects (an external server, or a managed server's instance once it runs),
/// where applications connect (the role Secrets' host), and as whom.
struct Reached {
    server: ExternalServer,
    public: ExternalServer,
    admin_user: String,
    admin_password: String,
}

/// Dereference: the server (running a managed one first) and its admin credentials; the
/// outcome to report while they are not there.
async fn reach(db: &Database, ctx: &Context) -> Result<Result<Reached, Outcome>, Error> {
    let ns = db.namespace().unwrap_or_default();
    let (server, public) = match (&db.spec.server.external, &db.spec.server.managed) {
        (Some(external), _) => (external.clone(), external.clone()),
        (None, Some(managed)) => match managed::converge(db, ctx, managed).await? {
            Ok(instance) => (instance, managed::endpoint(db)),
            Err(waiting) => return Ok(Err(waiting)),
        },
        (None, None) => {
            return Ok(Err(Outcome::invalid(
                "InvalidServer",
                "spec.server names neither an external nor a managed server",
            )));
        }
    };
    // A Secret that arrives a moment later is retried, never waited for by hand.
    let Some((admin_user, admin_password)) = admin_credentials(ctx, &ns, &server).await? else {
        return Ok(Err(Outcome::retry(
            "AdminSecretMissing",
            format!(
                "Secret {ns}/{} with keys username and password is missing; create it with the server's admin credentials",
                server.admin_secret
            ),
        )));
    };
    Ok(Ok(Reached {
        server,
        public,
        admin_user,
        admin_password,
    }))
}

/// Connects to the database, creating it (marked on the server as homeplane's) when it does
/// not exist; the outcome to report when the server cannot be reached.
async fn connect(
    db: &Database,
    ctx: &Context,
    reached: &Reached,
    status: &mut DatabaseStatus,
) -> Result<Result<PoolConnection<Postgres>, Outcome>, Error> {
    let (server, admin_user) = (&reached.server, reached.admin_user.as_str());
    let password = reached.admin_password.as_str();
    let managed = db.spec.server.managed.is_some();
    let dbname = database_name(db);
    let mut conn = match pool(ctx, server, admin_user, password, "postgres")
        .acquire()
        .await
    {
        Ok(conn) => conn,
        Err(error) => return Ok(Err(connect::unreachable(server, &error, managed))),
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
                sql::ident(admin_user)
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
    match pool(ctx, server, admin_user, password, &dbname)
        .acquire()
        .await
    {
        Ok(conn) => Ok(Ok(conn)),
        Err(error) => Ok(Err(connect::unreachable(server, &error, managed))),
    }
}

/// Creates and updates the declared extensions the server has; returns those it lacks.
async fn extensions(
    db: &Database,
    conn: &mut sqlx::PgConnection,
) -> Result<Result<Vec<String>, Outcome>, Error> {
    let available = catalog::available_extensions(&mut *conn)
        .await
        .map_err(|e| sql_error("list available extensions", e))?;
    let missing: Vec<String> = db
        .spec
        .extensions
        .iter()
        .map(|e| e.name.clone())
        .filter(|n| !available.contains(n))
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
            return Ok(Err(Outcome::blocked(
                "ExtensionFailed",
                format!("`{statement}` failed: {detail}; check spec.extensions"),
            )));
        }
    }

    Ok(Ok(missing))
}

/// The pool the state registry's `sql` observer runs its read-only transactions on: the
/// Database controller's own pool for its admin credentials, so connections are kept between
/// evaluations. The error says why the Database cannot be read.
pub async fn observer_pool(ctx: &Context, db: &Database) -> Result<sqlx::PgPool, String> {
    let (server, user, password) = observer_login(ctx, db).await?;
    Ok(connect::pool(
        ctx,
        &server,
        &user,
        &password,
        &database_name(db),
    ))
}

/// How a reader outside the controller (the dashboard) reaches a Database: its admin
/// credentials, which the reader narrows to a read-only transaction under the read-only role
/// `pg_read_all_data`. The error says why the Database cannot be read.
pub async fn observer_options(ctx: &Context, db: &Database) -> Result<PgConnectOptions, String> {
    let (server, user, password) = observer_login(ctx, db).await?;
    Ok(connect_options(&server, &user, &password).database(&database_name(db)))
}

/// The server of a Database and its admin user and password, or why they cannot be had.
async fn observer_login(
    ctx: &Context,
    db: &Database,
) -> Result<(ExternalServer, String, String), String> {
    let ns = db.namespace().unwrap_or_default();
    let Some(server) = server(ctx, db).await.map_err(|e| e.to_string())? else {
        return Err(format!(
            "Database {} has no server to read yet (a managed server without a running pod)",
            db.name_any()
        ));
    };
    match admin_credentials(ctx, &ns, &server).await {
        Ok(Some((user, password))) => Ok((server, user, password)),
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

/// The database name on the server.
pub(crate) fn database_name(db: &Database) -> String {
    db.spec
        .database_name
        .clone()
        .unwrap_or_else(|| db.name_any())
}

#[cfg(test)]
mod tests;
