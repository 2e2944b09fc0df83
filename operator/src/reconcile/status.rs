//! Status in the kstatus convention, the same on every kind: `observedGeneration` on the
//! status and on each condition, `Ready` always present, `Reconciling=True` while work is in
//! flight, `Stalled=True` only for what a change must cure, `Degraded` beside them. An object
//! homeplane has not finished looking at gets `Ready=Unknown` and `Reconciling=True` before any
//! work starts, so Flux never counts it as healthy early. Statuses go out whole, with
//! server-side apply, and only when they changed.

use homeplane_crds::agent::{AgentRunStatus, AgentStatus};
use homeplane_crds::backup::{BackupPolicyStatus, BackupStatus};
use homeplane_crds::database::DatabaseStatus;
use homeplane_crds::memory::MemoryServerStatus;
use homeplane_crds::nodeclass::NodeClassStatus;
use homeplane_crds::registry::StateRegistryStatus;
use homeplane_crds::voice::VoicePipelineStatus;
use homeplane_crds::workflow::WorkflowStatus;
use homeplane_crds::{
    Agent, AgentRun, Backup, BackupPolicy, Database, MemoryServer, NodeClass, StateRegistry,
    VoicePipeline, Workflow,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

use super::outcome::{Outcome, State};
use super::retry::human;
use crate::conditions::{self, DEGRADED, Desired, READY, RECONCILING, STALLED};
use crate::controllers::{Error, FIELD_MANAGER};

/// A homeplane kind with a kstatus status: the frame reads and writes its conditions and
/// `observedGeneration`, and knows how to address it.
pub trait Object:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The status type.
    type Status: Clone + Default + Debug + PartialEq + Serialize + Send + Sync + 'static;

    /// The status, if the object has one.
    fn status(&self) -> Option<&Self::Status>;

    /// The bookkeeping fields of a status: `observedGeneration` and `conditions`.
    fn kstatus(status: &mut Self::Status) -> (&mut Option<i64>, &mut Vec<Condition>);

    /// The API of objects in `namespace` (cluster-scoped kinds ignore it).
    fn api(client: Client, namespace: Option<&str>) -> Api<Self>;
}

macro_rules! kstatus {
    ($kind:ty, $status:ty, namespaced) => {
        kstatus!(@impl $kind, $status, |client, ns: Option<&str>| match ns {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        });
    };
    ($kind:ty, $status:ty, cluster) => {
        kstatus!(@impl $kind, $status, |client, _ns: Option<&str>| Api::all(client));
    };
    (@impl $kind:ty, $status:ty, $api:expr) => {
        impl Object for $kind {
            type Status = $status;
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn kstatus(s: &mut $status) -> (&mut Option<i64>, &mut Vec<Condition>) {
                (&mut s.observed_generation, &mut s.conditions)
            }
            fn api(client: Client, namespace: Option<&str>) -> Api<Self> {
                let api: fn(Client, Option<&str>) -> Api<Self> = $api;
                api(client, namespace)
            }
        }
    };
}

// Every homeplane kind, its status type and its scope.
kstatus!(NodeClass, NodeClassStatus, cluster);
kstatus!(Database, DatabaseStatus, namespaced);
kstatus!(BackupPolicy, BackupPolicyStatus, namespaced);
kstatus!(Backup, BackupStatus, namespaced);
kstatus!(Workflow, WorkflowStatus, namespaced);
kstatus!(Agent, AgentStatus, namespaced);
kstatus!(AgentRun, AgentRunStatus, namespaced);
kstatus!(VoicePipeline, VoicePipelineStatus, namespaced);
kstatus!(MemoryServer, MemoryServerStatus, namespaced);
kstatus!(StateRegistry, StateRegistryStatus, namespaced);

/// Whether homeplane has yet to look at this generation of the object: no status, or one
/// written for an older generation.
pub fn is_new<K: Object>(obj: &K) -> bool {
    let mut status = match obj.status() {
        Some(s) => s.clone(),
        None => return true,
    };
    let (observed, _) = K::kstatus(&mut status);
    *observed != obj.meta().generation
}

