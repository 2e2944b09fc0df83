//! Pure: the Job of an agent run. It runs the Agent's image under the Agent's ServiceAccount,
//! with the task in `HOMEPLANE_TASK`, the budget's CPU and memory as limits (and requests, as
//! for every workload homeplane places), `maxRunSeconds` as the Job's deadline, no retries (a
//! run is one attempt), and, when the Agent names a NodeClass, the shared workload builder's
//! placement: node affinity, tolerations and GPU resource of the class.

use std::collections::BTreeMap;

use homeplane_crds::agent::{Agent, AgentRun};
use homeplane_crds::common::Placement;
use homeplane_crds::nodeclass::NodeClassSpec;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSpec, PodTemplateSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::controllers::agent::rbac::{self, AGENT_LABEL, MANAGED_BY_LABEL, label_value};
use crate::quantity::Milli;
use crate::workload::{self, CLASS_LABEL, Class};

/// Label with the run's name on its Job and pod. (The test cluster's KWOK leaves pods with
/// this label running, so that tests decide how each run ends.)
pub const RUN_LABEL: &str = "homeplane.dev/agent-run";
/// The container's name.
pub const CONTAINER: &str = "agent";
/// Where the container writes its result contract (Kubernetes' default termination message
/// path).
pub const RESULT_PATH: &str = "/dev/termination-log";

/// The Job's name: the run's, shortened with a hash when it would not fit the `job-name`
/// label the Job controller adds.
pub fn job_name(run: &AgentRun) -> String {
    label_value(&format!("agentrun-{}", run.name_any()))
}

/// The labels of a run's Job and pod.
pub fn labels(run: &AgentRun) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), "homeplane".to_string()),
        (AGENT_LABEL.to_string(), label_value(&run.spec.agent)),
        (RUN_LABEL.to_string(), label_value(&run.name_any())),
    ])
}

