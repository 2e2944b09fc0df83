//! The capacity plan of a NodeClass: a pure function from the class, its nodes and the pods
//! scheduled on them to the status and conditions.

use homeplane_crds::nodeclass::{Capacity, NodeClassSpec, PodUsage, ResourcePlan};
use k8s_openapi::api::core::v1::{Node, Pod};

use crate::conditions::{Desired, READY};
use crate::quantity::{InvalidQuantity, Milli};
use crate::workload::pods::{Asks, active, asks, quantity};

/// Condition type set when the workloads of a class do not fit it.
pub const OVERCOMMITTED: &str = "Overcommitted";

/// Most pods listed in status; the count covers all.
pub const MAX_LISTED_PODS: usize = 100;

/// The computed status of a class.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Names of matching nodes, sorted.
    pub nodes: Vec<String>,
    /// The capacity of the class.
    pub capacity: Capacity,
    /// The pods, largest CPU limit first, at most [`MAX_LISTED_PODS`].
    pub pods: Vec<PodUsage>,
    /// Number of active pods on the class's nodes.
    pub pod_count: usize,
    /// `Ready` and `Overcommitted`.
    pub conditions: Vec<Desired>,
}

fn managed(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"))
        .is_some_and(|v| v == "homeplane")
}

/// A spec field whose value is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {source}")]
pub struct InvalidField {
    /// The field, e.g. `reserved.cpu`.
    pub field: &'static str,
    /// What is wrong with its value.
    #[source]
    pub source: InvalidQuantity,
}

fn parse_opt(text: Option<&String>, field: &'static str) -> Result<Milli, InvalidField> {
    match text {
        None => Ok(Milli::ZERO),
        Some(t) => Milli::parse(t).map_err(|source| InvalidField { field, source }),
    }
}

/// One resource's totals.
struct Totals {
    allocatable: Milli,
    reserved: Milli,
    requested: Milli,
    limits: Milli,
}

impl Totals {
    fn available(&self) -> Milli {
        self.allocatable - self.reserved
    }

    fn plan(&self, fmt: fn(Milli) -> String) -> ResourcePlan {
        ResourcePlan {
            allocatable: fmt(self.allocatable),
            reserved: fmt(self.reserved),
            requested: fmt(self.requested),
            limits: fmt(self.limits),
            free: fmt(self.available() - self.requested),
        }
    }

    /// Why this resource does not fit, if it does not.
    fn overcommit(&self, what: &str, fmt: fn(Milli) -> String) -> Option<String> {
        let available = self.available();
        let which = if self.requested > available {
            "requests"
        } else if self.limits > available {
            "limits"
        } else {
            return None;
        };
        let amount = if which == "requests" {
            self.requested
        } else {
            self.limits
        };
        Some(format!(
            "{what} {which} {} exceed the {} available ({} allocatable minus {} reserved)",
            fmt(amount),
            fmt(available),
            fmt(self.allocatable),
            fmt(self.reserved)
        ))
    }
}

/// Computes the plan. `nodes` are the nodes matching the selector; `pods` are the pods
/// scheduled on them (pods on other nodes are ignored). Fails only on a spec quantity that is
/// not a quantity.
pub fn build(spec: &NodeClassSpec, nodes: &[Node], pods: &[Pod]) -> Result<Plan, InvalidField> {
    let reserved_cpu = parse_opt(spec.reserved.cpu.as_ref(), "reserved.cpu")?;
    let reserved_memory = parse_opt(spec.reserved.memory.as_ref(), "reserved.memory")?;
    parse_opt(spec.defaults.cpu.as_ref(), "defaults.cpu")?;
    parse_opt(spec.defaults.memory.as_ref(), "defaults.memory")?;
    let gpu_resource = spec.gpu_resource.as_deref();
    let mut names: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    names.sort();
    let node_count = i128::try_from(names.len()).unwrap_or(i128::MAX);
    let allocatable = |name: &str| -> Milli {
        nodes
            .iter()
            .filter_map(|n| quantity(n.status.as_ref().and_then(|s| s.allocatable.as_ref()), name))
            .sum()
    };
    let usages = usages(pods, &names, gpu_resource);
    let sum = |f: fn(&Asks) -> Milli| usages.iter().map(|(a, _)| f(a)).sum::<Milli>();
    let cpu = Totals {
        allocatable: allocatable("cpu"),
        reserved: reserved_cpu * node_count,
        requested: sum(|a| a.cpu_request),
        limits: sum(|a| a.cpu_limit.unwrap_or(a.cpu_request)),
    };
    let memory = Totals {
        allocatable: allocatable("memory"),
        reserved: reserved_memory * node_count,
        requested: sum(|a| a.memory_request),
        limits: sum(|a| a.memory_limit.unwrap_or(a.memory_request)),
    };
    let gpu = gpu_resource.map(|g| Totals {
        allocatable: allocatable(g),
        reserved: Milli::ZERO,
        requested: sum(|a| a.gpu),
        limits: sum(|a| a.gpu),
    });
    let unlimited = usages
        .iter()
        .filter(|(a, _)| a.cpu_limit.is_none() || a.memory_limit.is_none())
        .count();
    let conditions = vec![
        matched(spec, &names),
        overcommitted(&cpu, &memory, gpu.as_ref().zip(gpu_resource), unlimited),
    ];
    let pod_count = usages.len();
    Ok(Plan {
        nodes: names,
        capacity: Capacity {
            cpu: cpu.plan(Milli::cpu),
            memory: memory.plan(Milli::memory),
            gpu: gpu.map(|g| g.plan(Milli::count)),
        },
        pods: usages
            .into_iter()
            .take(MAX_LISTED_PODS)
            .map(|(_, u)| u)
            .collect(),
        pod_count,
        conditions,
    })
}