/// Marks a generation homeplane starts working on: `Reconciling=True` and `Ready=Unknown`
/// unless a `Ready` condition is already there (it stays until the pass decides), both for the
/// new generation. The status's own `observedGeneration` is set only on a first look (there
/// was none); otherwise it keeps naming the generation the last finished pass saw, until this
/// pass finishes (as Flux does), so a pass can tell what changed.
pub fn begin(
    observed: &mut Option<i64>,
    list: &mut Vec<Condition>,
    generation: Option<i64>,
    now: Timestamp,
) {
    if observed.is_none() {
        *observed = generation;
    }
    let which = generation.map(|g| format!(" {g}")).unwrap_or_default();
    if !list.iter().any(|c| c.type_ == READY) {
        conditions::set_unknown(
            list,
            READY,
            "Reconciling",
            "homeplane has started reconciling this object",
            generation,
            now,
        );
    }
    conditions::set(
        list,
        Desired::yes(
            RECONCILING,
            "NewGeneration",
            format!("homeplane is reconciling generation{which}"),
        ),
        generation,
        now,
    );
}

/// Writes `outcome` into the conditions: `Ready`, `Reconciling`, `Stalled` and `Degraded`, all
/// for `generation`. A retried failure's `Reconciling` message says since when it has been
/// failing (`since`): a moment, not a count, so the status does not change on every attempt.
pub fn settle(
    observed: &mut Option<i64>,
    list: &mut Vec<Condition>,
    outcome: &Outcome,
    generation: Option<i64>,
    since: Option<Timestamp>,
    now: Timestamp,
) {
    *observed = generation;
    let mut set = |d: Desired| conditions::set(list, d, generation, now);
    let reason = outcome.reason;
    let message = outcome.message.clone();
    match outcome.state {
        State::Ready => set(Desired::yes(READY, reason, message)),
        State::Progressing => {
            set(Desired::no(READY, reason, message.clone()));
            set(Desired::yes(RECONCILING, reason, message));
        }
        State::Retry => {
            let when = match since {
                Some(since) => format!(
                    "; failing since {}, retried with backoff (at most every {})",
                    since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    human(super::retry::Policy::default().cap)
                ),
                None => String::new(),
            };
            set(Desired::no(READY, reason, message.clone()));
            set(Desired::yes(
                RECONCILING,
                "RetryingAfterError",
                format!("{message}{when}"),
            ));
            set(Desired::yes(DEGRADED, reason, message));
        }
        State::Stalled(cure) => {
            set(Desired::no(READY, reason, message.clone()));
            set(Desired::yes(
                STALLED,
                reason,
                format!("{message}; {}", cure.hint()),
            ));
            set(Desired::yes(DEGRADED, reason, message));
        }
    }
    if !matches!(outcome.state, State::Progressing | State::Retry) {
        conditions::remove(list, RECONCILING);
    }
    if !matches!(outcome.state, State::Stalled(_)) {
        conditions::remove(list, STALLED);
    }
    if !outcome.is_failure() {
        match &outcome.degraded {
            Some((reason, message)) => conditions::set(
                list,
                Desired::yes(DEGRADED, reason, message.clone()),
                generation,
                now,
            ),
            None => conditions::remove(list, DEGRADED),
        }
    }
}

/// Server-side applies `status` to the status subresource of `obj` with homeplane's field
/// manager. The whole status goes out: fields left out would be removed from what homeplane
/// owns.
pub async fn write<K>(api: &Api<K>, obj: &K, status: &impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(Error::kube("update status"))
}

/// [`write`], retried through API errors for up to `patience` (waits of 1 s doubling to 15 s).
pub async fn write_patiently<K>(
    api: &Api<K>,
    obj: &K,
    status: &impl Serialize,
    patience: std::time::Duration,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        match write(api, obj, status).await {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() + wait > deadline || gone(&error) => {
                return Err(error);
            }
            Err(error) => {
                tracing::warn!(error = %super::outcome::with_causes(&error), "writing status failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(15));
            }
        }
    }
}

