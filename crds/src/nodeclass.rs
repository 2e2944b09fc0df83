//! NodeClass: a named class of node (the Pi, the GPU node) and its capacity plan.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{POSITIVE_QUANTITY, Resources};

/// A class of node that workloads are placed on by name, such as `pi` or `gpu`: which nodes
/// belong to it, what it tolerates, its GPU resource, and the CPU and memory defaults and
/// reserve. Its status is the capacity plan of the class.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "homeplane.dev",
    version = "v1alpha1",
    kind = "NodeClass",
    plural = "nodeclasses",
    shortname = "nc",
    category = "homeplane",
    status = "NodeClassStatus",
    doc = "A class of node (e.g. the Pi or the GPU node) that homeplane places workloads on, with its capacity plan.",
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodeCount"),
    printcolumn(
        name = "CPU-Req",
        type_ = "string",
        json_path = ".status.capacity.cpu.requested"
    ),
    printcolumn(
        name = "CPU-Alloc",
        type_ = "string",
        json_path = ".status.capacity.cpu.allocatable"
    ),
    printcolumn(
        name = "Mem-Req",
        type_ = "string",
        json_path = ".status.capacity.memory.requested"
    ),
    printcolumn(
        name = "Mem-Alloc",
        type_ = "string",
        json_path = ".status.capacity.memory.allocatable"
    ),
    printcolumn(
        name = "Overcommitted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Overcommitted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeClassSpec {
    /// Labels a node must carry to belong to this class, e.g. `homeplane.dev/class: pi`.
    /// Workloads placed in the class get a matching required node affinity.
    #[x_kube(validation = Rule::new("size(self) > 0").message("nodeSelector must name at least one label, or the class would match every node"))]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations added to every workload placed in this class (for tainted nodes such as a
    /// GPU node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Extended resource name of the class's GPUs, e.g. `amd.com/gpu` or `nvidia.com/gpu`.
    /// Leave out for a class without GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$')").message("gpuResource must be an extended resource name such as amd.com/gpu or nvidia.com/gpu"))]
    #[schemars(length(max = 253))]
    pub gpu_resource: Option<String>,
    /// CPU and memory given to a workload that does not state its own.
    #[serde(default)]
    pub defaults: Resources,
    /// CPU and memory kept free on every node of the class for the system and for what
    /// homeplane does not place; limits above allocatable minus this reserve are overcommitted.
    #[serde(default)]
    pub reserved: Resources,
    /// CPU architecture of the class's nodes (`arm64` for a Raspberry Pi). Workloads placed in
    /// the class are pinned to it with the `kubernetes.io/arch` node label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Architecture>,
    /// What the class's nodes can give, as their owner knows it (a Pi 5: 4 CPUs, 8Gi).
    /// `homeplane plan -f DIR` uses it offline, where there are no nodes to ask; in the cluster
    /// the nodes' own allocatable counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ExpectedCapacity>,
}

/// CPU architecture of a node, as in the `kubernetes.io/arch` label.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// 64-bit ARM (Raspberry Pi 4 and 5).
    Arm64,
    /// 64-bit x86.
    Amd64,
}

impl Architecture {
    /// The value of the `kubernetes.io/arch` label.
    pub fn label(self) -> &'static str {
        match self {
            Architecture::Arm64 => "arm64",
            Architecture::Amd64 => "amd64",
        }
    }
}

/// The expected allocatable of a class: how many nodes, and what each gives.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpectedCapacity {
    /// Number of nodes in the class.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub nodes: i32,
    /// CPU of one node, e.g. `4`.
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("cpu must be a positive quantity such as 4 or 3500m"))]
    #[schemars(length(max = 32))]
    pub cpu: String,
    /// Memory of one node, e.g. `8Gi`.
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("memory must be a positive quantity such as 8Gi"))]
    #[schemars(length(max = 32))]
    pub memory: String,
    /// GPUs of one node (of the class's `gpuResource`).
    #[serde(default)]
    #[schemars(range(min = 0, max = 64))]
    pub gpu: i32,
}

fn one() -> i32 {
    1
}

/// The observed state of a NodeClass: its nodes and capacity plan.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeClassStatus {
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the class matches at least one node) and `Overcommitted` (limits exceed what
    /// the class can give).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Names of the nodes that match the selector.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Number of nodes that match the selector.
    #[serde(default)]
    pub node_count: i32,
    /// Allocatable versus requested versus limits, summed over the class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// The pods scheduled on the class's nodes with what each asks for, largest CPU limit
    /// first (at most 100 listed; `podCount` has the total).
    #[serde(default)]
    pub pods: Vec<PodUsage>,
    /// Number of pods (not finished) scheduled on the class's nodes.
    #[serde(default)]
    pub pod_count: i32,
}

/// The capacity plan of a class, per resource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// CPU, in Kubernetes quantities (`3500m`).
    pub cpu: ResourcePlan,
    /// Memory, in Kubernetes quantities (`6Gi`).
    pub memory: ResourcePlan,
    /// GPUs of the class's GPU resource; absent for a class without GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<ResourcePlan>,
}

/// Allocatable, reserved, requested and limits of one resource across a class.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePlan {
    /// Sum of the nodes' allocatable.
    pub allocatable: String,
    /// The class's reserve times the number of nodes.
    pub reserved: String,
    /// Sum of the requests of the pods scheduled on the class's nodes.
    pub requested: String,
    /// Sum of the limits of the pods scheduled on the class's nodes.
    pub limits: String,
    /// Allocatable minus reserved minus requested (negative when overcommitted).
    pub free: String,
}

/// What one pod on a class's node asks for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodUsage {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
    /// Node the pod is scheduled on.
    pub node: String,
    /// Sum of the containers' CPU requests.
    pub cpu_request: String,
    /// Sum of the containers' CPU limits (`none` when a container has no limit).
    pub cpu_limit: String,
    /// Sum of the containers' memory requests.
    pub memory_request: String,
    /// Sum of the containers' memory limits (`none` when a container has no limit).
    pub memory_limit: String,
    /// GPUs requested.
    #[serde(default)]
    pub gpu: i64,
    /// Whether homeplane placed the pod (label `app.kubernetes.io/managed-by: homeplane`).
    #[serde(default)]
    pub managed: bool,
}
