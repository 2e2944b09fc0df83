//! One consistent view of the watch caches for a page or a command: every homeplane object
//! summarised the same way (its state, reason, message and since when), and lookups by name
//! into what the objects depend on. Taking a snapshot asks nothing of the API server.

use std::collections::BTreeMap;
use std::sync::Arc;

use homeplane_crds::{
    Agent, AgentRun, Backup, BackupPolicy, Database, Drift, MemoryServer, NodeClass, StateRegistry,
    VoicePipeline, Workflow,
};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::cache::{Caches, ClearedDrift, Related};

/// homeplane's kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    /// A class of node.
    NodeClass,
    /// A PostgreSQL database.
    Database,
    /// A backup schedule.
    BackupPolicy,
    /// One backup run.
    Backup,
    /// An n8n workflow.
    Workflow,
    /// An AI agent.
    Agent,
    /// One run of an agent.
    AgentRun,
    /// The voice assistant's chain.
    VoicePipeline,
    /// The semantic memory server.
    MemoryServer,
    /// A state registry.
    StateRegistry,
    /// One drifted property.
    Drift,
}

impl Kind {
    /// The kinds with a status and conditions, in the order pages list them.
    pub const WITH_STATUS: [Kind; 10] = [
        Kind::NodeClass,
        Kind::Database,
        Kind::BackupPolicy,
        Kind::Backup,
        Kind::Workflow,
        Kind::Agent,
        Kind::AgentRun,
        Kind::VoicePipeline,
        Kind::MemoryServer,
        Kind::StateRegistry,
    ];

    /// The kind's name, e.g. `NodeClass`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::NodeClass => "NodeClass",
            Kind::Database => "Database",
            Kind::BackupPolicy => "BackupPolicy",
            Kind::Backup => "Backup",
            Kind::Workflow => "Workflow",
            Kind::Agent => "Agent",
            Kind::AgentRun => "AgentRun",
            Kind::VoicePipeline => "VoicePipeline",
            Kind::MemoryServer => "MemoryServer",
            Kind::StateRegistry => "StateRegistry",
            Kind::Drift => "Drift",
        }
    }

    /// What kubectl calls it, e.g. `nodeclass`.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::NodeClass => "nodeclass",
            Kind::Database => "database",
            Kind::BackupPolicy => "backuppolicy",
            Kind::Backup => "backup",
            Kind::Workflow => "workflow",
            Kind::Agent => "agent",
            Kind::AgentRun => "agentrun",
            Kind::VoicePipeline => "voicepipeline",
            Kind::MemoryServer => "memoryserver",
            Kind::StateRegistry => "stateregistry",
            Kind::Drift => "drift",
        }
    }

    /// Its plural, as in the API's paths.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::NodeClass => "nodeclasses",
            Kind::BackupPolicy => "backuppolicies",
            Kind::StateRegistry => "stateregistries",
            Kind::Database => "databases",
            Kind::Backup => "backups",
            Kind::Workflow => "workflows",
            Kind::Agent => "agents",
            Kind::AgentRun => "agentruns",
            Kind::VoicePipeline => "voicepipelines",
            Kind::MemoryServer => "memoryservers",
            Kind::Drift => "drifts",
        }
    }

    /// The kind named by `text`: its name, kubectl's singular or plural, or its short name,
    /// in any case (`Database`, `databases`, `db`).
    pub fn parse(text: &str) -> Option<Kind> {
        let text = text.to_ascii_lowercase();
        let text = text.split('.').next().unwrap_or_default();
        Some(match text {
            "nodeclass" | "nodeclasses" | "nc" => Kind::NodeClass,
            "database" | "databases" | "db" => Kind::Database,
            "backuppolicy" | "backuppolicies" | "bp" => Kind::BackupPolicy,
            "backup" | "backups" | "bk" => Kind::Backup,
            "workflow" | "workflows" | "wf" => Kind::Workflow,
            "agent" | "agents" | "ag" => Kind::Agent,
            "agentrun" | "agentruns" | "ar" => Kind::AgentRun,
            "voicepipeline" | "voicepipelines" | "vp" => Kind::VoicePipeline,
            "memoryserver" | "memoryservers" | "mem" => Kind::MemoryServer,
            "stateregistry" | "stateregistries" | "sr" => Kind::StateRegistry,
            "drift" | "drifts" | "dr" => Kind::Drift,
            _ => return None,
        })
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        self != Kind::NodeClass
    }
}