/// What each active pod on the class's nodes asks for, largest CPU limit first.
fn usages(pods: &[Pod], nodes: &[String], gpu_resource: Option<&str>) -> Vec<(Asks, PodUsage)> {
    let mut usages: Vec<(Asks, PodUsage)> = pods
        .iter()
        .filter(|p| active(p))
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            if !nodes.contains(&node) {
                return None;
            }
            let a = asks(p, gpu_resource);
            let usage = PodUsage {
                namespace: p.metadata.namespace.clone().unwrap_or_default(),
                name: p.metadata.name.clone().unwrap_or_default(),
                node,
                cpu_request: a.cpu_request.cpu(),
                cpu_limit: a.cpu_limit.map_or_else(|| "none".to_string(), Milli::cpu),
                memory_request: a.memory_request.memory(),
                memory_limit: a
                    .memory_limit
                    .map_or_else(|| "none".to_string(), Milli::memory),
                gpu: i64::try_from(a.gpu.0 / 1000).unwrap_or(i64::MAX),
                managed: managed(p),
            };
            Some((a, usage))
        })
        .collect();
    usages.sort_by(|(a, x), (b, y)| {
        b.cpu_limit
            .cmp(&a.cpu_limit)
            .then_with(|| (&x.namespace, &x.name).cmp(&(&y.namespace, &y.name)))
    });
    usages
}

/// `Ready`: which nodes match, or that none does.
fn matched(spec: &NodeClassSpec, names: &[String]) -> Desired {
    if !names.is_empty() {
        let message = format!("{} node(s) match: {}", names.len(), names.join(", "));
        return Desired::yes(READY, "NodesMatched", message);
    }
    let selector: Vec<String> = spec
        .node_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    Desired::no(
        READY,
        "NoMatchingNodes",
        format!(
            "no node has the labels {}; label a node or change spec.nodeSelector",
            selector.join(",")
        ),
    )
}

