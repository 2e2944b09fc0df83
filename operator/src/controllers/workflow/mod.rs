//! The Workflow controller: keeps an n8n workflow equal to its declaration through n8n's public
//! REST API. Pipeline: dereference (API key Secret, definition inline or from a ConfigMap) ->
//! build (the body the API accepts, pure) -> observe n8n's copy -> apply (create, update and
//! (de)activate, or report drift per `onDrift`) -> status (id, activation, last execution,
//! `Drifted`). `deletionPolicy: Delete` removes the workflow from n8n through a finalizer.

pub mod definition;
pub mod n8n;
mod sync;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use homeplane_crds::common::DeletionPolicy;
use homeplane_crds::workflow::{Execution, Workflow, WorkflowStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::PartialObjectMeta;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Context, Error};
use crate::reconcile::{self, Outcome, Reconciler, watch};
use n8n::{Http, N8n, N8nError};

/// The condition that says whether n8n's copy differs from the declaration.
pub const DRIFTED: &str = "Drifted";
/// Finalizer that lets `deletionPolicy` run before a Workflow object goes away.
const FINALIZER: &str = "homeplane.dev/workflow-cleanup";
/// How often a Workflow is compared with n8n when nothing changes (edits in the n8n UI are
/// seen this often).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);
/// Annotation naming an existing n8n workflow for a new Workflow to take over (written by
/// `homeplane import`) instead of creating a second one; read only while status has no id.
pub const ADOPT_ANNOTATION: &str = "homeplane.dev/n8n-id";

/// The HTTP client every Workflow shares, made on first use.
#[derive(Default)]
pub struct Clients(OnceLock<Http>);

impl Clients {
    fn get(&self) -> Result<&Http, Error> {
        if let Some(http) = self.0.get() {
            return Ok(http);
        }
        let http = Http::new().map_err(Error::Http)?;
        Ok(self.0.get_or_init(|| http))
    }
}

/// The Workflow controller.
pub struct Workflows;

/// Runs the controller until `shutdown` is cancelled. A Workflow is reconciled when it changes,
/// when the ConfigMap of its `definitionFrom` or the Secret of its API key changes, and every
/// `workflow_resync` (edits made in n8n itself are only seen then).
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let controller = Controller::new(ctx.watched::<Workflow>(), watch::config());
    let workflows = controller.store();
    let by_secret = workflows.clone();
    // Metadata only: which object changed is all that is needed, and a cluster's Secrets (Helm
    // keeps every release in one) must never all be held by the operator on a Pi.
    let config_maps = watcher(
        ctx.watched::<PartialObjectMeta<ConfigMap>>(),
        watcher::Config::default(),
    )
    .touched_objects();
    let secrets = watcher(
        ctx.watched::<PartialObjectMeta<Secret>>(),
        watcher::Config::default(),
    )
    .touched_objects();
    let controller = controller
        .watches_stream(config_maps, move |cm| {
            referring(&workflows.state(), &cm, |wf| {
                wf.spec.definition_from.as_ref().map(|r| r.name.as_str())
            })
        })
        .watches_stream(secrets, move |secret| {
            referring(&by_secret.state(), &secret, |wf| {
                Some(wf.spec.n8n.api_key_secret.name.as_str())
            })
        });
    reconcile::run(Workflows, controller, ctx, shutdown).await;
}

/// The Workflows in `object`'s namespace that name it (through `name_of`).
fn referring<K: ResourceExt>(
    workflows: &[Arc<Workflow>],
    object: &K,
    name_of: impl Fn(&Workflow) -> Option<&str>,
) -> Vec<ObjectRef<Workflow>> {
    let ns = object.namespace();
    let name = object.name_any();
    workflows
        .iter()
        .filter(|wf| wf.namespace() == ns && name_of(wf) == Some(name.as_str()))
        .map(|wf| ObjectRef::from_obj(wf.as_ref()))
        .collect()
}

impl Reconciler for Workflows {
    type Object = Workflow;
    const NAME: &'static str = "workflow";
    const RESYNC: Duration = DEFAULT_RESYNC;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    async fn reconcile(
        &self,
        wf: &Workflow,
        status: &mut WorkflowStatus,
        ctx: &Context,
    ) -> Result<Outcome, Error> {
        let key = match api_key(wf, ctx).await? {
            Ok(key) => key,
            Err(outcome) => return Ok(outcome),
        };
        let definition = match declared(wf, ctx).await? {
            Ok(d) => d,
            Err(outcome) => return Ok(outcome),
        };
        let payload = match definition::payload(&definition, &wf.name_any()) {
            Ok(p) => p,
            // Inline, the spec must change; from a ConfigMap, the ConfigMap (watched).
            Err(e) if wf.spec.definition.is_some() => {
                let message = format!("the workflow definition {e}");
                return Ok(Outcome::invalid("InvalidDefinition", message));
            }
            Err(e) => {
                let message = format!("the workflow definition {e}");
                return Ok(Outcome::blocked("InvalidDefinition", message));
            }
        };
        let client = N8n::new(ctx.n8n.get()?, &wf.spec.n8n.url, &key);
        let outcome = sync::Sync::new(wf, ctx, &client, &payload, status)
            .run()
            .await;
        Ok(outcome.after(ctx.workflow_resync))
    }

    async fn cleanup(&self, wf: &Workflow, ctx: &Context) -> Result<(), Error> {
        cleanup(wf, ctx).await
    }
}

