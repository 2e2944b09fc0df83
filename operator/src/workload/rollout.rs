//! Readiness from what the cluster reports, never from the spec: a workload is ready when its
//! Deployment or StatefulSet has observed its latest spec and has all desired replicas updated
//! and available; pods the scheduler cannot place make it `Unschedulable`.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// Where a workload's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// All replicas updated and available.
    Ready,
    /// Still rolling out; the message says how far.
    Progressing(String),
    /// The scheduler cannot place a pod; the message is the scheduler's.
    Unschedulable(String),
}

impl Rollout {
    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        matches!(self, Rollout::Ready)
    }
}

fn progress(
    name: &str,
    generation: Option<i64>,
    observed: Option<i64>,
    desired: i32,
    updated: i32,
    available: i32,
    total: i32,
) -> Rollout {
    if observed.unwrap_or(0) < generation.unwrap_or(0) {
        return Rollout::Progressing(format!("{name}: the new spec is not yet observed"));
    }
    if updated < desired {
        return Rollout::Progressing(format!("{name}: {updated} of {desired} replicas updated"));
    }
    if total > desired {
        return Rollout::Progressing(format!(
            "{name}: {} old replicas are terminating",
            total - desired
        ));
    }
    if available < desired {
        return Rollout::Progressing(format!(
            "{name}: {available} of {desired} replicas available"
        ));
    }
    Rollout::Ready
}

/// The rollout of a Deployment.
pub fn deployment(d: &Deployment) -> Rollout {
    let desired = d.spec.replicas.unwrap_or(1);
    let Some(s) = d.status.as_ref() else {
        return Rollout::Progressing(format!("{}: no status yet", d.name_any()));
    };
    progress(
        &d.name_any(),
        d.metadata.generation,
        s.observed_generation,
        desired,
        s.updated_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
        s.replicas.unwrap_or(0),
    )
}

/// The rollout of a StatefulSet.
pub fn statefulset(ss: &StatefulSet) -> Rollout {
    let desired = ss.spec.replicas.unwrap_or(1);
    let Some(s) = ss.status.as_ref() else {
        return Rollout::Progressing(format!("{}: no status yet", ss.name_any()));
    };
    progress(
        &ss.name_any(),
        ss.metadata.generation,
        s.observed_generation,
        desired,
        s.updated_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
        s.replicas,
    )
}

/// The scheduler's reason, when one of `pods` cannot be placed (`PodScheduled=False`, reason
/// `Unschedulable`).
pub fn unschedulable(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|p| {
        let c = p
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        (c.reason.as_deref() == Some("Unschedulable")).then(|| {
            format!(
                "pod {} is not scheduled: {}",
                p.name_any(),
                c.message.clone().unwrap_or_default()
            )
        })
    })
}

/// The rollout of a workload: the scheduler's refusal first, then the controller's progress.
pub fn combine(controller: Rollout, pods: &[Pod]) -> Rollout {
    match (controller, unschedulable(pods)) {
        (Rollout::Ready, _) => Rollout::Ready,
        (_, Some(why)) => Rollout::Unschedulable(why),
        (other, None) => other,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use kube::api::ObjectMeta;

    use super::*;

    fn dep(
        generation: i64,
        observed: i64,
        replicas: i32,
        updated: i32,
        available: i32,
        total: i32,
    ) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("llm".into()),
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: DeploymentSpec {
                replicas: Some(replicas),
                ..DeploymentSpec::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                replicas: Some(total),
                ..DeploymentStatus::default()
            }),
        }
    }

    #[test]
    fn ready_only_when_every_replica_is_updated_and_available() {
        assert_eq!(deployment(&dep(2, 2, 1, 1, 1, 1)), Rollout::Ready);
        assert_eq!(
            deployment(&dep(3, 2, 1, 1, 1, 1)),
            Rollout::Progressing("llm: the new spec is not yet observed".into())
        );
        assert_eq!(
            deployment(&dep(2, 2, 1, 1, 0, 1)),
            Rollout::Progressing("llm: 0 of 1 replicas available".into())
        );
        assert_eq!(
            deployment(&dep(2, 2, 2, 1, 1, 2)),
            Rollout::Progressing("llm: 1 of 2 replicas updated".into())
        );
        assert_eq!(
            deployment(&dep(2, 2, 1, 1, 1, 2)),
            Rollout::Progressing("llm: 1 old replicas are terminating".into())
        );
        let mut fresh = dep(1, 0, 1, 0, 0, 0);
        fresh.status = None;
        assert!(!deployment(&fresh).is_ready());
    }

    #[test]
    fn a_pod_the_scheduler_refuses_makes_the_workload_unschedulable() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("llm-abc".into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some("0/2 nodes are available: 1 Insufficient amd.com/gpu.".into()),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            spec: None,
        };
        let r = combine(
            deployment(&dep(1, 1, 1, 1, 0, 1)),
            std::slice::from_ref(&pod),
        );
        assert_eq!(
            r,
            Rollout::Unschedulable(
                "pod llm-abc is not scheduled: 0/2 nodes are available: 1 Insufficient amd.com/gpu."
                    .into()
            )
        );
        assert_eq!(combine(Rollout::Ready, &[pod]), Rollout::Ready);
    }
}
