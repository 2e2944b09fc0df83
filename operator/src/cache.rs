//! Watch caches of homeplane's kinds, for every reader that must not ask the API server on its
//! own (the dashboard, per-object metrics): one reflector per kind, started on every replica,
//! the standby included, and dropped with the process. Managed fields are stripped before an
//! object is cached; they are never read and are often the largest part of an object.
//! [`Related`] adds, for the dashboard, what homeplane's objects depend on and produce: Drifts,
//! their Events, and the Secrets, ConfigMaps, claims, workloads and Jobs they name — Secrets,
//! ConfigMaps and claims as metadata only, workloads and Jobs without their pod template.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use homeplane_crds::{
    Agent, AgentRun, Backup, BackupPolicy, Database, Drift, MemoryServer, NodeClass, StateRegistry,
    VoicePipeline, Workflow,
};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
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
    /// Drift the watch saw resolved (deleted), newest last, at most [`CLEARED_KEPT`].
    cleared: Arc<Mutex<VecDeque<ClearedDrift>>>,
    /// Counts the changes applied to any cache (this one and the [`Related`] ones started from
    /// it), so a reader can wait for the next one.
    changes: Arc<watch::Sender<u64>>,
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
        let changes = Arc::new(watch::Sender::new(0u64));
        let mut r = Reflectors {
            tasks: &mut tasks,
            shutdown,
            changes: &changes,
        };
        let cleared = Arc::new(Mutex::new(VecDeque::new()));
        let record = cleared.clone();
        // Objects one by one (a streaming list): one that cannot be read does not empty the
        // whole kind's cache.
        let own = || watcher::Config::default().streaming_lists();
        let caches = Self {
            nodeclasses: r.whole(Api::all(client.clone()), own()),
            databases: r.whole(s.api(), own()),
            backup_policies: r.whole(s.api(), own()),
            backups: r.whole(s.api(), own()),
            workflows: r.whole(s.api(), own()),
            agents: r.whole(s.api(), own()),
            agent_runs: r.whole(s.api(), own()),
            voice_pipelines: r.whole(s.api(), own()),
            memory_servers: r.whole(s.api(), own()),
            registries: r.whole(s.api(), own()),
            drifts: r.trimmed(
                s.api(),
                watcher::Config::default(),
                |_: &mut Drift| {},
                move |drift: &Drift| {
                    if let Ok(mut list) = record.lock() {
                        if list.len() >= CLEARED_KEPT {
                            list.pop_front();
                        }
                        list.push_back(ClearedDrift {
                            at: Timestamp::now(),
                            namespace: drift.namespace().unwrap_or_default(),
                            name: drift.name_any(),
                            property: drift.spec.property.clone(),
                            registry: drift.spec.registry.clone(),
                        });
                    }
                },
            ),
            cleared,
            changes,
        };
        (caches, tasks)
    }

    /// Wakes up whenever any cache started from this one changes (the value counts changes).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Waits until every cache of homeplane's kinds holds its first complete list, or until
    /// `timeout`; says whether they all did.
    pub async fn wait_until_ready(&self, timeout: Duration) -> bool {
        let all = async {
            let _ = self.nodeclasses.wait_until_ready().await;
            let _ = self.databases.wait_until_ready().await;
            let _ = self.backup_policies.wait_until_ready().await;
            let _ = self.backups.wait_until_ready().await;
            let _ = self.workflows.wait_until_ready().await;
            let _ = self.agents.wait_until_ready().await;
            let _ = self.agent_runs.wait_until_ready().await;
            let _ = self.voice_pipelines.wait_until_ready().await;
            let _ = self.memory_servers.wait_until_ready().await;
            let _ = self.registries.wait_until_ready().await;
        };
        tokio::time::timeout(timeout, all).await.is_ok()
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

/// Starts reflectors into new stores until `shutdown`, each task in `tasks`, each change
/// counted in `changes`. Watch errors are logged and the watch resumes with the default backoff.
struct Reflectors<'a> {
    tasks: &'a mut JoinSet<()>,
    shutdown: &'a CancellationToken,
    changes: &'a Arc<watch::Sender<u64>>,
}

