//! Access: the catalog observed, the roles, tier schemas and privileges planned (pure,
//! [`super::plan`]) and applied in one transaction, so that nothing of a plan is half-applied.

use std::collections::BTreeMap;

use homeplane_crds::database::{Database, RoleRemovalPolicy};
use kube::ResourceExt;
use kube::runtime::events::EventType;
use sqlx::Connection;

use super::connect::sql_error;
use super::sql::{self, audited};
use super::{adopted_mark, catalog, plan, role_mark};
use crate::controllers::{Context, Error};
use crate::reconcile::Outcome;

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

/// Observes the catalog, plans the access and applies it in one transaction. The inner error is
/// the outcome to report when the plan cannot be made or applied.
#[allow(clippy::too_many_arguments)]
pub(super) async fn converge(
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
            return Ok(Err(Outcome::invalid(
                "InvalidSpec",
                format!("{invalid}; fix the spec and apply again"),
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
            return Ok(Err(Outcome::retry(
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