/// Whether an error says the object is gone (retrying a write to it is pointless).
fn gone(error: &Error) -> bool {
    matches!(error, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::outcome::Cure;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn get<'a>(list: &'a [Condition], type_: &str) -> Option<(&'a str, &'a str)> {
        list.iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.as_str(), c.reason.as_str()))
    }

    #[test]
    fn a_new_generation_is_reconciling_with_ready_unknown() {
        let (mut observed, mut list) = (None, Vec::new());
        begin(&mut observed, &mut list, Some(3), at(1));
        assert_eq!(observed, Some(3));
        assert_eq!(get(&list, READY), Some(("Unknown", "Reconciling")));
        assert_eq!(get(&list, RECONCILING), Some(("True", "NewGeneration")));
        assert!(list.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn a_known_ready_condition_stays_while_a_new_generation_starts() {
        let (mut observed, mut list) = (Some(1), Vec::new());
        settle(
            &mut observed,
            &mut list,
            &Outcome::ready("Synced", "ok"),
            Some(1),
            None,
            at(1),
        );
        begin(&mut observed, &mut list, Some(2), at(2));
        assert_eq!(observed, Some(1), "the last finished pass saw generation 1");
        assert_eq!(get(&list, READY), Some(("True", "Synced")));
        assert_eq!(get(&list, RECONCILING), Some(("True", "NewGeneration")));
    }

    #[test]
    fn each_state_sets_its_conditions_and_clears_the_others() {
        let (mut observed, mut list) = (None, Vec::new());
        let blocked = Outcome::blocked("Unschedulable", "no room on pi");
        settle(&mut observed, &mut list, &blocked, Some(2), None, at(1));
        assert_eq!(get(&list, READY), Some(("False", "Unschedulable")));
        assert_eq!(get(&list, STALLED), Some(("True", "Unschedulable")));
        assert_eq!(get(&list, DEGRADED), Some(("True", "Unschedulable")));
        assert_eq!(get(&list, RECONCILING), None);
        let stalled = list
            .iter()
            .find(|c| c.type_ == STALLED)
            .map(|c| c.message.clone());
        assert!(stalled.unwrap_or_default().ends_with(Cure::World.hint()));

        let retry = Outcome::retry("ServerUnreachable", "connection refused");
        settle(
            &mut observed,
            &mut list,
            &retry,
            Some(2),
            Some(at(60)),
            at(2),
        );
        assert_eq!(
            get(&list, STALLED),
            None,
            "a transient failure never stalls"
        );
        assert_eq!(
            get(&list, RECONCILING),
            Some(("True", "RetryingAfterError"))
        );
        let message = list
            .iter()
            .find(|c| c.type_ == RECONCILING)
            .map(|c| c.message.clone());
        assert_eq!(
            message.as_deref(),
            Some(
                "connection refused; failing since 1970-01-01T00:01:00Z, retried with backoff (at most every 1m00s)"
            )
        );

        settle(
            &mut observed,
            &mut list,
            &Outcome::progressing("RollingOut", "0 of 1"),
            Some(2),
            None,
            at(3),
        );
        assert_eq!(get(&list, READY), Some(("False", "RollingOut")));
        assert_eq!(get(&list, RECONCILING), Some(("True", "RollingOut")));
        assert_eq!(get(&list, DEGRADED), None);

        let ready = Outcome::ready("Ready", "ok").degraded("LatencyBudgetExceeded", "p95 3s");
        settle(&mut observed, &mut list, &ready, Some(2), None, at(4));
        assert_eq!(get(&list, READY), Some(("True", "Ready")));
        assert_eq!(get(&list, RECONCILING), None);
        assert_eq!(
            get(&list, DEGRADED),
            Some(("True", "LatencyBudgetExceeded"))
        );
        assert_eq!(observed, Some(2));
    }

    #[test]
    fn is_new_until_the_generation_is_observed() {
        let mut nc = NodeClass::new("pi", Default::default());
        nc.metadata.generation = Some(2);
        assert!(is_new(&nc));
        nc.status = Some(Default::default());
        assert!(is_new(&nc));
        if let Some(s) = nc.status.as_mut() {
            s.observed_generation = Some(2);
        }
        assert!(!is_new(&nc));
    }
}