impl Reflectors<'_> {
    /// Whole objects of `api` selected by `config`, without their managed fields.
    fn whole<K>(&mut self, api: Api<K>, config: watcher::Config) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        self.trimmed(api, config, |_| {}, |_| {})
    }

    /// Objects of `api` selected by `config`, passed through `trim` (managed fields are always
    /// stripped) before they are cached; `on_delete` sees each object the watch saw deleted.
    fn trimmed<K>(
        &mut self,
        api: Api<K>,
        config: watcher::Config,
        trim: impl Fn(&mut K) + Send + Sync + 'static,
        on_delete: impl Fn(&K) + Send + Sync + 'static,
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let stream = watcher(api, config).modify(move |obj: &mut K| {
            obj.managed_fields_mut().clear();
            trim(obj);
        });
        self.spawn(stream, K::kind(&()).into_owned(), on_delete)
    }

    /// The metadata of the objects of `api` selected by `config`, without managed fields and
    /// annotations (an annotation such as kubectl's last-applied-configuration can hold a
    /// Secret's whole data).
    fn metadata<K>(
        &mut self,
        api: Api<PartialObjectMeta<K>>,
        config: watcher::Config,
    ) -> Store<PartialObjectMeta<K>>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        self.trimmed(
            api,
            config,
            |obj: &mut PartialObjectMeta<K>| obj.metadata.annotations = None,
            |_| {},
        )
    }

    fn spawn<K>(
        &mut self,
        stream: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
        kind: String,
        on_delete: impl Fn(&K) + Send + Sync + 'static,
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    {
        let (reader, writer) = reflector::store();
        let changes = self.changes.clone();
        let stream = stream
            .default_backoff()
            .reflect(writer)
            .take_until(self.shutdown.clone().cancelled_owned());
        self.tasks.spawn(async move {
            stream
                .for_each(|event| {
                    match event {
                        Ok(watcher::Event::Delete(obj)) => {
                            on_delete(&obj);
                            changes.send_modify(|n| *n = n.wrapping_add(1));
                        }
                        Ok(watcher::Event::Apply(_) | watcher::Event::InitDone) => {
                            changes.send_modify(|n| *n = n.wrapping_add(1));
                        }
                        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                        Err(error) => {
                            warn!(%kind, %error, "a watch of the shared cache failed; retrying");
                        }
                    }
                    futures::future::ready(())
                })
                .await;
        });
        reader
    }
}

/// What the dashboard reads besides homeplane's own kinds: the Drifts, the Events about
/// homeplane's objects, and what those objects name or produce. Secrets, ConfigMaps and claims
/// are cached as metadata only (never a Secret's value, nor its annotations); workloads and
/// Jobs only when homeplane manages them, without their pod template; Events trimmed to what a
/// page shows.
#[derive(Clone)]
pub struct Related {
    /// Drifts.
    pub drifts: Store<Drift>,
    /// Events whose object is a homeplane object (`involvedObject.apiVersion`).
    pub events: Store<Event>,
    /// Secrets, metadata only.
    pub secrets: Store<PartialObjectMeta<Secret>>,
    /// ConfigMaps, metadata only.
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    /// PersistentVolumeClaims, metadata only.
    pub claims: Store<PartialObjectMeta<PersistentVolumeClaim>>,
    /// Deployments homeplane manages.
    pub deployments: Store<Deployment>,
    /// StatefulSets homeplane manages.
    pub stateful_sets: Store<StatefulSet>,
    /// Jobs homeplane manages (AgentRuns, PVC backups).
    pub jobs: Store<Job>,
    /// The operator's leader Lease, when its namespace and name are known.
    pub lease: Option<Store<Lease>>,
    /// Drift the watch saw resolved (deleted), newest last, at most [`CLEARED_KEPT`].
    pub cleared: Arc<Mutex<VecDeque<ClearedDrift>>>,
}

/// How many resolved Drifts [`Related::cleared`] remembers.
pub const CLEARED_KEPT: usize = 200;

