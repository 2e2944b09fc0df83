//! The capacity check before a workload is created: what a class's nodes can give, minus its
//! reserve, minus what already runs there, against what the new workloads ask for. The same
//! arithmetic serves the controllers (nodes and pods read from the cluster) and
//! `homeplane plan` (nodes and pods made from the manifests).

use homeplane_crds::nodeclass::NodeClassSpec;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

use super::pods::{self as class_plan};
use super::{Asks, OWNER_LABEL};
use crate::quantity::{InvalidQuantity, Milli};

/// One resource of a class: what it has, keeps back and already runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Room {
    /// Sum of the nodes' allocatable.
    pub allocatable: Milli,
    /// The class's reserve times its nodes.
    pub reserved: Milli,
    /// Requests of the pods already there (not counting the workloads being planned).
    pub running: Milli,
}

impl Room {
    /// What is left for new workloads.
    pub fn free(&self) -> Milli {
        self.allocatable - self.reserved - self.running
    }
}

/// The room in one class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRoom {
    /// The class.
    pub class: String,
    /// Number of nodes.
    pub nodes: usize,
    /// CPU.
    pub cpu: Room,
    /// Memory.
    pub memory: Room,
    /// GPUs, for a class with a GPU resource: (resource name, room).
    pub gpu: Option<(String, Room)>,
}

/// A quantity in the class spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NodeClass {class}: spec.{field}: {source}")]
pub struct InvalidClass {
    /// The class.
    pub class: String,
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    #[source]
    pub source: InvalidQuantity,
}

fn reserve(class: &str, text: Option<&String>, field: &'static str) -> Result<Milli, InvalidClass> {
    text.map_or(Ok(Milli::ZERO), |t| {
        Milli::parse(t).map_err(|source| InvalidClass {
            class: class.to_string(),
            field,
            source,
        })
    })
}

/// The room in `class`, whose nodes are `nodes` and whose pods (on those nodes) are `pods`.
/// Pods labelled as belonging to `replacing` (an owner label) are not counted: they are the
/// workloads being planned, which replace them.
pub fn room(
    class: &str,
    spec: &NodeClassSpec,
    nodes: &[Node],
    pods: &[Pod],
    replacing: Option<&str>,
) -> Result<ClassRoom, InvalidClass> {
    let count = nodes.len();
    let n = Milli(i128::try_from(count).unwrap_or(i128::MAX));
    let reserved_cpu = reserve(class, spec.reserved.cpu.as_ref(), "reserved.cpu")?;
    let reserved_memory = reserve(class, spec.reserved.memory.as_ref(), "reserved.memory")?;
    let names: Vec<String> = nodes.iter().map(|n| n.name_any()).collect();
    let allocatable = |resource: &str| -> Milli {
        nodes
            .iter()
            .filter_map(|n| {
                let q = n.status.as_ref()?.allocatable.as_ref()?.get(resource)?;
                Milli::parse(&q.0).ok()
            })
            .sum()
    };
    let gpu_resource = spec.gpu_resource.as_deref();
    let mut running = class_plan::Asks::default();
    for pod in pods.iter().filter(|p| class_plan::active(p)) {
        let on_class = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| names.contains(n));
        let replaced = replacing
            .is_some_and(|owner| pod.labels().get(OWNER_LABEL).map(String::as_str) == Some(owner));
        if !on_class || replaced {
            continue;
        }
        let a = class_plan::asks(pod, gpu_resource);
        running.cpu_request += a.cpu_request;
        running.memory_request += a.memory_request;
        running.gpu += a.gpu;
    }
    Ok(ClassRoom {
        class: class.to_string(),
        nodes: count,
        cpu: Room {
            allocatable: allocatable("cpu"),
            reserved: Milli(reserved_cpu.0 * n.0),
            running: running.cpu_request,
        },
        memory: Room {
            allocatable: allocatable("memory"),
            reserved: Milli(reserved_memory.0 * n.0),
            running: running.memory_request,
        },
        gpu: gpu_resource.map(|g| {
            (
                g.to_string(),
                Room {
                    allocatable: allocatable(g),
                    reserved: Milli::ZERO,
                    running: running.gpu,
                },
            )
        }),
    })
}

/// A workload to place: its name, what each pod asks and how many pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// Workload name.
    pub name: String,
    /// Per pod.
    pub asks: Asks,
    /// Pods.
    pub replicas: i32,
}

impl Demand {
    fn total(&self) -> Asks {
        let r = i128::from(self.replicas.max(0));
        Asks {
            cpu: Milli(self.asks.cpu.0 * r),
            memory: Milli(self.asks.memory.0 * r),
            gpu: self.asks.gpu * i64::from(self.replicas.max(0)),
        }
    }
}

/// The sum of what `demands` ask for.
pub fn total(demands: &[Demand]) -> Asks {
    demands.iter().fold(Asks::default(), |acc, d| {
        let t = d.total();
        Asks {
            cpu: acc.cpu + t.cpu,
            memory: acc.memory + t.memory,
            gpu: acc.gpu + t.gpu,
        }
    })
}

/// Why workloads do not fit a class; the message names the class, what is asked and what is
/// free.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unschedulable(pub String);

