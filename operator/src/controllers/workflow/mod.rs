//! The Workflow controller: keeps an n8n workflow equal to its declaration through n8n's public
//! REST API. Pipeline: API key Secret and definition (inline or ConfigMap) -> the body the API
//! accepts (pure) -> observe n8n's copy -> create, update and (de)activate, or report drift per
//! `onDrift` -> last execution -> status. `deletionPolicy: Delete` removes the workflow from n8n
//! through a finalizer.

pub mod definition;
pub mod n8n;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use homeplane_crds::common::DeletionPolicy;
use homeplane_crds::workflow::{DriftAction, Execution, Workflow, WorkflowStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument};

use super::{Context, Error, apply_status, backoff, error_policy, now};
use crate::conditions::{self, DEGRADED, Desired, READY};
use n8n::{Http, N8n, N8nError};

const CONTROLLER: &str = "workflow";
/// The condition that says whether n8n's copy differs from the declaration.
pub const DRIFTED: &str = "Drifted";
/// Finalizer that lets `deletionPolicy` run before a Workflow object goes away.
const FINALIZER: &str = "homeplane.dev/workflow-cleanup";
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

/// Runs the controller until `shutdown` is cancelled. A Workflow is reconciled when it changes,
/// when the ConfigMap of its `definitionFrom` or the Secret of its API key changes, and every
/// `workflow_resync` (edits made in n8n itself are only seen then).
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let controller = Controller::new(ctx.watched::<Workflow>(), watcher::Config::default());
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
    controller
        .watches_stream(config_maps, move |cm| {
            referring(&workflows.state(), &cm, |wf| {
                wf.spec.definition_from.as_ref().map(|r| r.name.as_str())
            })
        })
        .watches_stream(secrets, move |secret| {
            referring(&by_secret.state(), &secret, |wf| {
                Some(wf.spec.n8n.api_key_secret.name.as_str())
            })
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile,
            |wf, error, ctx| error_policy(CONTROLLER, wf, error, ctx),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
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

#[instrument(skip_all, fields(workflow = %wf.name_any(), namespace = wf.namespace().unwrap_or_default()))]
async fn reconcile(wf: Arc<Workflow>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api = api(&wf, &ctx);
    finalizer(&api, FINALIZER, wf, |event| async {
        match event {
            FinalizerEvent::Apply(wf) => apply(wf, ctx.clone()).await,
            FinalizerEvent::Cleanup(wf) => cleanup(wf, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn api(wf: &Workflow, ctx: &Context) -> Api<Workflow> {
    Api::namespaced(ctx.client.clone(), &wf.namespace().unwrap_or_default())
}

/// The outcome of one pass, before it becomes status.
struct Outcome {
    ready: Desired,
    degraded: Option<Desired>,
    /// `Drifted`; `None` leaves the last known value.
    drifted: Option<Desired>,
    /// A failure: tried again with per-object exponential backoff.
    retry: bool,
}

impl Outcome {
    /// Failed for now (n8n down, key refused, definition rejected…); retried with backoff.
    fn failed(reason: &'static str, message: String) -> Self {
        Self {
            ready: Desired::no(READY, reason, message.clone()),
            degraded: Some(Desired::yes(DEGRADED, reason, message)),
            drifted: None,
            retry: true,
        }
    }
}

async fn apply(wf: Arc<Workflow>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // The cached object may predate our own last status write; build on the stored status.
    let Some(wf) = api(&wf, &ctx)
        .get_opt(&wf.name_any())
        .await
        .map_err(Error::kube("read the Workflow"))?
    else {
        return Ok(Action::await_change());
    };
    let mut status = wf.status.clone().unwrap_or_default();
    let old = status.clone();
    let generation = wf.metadata.generation;
    let outcome = converge(&wf, &ctx, &mut status).await?;
    status.observed_generation = generation;
    conditions::set(&mut status.conditions, outcome.ready, generation, now());
    match outcome.degraded {
        Some(degraded) => conditions::set(&mut status.conditions, degraded, generation, now()),
        None => conditions::remove(&mut status.conditions, DEGRADED),
    }
    if let Some(drifted) = outcome.drifted {
        let newly = drifted.status && !conditions::is_true(&old.conditions, DRIFTED);
        if newly {
            ctx.event(&wf, EventType::Warning, "Drifted", drifted.message.clone())
                .await;
        }
        conditions::set(&mut status.conditions, drifted, generation, now());
    }
    if status != old || wf.status.is_none() {
        apply_status(&api(&wf, &ctx), &wf, &status).await?;
    }
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    let key = super::key(&wf);
    if outcome.retry {
        ctx.metrics.failed(CONTROLLER, "n8n");
        return Ok(Action::requeue(backoff(ctx.failed(&key))));
    }
    ctx.succeeded(&key);
    Ok(Action::requeue(ctx.workflow_resync))
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
        Outcome::failed(
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
        return Ok(Err(Outcome::failed(
            "InvalidDefinition",
            "set spec.definition or spec.definitionFrom".into(),
        )));
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
        return Ok(Err(Outcome::failed(
            "DefinitionMissing",
            format!(
                "ConfigMap {ns}/{} has no key {} (spec.definitionFrom); create it with the workflow's JSON",
                reference.name, reference.key
            ),
        )));
    };
    Ok(definition::parse(text).map_err(|e| {
        Outcome::failed(
            "InvalidDefinition",
            format!(
                "the workflow definition in ConfigMap {ns}/{} key {} {e}",
                reference.name, reference.key
            ),
        )
    }))
}

/// The outcome of a failed call to n8n, with n8n's own message.
fn n8n_failed(wf: &Workflow, what: &str, error: &N8nError) -> Outcome {
    let ns = wf.namespace().unwrap_or_default();
    match error {
        N8nError::Unreachable { .. } => Outcome::failed(
            "N8nUnreachable",
            format!("{error}; check spec.n8n.url and that n8n is running"),
        ),
        N8nError::Unauthorized { .. } => Outcome::failed(
            "N8nUnauthorized",
            format!(
                "{error}; put a valid API key into Secret {ns}/{} key {}",
                wf.spec.n8n.api_key_secret.name, wf.spec.n8n.api_key_secret.key
            ),
        ),
        N8nError::Rejected { .. } | N8nError::NotFound { .. } => Outcome::failed(
            "N8nRejected",
            format!("n8n refused to {what}: {error}; fix the workflow definition"),
        ),
        N8nError::Protocol(_) => Outcome::failed("N8nError", format!("{what}: {error}")),
    }
}

async fn converge(
    wf: &Workflow,
    ctx: &Context,
    status: &mut WorkflowStatus,
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
        Err(e) => {
            return Ok(Outcome::failed(
                "InvalidDefinition",
                format!("the workflow definition {e}"),
            ));
        }
    };
    let desired_hash = definition::canonical_hash(&payload.body);
    let client = N8n::new(ctx.n8n.get()?, &wf.spec.n8n.url, &key);
    let spec = &wf.spec;
    // A new declaration (or a first pass) is applied whatever n8n holds; drift is only a
    // difference that appeared while the declaration stayed the same.
    let declaration_changed = status.definition_hash.as_deref() != Some(desired_hash.as_str())
        || status.observed_generation != wf.metadata.generation;

    // A Workflow without an id yet takes over the n8n workflow its annotation names.
    let adopting = status
        .n8n_id
        .is_none()
        .then(|| wf.annotations().get(ADOPT_ANNOTATION).cloned())
        .flatten();
    let observed = match status.n8n_id.as_ref().or(adopting.as_ref()) {
        Some(id) => match client.get_workflow(id).await {
            Ok(found) => found,
            Err(e) => return Ok(n8n_failed(wf, "read the workflow", &e)),
        },
        None => None,
    };
    if let (Some(id), Some(_)) = (&adopting, &observed) {
        info!(n8n_id = %id, "adopted the workflow in n8n");
        status.n8n_id = Some(id.clone());
        ctx.event(
            wf,
            EventType::Normal,
            "Adopted",
            format!("took over n8n workflow {id} (annotation {ADOPT_ANNOTATION})"),
        )
        .await;
    }

    let mut drift = Vec::new();
    let mut corrected = false;
    let id = match observed {
        None => {
            if let Some(old_id) = status.n8n_id.clone() {
                if !declaration_changed && spec.on_drift == DriftAction::Report {
                    let message = format!(
                        "workflow {old_id} was deleted in n8n; onDrift is Report, so homeplane leaves it deleted (set onDrift: Correct or change the spec to create it again)"
                    );
                    return Ok(Outcome {
                        ready: Desired::no(READY, "DeletedInN8n", message.clone()),
                        degraded: Some(Desired::yes(DEGRADED, "DeletedInN8n", message.clone())),
                        drifted: Some(Desired::yes(DRIFTED, "DeletedInN8n", message)),
                        retry: false,
                    });
                }
                corrected = !declaration_changed;
                drift.push(format!("workflow {old_id} was deleted in n8n"));
            }
            let created = match client.create_workflow(&payload.body).await {
                Ok(created) => created,
                Err(e) => return Ok(n8n_failed(wf, "create the workflow", &e)),
            };
            let Some(id) = created.get("id").and_then(Value::as_str) else {
                return Ok(Outcome::failed(
                    "N8nError",
                    "n8n created the workflow but returned no id".into(),
                ));
            };
            info!(n8n_id = id, "created the workflow in n8n");
            status.n8n_id = Some(id.to_string());
            ctx.event(
                wf,
                EventType::Normal,
                "Created",
                format!("created n8n workflow {id}"),
            )
            .await;
            if spec.active
                && let Err(e) = client.set_active(id, true).await
            {
                return Ok(n8n_failed(wf, "activate the workflow", &e));
            }
            id.to_string()
        }
        Some(observed) => {
            let id = status.n8n_id.clone().unwrap_or_default();
            let definition_differs = definition::canonical_hash(&observed) != desired_hash;
            let active = observed
                .get("active")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if definition_differs {
                drift.extend(definition::differences(&payload.body, &observed));
                if drift.is_empty() {
                    drift.push("the definition was changed in n8n".into());
                }
            }
            if active != spec.active {
                drift.push(format!(
                    "it is {} in n8n",
                    if active { "active" } else { "inactive" }
                ));
            }
            let act = declaration_changed || spec.on_drift == DriftAction::Correct;
            if !drift.is_empty() && !act {
                let message = format!(
                    "n8n workflow {id} differs from the declaration: {}; onDrift is Report, so homeplane changes nothing (set onDrift: Correct to put the declaration back)",
                    drift.join("; ")
                );
                status.last_execution = last_execution(&client, &id).await;
                status.active = Some(active);
                return Ok(Outcome {
                    ready: Desired::yes(READY, "DriftReported", message.clone()),
                    degraded: None,
                    drifted: Some(Desired::yes(DRIFTED, "EditedInN8n", message)),
                    retry: false,
                });
            }
            if definition_differs {
                if let Err(e) = client.update_workflow(&id, &payload.body).await {
                    return Ok(n8n_failed(wf, "update the workflow", &e));
                }
                info!(n8n_id = %id, "updated the workflow in n8n");
            }
            if active != spec.active
                && let Err(e) = client.set_active(&id, spec.active).await
            {
                let what = if spec.active {
                    "activate the workflow"
                } else {
                    "deactivate the workflow"
                };
                return Ok(n8n_failed(wf, what, &e));
            }
            corrected = !drift.is_empty() && !declaration_changed;
            if !drift.is_empty() && declaration_changed {
                ctx.event(
                    wf,
                    EventType::Normal,
                    "Updated",
                    format!("updated n8n workflow {id} to the new declaration"),
                )
                .await;
            }
            id
        }
    };
    // Only now is the declaration fully in n8n: a pass that failed half-way is retried as
    // a new declaration, not mistaken for drift.
    status.definition_hash = Some(desired_hash);
    status.active = Some(spec.active);
    if corrected {
        ctx.event(
            wf,
            EventType::Normal,
            "DriftCorrected",
            format!(
                "put the declaration back in n8n (onDrift Correct): {}",
                drift.join("; ")
            ),
        )
        .await;
    }
    status.last_execution = last_execution(&client, &id).await;
    let mut message = format!(
        "n8n workflow {id} matches the declaration and is {}",
        if spec.active { "active" } else { "inactive" }
    );
    if !payload.ignored.is_empty() {
        message.push_str(&format!(
            "; fields n8n's API does not accept were left out: {}",
            payload.ignored.join(", ")
        ));
    }
    let drifted = if corrected {
        Desired::no(
            DRIFTED,
            "Corrected",
            format!("drift was corrected: {}", drift.join("; ")),
        )
    } else {
        Desired::no(
            DRIFTED,
            "InSync",
            format!("n8n workflow {id} matches the declaration"),
        )
    };
    Ok(Outcome {
        ready: Desired::yes(READY, "Synced", message),
        degraded: None,
        drifted: Some(drifted),
        retry: false,
    })
}

/// The last execution n8n reports; `None` when it never ran or cannot be read (the status
/// then keeps no stale value).
async fn last_execution(client: &N8n<'_>, id: &str) -> Option<Execution> {
    let last = client.last_execution(id).await.ok()??;
    Some(Execution {
        status: last.status,
        finished_at: last
            .stopped_at
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(Time),
    })
}

/// Runs when a Workflow object is deleted. `Retain` leaves the workflow in n8n as it is;
/// `Delete` deletes it there.
async fn cleanup(wf: Arc<Workflow>, ctx: Arc<Context>) -> Result<Action, Error> {
    if wf.spec.deletion_policy == DeletionPolicy::Retain {
        info!("deletionPolicy Retain: the workflow stays in n8n");
        return Ok(Action::await_change());
    }
    let Some(id) = wf.status.as_ref().and_then(|s| s.n8n_id.clone()) else {
        return Ok(Action::await_change());
    };
    let key = match api_key(&wf, &ctx).await? {
        Ok(key) => key,
        Err(outcome) => {
            let note = format!("{}; the workflow {id} stays in n8n", outcome.ready.message);
            ctx.event(wf.as_ref(), EventType::Warning, "CleanupSkipped", note)
                .await;
            return Ok(Action::await_change());
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
    Ok(Action::await_change())
}

/// How often a Workflow is compared with n8n when nothing changes (edits in the n8n UI are
/// seen this often).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);
