//! Sending workloads to the cluster: server-side apply with homeplane's field manager, pruning
//! by owner label, and reading each workload's rollout back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, PropagationPolicy};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::info;

use super::rollout::{self, Rollout};
use super::ssa::Pending;
use super::{INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, OWNER_LABEL, Objects, Runner};
use crate::conditions::{DEGRADED, Desired, PROGRESSING, READY};

/// Why sending workloads to the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("failed to {action}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// The API's error.
        #[source]
        source: kube::Error,
    },
    /// An object could not be serialized.
    #[error("failed to serialize {what}")]
    Serialize {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A NodeClass holds a quantity that does not parse.
    #[error(transparent)]
    Class(#[from] super::capacity::InvalidClass),
}

impl Error {
    /// Shorthand for a failed API call.
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }
}

/// Server-side applies one namespaced object with homeplane's field manager, unless it already
/// holds what is asked (read first: see [`super::ssa`]).
pub async fn apply_one<K>(client: &Client, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    super::ssa::apply(&api, obj)
        .await
        .map_err(Error::kube("apply a workload object"))
}

/// One object of a workload beside the live one, read before anything is decided.
struct Staged<K> {
    api: Api<K>,
    pending: Pending<K>,
}

impl<K> Staged<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    async fn read(client: &Client, obj: &K) -> Result<Self, Error> {
        let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
        let pending = Pending::read(&api, obj)
            .await
            .map_err(Error::kube("read a workload object"))?;
        Ok(Self { api, pending })
    }

    async fn apply(self) -> Result<K, Error> {
        self.pending
            .apply(&self.api)
            .await
            .map_err(Error::kube("apply a workload object"))
    }
}

/// The objects of one workload beside the live ones.
struct StagedWorkload {
    service: Option<Staged<Service>>,
    runner: StagedRunner,
}

enum StagedRunner {
    Deployment(Staged<Deployment>),
    StatefulSet(Staged<StatefulSet>),
}

impl StagedWorkload {
    async fn read(client: &Client, objects: &Objects) -> Result<Self, Error> {
        let service = match &objects.service {
            Some(service) => Some(Staged::read(client, service).await?),
            None => None,
        };
        let runner = match &objects.runner {
            Runner::Deployment(d) => {
                StagedRunner::Deployment(Staged::read(client, d.as_ref()).await?)
            }
            Runner::StatefulSet(s) => {
                StagedRunner::StatefulSet(Staged::read(client, s.as_ref()).await?)
            }
        };
        Ok(Self { service, runner })
    }

    /// Whether every object already holds what is asked: applying changes nothing.
    fn holds(&self) -> bool {
        let runner = match &self.runner {
            StagedRunner::Deployment(d) => d.pending.holds(),
            StagedRunner::StatefulSet(s) => s.pending.holds(),
        };
        runner && self.service.as_ref().is_none_or(|s| s.pending.holds())
    }

    /// Applies what does not hold yet; returns the runner as the API server has it.
    async fn apply(self) -> Result<Runner, Error> {
        if let Some(service) = self.service {
            service.apply().await?;
        }
        Ok(match self.runner {
            StagedRunner::Deployment(d) => Runner::Deployment(Box::new(d.apply().await?)),
            StagedRunner::StatefulSet(s) => Runner::StatefulSet(Box::new(s.apply().await?)),
        })
    }
}

fn owned(owner_label: &str) -> ListParams {
    ListParams::default().labels(&format!(
        "{OWNER_LABEL}={owner_label},{MANAGED_BY_LABEL}={MANAGED_BY}"
    ))
}

async fn prune_kind<K>(
    client: &Client,
    namespace: &str,
    owner_label: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut pruned = Vec::new();
    // Names and deletion marks are all pruning reads: metadata only, not the whole objects.
    let list = super::lean::list_metadata(&api, &owned(owner_label))
        .await
        .map_err(Error::kube("list objects to prune"))?;
    for obj in list {
        let name = obj.name_any();
        let id = format!("{}/{name}", K::kind(&()));
        if keep.contains(&id) || obj.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(Error::kube("delete an object the spec no longer asks for")(
                    e,
                ));
            }
        }
        info!(object = %id, "pruned");
        pruned.push(id);
    }
    Ok(pruned)
}