/// Reads the API key from `spec.n8n.apiKeySecret`; the inner error is the outcome to report.
async fn api_key(wf: &Workflow, ctx: &Context) -> Result<Result<String, Outcome>, Error> {
    let ns = wf.namespace().unwrap_or_default();
    let reference = &wf.spec.n8n.api_key_secret;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&reference.name)
        .await
        .map_err(Error::kube("read the n8n API key Secret"))?;
    let value = secret
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get(&reference.key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    Ok(value.ok_or_else(|| {
        Outcome::retry(
            "ApiKeySecretMissing",
            format!(
                "Secret {ns}/{} has no key {}; create it with an n8n API key (n8n: Settings > n8n API)",
                reference.name, reference.key
            ),
        )
    }))
}

/// The declared definition as JSON; the inner error is the outcome to report.
async fn declared(wf: &Workflow, ctx: &Context) -> Result<Result<Value, Outcome>, Error> {
    if let Some(definition) = &wf.spec.definition {
        return Ok(Ok(definition.clone()));
    }
    let Some(reference) = &wf.spec.definition_from else {
        let message = "set spec.definition or spec.definitionFrom";
        return Ok(Err(Outcome::invalid("InvalidDefinition", message)));
    };
    let ns = wf.namespace().unwrap_or_default();
    let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&reference.name)
        .await
        .map_err(Error::kube("read the definition ConfigMap"))?;
    let Some(text) = cm
        .as_ref()
        .and_then(|c| c.data.as_ref()?.get(&reference.key))
    else {
        return Ok(Err(Outcome::retry(
            "DefinitionMissing",
            format!(
                "ConfigMap {ns}/{} has no key {} (spec.definitionFrom); create it with the workflow's JSON",
                reference.name, reference.key
            ),
        )));
    };
    Ok(definition::parse(text).map_err(|e| {
        Outcome::blocked(
            "InvalidDefinition",
            format!(
                "the workflow definition in ConfigMap {ns}/{} key {} {e}",
                reference.name, reference.key
            ),
        )
    }))
}

/// The outcome of a failed call to n8n, with n8n's own message. Everything is retried: n8n
/// comes back, a key is replaced, and a definition n8n refused may be accepted by another n8n
/// version; the backoff keeps the calls rare.
fn n8n_failed(wf: &Workflow, what: &str, error: &N8nError) -> Outcome {
    let ns = wf.namespace().unwrap_or_default();
    match error {
        N8nError::Unreachable { .. } => Outcome::retry(
            "N8nUnreachable",
            format!("{error}; check spec.n8n.url and that n8n is running"),
        ),
        N8nError::Unauthorized { .. } => Outcome::retry(
            "N8nUnauthorized",
            format!(
                "{error}; put a valid API key into Secret {ns}/{} key {}",
                wf.spec.n8n.api_key_secret.name, wf.spec.n8n.api_key_secret.key
            ),
        ),
        N8nError::Rejected { .. } | N8nError::NotFound { .. } => Outcome::retry(
            "N8nRejected",
            format!("n8n refused to {what}: {error}; fix the workflow definition"),
        ),
        N8nError::Protocol(_) => Outcome::retry("N8nError", format!("{what}: {error}")),
    }
}

/// The last execution n8n reports; `None` when it never ran or cannot be read (the status
/// then keeps no stale value).
async fn last_execution(client: &N8n<'_>, id: &str) -> Option<Execution> {
    let last = client.last_execution(id).await.ok()??;
    Some(Execution {
        status: last.status,
        finished_at: last.stopped_at.as_deref().and_then(whole_second),
    })
}

/// n8n's time of an execution (`2026-12-01T09:20:17.123Z`) as Kubernetes stores it: in whole
/// seconds. Kept finer, it would differ from the stored status on every pass and be written
/// again each time.
fn whole_second(text: &str) -> Option<Time> {
    let t = text.parse::<k8s_openapi::jiff::Timestamp>().ok()?;
    k8s_openapi::jiff::Timestamp::from_second(t.as_second())
        .ok()
        .map(Time)
}

/// Runs when a Workflow object is deleted. `Retain` leaves the workflow in n8n as it is;
/// `Delete` deletes it there.
async fn cleanup(wf: &Workflow, ctx: &Context) -> Result<(), Error> {
    if wf.spec.deletion_policy == DeletionPolicy::Retain {
        info!("deletionPolicy Retain: the workflow stays in n8n");
        return Ok(());
    }
    let Some(id) = wf.status.as_ref().and_then(|s| s.n8n_id.clone()) else {
        return Ok(());
    };
    let key = match api_key(wf, ctx).await? {
        Ok(key) => key,
        Err(outcome) => {
            let note = format!("{}; the workflow {id} stays in n8n", outcome.message);
            ctx.event(wf, EventType::Warning, "CleanupSkipped", note)
                .await;
            return Ok(());
        }
    };
    let client = N8n::new(ctx.n8n.get()?, &wf.spec.n8n.url, &key);
    client
        .delete_workflow(&id)
        .await
        .map_err(|source| Error::N8n {
            action: "delete the workflow from n8n",
            source,
        })?;
    info!(n8n_id = %id, "deleted the workflow from n8n (deletionPolicy Delete)");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_executions_time_is_kept_as_the_api_server_keeps_it() {
        let time = super::whole_second("2026-12-01T09:20:17.987Z").unwrap();
        let stored: super::Time =
            serde_json::from_value(serde_json::to_value(&time).unwrap()).unwrap();
        assert_eq!(time, stored);
        assert_eq!(serde_json::to_value(&time).unwrap(), "2026-12-01T09:20:17Z");
        assert_eq!(super::whole_second("yesterday"), None);
    }
}