/// How an object is doing, in the words of the tiles: worst last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum State {
    /// `Ready` is True for the current generation.
    Ready,
    /// Not ready yet, and nothing says it failed: homeplane is working on it (or has not
    /// reported yet).
    Progressing,
    /// Not ready, and `Degraded` (or a failed phase) says why.
    Failed,
    /// homeplane stopped trying: a person must change something.
    Stalled,
}

impl State {
    /// A word for the state.
    pub fn word(self) -> &'static str {
        match self {
            State::Ready => "Ready",
            State::Progressing => "Progressing",
            State::Failed => "Failed",
            State::Stalled => "Stalled",
        }
    }
}

/// One homeplane object, summarised the same way whatever its kind.
#[derive(Clone, Debug, Serialize)]
pub struct Obj {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace (empty for a NodeClass).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `status.observedGeneration`.
    pub observed_generation: Option<i64>,
    /// `status.conditions`.
    pub conditions: Vec<Condition>,
    /// Its phase, for kinds that have one (Backup, AgentRun).
    pub phase: Option<String>,
    /// How it is doing.
    pub state: State,
    /// The reason of the condition that decided the state.
    pub reason: String,
    /// homeplane's message.
    pub message: String,
    /// Since when it is in this state.
    #[serde(skip)]
    pub since: Option<Timestamp>,
}

/// Phases in which an object is still at work.
const WORKING_PHASES: [&str; 3] = ["Pending", "Running", "Queued"];
/// Phases in which an object ended badly.
const FAILED_PHASES: [&str; 2] = ["Failed", "NoContract"];

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Decides the state of an object from its conditions and phase:
/// `Stalled=True` is Stalled; `Ready=True` for the current generation is Ready; no `Ready`
/// yet is Progressing; otherwise a working phase (Pending, Running, Queued) is Progressing,
/// `Degraded=True` or a failed phase is Failed, and the rest is Progressing.
pub fn summarize(
    kind: Kind,
    meta: &ObjectMeta,
    observed_generation: Option<i64>,
    conditions: &[Condition],
    phase: Option<String>,
) -> Obj {
    let created = meta.creation_timestamp.as_ref().map(|t| t.0);
    let since_of = |c: &Condition| Some(c.last_transition_time.0);
    let ready = condition(conditions, "Ready");
    let stalled = condition(conditions, "Stalled").filter(|c| c.status == "True");
    let degraded = condition(conditions, "Degraded").filter(|c| c.status == "True");
    let phase_is = |list: &[&str]| phase.as_deref().is_some_and(|p| list.contains(&p));
    let stale = matches!((meta.generation, observed_generation), (Some(g), Some(o)) if o < g);
    let (state, reason, message, since) = match (stalled, ready) {
        (Some(s), _) => (
            State::Stalled,
            s.reason.clone(),
            s.message.clone(),
            since_of(s),
        ),
        (None, None) => (
            State::Progressing,
            "NotReported".to_string(),
            "homeplane has not reported on it yet".to_string(),
            created,
        ),
        (None, Some(r)) if r.status == "True" && stale => (
            State::Progressing,
            "ChangePending".to_string(),
            format!(
                "generation {} is not reconciled yet (status is of generation {})",
                meta.generation.unwrap_or_default(),
                observed_generation.unwrap_or_default()
            ),
            since_of(r),
        ),
        (None, Some(r)) if r.status == "True" => (
            State::Ready,
            r.reason.clone(),
            r.message.clone(),
            since_of(r),
        ),
        (None, Some(r)) => {
            let state = if phase_is(&WORKING_PHASES) {
                State::Progressing
            } else if degraded.is_some() || phase_is(&FAILED_PHASES) {
                State::Failed
            } else {
                State::Progressing
            };
            let (reason, message) = match degraded {
                Some(d) if r.message.is_empty() => (d.reason.clone(), d.message.clone()),
                _ => (r.reason.clone(), r.message.clone()),
            };
            (state, reason, message, since_of(r))
        }
    };
    Obj {
        kind,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        generation: meta.generation,
        observed_generation,
        conditions: conditions.to_vec(),
        phase,
        state,
        reason,
        message,
        since,
    }
}

