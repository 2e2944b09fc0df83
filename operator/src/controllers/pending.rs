//! The controller of a namespaced kind whose reconciliation has not been built yet. It says so in the
//! object's status (`Ready=False`, reason `NotImplemented`) instead of pretending, and changes
//! nothing else.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::{Context, Error, apply_status, error_policy, now};
use crate::conditions::{self, Desired, READY};

/// Runs the placeholder controller of `K` until `shutdown` is cancelled.
pub async fn run<K>(controller: &'static str, ctx: Arc<Context>, shutdown: CancellationToken)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    Controller::new(
        Api::<K>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.cancelled_owned())
    .run(
        move |obj, ctx| reconcile(controller, obj, ctx),
        move |obj, error, ctx| error_policy(controller, obj, error, ctx),
        ctx,
    )
    .for_each(|_| futures::future::ready(()))
    .await;
}

async fn reconcile<K>(
    controller: &'static str,
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let started = Instant::now();
    let value = serde_json::to_value(obj.as_ref()).map_err(|source| Error::Serialize {
        what: "object",
        source,
    })?;
    let old: Vec<Condition> = value
        .pointer("/status/conditions")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let old_generation = value
        .pointer("/status/observedGeneration")
        .and_then(|g| g.as_i64());
    let generation = obj.meta().generation;
    let mut conditions = old.clone();
    let kind = K::kind(&());
    conditions::set(
        &mut conditions,
        Desired::no(
            READY,
            "NotImplemented",
            format!(
                "homeplane does not reconcile {kind} objects yet; this version only validates and stores them, and nothing was created or changed"
            ),
        ),
        generation,
        now(),
    );
    if conditions != old || old_generation != generation {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
        let status =
            serde_json::json!({ "observedGeneration": generation, "conditions": conditions });
        apply_status(&api, obj.as_ref(), status).await?;
    }
    ctx.metrics.reconciled(controller, started.elapsed());
    ctx.succeeded(&super::key(obj.as_ref()));
    Ok(Action::await_change())
}
