//! The controllers, one module per kind, and what they share: the context and the error type.
//! Every controller runs in the reconcile frame (`crate::reconcile`).

pub mod agent;
pub mod agentrun;
pub mod backup;
pub mod backuppolicy;
pub mod database;
pub mod memory;
pub mod nodeclass;
pub mod registry;
pub mod voice;
pub mod workflow;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use tracing::warn;

use crate::metrics::Metrics;

pub use crate::workload::FIELD_MANAGER;

/// What homeplane trusts beyond each object's own namespace, and the names of the RBAC and
/// admission objects of its install it relies on (docs/security.md).
#[derive(Clone, Debug)]
pub struct Trust {
    /// Namespaces whose StateRegistries may observe other namespaces and cluster-scoped kinds.
    pub registry_namespaces: Vec<String>,
    /// The ServiceAccount, in a StateRegistry's own namespace, its correctors act as.
    pub corrector_service_account: String,
    /// Prefix of the fixed ClusterRoles an Agent's ServiceAccount may be bound to.
    pub agent_role_prefix: String,
    /// The ValidatingAdmissionPolicyBinding that guarantees who asked for each Agent.
    pub agent_policy: String,
}

impl Default for Trust {
    fn default() -> Self {
        Self {
            registry_namespaces: Vec::new(),
            corrector_service_account: "homeplane-corrector".to_string(),
            agent_role_prefix: "homeplane-agent".to_string(),
            agent_policy: "homeplane-agents".to_string(),
        }
    }
}

/// What every reconciliation shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// The one event recorder.
    pub recorder: Recorder,
    /// The only namespace whose objects are reconciled; all namespaces when `None`.
    pub watch_namespace: Option<String>,
    /// PostgreSQL connection pools of the Database controller.
    pub postgres: database::Pools,
    /// The HTTP client of the Workflow controller.
    pub n8n: workflow::Clients,
    /// How often a Workflow is compared with n8n when nothing changes.
    pub workflow_resync: Duration,
    /// Held while an AgentRun takes a slot, so that two runs never take the last one.
    pub run_starts: tokio::sync::Mutex<()>,
    /// homeplane's own database (history), when configured.
    pub history: Option<sqlx::PgPool>,
    /// The operator's image, run by the Jobs that back up PersistentVolumeClaims.
    pub image: String,
    /// The memory budget of the backups and restore drills the operator runs itself.
    pub backup_budget: backup::budget::Budget,
    /// Failure streaks per object: the one retry policy of the reconcile frame.
    pub retries: crate::reconcile::retry::Retries,
    /// Trust boundaries (registries, correctors, Agents).
    pub trust: Trust,
    /// The API server's recent answers that an Agent's requester holds its rights.
    pub agent_reviews: agent::reviews::Reviews,
}

/// The operator's released image, run by PVC backup Jobs unless `--image` names another.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/homeplane/homeplane:", env!("CARGO_PKG_VERSION"));

impl Context {
    /// A context for `client`, reporting events as `homeplane` from `instance`.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        instance: &str,
        watch_namespace: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "homeplane".into(),
            instance: Some(instance.to_string()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            watch_namespace,
            postgres: database::Pools::default(),
            n8n: workflow::Clients::default(),
            workflow_resync: workflow::DEFAULT_RESYNC,
            run_starts: tokio::sync::Mutex::new(()),
            history: None,
            image: DEFAULT_IMAGE.to_string(),
            backup_budget: backup::budget::Budget::default(),
            retries: crate::reconcile::retry::Retries::default(),
            trust: Trust::default(),
            agent_reviews: agent::reviews::Reviews::default(),
        }
    }

    /// Records history in `pool` (homeplane's own database).
    pub fn with_history(mut self, pool: Option<sqlx::PgPool>) -> Self {
        self.history = pool;
        self
    }

    /// The API of a namespaced kind, limited to the watched namespace if there is one.
    pub fn watched<K>(&self) -> kube::Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match &self.watch_namespace {
            Some(ns) => kube::Api::namespaced(self.client.clone(), ns),
            None => kube::Api::all(self.client.clone()),
        }
    }

    /// Publishes an event about `obj`; a failure to publish is logged, not returned.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            warn!(error = %error, "failed to publish an event");
        }
    }
}

