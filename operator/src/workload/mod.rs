//! The workload builder every controller shares. Pure functions, no client: from a workload
//! description and its `placement`, produce the Deployment (or StatefulSet, when the workload
//! keeps data) and Service that run it, with requests and limits always set, node affinity,
//! tolerations and GPU resource from the NodeClass, the standard labels and an owner
//! reference. `apply` sends them with server-side apply and prunes what a spec no longer asks
//! for; `capacity` checks that they fit before they are created; `rollout` reads readiness
//! from what the cluster reports.

pub mod apply;
pub mod capacity;
pub mod lean;
pub mod pods;
pub mod rollout;
pub mod ssa;

use std::collections::BTreeMap;

use homeplane_crds::common::Placement;
use homeplane_crds::nodeclass::NodeClassSpec;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SecretKeySelector, Service, ServicePort, ServiceSpec, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::quantity::{InvalidQuantity, Milli};

/// The field manager of everything homeplane applies.
pub const FIELD_MANAGER: &str = "homeplane";

/// `app.kubernetes.io/name`: what the software is (`redis`, `memory-server`).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the object's own name, unique in its namespace.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/component`: the part it plays (`cache`, `stage-llm`).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/managed-by: homeplane` on everything homeplane creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "homeplane";
/// `homeplane.dev/owner`: the homeplane object that asked for it (`memoryserver.memory`).
pub const OWNER_LABEL: &str = "homeplane.dev/owner";
/// `homeplane.dev/class`: the NodeClass it is placed in.
pub const CLASS_LABEL: &str = "homeplane.dev/class";

/// What a controller wants to run: one container, its ports, probe, storage and placement.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Name of the Deployment/StatefulSet and Service.
    pub name: String,
    /// The software, for `app.kubernetes.io/name`.
    pub app: String,
    /// The part it plays, for `app.kubernetes.io/component`.
    #[serde(default)]
    pub component: Option<String>,
    /// Container image.
    pub image: String,
    /// Container arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment, in order (values or references to Secrets).
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Ports served; the first is the one the Service and the probe use.
    #[serde(default)]
    pub ports: Vec<NamedPort>,
    /// HTTP path answering 2xx when ready, probed on the first port.
    #[serde(default)]
    pub readiness_path: Option<String>,
    /// A command that exits 0 when ready (e.g. `pg_isready`), when there is no HTTP path.
    #[serde(default)]
    pub readiness_command: Vec<String>,
    /// A volume of its own; makes the workload a StatefulSet.
    #[serde(default)]
    pub storage: Option<Storage>,
    /// Number of pods.
    #[serde(default = "one")]
    pub replicas: i32,
    /// Node class, CPU, memory and GPUs.
    pub placement: Placement,
}

fn one() -> i32 {
    1
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NamedPort {
    /// Port name (`http`).
    pub name: String,
    /// Port number.
    pub port: i32,
}

/// A persistent volume for a workload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size, e.g. `10Gi`.
    pub size: String,
    /// Where it is mounted.
    pub mount_path: String,
    /// Storage class; the cluster default when absent.
    #[serde(default)]
    pub storage_class: Option<String>,
}

/// The homeplane object a workload belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// `homeplane.dev/v1alpha1`.
    pub api_version: String,
    /// `MemoryServer`.
    pub kind: String,
    /// Object name.
    pub name: String,
    /// Object namespace.
    pub namespace: String,
    /// Object uid.
    pub uid: String,
}

impl Owner {
    /// The owner of workloads made for `obj` (which must have been read from the API).
    pub fn of<K: Resource<DynamicType = ()>>(obj: &K) -> Owner {
        Owner {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            name: obj.name_any(),
            namespace: obj.namespace().unwrap_or_default(),
            uid: obj.uid().unwrap_or_default(),
        }
    }

    /// The value of [`OWNER_LABEL`]: `<kind>.<name>`, shortened with a hash past 63 characters.
    pub fn label(&self) -> String {
        let full = format!("{}.{}", self.kind.to_lowercase(), self.name);
        if full.len() <= 63 {
            return full;
        }
        let hash = hex::encode(Sha256::digest(full.as_bytes()));
        let mut head: String = full.chars().take(54).collect();
        while head.ends_with(['.', '-']) {
            head.pop();
        }
        format!("{head}-{}", &hash[..8])
    }

    fn reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
}

/// A NodeClass by name.
#[derive(Debug, Clone, Copy)]
pub struct Class<'a> {
    /// Its name (`pi`).
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a NodeClassSpec,
}

/// What one pod of a workload asks for (requests equal limits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asks {
    /// CPU.
    pub cpu: Milli,
    /// Memory.
    pub memory: Milli,
    /// GPUs of the class's GPU resource.
    pub gpu: i64,
}

