//! The Agent controller: a ServiceAccount, bound to the fixed ClusterRoles of its tier and
//! scope (planned in [`rbac`]). Before binding anything it checks, as the API server would for a
//! person, that the person who asked for the Agent (recorded by the admission policy the chart
//! installs) holds every right the Agent gets, with a SubjectAccessReview per right; an Agent
//! whose requester lacks one, or that names a resource no ClusterRole exists for, gets no
//! rights at all and says why. Bindings the spec no longer asks for are deleted, so changing
//! tier or scope narrows or widens the rights at once; a finalizer removes what lives outside
//! the Agent's namespace. The status counts the Agent's running runs.

pub mod rbac;
pub mod reviews;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use homeplane_crds::agent::{Agent, AgentRun, AgentRunPhase, AgentStatus, AgentTier};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Context, Error};
use crate::reconcile::{self, Outcome, Reconciler, watch};

/// How often a converged Agent is checked again (RBAC edited by hand is put back by then).
const RESYNC: Duration = Duration::from_secs(120);
/// Finalizer that removes the Agent's Roles in other namespaces and its cluster-wide rights.
const FINALIZER: &str = "homeplane.dev/agent-rbac";

/// The Agent controller.
pub struct Agents;

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=homeplane");
    let controller = Controller::new(ctx.watched::<Agent>(), watch::config())
        .owns(ctx.watched::<ServiceAccount>(), owned.clone())
        .owns(ctx.watched::<RoleBinding>(), owned)
        // A run starting or ending changes the Agent's count of running runs.
        .watches(
            ctx.watched::<AgentRun>(),
            watcher::Config::default(),
            |run| {
                run.namespace()
                    .map(|ns| ObjectRef::<Agent>::new(&run.spec.agent).within(&ns))
            },
        );
    reconcile::run(Agents, controller, ctx, shutdown).await;
}

impl Reconciler for Agents {
    type Object = Agent;
    const NAME: &'static str = "agent";
    const RESYNC: Duration = RESYNC;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    async fn reconcile(
        &self,
        agent: &Agent,
        status: &mut AgentStatus,
        ctx: &Context,
    ) -> Result<Outcome, Error> {
        let outcome = converge(agent, ctx, status).await?;
        status.running_runs = running_runs(agent, ctx).await?;
        Ok(outcome)
    }

    /// Its Roles and bindings everywhere, and its cluster-wide rights, go (the ServiceAccount
    /// follows through its owner reference).
    async fn cleanup(&self, agent: &Agent, ctx: &Context) -> Result<(), Error> {
        ctx.agent_reviews.forget(&agent.uid().unwrap_or_default());
        let none = BTreeSet::new();
        prune_all(ctx, agent, &none, &none).await?;
        info!("removed the Agent's rights");
        Ok(())
    }
}

/// Why an object could not be applied.
enum ApplyError {
    /// The API server refused.
    Api(kube::Error),
    /// An object of that name exists and was not made for this Agent: never taken over.
    Taken,
}

/// Server-side applies `obj` with homeplane's field manager, unless an object of that name
/// exists that was not made for `agent` (someone else's is never forced over) or it already
/// holds what is asked (see [`crate::workload::ssa`]).
async fn ssa<K>(
    api: &Api<K>,
    obj: &K,
    agent: &Agent,
    action: &'static str,
) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let pending = crate::workload::ssa::Pending::read(api, obj)
        .await
        .map_err(ApplyError::Api)?;
    if let Some(existing) = pending.live()
        && !rbac::is_ours(agent, existing.labels())
    {
        return Err(ApplyError::Taken);
    }
    pending
        .apply(api)
        .await
        .map(|_| tracing::debug!(action, %name, "as asked"))
        .map_err(ApplyError::Api)
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
    let list = crate::workload::lean::list_metadata(
        &api,
        &ListParams::default().labels(&rbac::selector(agent)),
    )
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