/// The Job of `run` for `agent`, placed in `class` (the Agent's NodeClass, when it names one).
/// The error says what to fix in the Agent.
pub fn build(run: &AgentRun, agent: &Agent, class: Option<Class<'_>>) -> Result<Job, String> {
    let budget = &agent.spec.budget;
    let what = format!("Agent {}", agent.name_any());
    let (resources, placement) = match (class, agent.spec.placement.as_ref()) {
        (Some(class), Some(p)) => {
            // The budget is what a run may use: it replaces the placement's CPU and memory.
            let placed = Placement {
                cpu: Some(budget.cpu.clone()),
                memory: Some(budget.memory.clone()),
                ..p.clone()
            };
            let asks = workload::asks(&what, &placed, class).map_err(|e| e.to_string())?;
            (
                workload::quantities(&asks, class.spec.gpu_resource.as_deref()),
                Some(class),
            )
        }
        _ => {
            Milli::parse(&budget.cpu).map_err(|e| format!("budget.cpu: {}", e.0))?;
            Milli::parse(&budget.memory).map_err(|e| format!("budget.memory: {}", e.0))?;
            (
                BTreeMap::from([
                    ("cpu".to_string(), Quantity(budget.cpu.clone())),
                    ("memory".to_string(), Quantity(budget.memory.clone())),
                ]),
                None,
            )
        }
    };

    let mut pod_labels = labels(run);
    if let Some(class) = placement {
        pod_labels.insert(CLASS_LABEL.to_string(), class.name.to_string());
    }
    let env = [
        ("HOMEPLANE_TASK", run.spec.task.clone()),
        ("HOMEPLANE_AGENT", agent.name_any()),
        ("HOMEPLANE_RUN", run.name_any()),
        (
            "HOMEPLANE_TIER",
            format!("{:?}", agent.spec.tier).to_lowercase(),
        ),
        ("HOMEPLANE_RESULT_PATH", RESULT_PATH.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| EnvVar {
        name: name.to_string(),
        value: Some(value),
        ..EnvVar::default()
    })
    .collect();
    let container = Container {
        name: CONTAINER.to_string(),
        image: Some(agent.spec.image.clone()),
        command: (!agent.spec.command.is_empty()).then(|| agent.spec.command.clone()),
        env: Some(env),
        resources: Some(ResourceRequirements {
            limits: Some(resources.clone()),
            requests: Some(resources),
            ..ResourceRequirements::default()
        }),
        termination_message_path: Some(RESULT_PATH.to_string()),
        termination_message_policy: Some("File".to_string()),
        ..Container::default()
    };
    let pod = PodSpec {
        service_account_name: Some(rbac::service_account_name(agent)),
        restart_policy: Some("Never".to_string()),
        containers: vec![container],
        affinity: placement.map(workload::affinity),
        tolerations: placement
            .map(|c| c.spec.tolerations.clone())
            .filter(|t| !t.is_empty()),
        termination_grace_period_seconds: Some(10),
        ..PodSpec::default()
    };
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(run)),
            namespace: run.namespace(),
            labels: Some(labels(run)),
            owner_references: run.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(budget.max_run_seconds),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// The NodeClass spec a [`Class`] borrows, for callers that read it from the API.
pub fn class<'a>(name: &'a str, spec: &'a NodeClassSpec) -> Class<'a> {
    Class { name, spec }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homeplane_crds::agent::{AgentRunSpec, AgentScope, AgentSpec, AgentTier, Budget};
    use homeplane_crds::common::Resources;
    use k8s_openapi::api::core::v1::Toleration;

    fn agent(placement: Option<Placement>) -> Agent {
        let mut a = Agent::new(
            "mail-sorter",
            AgentSpec {
                tier: AgentTier::Builder,
                scope: AgentScope::default(),
                image: "ghcr.io/homeplane/example-agent:0.1".into(),
                command: vec!["/agent.sh".into()],
                budget: Budget {
                    cpu: "1".into(),
                    memory: "1Gi".into(),
                    max_run_seconds: 900,
                    max_concurrent_runs: 2,
                },
                placement,
            },
        );
        a.metadata.namespace = Some("agents".into());
        a
    }

    fn run() -> AgentRun {
        let mut r = AgentRun::new(
            "sort-inbox",
            AgentRunSpec {
                agent: "mail-sorter".into(),
                task: "sort the inbox".into(),
            },
        );
        r.metadata.namespace = Some("agents".into());
        r.metadata.uid = Some("uid-r".into());
        r
    }

    fn gpu_class() -> NodeClassSpec {
        NodeClassSpec {
            node_selector: BTreeMap::from([("homeplane.dev/class".into(), "gpu".into())]),
            tolerations: vec![Toleration {
                key: Some("amd.com/gpu".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            }],
            gpu_resource: Some("amd.com/gpu".into()),
            defaults: Resources {
                cpu: Some("250m".into()),
                memory: Some("4Gi".into()),
            },
            ..NodeClassSpec::default()
        }
    }

    #[test]
    fn the_job_runs_the_task_within_the_budget() {
        let job = build(&run(), &agent(None), None).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("agentrun-sort-inbox"));
        assert_eq!(
            job.metadata.labels.as_ref().unwrap()[RUN_LABEL],
            "sort-inbox"
        );
        let spec = job.spec.unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(900));
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("agent-mail-sorter")
        );
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert!(pod.affinity.is_none());
        let c = &pod.containers[0];
        assert_eq!(c.command, Some(vec!["/agent.sh".to_string()]));
        let env = c.env.as_ref().unwrap();
        assert!(env.iter().any(
            |e| e.name == "HOMEPLANE_TASK" && e.value.as_deref() == Some("sort the inbox")
        ));
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.limits.as_ref().unwrap()["cpu"], Quantity("1".into()));
        assert_eq!(r.limits.as_ref().unwrap()["memory"], Quantity("1Gi".into()));
        assert_eq!(r.requests, r.limits);
        assert_eq!(c.termination_message_path.as_deref(), Some(RESULT_PATH));
    }

    #[test]
    fn placement_comes_from_the_node_class_and_the_budget_wins() {
        let placement = Placement {
            class: "gpu".into(),
            cpu: Some("4".into()),
            gpu: Some(1),
            ..Placement::default()
        };
        let spec = gpu_class();
        let job = build(&run(), &agent(Some(placement)), Some(class("gpu", &spec))).unwrap();
        let pod = job.spec.unwrap().template;
        assert_eq!(pod.metadata.unwrap().labels.unwrap()[CLASS_LABEL], "gpu");
        let pod = pod.spec.unwrap();
        let terms = pod
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        let expr = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(expr.key, "homeplane.dev/class");
        assert_eq!(pod.tolerations.unwrap().len(), 1);
        let r = pod.containers[0].resources.clone().unwrap();
        let limits = r.limits.unwrap();
        assert_eq!(limits["cpu"], Quantity("1".into()));
        assert_eq!(limits["memory"], Quantity("1Gi".into()));
        assert_eq!(limits["amd.com/gpu"], Quantity("1".into()));
    }

    #[test]
    fn a_gpu_without_a_gpu_class_is_refused() {
        let placement = Placement {
            class: "pi".into(),
            gpu: Some(1),
            ..Placement::default()
        };
        let mut pi = gpu_class();
        pi.gpu_resource = None;
        let e = build(&run(), &agent(Some(placement)), Some(class("pi", &pi))).unwrap_err();
        assert!(e.contains("no gpuResource"), "{e}");
    }

    #[test]
    fn long_run_names_still_make_a_job_name() {
        let mut r = run();
        r.metadata.name = Some("x".repeat(200));
        let name = job_name(&r);
        assert!(name.len() <= 63, "{name}");
    }
}