impl std::fmt::Display for Asks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cpu {}, memory {}", self.cpu.cpu(), self.memory.memory())?;
        if self.gpu > 0 {
            write!(f, ", {} GPU", self.gpu)?;
        }
        Ok(())
    }
}

/// Why a workload cannot be placed as specified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Neither the placement nor the class says how much.
    #[error(
        "{what} has no {resource}: set placement.{resource}, or defaults.{resource} on NodeClass {class}"
    )]
    NoDefault {
        /// The workload.
        what: String,
        /// `cpu` or `memory`.
        resource: &'static str,
        /// The class.
        class: String,
    },
    /// GPUs asked of a class without a GPU resource.
    #[error(
        "{what} asks for {gpu} GPU but NodeClass {class} has no gpuResource: place it in a GPU class"
    )]
    NoGpu {
        /// The workload.
        what: String,
        /// GPUs asked.
        gpu: i64,
        /// The class.
        class: String,
    },
    /// A quantity that does not parse.
    #[error("{what}: {field}: {source}")]
    Quantity {
        /// The workload.
        what: String,
        /// The field.
        field: &'static str,
        /// The parse error.
        #[source]
        source: InvalidQuantity,
    },
}

/// What one pod of a workload with `placement` asks for in `class`: the placement's own values,
/// else the class defaults. Never zero-less: a workload without CPU or memory is refused.
pub fn asks(what: &str, placement: &Placement, class: Class<'_>) -> Result<Asks, PlacementError> {
    let pick = |own: Option<&String>,
                default: Option<&String>,
                resource: &'static str,
                field: &'static str|
     -> Result<Milli, PlacementError> {
        let text = own.or(default).ok_or_else(|| PlacementError::NoDefault {
            what: what.to_string(),
            resource,
            class: class.name.to_string(),
        })?;
        Milli::parse(text).map_err(|source| PlacementError::Quantity {
            what: what.to_string(),
            field,
            source,
        })
    };
    let cpu = pick(
        placement.cpu.as_ref(),
        class.spec.defaults.cpu.as_ref(),
        "cpu",
        "cpu",
    )?;
    let memory = pick(
        placement.memory.as_ref(),
        class.spec.defaults.memory.as_ref(),
        "memory",
        "memory",
    )?;
    let gpu = i64::from(placement.gpu.unwrap_or(0).max(0));
    if gpu > 0 && class.spec.gpu_resource.is_none() {
        return Err(PlacementError::NoGpu {
            what: what.to_string(),
            gpu,
            class: class.name.to_string(),
        });
    }
    Ok(Asks { cpu, memory, gpu })
}

/// The object that runs the pods.
#[derive(Debug, Clone, PartialEq)]
pub enum Runner {
    /// A stateless workload.
    Deployment(Box<Deployment>),
    /// A workload with storage.
    StatefulSet(Box<StatefulSet>),
}

/// Everything one workload needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Objects {
    /// Deployment or StatefulSet.
    pub runner: Runner,
    /// The Service, when the workload serves ports.
    pub service: Option<Service>,
    /// What each pod asks for.
    pub asks: Asks,
}

/// Labels on every object of a workload.
pub fn labels(w: &Workload, owner: &Owner, class: &str) -> BTreeMap<String, String> {
    let mut l = selector(w);
    l.insert(NAME_LABEL.into(), w.app.clone());
    if let Some(c) = &w.component {
        l.insert(COMPONENT_LABEL.into(), c.clone());
    }
    l.insert(OWNER_LABEL.into(), owner.label());
    l.insert(CLASS_LABEL.into(), class.to_string());
    l
}

/// The pod selector of a workload (immutable once created, so it holds only the identity).
pub fn selector(w: &Workload) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INSTANCE_LABEL.to_string(), w.name.clone()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ])
}

/// The resource quantities of `a` (requests and limits alike), with the GPU resource when it
/// asks for GPUs.
pub fn quantities(a: &Asks, gpu_resource: Option<&str>) -> BTreeMap<String, Quantity> {
    let mut q = BTreeMap::from([
        ("cpu".to_string(), Quantity(a.cpu.cpu())),
        ("memory".to_string(), Quantity(a.memory.memory())),
    ]);
    if let (Some(g), true) = (gpu_resource, a.gpu > 0) {
        q.insert(g.to_string(), Quantity(a.gpu.to_string()));
    }
    q
}

/// The required node affinity of pods placed in `class`: its node selector and architecture.
pub fn affinity(class: Class<'_>) -> Affinity {
    let mut expressions: Vec<NodeSelectorRequirement> = class
        .spec
        .node_selector
        .iter()
        .map(|(k, v)| NodeSelectorRequirement {
            key: k.clone(),
            operator: "In".into(),
            values: Some(vec![v.clone()]),
        })
        .collect();
    if let Some(arch) = class.spec.architecture {
        expressions.push(NodeSelectorRequirement {
            key: "kubernetes.io/arch".into(),
            operator: "In".into(),
            values: Some(vec![arch.label().to_string()]),
        });
    }
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(expressions),
                    match_fields: None,
                }],
            }),
            preferred_during_scheduling_ignored_during_execution: None,
        }),
        ..Affinity::default()
    }
}