/// Deletes the Deployments, StatefulSets, Services and ConfigMaps labelled as `owner_label`'s
/// that are not in `keep` (`Kind/name`). Returns what was deleted (`Kind/name`).
pub async fn prune(
    client: &Client,
    namespace: &str,
    owner_label: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, Error> {
    let mut pruned = prune_kind::<Deployment>(client, namespace, owner_label, keep).await?;
    pruned.extend(prune_kind::<StatefulSet>(client, namespace, owner_label, keep).await?);
    pruned.extend(prune_kind::<Service>(client, namespace, owner_label, keep).await?);
    pruned.extend(prune_kind::<ConfigMap>(client, namespace, owner_label, keep).await?);
    Ok(pruned)
}

/// The rollout of an applied workload, with its pods' scheduling read from the cluster.
pub async fn rollout(client: &Client, runner: &Runner) -> Result<Rollout, Error> {
    let (namespace, name, state) = match runner {
        Runner::Deployment(d) => (d.namespace(), d.name_any(), rollout::deployment(d)),
        Runner::StatefulSet(s) => (s.namespace(), s.name_any(), rollout::statefulset(s)),
    };
    if state.is_ready() {
        return Ok(state);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace.unwrap_or_default());
    let list = pods
        .list(&ListParams::default().labels(&format!(
            "{INSTANCE_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"
        )))
        .await
        .map_err(Error::kube("list a workload's pods"))?;
    Ok(rollout::combine(state, &list.items))
}

/// A NodeClass and the room in it, read from the cluster, not counting `replacing`'s pods.
/// `None` when the class does not exist.
pub async fn room(
    client: &Client,
    class: &str,
    replacing: Option<&str>,
) -> Result<
    Option<(
        homeplane_crds::nodeclass::NodeClass,
        super::capacity::ClassRoom,
    )>,
    Error,
> {
    let Some(nc) = node_class(client, class).await? else {
        return Ok(None);
    };
    let room = class_room(client, &nc, replacing).await?;
    Ok(Some((nc, room)))
}

async fn node_class(
    client: &Client,
    class: &str,
) -> Result<Option<homeplane_crds::nodeclass::NodeClass>, Error> {
    Api::all(client.clone())
        .get_opt(class)
        .await
        .map_err(Error::kube("read a NodeClass"))
}

/// The room in `nc`, read from the cluster, not counting `replacing`'s pods.
async fn class_room(
    client: &Client,
    nc: &homeplane_crds::nodeclass::NodeClass,
    replacing: Option<&str>,
) -> Result<super::capacity::ClassRoom, Error> {
    let (nodes, pods) = class_members(nc, client).await?;
    Ok(super::capacity::room(
        &nc.name_any(),
        &nc.spec,
        &nodes,
        &pods,
        replacing,
    )?)
}

/// The nodes that match a NodeClass and the pods scheduled on them.
pub async fn class_members(
    nc: &homeplane_crds::nodeclass::NodeClass,
    client: &Client,
) -> Result<(Vec<k8s_openapi::api::core::v1::Node>, Vec<Pod>), Error> {
    use k8s_openapi::api::core::v1::Node;
    let selector: Vec<String> = nc
        .spec
        .node_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&selector.join(",")))
        .await
        .map_err(Error::kube("list the nodes of the class"))?
        .items;
    let pods_api = Api::<Pod>::all(client.clone());
    let mut pods = Vec::new();
    for node in &nodes {
        let on_node = format!("spec.nodeName={}", node.name_any());
        let list = pods_api
            .list(&ListParams::default().fields(&on_node))
            .await
            .map_err(Error::kube("list the pods on the class's nodes"))?;
        pods.extend(list.items);
    }
    Ok((nodes, pods))
}