fn names(demands: &[Demand]) -> String {
    demands
        .iter()
        .map(|d| d.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `demands` fit in `room` together. GPUs first: a GPU shortfall is the one that
/// needs a different design rather than a smaller number.
pub fn fit(room: &ClassRoom, demands: &[Demand]) -> Result<(), Unschedulable> {
    let class = &room.class;
    if room.nodes == 0 {
        return Err(Unschedulable(format!(
            "NodeClass {class} matches no node, so {} cannot be placed (check the class's nodeSelector and the nodes' labels)",
            names(demands)
        )));
    }
    let asked = total(demands);
    if asked.gpu > 0 {
        let gpu_askers: Vec<Demand> = demands.iter().filter(|d| d.asks.gpu > 0).cloned().collect();
        let (resource, gpus) = room.gpu.clone().unwrap_or_default();
        let free = i64::try_from(gpus.free().0 / 1000).unwrap_or(i64::MAX);
        if asked.gpu > free {
            return Err(Unschedulable(format!(
                "{} ask for {} {resource} on NodeClass {class}, which has {} in all and {} free: let one GPU workload serve several models, or ask for fewer GPUs",
                names(&gpu_askers),
                asked.gpu,
                gpus.allocatable.0 / 1000,
                free.max(0)
            )));
        }
    }
    let cpu_short = asked.cpu > room.cpu.free();
    let memory_short = asked.memory > room.memory.free();
    if cpu_short || memory_short {
        return Err(Unschedulable(format!(
            "{} {} not fit NodeClass {class}: {} asked, but only cpu {} and memory {} are free ({} nodes: cpu {} and memory {} allocatable, minus reserved {} and {}, minus {} and {} already running)",
            names(demands),
            if demands.len() == 1 { "does" } else { "do" },
            Asks { gpu: 0, ..asked },
            room.cpu.free().cpu(),
            room.memory.free().memory(),
            room.nodes,
            room.cpu.allocatable.cpu(),
            room.memory.allocatable.memory(),
            room.cpu.reserved.cpu(),
            room.memory.reserved.memory(),
            room.cpu.running.cpu(),
            room.memory.running.memory(),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use homeplane_crds::common::Resources;
    use k8s_openapi::api::core::v1::{Container, NodeStatus, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    use super::*;

    fn node(name: &str, cpu: &str, memory: &str, gpu: Option<&str>) -> Node {
        let mut allocatable = BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ]);
        if let Some(g) = gpu {
            allocatable.insert("amd.com/gpu".into(), Quantity(g.into()));
        }
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            status: Some(NodeStatus {
                allocatable: Some(allocatable),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    fn pod(node: &str, owner: Option<&str>, cpu: &str, memory: &str) -> Pod {
        let q = BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ]);
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("p-{cpu}")),
                labels: owner.map(|o| BTreeMap::from([(OWNER_LABEL.to_string(), o.to_string())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: vec![Container {
                    resources: Some(ResourceRequirements {
                        requests: Some(q.clone()),
                        limits: Some(q),
                        ..ResourceRequirements::default()
                    }),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    fn pi() -> NodeClassSpec {
        NodeClassSpec {
            reserved: Resources {
                cpu: Some("500m".into()),
                memory: Some("1Gi".into()),
            },
            ..NodeClassSpec::default()
        }
    }

    fn demand(name: &str, cpu: &str, memory: &str, gpu: i64) -> Demand {
        Demand {
            name: name.into(),
            asks: Asks {
                cpu: Milli::parse(cpu).unwrap(),
                memory: Milli::parse(memory).unwrap(),
                gpu,
            },
            replicas: 1,
        }
    }

    #[test]
    fn free_is_allocatable_minus_reserve_minus_what_runs_except_the_replaced() {
        let nodes = [node("pi-1", "4", "8Gi", None)];
        let pods = [
            pod("pi-1", None, "1", "2Gi"),
            pod("pi-1", Some("memoryserver.memory"), "2", "2Gi"),
            pod("elsewhere", None, "3", "3Gi"),
        ];
        let r = room("pi", &pi(), &nodes, &pods, Some("memoryserver.memory")).unwrap();
        assert_eq!(r.cpu.free().cpu(), "2500m");
        assert_eq!(r.memory.free().memory(), "5Gi");
        assert!(fit(&r, &[demand("memory", "2", "4Gi", 0)]).is_ok());
        let err = fit(&r, &[demand("memory", "3", "4Gi", 0)]).unwrap_err();
        assert_eq!(
            err.0,
            "memory does not fit NodeClass pi: cpu 3, memory 4Gi asked, but only cpu 2500m and memory 5Gi are free (1 nodes: cpu 4 and memory 8Gi allocatable, minus reserved 500m and 1Gi, minus 1 and 2Gi already running)"
        );
    }

    #[test]
    fn more_gpus_than_the_class_has_are_refused_by_name() {
        let spec = NodeClassSpec {
            gpu_resource: Some("amd.com/gpu".into()),
            ..NodeClassSpec::default()
        };
        let nodes = [node("gpu-1", "16", "64Gi", Some("1"))];
        let r = room("gpu", &spec, &nodes, &[], None).unwrap();
        let demands = [
            demand("stt", "1", "2Gi", 1),
            demand("llm", "4", "16Gi", 1),
            demand("router", "1", "1Gi", 0),
        ];
        let err = fit(&r, &demands).unwrap_err();
        assert!(
            err.0.starts_with(
                "stt, llm ask for 2 amd.com/gpu on NodeClass gpu, which has 1 in all and 1 free"
            ),
            "{}",
            err.0
        );
        assert!(fit(&r, &demands[1..]).is_ok());
    }

    #[test]
    fn a_class_without_nodes_places_nothing() {
        let r = room("pi", &pi(), &[], &[], None).unwrap();
        let err = fit(&r, &[demand("x", "1m", "1Mi", 0)]).unwrap_err();
        assert!(err.0.contains("matches no node"), "{}", err.0);
    }
}