/// An environment variable whose value the kubelet reads from key `key` of Secret `secret`:
/// homeplane never reads or copies the value.
pub fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// Builds the objects of `w` for `owner`, placed in `class`.
pub fn build(w: &Workload, owner: &Owner, class: Class<'_>) -> Result<Objects, PlacementError> {
    let what = format!("{} {}", w.app, w.name);
    let asks = asks(&what, &w.placement, class)?;
    let resources = quantities(&asks, class.spec.gpu_resource.as_deref());
    let labels = labels(w, owner, class.name);
    let meta = ObjectMeta {
        name: Some(w.name.clone()),
        namespace: Some(owner.namespace.clone()),
        labels: Some(labels.clone()),
        owner_references: Some(vec![owner.reference()]),
        ..ObjectMeta::default()
    };
    let volume = "data";
    let container = Container {
        name: w.app.clone(),
        image: Some(w.image.clone()),
        args: non_empty(w.args.clone()),
        env: non_empty(w.env.clone()),
        ports: non_empty(
            w.ports
                .iter()
                .map(|p| ContainerPort {
                    name: Some(p.name.clone()),
                    container_port: p.port,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        readiness_probe: match (&w.readiness_path, w.ports.first()) {
            (Some(path), Some(port)) => Some(Probe {
                http_get: Some(HTTPGetAction {
                    path: Some(path.clone()),
                    port: IntOrString::String(port.name.clone()),
                    ..HTTPGetAction::default()
                }),
                period_seconds: Some(10),
                ..Probe::default()
            }),
            _ if !w.readiness_command.is_empty() => Some(Probe {
                exec: Some(ExecAction {
                    command: Some(w.readiness_command.clone()),
                }),
                period_seconds: Some(10),
                ..Probe::default()
            }),
            _ => None,
        },
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..ResourceRequirements::default()
        }),
        volume_mounts: w.storage.as_ref().map(|s| {
            vec![VolumeMount {
                name: volume.into(),
                mount_path: s.mount_path.clone(),
                ..VolumeMount::default()
            }]
        }),
        ..Container::default()
    };
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            affinity: Some(affinity(class)),
            tolerations: non_empty(class.spec.tolerations.clone()),
            automount_service_account_token: Some(false),
            ..PodSpec::default()
        }),
    };
    let pod_selector = LabelSelector {
        match_labels: Some(selector(w)),
        match_expressions: None,
    };
    let runner = match &w.storage {
        None => Runner::Deployment(Box::new(Deployment {
            metadata: meta.clone(),
            spec: DeploymentSpec {
                replicas: Some(w.replicas),
                selector: pod_selector,
                template,
                // A GPU cannot be held by the old and the new pod at once.
                strategy: (asks.gpu > 0).then(|| DeploymentStrategy {
                    type_: Some("Recreate".into()),
                    rolling_update: None,
                }),
                ..DeploymentSpec::default()
            },
            status: None,
        })),
        Some(storage) => {
            let size = Milli::parse(&storage.size).map_err(|source| PlacementError::Quantity {
                what: what.clone(),
                field: "storage.size",
                source,
            })?;
            Runner::StatefulSet(Box::new(StatefulSet {
                metadata: meta.clone(),
                spec: StatefulSetSpec {
                    replicas: Some(w.replicas),
                    selector: pod_selector,
                    service_name: Some(w.name.clone()),
                    template,
                    volume_claim_templates: Some(vec![PersistentVolumeClaim {
                        metadata: ObjectMeta {
                            name: Some(volume.into()),
                            labels: Some(labels.clone()),
                            ..ObjectMeta::default()
                        },
                        spec: Some(PersistentVolumeClaimSpec {
                            access_modes: Some(vec!["ReadWriteOnce".into()]),
                            storage_class_name: storage.storage_class.clone(),
                            resources: Some(VolumeResourceRequirements {
                                requests: Some(BTreeMap::from([(
                                    "storage".to_string(),
                                    Quantity(size.memory()),
                                )])),
                                limits: None,
                            }),
                            ..PersistentVolumeClaimSpec::default()
                        }),
                        status: None,
                    }]),
                    ..StatefulSetSpec::default()
                },
                status: None,
            }))
        }
    };
    let service = (!w.ports.is_empty()).then(|| Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            selector: Some(selector(w)),
            ports: Some(
                w.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.clone()),
                        port: p.port,
                        target_port: Some(IntOrString::String(p.name.clone())),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    });
    Ok(Objects {
        runner,
        service,
        asks,
    })
}

#[cfg(test)]
mod tests;