/// What became of a set of workloads.
#[derive(Debug, Clone, PartialEq)]
pub enum Converged {
    /// Nothing was created or changed; `reason` (`Unschedulable`, `NodeClassNotFound`,
    /// `InvalidPlacement`) and a message saying what to fix.
    Refused {
        /// CamelCase reason for the condition.
        reason: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// Applied; each workload's rollout by name, and what was pruned.
    Applied {
        /// Rollout per workload name.
        rollouts: BTreeMap<String, Rollout>,
        /// `Kind/name` of what was deleted.
        pruned: Vec<String>,
    },
}

/// Builds `workloads` for `owner`, checks that they fit their classes together (GPUs
/// included), and only then applies them and prunes what the owner no longer asks for (other
/// than `keep`, `Kind/name`, e.g. a ConfigMap the controller applies itself). Nothing is
/// created when anything does not fit.
pub async fn converge(
    client: &Client,
    owner: &super::Owner,
    workloads: &[super::Workload],
    keep: &BTreeSet<String>,
) -> Result<Converged, Error> {
    use super::capacity::{self, Demand};

    let label = owner.label();
    let mut by_class: BTreeMap<&str, Vec<&super::Workload>> = BTreeMap::new();
    for w in workloads {
        by_class
            .entry(w.placement.class.as_str())
            .or_default()
            .push(w);
    }
    let mut staged = Vec::new();
    for (class, ws) in by_class {
        let Some(nc) = node_class(client, class).await? else {
            let users: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
            return Ok(Converged::Refused {
                reason: "NodeClassNotFound",
                message: format!(
                    "NodeClass {class} (asked for by {}) does not exist: create it or change placement.class",
                    users.join(", ")
                ),
            });
        };
        let class_ref = super::Class {
            name: class,
            spec: &nc.spec,
        };
        let mut demands = Vec::new();
        let mut read = Vec::new();
        for w in ws {
            let objects = match super::build(w, owner, class_ref) {
                Ok(o) => o,
                Err(e) => {
                    return Ok(Converged::Refused {
                        reason: "InvalidPlacement",
                        message: e.to_string(),
                    });
                }
            };
            demands.push(Demand {
                name: w.name.clone(),
                asks: objects.asks,
                replicas: w.replicas,
            });
            read.push(StagedWorkload::read(client, &objects).await?);
        }
        // Room only matters for a change: what already runs as asked was placed when it was
        // applied, and the class's nodes and their pods are the costliest reads of a pass.
        if !read.iter().all(StagedWorkload::holds) {
            let room = class_room(client, &nc, Some(&label)).await?;
            if let Err(e) = capacity::fit(&room, &demands) {
                return Ok(Converged::Refused {
                    reason: "Unschedulable",
                    message: e.0,
                });
            }
        }
        staged.extend(read);
    }
    let mut rollouts = BTreeMap::new();
    let mut names: BTreeSet<String> = keep.clone();
    for workload in staged {
        let has_service = workload.service.is_some();
        let runner = workload.apply().await?;
        let (kind, name) = match &runner {
            Runner::Deployment(d) => ("Deployment", d.name_any()),
            Runner::StatefulSet(s) => ("StatefulSet", s.name_any()),
        };
        if has_service {
            names.insert(format!("Service/{name}"));
        }
        names.insert(format!("{kind}/{name}"));
        rollouts.insert(name, rollout(client, &runner).await?);
    }
    let pruned = prune(client, &owner.namespace, &label, &names).await?;
    Ok(Converged::Applied { rollouts, pruned })
}

impl Converged {
    /// `Ready=False` and `Degraded=True` for workloads that were refused before creation.
    pub fn refused_conditions(reason: &'static str, message: &str) -> [Desired; 2] {
        [
            Desired::no(READY, reason, message),
            Desired::yes(DEGRADED, reason, message),
        ]
    }

    /// Whether a refusal is news (not already reported under the same reason), and so worth
    /// a Warning event.
    pub fn refusal_is_news(old: &[Condition], reason: &str) -> bool {
        !old.iter()
            .any(|c| c.type_ == DEGRADED && c.status == "True" && c.reason == reason)
    }
}

/// The conditions that report the scheduler's refusals among applied workloads, if any.
pub fn unschedulable(rollouts: &BTreeMap<String, Rollout>) -> Option<[Desired; 3]> {
    let messages: Vec<&str> = rollouts
        .values()
        .filter_map(|r| match r {
            Rollout::Unschedulable(m) => Some(m.as_str()),
            _ => None,
        })
        .collect();
    if messages.is_empty() {
        return None;
    }
    let message = messages.join("; ");
    Some([
        Desired::no(READY, "Unschedulable", message.as_str()),
        Desired::yes(DEGRADED, "Unschedulable", message),
        Desired::no(
            PROGRESSING,
            "Unschedulable",
            "the scheduler cannot place a pod",
        ),
    ])
}

/// The note of the Normal event that reports pruned objects, if any were.
pub fn pruned_note(pruned: &[String]) -> Option<String> {
    (!pruned.is_empty()).then(|| {
        format!(
            "deleted what the spec no longer asks for: {}",
            pruned.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_refusals_become_one_unschedulable_message() {
        let rollouts = BTreeMap::from([
            ("a".to_string(), Rollout::Ready),
            (
                "b".to_string(),
                Rollout::Unschedulable("pod b-1: taint".into()),
            ),
            (
                "c".to_string(),
                Rollout::Unschedulable("pod c-1: no GPU".into()),
            ),
        ]);
        let [ready, degraded, progressing] = unschedulable(&rollouts).unwrap();
        assert_eq!(ready.message, "pod b-1: taint; pod c-1: no GPU");
        assert!(!ready.status && degraded.status && !progressing.status);
        assert!(unschedulable(&BTreeMap::from([("a".to_string(), Rollout::Ready)])).is_none());
    }

    #[test]
    fn a_refusal_is_news_once_per_reason() {
        let mut old = Vec::new();
        assert!(Converged::refusal_is_news(&old, "Unschedulable"));
        crate::conditions::set(
            &mut old,
            Converged::refused_conditions("Unschedulable", "x")[1].clone(),
            None,
            k8s_openapi::jiff::Timestamp::now(),
        );
        assert!(!Converged::refusal_is_news(&old, "Unschedulable"));
        assert!(Converged::refusal_is_news(&old, "NodeClassNotFound"));
        assert_eq!(pruned_note(&[]), None);
    }
}