/// The objects of every kind, and the related caches, as they are now.
pub struct Snapshot {
    /// When it was taken.
    pub now: Timestamp,
    /// NodeClasses.
    pub nodeclasses: Vec<Arc<NodeClass>>,
    /// Databases.
    pub databases: Vec<Arc<Database>>,
    /// BackupPolicies.
    pub backup_policies: Vec<Arc<BackupPolicy>>,
    /// Backups.
    pub backups: Vec<Arc<Backup>>,
    /// Workflows.
    pub workflows: Vec<Arc<Workflow>>,
    /// Agents.
    pub agents: Vec<Arc<Agent>>,
    /// AgentRuns.
    pub agent_runs: Vec<Arc<AgentRun>>,
    /// VoicePipelines.
    pub voice_pipelines: Vec<Arc<VoicePipeline>>,
    /// MemoryServers.
    pub memory_servers: Vec<Arc<MemoryServer>>,
    /// StateRegistries.
    pub registries: Vec<Arc<StateRegistry>>,
    /// Drifts.
    pub drifts: Vec<Arc<Drift>>,
    /// Every object with a status, summarised, sorted by kind, namespace and name.
    pub objects: Vec<Obj>,
    related: Option<Related>,
}

fn sorted<K: Resource + Clone>(store: &Store<K>) -> Vec<Arc<K>>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut all = store.state();
    all.sort_by(|a, b| {
        (a.meta().namespace.as_deref(), a.meta().name.as_deref())
            .cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
    });
    all
}