/// `Overcommitted`: whether the limits exceed what the class can give, and by how much.
fn overcommitted(
    cpu: &Totals,
    memory: &Totals,
    gpu: Option<(&Totals, &str)>,
    unlimited: usize,
) -> Desired {
    let mut problems: Vec<String> = [
        cpu.overcommit("CPU", Milli::cpu),
        memory.overcommit("memory", Milli::memory),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some((g, name)) = gpu {
        problems.extend(g.overcommit(name, Milli::count));
    }
    let unlimited_note = match unlimited {
        0 => String::new(),
        n => format!(
            "; {n} pod(s) have a container without CPU or memory limit (counted at their requests)"
        ),
    };
    if !problems.is_empty() {
        let message = format!("{}{unlimited_note}", problems.join("; "));
        return Desired::yes(OVERCOMMITTED, "LimitsExceedCapacity", message);
    }
    Desired::no(
        OVERCOMMITTED,
        "WithinCapacity",
        format!(
            "limits fit: CPU {} of {}, memory {} of {}{unlimited_note}",
            Milli::cpu(cpu.limits),
            Milli::cpu(cpu.available()),
            Milli::memory(memory.limits),
            Milli::memory(memory.available())
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        match serde_yaml::from_str(text) {
            Ok(v) => v,
            Err(e) => panic!("bad fixture: {e}"),
        }
    }

    fn pi_class() -> NodeClassSpec {
        yaml("nodeSelector: {homeplane.dev/class: pi}\nreserved: {cpu: 500m, memory: 1Gi}\n")
    }

    fn pi_node() -> Node {
        yaml(
            "metadata: {name: pi-1, labels: {homeplane.dev/class: pi}}\nstatus: {allocatable: {cpu: '4', memory: 8Gi}}\n",
        )
    }

    fn pod(name: &str, node: &str, cpu: &str, memory: &str) -> Pod {
        yaml(&format!(
            "metadata: {{name: {name}, namespace: home, labels: {{app.kubernetes.io/managed-by: homeplane}}}}
spec:
  nodeName: {node}
  containers:
  - name: main
    image: x
    resources: {{requests: {{cpu: {cpu}, memory: {memory}}}, limits: {{cpu: {cpu}, memory: {memory}}}}}
status: {{phase: Running}}
"
        ))
    }

    fn condition<'a>(plan: &'a Plan, type_: &str) -> &'a Desired {
        match plan.conditions.iter().find(|c| c.type_ == type_) {
            Some(c) => c,
            None => panic!("no {type_} condition"),
        }
    }

    #[test]
    fn sums_pods_on_the_class_nodes_only() {
        let pods = vec![
            pod("a", "pi-1", "500m", "512Mi"),
            pod("b", "pi-1", "1", "1Gi"),
            pod("c", "gpu-1", "8", "32Gi"),
        ];
        let plan = build(&pi_class(), &[pi_node()], &pods).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.nodes, vec!["pi-1"]);
        assert_eq!(plan.pod_count, 2);
        assert_eq!(plan.capacity.cpu.allocatable, "4");
        assert_eq!(plan.capacity.cpu.reserved, "500m");
        assert_eq!(plan.capacity.cpu.requested, "1500m");
        assert_eq!(plan.capacity.cpu.limits, "1500m");
        assert_eq!(plan.capacity.cpu.free, "2");
        assert_eq!(plan.capacity.memory.requested, "1536Mi");
        assert_eq!(plan.pods[0].name, "b", "largest CPU limit first");
        assert!(plan.pods[0].managed);
        assert!(!condition(&plan, OVERCOMMITTED).status);
        assert!(condition(&plan, READY).status);
    }

    #[test]
    fn limits_beyond_allocatable_minus_reserve_are_overcommitted() {
        let pods = vec![
            pod("a", "pi-1", "2", "1Gi"),
            pod("b", "pi-1", "1600m", "1Gi"),
        ];
        let plan = build(&pi_class(), &[pi_node()], &pods).unwrap_or_else(|e| panic!("{e}"));
        let c = condition(&plan, OVERCOMMITTED);
        assert!(c.status);
        assert_eq!(c.reason, "LimitsExceedCapacity");
        assert!(
            c.message
                .contains("CPU requests 3600m exceed the 3500m available"),
            "{}",
            c.message
        );
        assert_eq!(plan.capacity.cpu.free, "-100m");
    }

    #[test]
    fn finished_pods_and_pods_without_limits() {
        let mut done = pod("done", "pi-1", "3", "1Gi");
        done.status = yaml("phase: Succeeded");
        let unlimited: Pod = yaml(
            "metadata: {name: u, namespace: x}\nspec: {nodeName: pi-1, containers: [{name: m, resources: {requests: {cpu: 100m}}}]}\n",
        );
        let plan =
            build(&pi_class(), &[pi_node()], &[done, unlimited]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.pod_count, 1);
        assert_eq!(plan.pods[0].cpu_limit, "none");
        assert!(!plan.pods[0].managed);
        assert!(
            condition(&plan, OVERCOMMITTED)
                .message
                .contains("1 pod(s) have a container without")
        );
    }

    #[test]
    fn counts_gpus_of_the_class_resource() {
        let class: NodeClassSpec =
            yaml("nodeSelector: {homeplane.dev/class: gpu}\ngpuResource: amd.com/gpu\n");
        let node: Node = yaml(
            "metadata: {name: gpu-1}\nstatus: {allocatable: {cpu: '16', memory: 64Gi, amd.com/gpu: '1'}}\n",
        );
        let gpu_pod = |name: &str| -> Pod {
            yaml(&format!(
                "metadata: {{name: {name}}}\nspec: {{nodeName: gpu-1, containers: [{{name: m, resources: {{limits: {{cpu: '2', memory: 8Gi, amd.com/gpu: '1'}}}}}}]}}\n"
            ))
        };
        let one = build(&class, std::slice::from_ref(&node), &[gpu_pod("whisper")])
            .unwrap_or_else(|e| panic!("{e}"));
        let gpu = one.capacity.gpu.clone().unwrap_or_default();
        assert_eq!(
            (gpu.allocatable.as_str(), gpu.requested.as_str()),
            ("1", "1")
        );
        assert!(!condition(&one, OVERCOMMITTED).status);
        let two = build(&class, &[node], &[gpu_pod("whisper"), gpu_pod("ollama")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            condition(&two, OVERCOMMITTED)
                .message
                .contains("amd.com/gpu requests 2 exceed the 1 available")
        );
    }

    #[test]
    fn no_nodes_is_not_ready_and_says_which_labels() {
        let plan = build(&pi_class(), &[], &[]).unwrap_or_else(|e| panic!("{e}"));
        let ready = condition(&plan, READY);
        assert!(!ready.status);
        assert_eq!(ready.reason, "NoMatchingNodes");
        assert!(ready.message.contains("homeplane.dev/class=pi"));
    }

    #[test]
    fn refuses_a_reserve_that_is_not_a_quantity() {
        let class: NodeClassSpec = yaml("nodeSelector: {a: b}\nreserved: {cpu: lots}\n");
        let error = build(&class, &[], &[]).unwrap_err();
        assert_eq!(error.field, "reserved.cpu");
        assert!(
            error
                .to_string()
                .starts_with("spec.reserved.cpu: \"lots\" is not a Kubernetes quantity"),
            "{error}"
        );
    }
}