/// Prunes the Agent's RoleBindings and ClusterRoleBindings that are not in `keep_roles`
/// (`namespace/name`) or `keep_cluster` (`name`).
async fn prune_all(
    ctx: &Context,
    agent: &Agent,
    keep_roles: &BTreeSet<String>,
    keep_cluster: &BTreeSet<String>,
) -> Result<Vec<String>, Error> {
    let c = &ctx.client;
    let mut out = Vec::new();
    // Everywhere the install may list; a namespace-scoped install lists its own namespace.
    let everywhere = prune::<RoleBinding>(
        Api::all(c.clone()),
        |ns| Api::namespaced(c.clone(), ns.unwrap_or_default()),
        agent,
        keep_roles,
        "prune RoleBindings",
    )
    .await;
    match everywhere {
        Ok(pruned) => out.extend(pruned),
        Err(e) if forbidden(&e) && ctx.watch_namespace.is_some() => out.extend(
            prune::<RoleBinding>(
                ctx.watched(),
                |ns| Api::namespaced(c.clone(), ns.unwrap_or_default()),
                agent,
                keep_roles,
                "prune RoleBindings",
            )
            .await?,
        ),
        Err(e) => return Err(e),
    }
    // A namespace-scoped install has no ClusterRoleBindings, so nothing to prune there.
    match prune::<ClusterRoleBinding>(
        Api::all(c.clone()),
        |_| Api::all(c.clone()),
        agent,
        keep_cluster,
        "prune ClusterRoleBindings",
    )
    .await
    {
        Ok(pruned) => out.extend(pruned),
        Err(e) if forbidden(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// Whether `error` is the API server's 403.
fn forbidden(error: &Error) -> bool {
    matches!(error, Error::Kube { source: kube::Error::Api(e), .. } if e.code == 403)
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
fn refused(what: &str, error: &ApplyError) -> Outcome {
    let error = match error {
        ApplyError::Taken => {
            return Outcome::blocked(
                "NameTaken",
                format!(
                    "{what} exists and was not made by homeplane for this Agent; it is left alone: rename the Agent or remove that object"
                ),
            );
        }
        ApplyError::Api(e) => e,
    };
    match error {
        // A namespace about to be created: retried.
        kube::Error::Api(e) if e.code == 404 => Outcome::retry(
            "NamespaceMissing",
            format!(
                "cannot create {what}: {}; create the namespace or remove it from scope.namespaces",
                e.message
            ),
        ),
        kube::Error::Api(e) if e.code == 403 => Outcome::blocked(
            "RbacForbidden",
            format!(
                "the API server refused {what}: {}; this homeplane install may not act there (a namespace-scoped install manages its own namespace only)",
                e.message
            ),
        ),
        kube::Error::Api(e) if e.code == 422 => Outcome::invalid(
            "InvalidScope",
            format!(
                "the API server refused {what}: {}; fix spec.scope",
                e.message
            ),
        ),
        other => Outcome::retry("ApplyFailed", format!("applying {what} failed: {other}")),
    }
}

/// Who asked for the Agent, as the admission policy recorded it: user and groups.
fn requester(agent: &Agent) -> Option<(String, Vec<String>)> {
    let user = agent
        .annotations()
        .get(rbac::REQUESTED_BY)
        .filter(|u| !u.is_empty())?
        .clone();
    let groups = agent
        .annotations()
        .get(rbac::REQUESTED_BY_GROUPS)
        .map(|g| {
            g.split(',')
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Some((user, groups))
}

/// Whether the admission policy binding that records who asks for Agents is installed and
/// denies what it refuses; without it the requester annotation could be anybody's claim.
async fn policy_installed(ctx: &Context) -> Result<bool, Error> {
    let binding = Api::<ValidatingAdmissionPolicyBinding>::all(ctx.client.clone())
        .get_opt(&ctx.trust.agent_policy)
        .await;
    match binding {
        Ok(Some(b)) => Ok(b.spec.validation_actions.iter().any(|a| a == "Deny")),
        Ok(None) => Ok(false),
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(false),
        Err(source) => Err(Error::Kube {
            action: "read the Agent admission policy binding",
            source,
        }),
    }
}

/// The rights of `plan` the requester does not hold, as `verb group/resource in namespace`
/// (SubjectAccessReviews: the API server's own answer for that user and those groups).
async fn missing_rights(
    ctx: &Context,
    user: &str,
    groups: &[String],
    plan: &rbac::Plan,
) -> Result<Vec<String>, Error> {
    let places: Vec<Option<String>> = if plan.namespaces.is_empty() {
        vec![None]
    } else {
        plan.namespaces.iter().cloned().map(Some).collect()
    };
    let mut questions = Vec::new();
    for grant in &plan.grants {
        let (resource, subresource) = grant.split();
        for place in &places {
            for verb in grant.verbs.verbs() {
                questions.push((
                    grant.describe(),
                    place.clone(),
                    verb.to_string(),
                    ResourceAttributes {
                        group: Some(grant.group.clone()),
                        resource: Some(resource.to_string()),
                        subresource: subresource.map(str::to_string),
                        namespace: place.clone(),
                        verb: Some(verb.to_string()),
                        ..ResourceAttributes::default()
                    },
                ));
            }
        }
    }
    let api = Api::<SubjectAccessReview>::all(ctx.client.clone());
    let answers: Vec<Result<Option<String>, Error>> = futures::stream::iter(questions)
        .map(|(what, place, verb, attributes)| {
            let api = api.clone();
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.to_string()),
                    groups: Some(groups.to_vec()),
                    resource_attributes: Some(attributes),
                    ..SubjectAccessReviewSpec::default()
                },
                ..SubjectAccessReview::default()
            };
            async move {
                let answer =
                    api.create(&PostParams::default(), &review)
                        .await
                        .map_err(Error::kube(
                            "ask the API server what the Agent's requester may do",
                        ))?;
                let allowed = answer.status.is_some_and(|s| s.allowed);
                Ok((!allowed).then(|| match place {
                    Some(ns) => format!("{verb} {what} in namespace {ns}"),
                    None => format!("{verb} {what} in every namespace"),
                }))
            }
        })
        .buffered(8)
        .collect()
        .await;
    let mut missing = Vec::new();
    for answer in answers {
        if let Some(m) = answer? {
            missing.push(m);
        }
    }
    Ok(missing)
}

/// The ClusterRoles of `plan` that do not exist (or that homeplane may not read, which is the
/// same: its install lists the ones it may bind).
async fn missing_roles(ctx: &Context, plan: &rbac::Plan) -> Result<Vec<String>, Error> {
    let api = Api::<ClusterRole>::all(ctx.client.clone());
    let mut missing = Vec::new();
    for grant in &plan.grants {
        let name = rbac::cluster_role(&ctx.trust.agent_role_prefix, grant);
        // Existence is all that is asked: `view` and `edit` are large aggregated roles.
        match crate::workload::lean::exists(&api, &name).await {
            Ok(true) => {}
            Ok(false) | Err(kube::Error::Api(_)) => {
                let text = grant.describe();
                let restricted = if rbac::is_restricted(&grant.group, &grant.resource) {
                    " (restricted: see docs/security.md)"
                } else {
                    ""
                };
                if !missing.iter().any(|m: &String| m.starts_with(&text)) {
                    missing.push(format!("{text}{restricted}"));
                }
            }
            Err(source) => {
                return Err(Error::Kube {
                    action: "read an Agent ClusterRole",
                    source,
                });
            }
        }
    }
    Ok(missing)
}

/// One pass: what the Agent may be given, then its ServiceAccount and bindings.
async fn converge(
    agent: &Agent,
    ctx: &Context,
    status: &mut AgentStatus,
) -> Result<Outcome, Error> {
    // Whatever may not be granted, nothing of it is: every right goes first.
    let (plan, user) = match allowed(agent, ctx).await? {
        Ok(allowed) => allowed,
        Err(outcome) => {
            revoke(ctx, agent).await?;
            return Ok(outcome);
        }
    };
    if let Err(outcome) = bind(agent, ctx, &plan).await? {
        return Ok(outcome);
    }
    status.service_account_name = Some(rbac::service_account_name(agent));
    let tier = match agent.spec.tier {
        AgentTier::Observer => "observer",
        AgentTier::Builder => "builder",
        AgentTier::Director => "director",
    };
    let verbs = rbac::verbs(agent.spec.tier).join(", ");
    let where_ = if plan.namespaces.is_empty() {
        "in every namespace".to_string()
    } else {
        format!("in namespace(s) {}", plan.namespaces.join(", "))
    };
    Ok(Outcome::ready(
        "RbacApplied",
        format!(
            "ServiceAccount {} has {tier} rights ({verbs}) on {} {where_}, as asked by {user}",
            rbac::service_account_name(agent),
            rbac::describe(&plan.grants)
        ),
    ))
}

/// The rights the Agent may have, and who asked for them; the outcome to report when it may
/// have none: a scope that cannot be planned, no admission policy to record who asks, no
/// recorded requester, a requester without every right, or a resource no ClusterRole grants.
async fn allowed(
    agent: &Agent,
    ctx: &Context,
) -> Result<Result<(rbac::Plan, String), Outcome>, Error> {
    let plan = match rbac::plan(agent, &ctx.trust.agent_role_prefix) {
        Ok(plan) => plan,
        Err(message) => {
            let message = format!("{message}; fix spec.scope");
            return Ok(Err(Outcome::invalid("InvalidScope", message)));
        }
    };
    if !policy_installed(ctx).await? {
        // Installed with the chart, possibly a moment after the Agent: retried.
        return Ok(Err(Outcome::retry(
            "AdmissionPolicyMissing",
            format!(
                "the ValidatingAdmissionPolicyBinding {} that records who asks for each Agent is not installed (or does not deny); no Agent gets rights without it: install homeplane's chart",
                ctx.trust.agent_policy
            ),
        )));
    }
    let Some((user, groups)) = requester(agent) else {
        // Any change of the Agent (applying it again) is looked at.
        return Ok(Err(Outcome::invalid(
            "RequesterUnknown",
            format!(
                "the Agent has no {} annotation (it predates the admission policy): apply it again so that the policy records who asks for it",
                rbac::REQUESTED_BY
            ),
        )));
    };
    let question = reviews::Question {
        uid: agent.uid().unwrap_or_default(),
        generation: agent.metadata.generation.unwrap_or_default(),
        requested: agent
            .annotations()
            .get(crate::controllers::registry::EVALUATE_ANNOTATION)
            .cloned(),
        user: user.clone(),
        groups: groups.clone(),
    };
    let now = std::time::Instant::now();
    // A fresh answer is not asked again, nor made fresher: it is believed for FRESH from
    // when the API server gave it.
    let missing = if ctx.agent_reviews.held(&question, now) {
        Vec::new()
    } else {
        let missing = missing_rights(ctx, &user, &groups, &plan).await?;
        if missing.is_empty() {
            ctx.agent_reviews.record_held(question.clone(), now);
        }
        missing
    };
    if !missing.is_empty() {
        ctx.agent_reviews.forget(&question.uid);
        let shown: Vec<&str> = missing.iter().take(8).map(String::as_str).collect();
        let more = missing.len().saturating_sub(shown.len());
        return Ok(Err(Outcome::blocked(
            "RequesterLacksRights",
            format!(
                "{user} asked for this Agent but may not {}{}; an Agent gets only rights the person who asks for it holds: narrow spec.scope or have an admin grant them",
                shown.join(", "),
                if more > 0 {
                    format!(" (and {more} more)")
                } else {
                    String::new()
                }
            ),
        )));
    }
    let not_grantable = missing_roles(ctx, &plan).await?;
    if !not_grantable.is_empty() {
        return Ok(Err(Outcome::blocked(
            "NotGrantable",
            format!(
                "no Agent may be given {}: homeplane binds only the ClusterRoles its install provides; an admin adds the resource to the chart value agents.grantable",
                not_grantable.join(", ")
            ),
        )));
    }
    Ok(Ok((plan, user)))
}

/// Applies the ServiceAccount and the bindings of `plan`, then deletes the bindings the spec no
/// longer asks for (the rights narrow at once); the outcome to report when one is refused.
async fn bind(
    agent: &Agent,
    ctx: &Context,
    plan: &rbac::Plan,
) -> Result<Result<(), Outcome>, Error> {
    let ns = agent.namespace().unwrap_or_default();
    let client = ctx.client.clone();
    let sa_name = rbac::service_account_name(agent);
    if let Err(e) = ssa(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        &plan.service_account,
        agent,
        "ServiceAccount",
    )
    .await
    {
        return Ok(Err(refused(&format!("ServiceAccount {ns}/{sa_name}"), &e)));
    }
    let mut keep_roles = BTreeSet::new();
    for binding in &plan.role_bindings {
        let binding_ns = binding.metadata.namespace.clone().unwrap_or_default();
        let name = binding.metadata.name.clone().unwrap_or_default();
        let api = Api::<RoleBinding>::namespaced(client.clone(), &binding_ns);
        if let Err(e) = ssa(&api, binding, agent, "RoleBinding").await {
            return Ok(Err(refused(
                &format!("RoleBinding {binding_ns}/{name}"),
                &e,
            )));
        }
        keep_roles.insert(format!("{binding_ns}/{name}"));
    }
    let mut keep_cluster = BTreeSet::new();
    for binding in &plan.cluster_bindings {
        let name = binding.metadata.name.clone().unwrap_or_default();
        let api = Api::<ClusterRoleBinding>::all(client.clone());
        if let Err(e) = ssa(&api, binding, agent, "ClusterRoleBinding").await {
            return Ok(Err(refused(&format!("ClusterRoleBinding {name}"), &e)));
        }
        keep_cluster.insert(name);
    }
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
    Ok(Ok(()))
}

/// Removes every binding of the Agent: what it may not have, it has nothing of.
async fn revoke(ctx: &Context, agent: &Agent) -> Result<(), Error> {
    let none = BTreeSet::new();
    let pruned = prune_all(ctx, agent, &none, &none).await?;
    if !pruned.is_empty() {
        info!(?pruned, "removed the Agent's rights");
    }
    Ok(())
}