fn phase_word<T: Serialize>(phase: &T) -> Option<String> {
    serde_json::to_value(phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

impl Snapshot {
    /// The caches as they are now; `related` adds Drifts, Events and what objects depend on.
    pub fn take(caches: &Caches, related: Option<&Related>, now: Timestamp) -> Self {
        let mut snapshot = Snapshot {
            now,
            nodeclasses: sorted(&caches.nodeclasses),
            databases: sorted(&caches.databases),
            backup_policies: sorted(&caches.backup_policies),
            backups: sorted(&caches.backups),
            workflows: sorted(&caches.workflows),
            agents: sorted(&caches.agents),
            agent_runs: sorted(&caches.agent_runs),
            voice_pipelines: sorted(&caches.voice_pipelines),
            memory_servers: sorted(&caches.memory_servers),
            registries: sorted(&caches.registries),
            drifts: related.map(|r| sorted(&r.drifts)).unwrap_or_default(),
            objects: Vec::new(),
            related: related.cloned(),
        };
        snapshot.objects = snapshot.summaries();
        snapshot
    }

    fn summaries(&self) -> Vec<Obj> {
        let mut all = Vec::with_capacity(
            self.nodeclasses.len()
                + self.databases.len()
                + self.backups.len()
                + self.agent_runs.len()
                + 64,
        );
        macro_rules! plain {
            ($list:expr, $kind:expr) => {
                all.extend($list.iter().map(|o| {
                    let status = o.status.as_ref();
                    summarize(
                        $kind,
                        &o.metadata,
                        status.and_then(|s| s.observed_generation),
                        status.map(|s| s.conditions.as_slice()).unwrap_or_default(),
                        None,
                    )
                }))
            };
        }
        macro_rules! phased {
            ($list:expr, $kind:expr) => {
                all.extend($list.iter().map(|o| {
                    let status = o.status.as_ref();
                    summarize(
                        $kind,
                        &o.metadata,
                        status.and_then(|s| s.observed_generation),
                        status.map(|s| s.conditions.as_slice()).unwrap_or_default(),
                        status.and_then(|s| phase_word(&s.phase)),
                    )
                }))
            };
        }
        plain!(self.nodeclasses, Kind::NodeClass);
        plain!(self.databases, Kind::Database);
        plain!(self.backup_policies, Kind::BackupPolicy);
        phased!(self.backups, Kind::Backup);
        plain!(self.workflows, Kind::Workflow);
        plain!(self.agents, Kind::Agent);
        phased!(self.agent_runs, Kind::AgentRun);
        plain!(self.voice_pipelines, Kind::VoicePipeline);
        plain!(self.memory_servers, Kind::MemoryServer);
        plain!(self.registries, Kind::StateRegistry);
        all
    }

    /// Keeps only the NodeClasses the other objects are placed on (for a view of one
    /// namespace, where other namespaces' classes are not one's business).
    pub fn keep_used_classes(&mut self) {
        let mut used: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for m in &self.memory_servers {
            used.insert(m.spec.placement.class.clone());
            used.extend(
                m.spec
                    .cache
                    .managed
                    .as_ref()
                    .map(|c| c.placement.class.clone()),
            );
            used.extend(
                m.spec
                    .embedding
                    .model
                    .as_ref()
                    .map(|e| e.placement.class.clone()),
            );
        }
        for v in &self.voice_pipelines {
            used.extend(
                v.spec
                    .stages
                    .iter()
                    .filter_map(|s| s.workload.as_ref().map(|w| w.placement.class.clone())),
            );
        }
        for d in &self.databases {
            used.extend(
                d.spec
                    .server
                    .managed
                    .as_ref()
                    .map(|m| m.placement.class.clone()),
            );
        }
        for a in &self.agents {
            used.extend(a.spec.placement.as_ref().map(|p| p.class.clone()));
        }
        self.nodeclasses.retain(|c| used.contains(&c.name_any()));
        self.objects
            .retain(|o| o.kind != Kind::NodeClass || used.contains(&o.name));
    }

    /// The summary of one object.
    pub fn object(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Obj> {
        self.objects
            .iter()
            .find(|o| o.kind == kind && o.namespace == namespace && o.name == name)
    }

    /// The summaries of one kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Obj> {
        self.objects.iter().filter(move |o| o.kind == kind)
    }

    /// Whether the related caches (Secrets, ConfigMaps, …) are there to be asked.
    pub fn knows_related(&self) -> bool {
        self.related.is_some()
    }

    /// Whether a Secret exists: `None` when Secrets are not watched.
    pub fn secret_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        let r = self.related.as_ref()?;
        Some(
            r.secrets
                .get(&ObjectRef::new(name).within(namespace))
                .is_some(),
        )
    }

    /// Whether a ConfigMap exists: `None` when ConfigMaps are not watched.
    pub fn config_map_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        let r = self.related.as_ref()?;
        Some(
            r.config_maps
                .get(&ObjectRef::new(name).within(namespace))
                .is_some(),
        )
    }

    /// Whether a PersistentVolumeClaim exists: `None` when claims are not watched.
    pub fn claim_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        let r = self.related.as_ref()?;
        Some(
            r.claims
                .get(&ObjectRef::new(name).within(namespace))
                .is_some(),
        )
    }

    /// A Deployment homeplane manages.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        self.related
            .as_ref()?
            .deployments
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// A StatefulSet homeplane manages.
    pub fn stateful_set(&self, namespace: &str, name: &str) -> Option<Arc<StatefulSet>> {
        self.related
            .as_ref()?
            .stateful_sets
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// A Job homeplane manages.
    pub fn job(&self, namespace: &str, name: &str) -> Option<Arc<Job>> {
        self.related
            .as_ref()?
            .jobs
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// The workloads (Deployments and StatefulSets) labelled as owned by `owner`
    /// (`homeplane.dev/owner: <kind>.<name>`), in `namespace`.
    pub fn owned_workloads(&self, namespace: &str, owner: &str) -> Vec<Workload> {
        let Some(r) = self.related.as_ref() else {
            return Vec::new();
        };
        let owns = |meta: &ObjectMeta| {
            meta.namespace.as_deref() == Some(namespace)
                && meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("homeplane.dev/owner"))
                    .is_some_and(|v| v == owner)
        };
        let mut out: Vec<Workload> = r
            .deployments
            .state()
            .iter()
            .filter(|d| owns(&d.metadata))
            .map(|d| Workload::of_deployment(d))
            .chain(
                r.stateful_sets
                    .state()
                    .iter()
                    .filter(|s| owns(&s.metadata))
                    .map(|s| Workload::of_stateful_set(s)),
            )
            .collect();
        out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        out
    }

    /// The Events about one object, newest first.
    pub fn events_of(&self, kind: Kind, namespace: &str, name: &str) -> Vec<Arc<Event>> {
        let Some(r) = self.related.as_ref() else {
            return Vec::new();
        };
        let mut events: Vec<Arc<Event>> = r
            .events
            .state()
            .into_iter()
            .filter(|e| {
                let o = &e.involved_object;
                o.kind.as_deref() == Some(kind.name())
                    && o.name.as_deref() == Some(name)
                    && o.namespace.as_deref().unwrap_or_default() == namespace
            })
            .collect();
        events.sort_by_key(|e| std::cmp::Reverse(event_time(e)));
        events
    }

    /// Every cached Event, newest first.
    pub fn events(&self) -> Vec<Arc<Event>> {
        let Some(r) = self.related.as_ref() else {
            return Vec::new();
        };
        let mut events = r.events.state();
        events.sort_by_key(|e| std::cmp::Reverse(event_time(e)));
        events
    }

    /// Drift the watch saw resolved, newest first.
    pub fn cleared_drift(&self) -> Vec<ClearedDrift> {
        let Some(r) = self.related.as_ref() else {
            return Vec::new();
        };
        r.cleared
            .lock()
            .map(|list| list.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Who holds the operator's leader Lease, when it is watched.
    pub fn lease_holder(&self) -> Option<String> {
        let lease = self.related.as_ref()?.lease.as_ref()?.state();
        lease
            .first()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty())
    }

    /// The NodeClass named `name`.
    pub fn nodeclass(&self, name: &str) -> Option<&Arc<NodeClass>> {
        self.nodeclasses.iter().find(|c| c.name_any() == name)
    }

    /// The Database `namespace/name`.
    pub fn database(&self, namespace: &str, name: &str) -> Option<&Arc<Database>> {
        find(&self.databases, namespace, name)
    }

    /// The BackupPolicy `namespace/name`.
    pub fn backup_policy(&self, namespace: &str, name: &str) -> Option<&Arc<BackupPolicy>> {
        find(&self.backup_policies, namespace, name)
    }

    /// The Agent `namespace/name`.
    pub fn agent(&self, namespace: &str, name: &str) -> Option<&Arc<Agent>> {
        find(&self.agents, namespace, name)
    }

    /// Counts of objects per namespace-less kind name, for the navigation.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all: BTreeMap<&str, ()> = BTreeMap::new();
        for o in &self.objects {
            if !o.namespace.is_empty() {
                all.insert(&o.namespace, ());
            }
        }
        for d in &self.drifts {
            if let Some(ns) = d.metadata.namespace.as_deref() {
                all.insert(ns, ());
            }
        }
        all.into_keys().map(str::to_string).collect()
    }
}

