//! The NodeClass controller: finds the class's nodes and the pods scheduled on them and
//! publishes the capacity plan. Pipeline: dereference (nodes, pods) -> build (pure plan) ->
//! status.

pub(crate) mod plan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use homeplane_crds::nodeclass::{NodeClass, NodeClassStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::runtime::controller::{Action, Config};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument};

pub use plan::OVERCOMMITTED;

use super::{Context, Error, apply_status, error_policy, now};
use crate::conditions::{self, DEGRADED, Desired, READY};

const CONTROLLER: &str = "nodeclass";

/// How often a class is re-planned without any change (a safety net for missed events).
const RESYNC: Duration = Duration::from_secs(300);

/// Runs the controller until `shutdown` is cancelled. Every NodeClass is re-planned when a
/// node or a pod changes.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let controller = Controller::new(
        Api::<NodeClass>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let every_class = move || {
        store
            .state()
            .iter()
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect::<Vec<_>>()
    };
    let on_node = every_class.clone();
    controller
        .watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            move |_| on_node(),
        )
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            move |_| every_class(),
        )
        .with_config(Config::default().debounce(Duration::from_millis(500)))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile,
            |nc, error, ctx| error_policy(CONTROLLER, nc, error, ctx),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[instrument(skip_all, fields(nodeclass = %nc.name_any()))]
async fn reconcile(nc: Arc<NodeClass>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let (nodes, pods) = dereference(&nc, &ctx.client).await?;
    let generation = nc.metadata.generation;
    let old = nc.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = generation;
    let action = match plan::build(&nc.spec, &nodes, &pods) {
        Ok(plan) => {
            status.nodes = plan.nodes;
            status.node_count = i32::try_from(status.nodes.len()).unwrap_or(i32::MAX);
            status.capacity = Some(plan.capacity);
            status.pods = plan.pods;
            status.pod_count = i32::try_from(plan.pod_count).unwrap_or(i32::MAX);
            for desired in plan.conditions {
                conditions::set(&mut status.conditions, desired, generation, now());
            }
            conditions::remove(&mut status.conditions, DEGRADED);
            Action::requeue(RESYNC)
        }
        Err(invalid) => {
            // The CRD's CEL rules refuse such values; this guards objects stored before them.
            let message = format!("{invalid}; fix it and apply again");
            let ready = Desired::no(READY, "InvalidSpec", message.clone());
            conditions::set(&mut status.conditions, ready, generation, now());
            let degraded = Desired::yes(DEGRADED, "InvalidSpec", message);
            conditions::set(&mut status.conditions, degraded, generation, now());
            Action::await_change()
        }
    };
    write_status(&nc, &ctx, &old, status).await?;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    ctx.succeeded(&super::key(nc.as_ref()));
    Ok(action)
}

/// Lists the nodes that match the class and the pods scheduled on them.
pub(crate) async fn dereference(
    nc: &NodeClass,
    client: &kube::Client,
) -> Result<(Vec<Node>, Vec<Pod>), Error> {
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

/// Sends the status when it changed, and an event when the class becomes or stops being
/// overcommitted.
async fn write_status(
    nc: &NodeClass,
    ctx: &Context,
    old: &NodeClassStatus,
    new: NodeClassStatus,
) -> Result<(), Error> {
    if old == &new && nc.status.is_some() {
        return Ok(());
    }
    let was = conditions::is_true(&old.conditions, OVERCOMMITTED);
    let is = conditions::is_true(&new.conditions, OVERCOMMITTED);
    let message = new
        .conditions
        .iter()
        .find(|c| c.type_ == OVERCOMMITTED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    apply_status(&Api::<NodeClass>::all(ctx.client.clone()), nc, &new).await?;
    if is != was {
        info!(overcommitted = is, "capacity changed");
        if is {
            ctx.event(nc, EventType::Warning, "Overcommitted", message)
                .await;
        } else if nc.status.is_some() {
            ctx.event(nc, EventType::Normal, "WithinCapacity", message)
                .await;
        }
    }
    Ok(())
}
