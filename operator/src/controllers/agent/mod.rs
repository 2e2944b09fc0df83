//! The Agent controller: a ServiceAccount and the least RBAC the Agent's tier and scope allow
//! (planned in [`rbac`]), applied with server-side apply; Roles and bindings the spec no longer
//! asks for are deleted, so changing tier or scope narrows or widens the rights at once. A
//! finalizer removes what lives outside the Agent's namespace (owner references cannot reach
//! it). The status counts the Agent's running runs.

pub mod rbac;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use homeplane_crds::agent::{Agent, AgentRun, AgentRunPhase, AgentStatus, AgentTier};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument};

use super::{Context, Error, FIELD_MANAGER, apply_status, backoff, error_policy, now};
use crate::conditions::{self, DEGRADED, Desired, READY};

const CONTROLLER: &str = "agent";
/// How often a converged Agent is checked again (RBAC edited by hand is put back by then).
const RESYNC: Duration = Duration::from_secs(120);
/// Finalizer that removes the Agent's Roles in other namespaces and its cluster-wide rights.
const FINALIZER: &str = "homeplane.dev/agent-rbac";

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=homeplane");
    Controller::new(ctx.watched::<Agent>(), watcher::Config::default())
        .owns(ctx.watched::<ServiceAccount>(), owned.clone())
        .owns(ctx.watched::<Role>(), owned.clone())
        .owns(ctx.watched::<RoleBinding>(), owned)
        // A run starting or ending changes the Agent's count of running runs.
        .watches(
            ctx.watched::<AgentRun>(),
            watcher::Config::default(),
            |run| {
                run.namespace()
                    .map(|ns| ObjectRef::<Agent>::new(&run.spec.agent).within(&ns))
            },
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile,
            |agent, error, ctx| error_policy(CONTROLLER, agent, error, ctx),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[instrument(skip_all, fields(agent = %agent.name_any(), namespace = agent.namespace().unwrap_or_default()))]
async fn reconcile(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api = agents(&agent, &ctx);
    finalizer(&api, FINALIZER, agent, |event| async {
        match event {
            FinalizerEvent::Apply(agent) => apply(agent, ctx.clone()).await,
            FinalizerEvent::Cleanup(agent) => cleanup(agent, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn agents(agent: &Agent, ctx: &Context) -> Api<Agent> {
    Api::namespaced(ctx.client.clone(), &agent.namespace().unwrap_or_default())
}

/// Server-side applies `obj` with homeplane's field manager.
async fn ssa<K>(api: &Api<K>, obj: &K, action: &'static str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let mut value = serde_json::to_value(obj).map_err(kube::Error::SerdeError)?;
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await
    .map(|_| ())
    .inspect(|()| tracing::debug!(action, %name, "applied"))
}

/// Deletes the objects of kind `K` carrying the Agent's labels that `keep` does not name
/// (`namespace/name`, or `name` for cluster-scoped kinds). Returns what it deleted.
async fn prune<K>(
    api: Api<K>,
    scoped: impl Fn(Option<&str>) -> Api<K>,
    agent: &Agent,
    keep: &BTreeSet<String>,
    action: &'static str,
) -> Result<Vec<String>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = api
        .list(&ListParams::default().labels(&rbac::selector(agent)))
        .await
        .map_err(Error::kube(action))?;
    let mut deleted = Vec::new();
    for obj in list {
        let id = match obj.namespace() {
            Some(ns) => format!("{ns}/{}", obj.name_any()),
            None => obj.name_any(),
        };
        if keep.contains(&id) {
            continue;
        }
        match scoped(obj.namespace().as_deref())
            .delete(&obj.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => deleted.push(format!("{} {id}", K::kind(&()))),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => return Err(Error::Kube { action, source }),
        }
    }
    Ok(deleted)
}

/// Prunes the Agent's Roles, RoleBindings, ClusterRoles and ClusterRoleBindings that are not
/// in `keep_roles` (`namespace/name`) or `keep_cluster` (`name`).
async fn prune_all(
    ctx: &Context,
    agent: &Agent,
    keep_roles: &BTreeSet<String>,
    keep_cluster: &BTreeSet<String>,
) -> Result<Vec<String>, Error> {
    let c = &ctx.client;
    let mut out = Vec::new();
    out.extend(
        prune::<RoleBinding>(
            Api::all(c.clone()),
            |ns| Api::namespaced(c.clone(), ns.unwrap_or_default()),
            agent,
            keep_roles,
            "prune RoleBindings",
        )
        .await?,
    );
    out.extend(
        prune::<Role>(
            Api::all(c.clone()),
            |ns| Api::namespaced(c.clone(), ns.unwrap_or_default()),
            agent,
            keep_roles,
            "prune Roles",
        )
        .await?,
    );
    out.extend(
        prune::<ClusterRoleBinding>(
            Api::all(c.clone()),
            |_| Api::all(c.clone()),
            agent,
            keep_cluster,
            "prune ClusterRoleBindings",
        )
        .await?,
    );
    out.extend(
        prune::<ClusterRole>(
            Api::all(c.clone()),
            |_| Api::all(c.clone()),
            agent,
            keep_cluster,
            "prune ClusterRoles",
        )
        .await?,
    );
    Ok(out)
}

/// The outcome of one pass, before it becomes status.
struct Outcome {
    ready: Desired,
    degraded: Option<Desired>,
    retry: bool,
}

impl Outcome {
    fn failed(reason: &'static str, message: String, retry: bool) -> Self {
        Self {
            ready: Desired::no(READY, reason, message.clone()),
            degraded: Some(Desired::yes(DEGRADED, reason, message)),
            retry,
        }
    }
}

async fn apply(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let Some(agent) = agents(&agent, &ctx)
        .get_opt(&agent.name_any())
        .await
        .map_err(Error::kube("read the Agent"))?
    else {
        return Ok(Action::await_change());
    };
    let mut status = agent.status.clone().unwrap_or_default();
    let old = status.clone();
    let generation = agent.metadata.generation;
    let outcome = converge(&agent, &ctx, &mut status).await?;
    status.running_runs = running_runs(&agent, &ctx).await?;
    status.observed_generation = generation;
    conditions::set(&mut status.conditions, outcome.ready, generation, now());
    match outcome.degraded {
        Some(d) => conditions::set(&mut status.conditions, d, generation, now()),
        None => conditions::remove(&mut status.conditions, DEGRADED),
    }
    if status != old || agent.status.is_none() {
        apply_status(&agents(&agent, &ctx), &agent, &status).await?;
    }
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    let key = super::key(&agent);
    if outcome.retry {
        ctx.metrics.failed(CONTROLLER, "rbac");
        return Ok(Action::requeue(backoff(ctx.failed(&key))));
    }
    ctx.succeeded(&key);
    Ok(Action::requeue(RESYNC))
}

/// Runs of this Agent now running.
async fn running_runs(agent: &Agent, ctx: &Context) -> Result<i32, Error> {
    let runs =
        Api::<AgentRun>::namespaced(ctx.client.clone(), &agent.namespace().unwrap_or_default())
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("list the AgentRuns"))?;
    let n = runs
        .iter()
        .filter(|r| r.spec.agent == agent.name_any())
        .filter(|r| r.status.as_ref().map(|s| s.phase) == Some(AgentRunPhase::Running))
        .count();
    Ok(i32::try_from(n).unwrap_or(i32::MAX))
}

/// The outcome of a refused apply.
fn refused(what: &str, error: &kube::Error) -> Outcome {
    match error {
        kube::Error::Api(e) if e.code == 404 => Outcome::failed(
            "NamespaceMissing",
            format!(
                "cannot create {what}: {}; create the namespace or remove it from scope.namespaces",
                e.message
            ),
            true,
        ),
        kube::Error::Api(e) if e.code == 403 => Outcome::failed(
            "RbacForbidden",
            format!(
                "the API server refused {what}: {}; homeplane needs the rights it grants (or `escalate` and `bind` on roles)",
                e.message
            ),
            true,
        ),
        kube::Error::Api(e) if e.code == 422 => Outcome::failed(
            "InvalidScope",
            format!(
                "the API server refused {what}: {}; fix spec.scope",
                e.message
            ),
            false,
        ),
        other => Outcome::failed(
            "ApplyFailed",
            format!("applying {what} failed: {other}"),
            true,
        ),
    }
}

async fn converge(
    agent: &Agent,
    ctx: &Context,
    status: &mut AgentStatus,
) -> Result<Outcome, Error> {
    let plan = match rbac::plan(agent) {
        Ok(plan) => plan,
        Err(message) => {
            return Ok(Outcome::failed(
                "InvalidScope",
                format!("{message}; fix spec.scope"),
                false,
            ));
        }
    };
    let ns = agent.namespace().unwrap_or_default();
    let client = ctx.client.clone();
    let sa_name = rbac::service_account_name(agent);
    if let Err(e) = ssa(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        &plan.service_account,
        "ServiceAccount",
    )
    .await
    {
        return Ok(refused(&format!("ServiceAccount {ns}/{sa_name}"), &e));
    }
    status.service_account_name = Some(sa_name.clone());

    let mut keep_roles = BTreeSet::new();
    for (role, binding) in &plan.namespaced {
        let role_ns = role.metadata.namespace.clone().unwrap_or_default();
        let name = role.metadata.name.clone().unwrap_or_default();
        if let Err(e) = ssa(
            &Api::<Role>::namespaced(client.clone(), &role_ns),
            role,
            "Role",
        )
        .await
        {
            return Ok(refused(&format!("Role {role_ns}/{name}"), &e));
        }
        if let Err(e) = ssa(
            &Api::<RoleBinding>::namespaced(client.clone(), &role_ns),
            binding,
            "RoleBinding",
        )
        .await
        {
            return Ok(refused(&format!("RoleBinding {role_ns}/{name}"), &e));
        }
        keep_roles.insert(format!("{role_ns}/{name}"));
    }
    let mut keep_cluster = BTreeSet::new();
    if let Some((role, binding)) = &plan.cluster {
        let name = role.metadata.name.clone().unwrap_or_default();
        if let Err(e) = ssa(
            &Api::<ClusterRole>::all(client.clone()),
            role,
            "ClusterRole",
        )
        .await
        {
            return Ok(refused(&format!("ClusterRole {name}"), &e));
        }
        if let Err(e) = ssa(
            &Api::<ClusterRoleBinding>::all(client.clone()),
            binding,
            "ClusterRoleBinding",
        )
        .await
        {
            return Ok(refused(&format!("ClusterRoleBinding {name}"), &e));
        }
        keep_cluster.insert(name);
    }

    // Whatever the spec no longer asks for goes: the rights narrow at once.
    let pruned = prune_all(ctx, agent, &keep_roles, &keep_cluster).await?;
    if !pruned.is_empty() {
        info!(?pruned, "removed rights the spec no longer grants");
        ctx.event(
            agent,
            kube::runtime::events::EventType::Normal,
            "RightsNarrowed",
            format!("removed {}", pruned.join(", ")),
        )
        .await;
    }

    let tier = match agent.spec.tier {
        AgentTier::Observer => "observer",
        AgentTier::Builder => "builder",
        AgentTier::Director => "director",
    };
    let verbs = rbac::verbs(agent.spec.tier).join(", ");
    let where_ = if plan.cluster.is_some() {
        "in every namespace".to_string()
    } else {
        let namespaces: Vec<String> = plan
            .namespaced
            .iter()
            .filter_map(|(r, _)| r.metadata.namespace.clone())
            .collect();
        format!("in namespace(s) {}", namespaces.join(", "))
    };
    Ok(Outcome {
        ready: Desired::yes(
            READY,
            "RbacApplied",
            format!(
                "ServiceAccount {sa_name} has {tier} rights ({verbs}) on {} {where_}",
                rbac::describe(&plan.rules)
            ),
        ),
        degraded: None,
        retry: false,
    })
}

/// Runs when an Agent is deleted: its Roles and bindings everywhere, and its cluster-wide
/// rights, go (the ServiceAccount follows through its owner reference).
async fn cleanup(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action, Error> {
    let none = BTreeSet::new();
    prune_all(&ctx, &agent, &none, &none).await?;
    info!("removed the Agent's rights");
    Ok(Action::await_change())
}
