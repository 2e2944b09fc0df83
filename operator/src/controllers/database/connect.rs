//! How the Database controller reaches PostgreSQL: one connection pool per server, database
//! and credentials; the admin credentials from their Secret; connection options that never log
//! a statement; and what a failed connection means.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use homeplane_crds::database::{ExternalServer, SslMode};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use super::secrets::secret_value;
use super::sql;
use crate::controllers::{Context, Error};
use crate::reconcile::Outcome;

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

/// The admin username and password from `spec.server.external.adminSecret`; `None` when the
/// Secret or one of its keys is missing.
pub(super) async fn admin_credentials(
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
pub(super) fn pool(
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
pub(super) async fn database_comment(
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

pub(super) fn sql_error(action: &'static str, source: sqlx::Error) -> Error {
    Error::Postgres { action, source }
}

/// The outcome of a failed connection. A managed server that does not answer yet is waited
/// for (it is homeplane's own, starting or restarting); anything else is a failure retried with
/// backoff.
pub(super) fn unreachable(server: &ExternalServer, error: &sqlx::Error, managed: bool) -> Outcome {
    let auth = match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c == "28P01" || c == "28000"),
        _ => false,
    };
    if auth {
        Outcome::retry(
            "AuthenticationFailed",
            format!(
                "{}:{} refused the admin credentials; check the username and password in spec.server.external.adminSecret",
                server.host, server.port
            ),
        )
    } else if managed {
        super::managed::waiting(format!(
            "{}:{} does not accept connections yet: {error}",
            server.host, server.port
        ))
    } else {
        Outcome::retry(
            "ServerUnreachable",
            format!(
                "cannot connect to PostgreSQL at {}:{}: {error}",
                server.host, server.port
            ),
        )
    }
}

pub(super) fn connect_options(
    server: &ExternalServer,
    user: &str,
    password: &str,
) -> PgConnectOptions {
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