/// Errors of reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("failed to {action}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    /// A PostgreSQL statement failed.
    #[error("failed to {action}")]
    Postgres {
        action: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// Adding or removing a finalizer, or the cleanup behind it, failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The operating system's random source failed.
    #[error("failed to generate a password: {0}")]
    Random(String),
    /// An object the reconcile depends on holds a value the API server should have refused.
    #[error("invalid spec: {0}")]
    Spec(String),
    /// A call to n8n failed.
    #[error("failed to {action}")]
    N8n {
        action: &'static str,
        #[source]
        source: workflow::n8n::N8nError,
    },
    /// The HTTP client could not be built.
    #[error("failed to set up the HTTP client: {0}")]
    Http(String),
    /// A list holds more objects than homeplane reads.
    #[error("failed to {action}: more than {max} objects; homeplane reads at most that many")]
    TooMany { action: &'static str, max: usize },
    /// An object could not be serialized.
    #[error("failed to serialize {what}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl From<crate::workload::apply::Error> for Error {
    fn from(error: crate::workload::apply::Error) -> Self {
        use crate::workload::apply::Error as Workload;
        match error {
            Workload::Kube { action, source } => Error::Kube { action, source },
            Workload::Serialize { what, source } => Error::Serialize { what, source },
            Workload::Class(invalid) => Error::Spec(invalid.to_string()),
        }
    }
}

impl Error {
    /// A bounded label for metrics and a reason for events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Postgres { .. } => "postgres",
            Error::Random(_) => "random",
            Error::Finalizer(_) => "finalizer",
            Error::Serialize { .. } => "serialize",
            Error::Spec(_) => "spec",
            Error::N8n { .. } => "n8n",
            Error::Http(_) => "http",
            Error::TooMany { .. } => "limit",
        }
    }

    /// The event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubernetesApiError",
            Error::Postgres { .. } => "PostgresError",
            Error::Random(_) => "RandomSourceError",
            Error::Finalizer(_) => "FinalizerError",
            Error::Serialize { .. } => "SerializationError",
            Error::Spec(_) => "InvalidSpec",
            Error::N8n { .. } => "N8nError",
            Error::Http(_) => "HttpClientError",
            Error::TooMany { .. } => "TooManyObjects",
        }
    }

    /// Shorthand for a failed API call.
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }
}

/// The outcome of workloads refused before anything was created: a placement that cannot be
/// built is the spec's to fix; a class that is missing or full may pass (a node joins, another
/// workload ends) and is retried with the frame's backoff, and when the class's nodes or pods
/// change. It is not `Stalled`, so Flux waits for it instead of failing at once.
pub fn refused(reason: &'static str, message: String) -> crate::reconcile::Outcome {
    use crate::reconcile::Outcome;
    match reason {
        "InvalidPlacement" => Outcome::invalid(reason, message),
        _ => Outcome::retry(reason, message),
    }
}

/// The outcome of applied workloads whose pods the scheduler cannot place, if there are any.
pub fn unschedulable(
    rollouts: &std::collections::BTreeMap<String, crate::workload::rollout::Rollout>,
) -> Option<crate::reconcile::Outcome> {
    let [ready, ..] = crate::workload::apply::unschedulable(rollouts)?;
    // Pending pods may yet be placed (another pod ends, a node joins): retried, not Stalled.
    Some(crate::reconcile::Outcome::retry(
        ready.reason,
        ready.message,
    ))
}

/// Most objects read from one list (in pages of [`LIST_PAGE`]): every read from the API server
/// is bounded, whatever a namespace holds.
pub const MAX_LISTED: usize = 5_000;
/// Objects per page of a list.
pub const LIST_PAGE: u32 = 500;

/// Lists `api` with `params` page by page, failing once more than [`MAX_LISTED`] objects come
/// back (`action` names the list in the error).
pub async fn list_capped<K>(
    api: &kube::Api<K>,
    params: kube::api::ListParams,
    action: &'static str,
) -> Result<Vec<K>, Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = params.limit(LIST_PAGE);
    let mut out = Vec::new();
    loop {
        let page = api.list(&params).await.map_err(Error::kube(action))?;
        out.extend(page.items);
        if out.len() > MAX_LISTED {
            return Err(Error::TooMany {
                action,
                max: MAX_LISTED,
            });
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// The current time.
pub fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// How `container` of the pod of Job `job` ended (exit code, reason such as `OOMKilled`, and
/// its termination message), once it has.
pub async fn job_container_end(
    ctx: &Context,
    ns: &str,
    job: &str,
    container: &str,
) -> Result<Option<k8s_openapi::api::core::v1::ContainerStateTerminated>, Error> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ListParams;
    let pods = kube::Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .map_err(Error::kube("list the Job's pods"))?;
    Ok(pods
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|c| c.name == container)
        .find_map(|c| c.state.as_ref()?.terminated.clone()))
}
