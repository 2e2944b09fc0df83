//! What deleting a Database does, by its `deletionPolicy`: `Retain` keeps everything (and a
//! managed server's admin Secret with its volume); `Delete` drops the roles homeplane manages
//! for it and the database itself if homeplane created it, or a managed server's volume.

use homeplane_crds::common::DeletionPolicy;
use homeplane_crds::database::Database;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::info;

use super::connect::{admin_credentials, database_comment, pool, sql_error};
use super::sql::{self, audited};
use super::{created_mark, database_name, managed, role_mark};
use crate::controllers::{Context, Error};

/// Runs when a Database object is deleted. `Retain` keeps everything; `Delete` drops the
/// roles homeplane manages for it and the database itself if homeplane created it.
pub(super) async fn run(db: &Database, ctx: &Context) -> Result<(), Error> {
    if db.spec.deletion_policy == DeletionPolicy::Retain {
        if db.spec.server.managed.is_some() {
            managed::keep_admin_secret(db, ctx).await?;
        }
        info!("deletionPolicy Retain: the database, its roles and data stay on the server");
        return Ok(());
    }
    if db.spec.server.managed.is_some() {
        // The server goes with the Database (owner references); its volume is deleted here.
        managed::delete_volume(db, ctx).await?;
        return Ok(());
    }
    let Some(server) = db.spec.server.external.as_ref() else {
        return Ok(());
    };
    let ns = db.namespace().unwrap_or_default();
    let Some((user, password)) = admin_credentials(ctx, &ns, server).await? else {
        ctx.event(db, EventType::Warning, "CleanupSkipped", format!("Secret {ns}/{} is gone, so nothing could be dropped; the database and roles stay on the server", server.admin_secret)).await;
        return Ok(());
    };
    let mut conn = pool(ctx, server, &user, &password, "postgres")
        .acquire()
        .await
        .map_err(|e| sql_error("connect to drop the database", e))?;
    let dbname = database_name(db);
    // Only a database that carries homeplane's mark of creation on the server is dropped.
    let comment = database_comment(&mut conn, &dbname).await?.flatten();
    if comment.as_deref() == Some(created_mark(db).as_str()) {
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
    .bind(role_mark(db))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| sql_error("list the Database's roles", e))?;
    for (role,) in roles {
        if let Err(error) = sqlx::raw_sql(audited(format!("DROP ROLE {}", sql::ident(&role))))
            .execute(&mut *conn)
            .await
        {
            let note = format!("role {role} was kept: {error}");
            ctx.event(db, EventType::Warning, "RoleKept", note).await;
        }
    }
    Ok(())
}