fn find<'a, K: Resource>(list: &'a [Arc<K>], namespace: &str, name: &str) -> Option<&'a Arc<K>> {
    list.iter().find(|o| {
        o.meta().name.as_deref() == Some(name)
            && o.meta().namespace.as_deref().unwrap_or_default() == namespace
    })
}

/// When an Event last happened.
pub fn event_time(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// A Deployment or StatefulSet and how far its rollout is.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    /// `Deployment` or `StatefulSet`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Replicas wanted.
    pub replicas: i32,
    /// Replicas ready.
    pub ready: i32,
}

impl Workload {
    fn of_deployment(d: &Deployment) -> Self {
        Workload {
            kind: "Deployment",
            name: d.name_any(),
            replicas: d.spec.replicas.unwrap_or(1),
            ready: d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
        }
    }

    fn of_stateful_set(s: &StatefulSet) -> Self {
        Workload {
            kind: "StatefulSet",
            name: s.name_any(),
            replicas: s.spec.replicas.unwrap_or(1),
            ready: s
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
        }
    }

    /// Whether every replica is ready.
    pub fn is_ready(&self) -> bool {
        self.ready >= self.replicas
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    pub(crate) fn cond(type_: &str, status: &str, reason: &str, at: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{type_} is {status} because {reason}"),
            last_transition_time: Time(at.parse().unwrap_or(Timestamp::UNIX_EPOCH)),
            observed_generation: Some(1),
        }
    }

