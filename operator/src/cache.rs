//! Watch caches of homeplane's kinds, for every reader that must not ask the API server on its
//! own (the dashboard, per-object metrics): one reflector per kind, started on every replica,
//! the standby included, and dropped with the process. Managed fields are stripped before an
//! object is cached; they are never read and are often the largest part of an object.

use std::fmt::Debug;

use futures::StreamExt;
use homeplane_crds::{
    Agent, AgentRun, Backup, BackupPolicy, Database, Drift, MemoryServer, NodeClass, StateRegistry,
    VoicePipeline, Workflow,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The cached objects of every homeplane kind.
#[derive(Clone)]
pub struct Caches {
    /// NodeClasses (cluster-scoped).
    pub nodeclasses: Store<NodeClass>,
    /// Databases.
    pub databases: Store<Database>,
    /// BackupPolicies.
    pub backup_policies: Store<BackupPolicy>,
    /// Backups.
    pub backups: Store<Backup>,
    /// Workflows.
    pub workflows: Store<Workflow>,
    /// Agents.
    pub agents: Store<Agent>,
    /// AgentRuns.
    pub agent_runs: Store<AgentRun>,
    /// VoicePipelines.
    pub voice_pipelines: Store<VoicePipeline>,
    /// MemoryServers.
    pub memory_servers: Store<MemoryServer>,
    /// StateRegistries.
    pub registries: Store<StateRegistry>,
    /// Drift objects (spec only; read by the per-property drift metrics).
    pub drifts: Store<Drift>,
}

/// What every homeplane object reports about its health, whatever its kind.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// The kind, e.g. `Database`.
    pub kind: &'static str,
    /// The namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `status.observedGeneration`; `None` before homeplane first wrote a status.
    pub observed_generation: Option<i64>,
    /// `status.conditions`.
    pub conditions: Vec<Condition>,
}

impl Health {
    /// The condition of `type_`, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition of `type_` is present with status `True`.
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}

impl Caches {
    /// Starts a reflector per kind, limited to `namespace` when given (cluster-scoped kinds are
    /// watched whole), until `shutdown` is cancelled. The tasks are in the returned set.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        shutdown: &CancellationToken,
    ) -> (Self, JoinSet<()>) {
        let mut tasks = JoinSet::new();
        let scoped = |client: &Client| Scope {
            client: client.clone(),
            namespace: namespace.map(str::to_string),
        };
        let s = scoped(client);
        let caches = Self {
            nodeclasses: reflect(&mut tasks, Api::all(client.clone()), shutdown),
            databases: reflect(&mut tasks, s.api(), shutdown),
            backup_policies: reflect(&mut tasks, s.api(), shutdown),
            backups: reflect(&mut tasks, s.api(), shutdown),
            workflows: reflect(&mut tasks, s.api(), shutdown),
            agents: reflect(&mut tasks, s.api(), shutdown),
            agent_runs: reflect(&mut tasks, s.api(), shutdown),
            voice_pipelines: reflect(&mut tasks, s.api(), shutdown),
            memory_servers: reflect(&mut tasks, s.api(), shutdown),
            registries: reflect(&mut tasks, s.api(), shutdown),
            drifts: reflect(&mut tasks, s.api(), shutdown),
        };
        (caches, tasks)
    }

    /// The health of every cached object, in a stable order: by kind, then namespace, then name.
    pub fn health(&self) -> Vec<Health> {
        let mut all = Vec::new();
        macro_rules! collect {
            ($store:expr) => {
                all.extend($store.state().iter().map(|o| {
                    let status = o.status.as_ref();
                    health_of(
                        o.as_ref(),
                        status.and_then(|s| s.observed_generation),
                        status.map(|s| s.conditions.clone()).unwrap_or_default(),
                    )
                }))
            };
        }
        collect!(self.nodeclasses);
        collect!(self.databases);
        collect!(self.backup_policies);
        collect!(self.backups);
        collect!(self.workflows);
        collect!(self.agents);
        collect!(self.agent_runs);
        collect!(self.voice_pipelines);
        collect!(self.memory_servers);
        collect!(self.registries);
        all.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        all
    }
}

fn health_of<K: Resource<DynamicType = ()>>(
    obj: &K,
    observed_generation: Option<i64>,
    conditions: Vec<Condition>,
) -> Health {
    Health {
        kind: kind_name::<K>(),
        namespace: obj.meta().namespace.clone().unwrap_or_default(),
        name: obj.meta().name.clone().unwrap_or_default(),
        generation: obj.meta().generation,
        observed_generation,
        conditions,
    }
}

/// The kind of `K` as a static string (homeplane's kinds only).
fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "NodeClass" => "NodeClass",
        "Database" => "Database",
        "BackupPolicy" => "BackupPolicy",
        "Backup" => "Backup",
        "Workflow" => "Workflow",
        "Agent" => "Agent",
        "AgentRun" => "AgentRun",
        "VoicePipeline" => "VoicePipeline",
        "MemoryServer" => "MemoryServer",
        "StateRegistry" => "StateRegistry",
        "Drift" => "Drift",
        _ => "Unknown",
    }
}

/// The client and namespace the namespaced kinds are watched in.
struct Scope {
    client: Client,
    namespace: Option<String>,
}

impl Scope {
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

/// Starts a reflector of `api` into a new store until `shutdown`. Watch errors are logged and
/// the watch resumes with the default backoff; managed fields are stripped before caching.
fn reflect<K>(tasks: &mut JoinSet<()>, api: Api<K>, shutdown: &CancellationToken) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = kind_name::<K>();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|obj: &mut K| {
            obj.managed_fields_mut().clear();
        })
        .reflect(writer)
        .take_until(shutdown.clone().cancelled_owned());
    tasks.spawn(async move {
        stream
            .for_each(|event| {
                if let Err(error) = event {
                    warn!(kind, %error, "a watch of the shared cache failed; retrying");
                }
                futures::future::ready(())
            })
            .await;
    });
    reader
}