/// A Drift that was deleted because its property came back to its desired state.
#[derive(Clone, Debug, PartialEq)]
pub struct ClearedDrift {
    /// When the watch saw it go.
    pub at: Timestamp,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its property.
    pub property: String,
    /// Its registry.
    pub registry: String,
}

/// The label of everything homeplane creates.
const MANAGED: &str = "app.kubernetes.io/managed-by=homeplane";

impl Related {
    /// Starts the reflectors, limited to `namespace` when given, counting their changes in
    /// `caches`; `lease` names the operator's leader Lease (namespace, name) to watch.
    pub fn start(
        caches: &Caches,
        client: &Client,
        namespace: Option<&str>,
        lease: Option<(&str, &str)>,
        shutdown: &CancellationToken,
    ) -> (Self, JoinSet<()>) {
        let mut tasks = JoinSet::new();
        let s = Scope {
            client: client.clone(),
            namespace: namespace.map(str::to_string),
        };
        let mut r = Reflectors {
            tasks: &mut tasks,
            shutdown,
            changes: &caches.changes,
        };
        let managed = || watcher::Config::default().labels(MANAGED);
        let events = r.trimmed(
            s.api(),
            watcher::Config::default().fields(&format!(
                "involvedObject.apiVersion={}/{}",
                homeplane_crds::GROUP,
                homeplane_crds::VERSION
            )),
            trim_event,
            |_| {},
        );
        let related = Self {
            drifts: caches.drifts.clone(),
            events,
            secrets: r.metadata(s.api(), watcher::Config::default()),
            config_maps: r.metadata(s.api(), watcher::Config::default()),
            claims: r.metadata(s.api(), watcher::Config::default()),
            deployments: r.trimmed(s.api(), managed(), trim_deployment, |_| {}),
            stateful_sets: r.trimmed(s.api(), managed(), trim_stateful_set, |_| {}),
            jobs: r.trimmed(s.api(), managed(), trim_job, |_| {}),
            lease: lease.map(|(ns, name)| {
                r.trimmed(
                    Api::namespaced(client.clone(), ns),
                    watcher::Config::default().fields(&format!("metadata.name={name}")),
                    |_: &mut Lease| {},
                    |_| {},
                )
            }),
            cleared: caches.cleared.clone(),
        };
        (related, tasks)
    }

    /// Waits until every cache holds its first complete list, or until `timeout`; says whether
    /// they all did (a cache the client may not list never does).
    pub async fn wait_until_ready(&self, timeout: Duration) -> bool {
        let all = async {
            let _ = self.drifts.wait_until_ready().await;
            let _ = self.events.wait_until_ready().await;
            let _ = self.secrets.wait_until_ready().await;
            let _ = self.config_maps.wait_until_ready().await;
            let _ = self.claims.wait_until_ready().await;
            let _ = self.deployments.wait_until_ready().await;
            let _ = self.stateful_sets.wait_until_ready().await;
            let _ = self.jobs.wait_until_ready().await;
        };
        tokio::time::timeout(timeout, all).await.is_ok()
    }
}

/// An Event keeps what a page shows: object, type, reason, message, count, times, reporter.
fn trim_event(event: &mut Event) {
    event.metadata = ObjectMeta {
        name: event.metadata.name.take(),
        namespace: event.metadata.namespace.take(),
        uid: event.metadata.uid.take(),
        resource_version: event.metadata.resource_version.take(),
        creation_timestamp: event.metadata.creation_timestamp.take(),
        ..ObjectMeta::default()
    };
    event.related = None;
    event.series = None;
    event.action = None;
}

/// A Deployment keeps its metadata, replicas and status; the pod template is dropped.
fn trim_deployment(d: &mut Deployment) {
    d.metadata.annotations = None;
    d.spec.template = Default::default();
}

/// A StatefulSet keeps its metadata, replicas and status.
fn trim_stateful_set(s: &mut StatefulSet) {
    s.metadata.annotations = None;
    s.spec.template = Default::default();
    s.spec.volume_claim_templates = None;
}

/// A Job keeps its metadata and status.
fn trim_job(j: &mut Job) {
    j.metadata.annotations = None;
    if let Some(spec) = j.spec.as_mut() {
        spec.template = Default::default();
    }
}