    fn meta(generation: i64) -> ObjectMeta {
        ObjectMeta {
            name: Some("x".into()),
            namespace: Some("ns".into()),
            generation: Some(generation),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn states_follow_the_conditions_and_the_phase() {
        let at = "2026-01-01T00:00:00Z";
        let ready = [cond("Ready", "True", "Reconciled", at)];
        assert_eq!(
            summarize(Kind::Database, &meta(1), Some(1), &ready, None).state,
            State::Ready
        );
        // A newer generation than the status: not ready yet.
        let o = summarize(Kind::Database, &meta(2), Some(1), &ready, None);
        assert_eq!(
            (o.state, o.reason.as_str()),
            (State::Progressing, "ChangePending")
        );
        let none = summarize(Kind::Database, &meta(1), None, &[], None);
        assert_eq!(
            (none.state, none.reason.as_str()),
            (State::Progressing, "NotReported")
        );
        let failed = [
            cond("Ready", "False", "AdminSecretMissing", at),
            cond("Degraded", "True", "AdminSecretMissing", at),
        ];
        assert_eq!(
            summarize(Kind::Database, &meta(1), Some(1), &failed, None).state,
            State::Failed
        );
        let stalled = [
            cond("Ready", "False", "X", at),
            cond("Stalled", "True", "TooManyFailures", at),
        ];
        let o = summarize(Kind::Database, &meta(1), Some(1), &stalled, None);
        assert_eq!(
            (o.state, o.reason.as_str()),
            (State::Stalled, "TooManyFailures")
        );
        let waiting = [cond("Ready", "False", "WaitingForDatabase", at)];
        assert_eq!(
            summarize(Kind::MemoryServer, &meta(1), Some(1), &waiting, None).state,
            State::Progressing
        );
        let running = summarize(
            Kind::Backup,
            &meta(1),
            Some(1),
            &failed,
            Some("Running".into()),
        );
        assert_eq!(running.state, State::Progressing);
        let no_contract = [cond("Ready", "False", "NoContract", at)];
        let o = summarize(
            Kind::AgentRun,
            &meta(1),
            Some(1),
            &no_contract,
            Some("NoContract".into()),
        );
        assert_eq!(o.state, State::Failed);
    }

    #[test]
    fn kinds_parse_as_kubectl_names_them() {
        for (text, kind) in [
            ("Database", Kind::Database),
            ("databases", Kind::Database),
            ("db", Kind::Database),
            ("memoryserver.homeplane.dev", Kind::MemoryServer),
            ("NC", Kind::NodeClass),
            ("stateregistries", Kind::StateRegistry),
        ] {
            assert_eq!(Kind::parse(text), Some(kind), "{text}");
        }
        assert_eq!(Kind::parse("pods"), None);
    }
}
