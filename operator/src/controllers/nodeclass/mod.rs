//! The NodeClass controller: finds the class's nodes and the pods scheduled on them and
//! publishes the capacity plan. Pipeline: dereference (nodes, pods) -> build (pure plan) ->
//! status (the plan, `Overcommitted`, an event when that changes).

pub(crate) mod plan;

use std::sync::Arc;
use std::time::Duration;

use homeplane_crds::nodeclass::{NodeClass, NodeClassStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use plan::OVERCOMMITTED;

use super::{Context, Error, now};
use crate::conditions::{self, READY};
use crate::reconcile::{self, Outcome, Reconciler, watch};
use crate::workload::apply::class_members;

/// The NodeClass controller.
pub struct NodeClasses;

/// Runs the controller until `shutdown` is cancelled. Every NodeClass is re-planned when a
/// node or a pod changes.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let controller = Controller::new(Api::<NodeClass>::all(client.clone()), watch::config());
    let store = controller.store();
    let every_class = move || {
        store
            .state()
            .iter()
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect::<Vec<_>>()
    };
    let on_node = every_class.clone();
    let controller = controller
        .watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            move |_| on_node(),
        )
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            move |_| every_class(),
        );
    reconcile::run(NodeClasses, controller, ctx, shutdown).await;
}

impl Reconciler for NodeClasses {
    type Object = NodeClass;
    // A node or pod event re-plans every class: let a burst settle first.
    const DEBOUNCE: Duration = Duration::from_millis(500);
    const NAME: &'static str = "nodeclass";

    async fn reconcile(
        &self,
        nc: &NodeClass,
        status: &mut NodeClassStatus,
        ctx: &Context,
    ) -> Result<Outcome, Error> {
        let (nodes, pods) = class_members(nc, &ctx.client).await?;
        let plan = match plan::build(&nc.spec, &nodes, &pods) {
            Ok(plan) => plan,
            // The CRD's CEL rules refuse such values; this guards objects stored before them.
            Err(invalid) => {
                let message = format!("{invalid}; fix it and apply again");
                return Ok(Outcome::invalid("InvalidSpec", message));
            }
        };
        let was = conditions::is_true(&status.conditions, OVERCOMMITTED);
        status.nodes = plan.nodes;
        status.node_count = i32::try_from(status.nodes.len()).unwrap_or(i32::MAX);
        status.capacity = Some(plan.capacity);
        status.pods = plan.pods;
        status.pod_count = i32::try_from(plan.pod_count).unwrap_or(i32::MAX);
        let mut outcome = None;
        for desired in plan.conditions {
            if desired.type_ == READY {
                outcome = Some(match desired.status {
                    true => Outcome::ready(desired.reason, desired.message),
                    // A node with the class's labels may join at any time (nodes are watched).
                    false => Outcome::blocked(desired.reason, desired.message),
                });
            } else {
                conditions::set(
                    &mut status.conditions,
                    desired,
                    nc.metadata.generation,
                    now(),
                );
            }
        }
        announce(nc, ctx, was, status).await;
        Ok(outcome.unwrap_or_else(|| Outcome::ready("Planned", "the capacity plan is current")))
    }
}

/// An event when the class becomes, or stops being, overcommitted.
async fn announce(nc: &NodeClass, ctx: &Context, was: bool, status: &NodeClassStatus) {
    let is = conditions::is_true(&status.conditions, OVERCOMMITTED);
    if is == was {
        return;
    }
    let message = status
        .conditions
        .iter()
        .find(|c| c.type_ == OVERCOMMITTED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    info!(overcommitted = is, "capacity changed");
    if is {
        ctx.event(nc, EventType::Warning, "Overcommitted", message)
            .await;
    } else if nc.status.is_some() {
        ctx.event(nc, EventType::Normal, "WithinCapacity", message)
            .await;
    }
}

#[cfg(test)]
mod tests;
