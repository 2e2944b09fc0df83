//! Builds the cluster objects of the imported containers, a pure function of the model: each
//! Docker network becomes a namespace (the engine's default network the `--namespace` one),
//! each container a Deployment — a StatefulSet when a writable volume holds its state — with
//! its image, command, working directory, user, environment (secrets as `secretKeyRef`s),
//! ports as a Service, health check as probes, labels, its own CPU and memory limits (the
//! NodeClass default where it had none), volumes as PersistentVolumeClaims sized from their
//! use, GPU devices as the GPU class's resource, and NetworkPolicies that keep the namespaces
//! as isolated as the networks were.

use std::collections::{BTreeMap, BTreeSet};

use homeplane_crds::common::Placement;
use homeplane_crds::nodeclass::NodeClassSpec;
use homeplane_crds::registry::{Comparison, Property, Severity};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container as PodContainer, ContainerPort, EmptyDirVolumeSource, EnvVar, ExecAction, Namespace,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::model::{Container, Gpu, HealthTest, MountKind, Network, NetworkMode, Origin};
use super::names::{Unique, dns_label, id_segment, object_name, secret_key};
use super::registry::{self, compared, grace, severity};
use super::report::Report;
use super::secrets::{scrub_arguments, secret_reason};
use crate::quantity::Milli;
use crate::workload::{self, CLASS_LABEL, Class, INSTANCE_LABEL, NAME_LABEL};

/// Label on everything the import writes: where it came from.
pub const IMPORTED_LABEL: &str = "homeplane.dev/imported-from";
/// Annotation on a workload: what the import chose for it that a person should know.
pub const NOTE_ANNOTATION: &str = "homeplane.dev/import-note";

/// Host paths that give a container power over the host; never turned into volumes.
const HOST_PATHS: [&str; 8] = [
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/podman/podman.sock",
    "/proc",
    "/sys",
    "/dev",
    "/etc/localtime",
    "/etc/timezone",
];

/// The NodeClasses the workloads are placed in.
pub struct Classes {
    /// Every class, by name.
    pub specs: BTreeMap<String, NodeClassSpec>,
    /// The class of containers without a GPU.
    pub default: String,
    /// The class of containers with a GPU.
    pub gpu: Option<String>,
}

/// How the import builds.
pub struct Options<'a> {
    /// The namespace of the engine's default network (and of the database, the workflows).
    pub namespace: &'a str,
    /// StorageClass of the claims; the cluster's default when `None`.
    pub storage_class: Option<&'a str>,
    /// The Docker endpoint the state registry reads the old containers through (the one they
    /// were read from when `None`).
    pub registry_docker_endpoint: Option<&'a str>,
}

/// What goes into one namespace.
#[derive(Debug, Default)]
pub struct NamespaceOut {
    /// The Docker network it stands for (`None` for the default namespace).
    pub network: Option<String>,
    /// Files and their documents.
    pub files: BTreeMap<String, Vec<Value>>,
    /// State-registry properties of what is in it.
    pub properties: Vec<Property>,
    /// Claims whose data the old container wrote (each gets a BackupPolicy proposal).
    pub state_claims: Vec<String>,
}

/// A value of a Rust object as a manifest document.
pub fn document<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// A memory quantity exactly as Kubernetes prints it: the largest binary unit that is exact,
/// else the largest decimal one, else bytes.
pub fn memory_quantity(m: Milli) -> String {
    let bytes = m.0.div_euclid(1000) + i128::from(m.0.rem_euclid(1000) != 0);
    if bytes == 0 {
        return "0".into();
    }
    for (suffix, shift) in [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ] {
        let unit = 1i128 << shift;
        if bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    for (suffix, power) in [
        ("E", 18u32),
        ("P", 15),
        ("T", 12),
        ("G", 9),
        ("M", 6),
        ("k", 3),
    ] {
        let unit = 10i128.pow(power);
        if bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Size of a claim for `used` bytes: twice the use, in whole GiB, at least 1Gi.
pub fn claim_size(used: Option<u64>) -> String {
    let gib = 1u64 << 30;
    let wanted = used.unwrap_or(0).saturating_mul(2);
    format!("{}Gi", wanted.div_ceil(gib).max(1))
}

fn human_bytes(bytes: u64) -> String {
    let units = [("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (name, shift) in units {
        let unit = 1u64 << shift;
        if bytes >= unit {
            return format!("{:.1} {name}", bytes as f64 / unit as f64);
        }
    }
    format!("{bytes} B")
}

/// Whether `key=value` can be a Kubernetes label.
fn valid_label(key: &str, value: &str) -> bool {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let key_ok = match key.split_once('/') {
        Some((prefix, name)) => {
            prefix.len() <= 253
                && prefix.split('.').all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                })
                && name_ok(name)
        }
        None => name_ok(key),
    };
    key_ok && (value.is_empty() || name_ok(value))
}

/// The namespace each network stands for.
fn namespace_of_networks(
    containers: &[Container],
    networks: &BTreeMap<String, Network>,
    options: &Options<'_>,
) -> BTreeMap<String, String> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut used: Unique = Unique::default();
    used.take(options.namespace);
    for c in containers {
        names.extend(c.networks.iter().cloned());
    }
    names
        .into_iter()
        .map(|network| {
            let info = networks.get(&network);
            let default =
                info.map_or_else(|| super::model::is_default_network(&network), |n| n.default);
            let ns = if default {
                options.namespace.to_string()
            } else {
                let short = info.map_or(network.as_str(), |n| n.short_name.as_str());
                used.take(&dns_label(short, "network"))
            };
            (network, ns)
        })
        .collect()
}

/// Per namespace: which pods (by instance) of another namespace may reach all of it, and which
/// namespaces may reach one of its pods (a container on several networks).
#[derive(Default)]
struct Bridges {
    /// (namespace, pod) → other namespaces that may reach that pod.
    into_pod: BTreeMap<(String, String), BTreeSet<String>>,
    /// namespace → pods of other namespaces that may reach every pod in it.
    from_pods: BTreeMap<String, BTreeSet<(String, String)>>,
    /// (namespace, pod) → published ports (anyone may reach them).
    published: BTreeMap<(String, String), Vec<(i32, String)>>,
}

/// Builds every container into the namespaces.
pub fn containers(
    input: &[Container],
    networks: &BTreeMap<String, Network>,
    classes: &Classes,
    options: &Options<'_>,
    report: &mut Report,
) -> BTreeMap<String, NamespaceOut> {
    let network_ns = namespace_of_networks(input, networks, options);
    let mut out: BTreeMap<String, NamespaceOut> = BTreeMap::new();
    for (network, ns) in &network_ns {
        let entry = out.entry(ns.clone()).or_default();
        if ns != options.namespace {
            entry.network = Some(network.clone());
        }
    }
    // Each container's home network: the one it shares with the most others.
    let mut members: BTreeMap<&str, usize> = BTreeMap::new();
    for c in input {
        for n in &c.networks {
            *members.entry(n.as_str()).or_default() += 1;
        }
    }
    let mut names: BTreeMap<String, Unique> = BTreeMap::new();
    let mut claims: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut bridges = Bridges::default();
    for c in input {
        if let NetworkMode::Container(other) = &c.network_mode {
            report.left_out.push(format!(
                "container {}: it shares the network of container {other}; containers that share a network belong in one pod — add it to {other}'s pod by hand",
                c.name
            ));
            continue;
        }
        let home = c
            .networks
            .iter()
            .max_by(|a, b| {
                members
                    .get(a.as_str())
                    .cmp(&members.get(b.as_str()))
                    .then_with(|| b.cmp(a))
            })
            .and_then(|n| network_ns.get(n))
            .cloned()
            .unwrap_or_else(|| options.namespace.to_string());
        let name = names
            .entry(home.clone())
            .or_default()
            .take(&object_name(&c.name));
        let built = match one(c, &home, &name, classes, options, &mut claims, report) {
            Ok(built) => built,
            Err(reason) => {
                report
                    .left_out
                    .push(format!("container {}: {reason}", c.name));
                continue;
            }
        };
        // A secret value in a field the import does not rewrite (a label, a mount path…)
        // keeps the whole container out.
        let text = serde_json::to_string(&built.documents).unwrap_or_default();
        if built
            .hidden
            .iter()
            .any(|v| v.len() >= 6 && text.contains(v.as_str()))
        {
            report.left_out.push(format!(
                "container {}: one of its secret values also appears outside its environment and command line (a label, a path or a health check); import it by hand",
                c.name
            ));
            continue;
        }
        for v in &built.hidden {
            report.hide(v);
        }
        for s in built.secrets {
            for key in &s.keys {
                report.secret(&s.namespace, &s.name, key, &s.purpose);
            }
        }
        report.imported.push(built.summary);
        report.check.extend(built.check);
        let ns_out = out.entry(home.clone()).or_default();
        ns_out
            .files
            .entry(format!("{name}.yaml"))
            .or_default()
            .extend(built.documents);
        ns_out.properties.extend(built.properties);
        ns_out.state_claims.extend(built.state_claims);
        // Reachability across networks, for the NetworkPolicies.
        for n in &c.networks {
            let Some(other) = network_ns.get(n) else {
                continue;
            };
            if *other != home {
                bridges
                    .into_pod
                    .entry((home.clone(), name.clone()))
                    .or_default()
                    .insert(other.clone());
                bridges
                    .from_pods
                    .entry(other.clone())
                    .or_default()
                    .insert((home.clone(), name.clone()));
            }
        }
        let published: Vec<(i32, String)> = c
            .ports
            .iter()
            .filter(|p| p.published.is_some())
            .map(|p| (p.container, p.protocol.clone()))
            .collect();
        if !published.is_empty() {
            bridges
                .published
                .insert((home.clone(), name.clone()), published);
        }
    }
    for (ns, ns_out) in out.iter_mut() {
        let mut docs = vec![namespace_doc(ns, ns_out.network.as_deref())];
        docs.extend(network_policies(ns, &bridges));
        ns_out.files.insert("namespace.yaml".into(), docs);
    }
    let internal: Vec<&str> = network_ns
        .iter()
        .filter(|(n, _)| networks.get(*n).is_some_and(|n| n.internal))
        .map(|(_, ns)| ns.as_str())
        .collect();
    for ns in internal {
        report.check.push(format!(
            "namespace {ns}: its Docker network was internal (no way out); the NetworkPolicies limit who may come in, not what may go out — add an egress policy if it must stay cut off"
        ));
    }
    out
}

/// The Namespace object of a namespace that stands for no network.
pub fn namespace_only(ns: &str) -> Value {
    namespace_doc(ns, None)
}

fn namespace_doc(ns: &str, network: Option<&str>) -> Value {
    let mut namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_string()),
            labels: Some(BTreeMap::from([(
                IMPORTED_LABEL.to_string(),
                "docker".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    if let Some(n) = network {
        namespace.metadata.annotations = Some(BTreeMap::from([(
            "homeplane.dev/docker-network".to_string(),
            n.to_string(),
        )]));
    }
    document(&namespace)
}

fn namespace_selector(ns: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            ns.to_string(),
        )])),
        match_expressions: None,
    }
}

fn instance_selector(pod: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            INSTANCE_LABEL.to_string(),
            pod.to_string(),
        )])),
        match_expressions: None,
    }
}

/// The NetworkPolicies of a namespace: pods reach each other inside it and nothing else
/// reaches them — except the pods of containers that were on this network too (they live in
/// another namespace now), the other networks such a container was on, and published ports.
fn network_policies(ns: &str, bridges: &Bridges) -> Vec<Value> {
    let policy = |name: &str, pod: Option<&str>, rules: Vec<NetworkPolicyIngressRule>| {
        let p = NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(ns.to_string()),
                labels: Some(BTreeMap::from([(
                    IMPORTED_LABEL.to_string(),
                    "docker".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(pod.map(instance_selector).unwrap_or_default()),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(rules),
                egress: None,
            }),
        };
        document(&p)
    };
    let mut docs = vec![policy(
        "same-network-only",
        None,
        vec![NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector::default()),
                ..NetworkPolicyPeer::default()
            }]),
            ports: None,
        }],
    )];
    if let Some(pods) = bridges.from_pods.get(ns) {
        let peers = pods
            .iter()
            .map(|(other_ns, pod)| NetworkPolicyPeer {
                namespace_selector: Some(namespace_selector(other_ns)),
                pod_selector: Some(instance_selector(pod)),
                ip_block: None,
            })
            .collect();
        docs.push(policy(
            "from-containers-on-this-network",
            None,
            vec![NetworkPolicyIngressRule {
                from: Some(peers),
                ports: None,
            }],
        ));
    }
    for ((pod_ns, pod), others) in &bridges.into_pod {
        if pod_ns != ns {
            continue;
        }
        let peers = others
            .iter()
            .map(|o| NetworkPolicyPeer {
                namespace_selector: Some(namespace_selector(o)),
                ..NetworkPolicyPeer::default()
            })
            .collect();
        docs.push(policy(
            &format!("{pod}-other-networks"),
            Some(pod),
            vec![NetworkPolicyIngressRule {
                from: Some(peers),
                ports: None,
            }],
        ));
    }
    for ((pod_ns, pod), ports) in &bridges.published {
        if pod_ns != ns {
            continue;
        }
        let ports = ports
            .iter()
            .map(|(port, protocol)| NetworkPolicyPort {
                port: Some(IntOrString::Int(*port)),
                protocol: Some(protocol.clone()),
                end_port: None,
            })
            .collect();
        docs.push(policy(
            &format!("{pod}-published"),
            Some(pod),
            vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(ports),
            }],
        ));
    }
    docs
}

/// One container, built.
struct Built {
    documents: Vec<Value>,
    properties: Vec<Property>,
    state_claims: Vec<String>,
    secrets: Vec<super::report::SecretToCreate>,
    hidden: Vec<String>,
    summary: String,
    check: Vec<String>,
}

/// `argv` as one shell line, each word single-quoted where it needs to be.
fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A shell line with each secret value replaced by a reference to the variable that holds it
/// (a value with no variable stays, and the leak check then keeps the container out).
fn shell_without_secrets(line: &str, moved: &[(String, String)]) -> String {
    let mut out = line.to_string();
    for (variable, value) in moved {
        if value.len() >= 4 {
            out = out.replace(value.as_str(), &format!("${{{variable}}}"));
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn one(
    c: &Container,
    ns: &str,
    name: &str,
    classes: &Classes,
    options: &Options<'_>,
    claims: &mut BTreeMap<(String, String), String>,
    report: &mut Report,
) -> Result<Built, String> {
    let mut notes: Vec<String> = c.notes.clone();
    let mut check: Vec<String> = Vec::new();
    let secret_name = format!("{name}-env");
    let mut secret_keys: Vec<String> = Vec::new();
    let mut hidden: Vec<String> = Vec::new();
    // (variable, value) of everything moved to the Secret, to rewrite shell lines.
    let mut moved_values: Vec<(String, String)> = Vec::new();

    // Placement: the GPU class for a GPU, else the default class.
    let class_name = match (c.gpu, &classes.gpu) {
        (Some(_), Some(gpu)) => gpu.clone(),
        (Some(_), None) => {
            notes.push("it has a GPU but no NodeClass of --nodeclasses has a gpuResource: placed without one".into());
            classes.default.clone()
        }
        (None, _) => classes.default.clone(),
    };
    let Some(spec) = classes.specs.get(&class_name) else {
        return Err(format!("NodeClass {class_name} is not in --nodeclasses"));
    };
    let class = Class {
        name: &class_name,
        spec,
    };
    let gpu_count = i32::from(c.gpu.is_some() && spec.gpu_resource.is_some());
    if let (Some(Gpu::Nvidia), Some(resource)) = (c.gpu, &spec.gpu_resource)
        && !resource.starts_with("nvidia")
    {
        check.push(format!(
            "{ns}/{name}: it used an NVIDIA GPU, and NodeClass {class_name} gives {resource}"
        ));
    }
    let placement = Placement {
        class: class_name.clone(),
        cpu: c.cpu.map(Milli::cpu),
        memory: c.memory.map(memory_quantity),
        gpu: (gpu_count > 0).then_some(gpu_count),
    };
    let asks = workload::asks(&format!("container {}", c.name), &placement, class)
        .map_err(|e| e.to_string())?;
    let mut defaulted = Vec::new();
    if c.cpu.is_none() {
        defaulted.push(format!("CPU {}", asks.cpu.cpu()));
    }
    if c.memory.is_none() {
        defaulted.push(format!("memory {}", memory_quantity(asks.memory)));
    }
    if !defaulted.is_empty() {
        notes.push(format!(
            "it had no {} limit; it gets NodeClass {class_name}'s default {}",
            if defaulted.len() == 2 {
                "CPU or memory"
            } else if c.cpu.is_none() {
                "CPU"
            } else {
                "memory"
            },
            defaulted.join(" and ")
        ));
    }
    let mut resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(asks.cpu.cpu())),
        ("memory".to_string(), Quantity(memory_quantity(asks.memory))),
    ]);
    if let (Some(resource), true) = (&spec.gpu_resource, asks.gpu > 0) {
        resources.insert(resource.clone(), Quantity(asks.gpu.to_string()));
    }

    // Environment: secrets become references to the container's Secret.
    let mut env: Vec<EnvVar> = Vec::new();
    for (key, value) in &c.env {
        match secret_reason(key, value) {
            Some(_) => {
                let k = secret_key(key);
                env.push(workload::env_from_secret(key, &secret_name, &k));
                secret_keys.push(k);
                hidden.push(value.clone());
                moved_values.push((key.clone(), value.clone()));
            }
            None => env.push(EnvVar {
                name: key.clone(),
                value: Some(value.clone()),
                value_from: None,
            }),
        }
    }
    // Command line: secret flags become $(VAR) references.
    let (entrypoint, moved_entry) = scrub_arguments(&c.entrypoint);
    let (cmd, moved_cmd) = scrub_arguments(&c.cmd);
    for m in moved_entry.iter().chain(&moved_cmd) {
        if env.iter().any(|e| e.name == m.variable) {
            continue;
        }
        let k = secret_key(&m.variable);
        env.push(workload::env_from_secret(&m.variable, &secret_name, &k));
        secret_keys.push(k);
        hidden.push(m.value.clone());
        moved_values.push((m.variable.clone(), m.value.clone()));
    }
    for key in &c.env_unknown {
        if env.iter().any(|e| &e.name == key) {
            continue;
        }
        let k = secret_key(key);
        env.push(workload::env_from_secret(key, &secret_name, &k));
        secret_keys.push(k);
    }
    let (command, args) = if !entrypoint.is_empty() {
        (entrypoint, cmd)
    } else if c.cmd_is_args {
        (Vec::new(), cmd)
    } else {
        (cmd, Vec::new())
    };

    // Probes from the health check.
    let (readiness, startup) = match &c.health {
        None => (None, None),
        Some(h) => {
            let exec = match &h.test {
                HealthTest::Exec(argv) => {
                    let (argv, moved) = scrub_arguments(argv);
                    if moved.is_empty() {
                        argv
                    } else {
                        // An exec probe gets no $(VAR) expansion: run it through a shell that
                        // reads the variable instead.
                        let line =
                            shell_without_secrets(&shell_join(&c.health_argv()), &moved_values);
                        vec!["/bin/sh".into(), "-c".into(), line]
                    }
                }
                HealthTest::Shell(line) => vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    shell_without_secrets(line, &moved_values),
                ],
            };
            let probe = Probe {
                exec: Some(ExecAction {
                    command: Some(exec),
                }),
                period_seconds: Some(h.interval_seconds),
                timeout_seconds: Some(h.timeout_seconds),
                failure_threshold: Some(h.retries),
                ..Probe::default()
            };
            let startup = (h.start_period_seconds > 0).then(|| Probe {
                // Docker ignores failures during the start period: so does a startup probe
                // that may fail for that long.
                failure_threshold: Some(
                    (h.start_period_seconds / h.interval_seconds.max(1)).max(1) + h.retries,
                ),
                ..probe.clone()
            });
            (Some(probe), startup)
        }
    };

    // Volumes.
    let mut volumes: Vec<Volume> = Vec::new();
    let mut mounts: Vec<VolumeMount> = Vec::new();
    let mut documents: Vec<Value> = Vec::new();
    let mut state_claims: Vec<String> = Vec::new();
    let mut claim_lines: Vec<String> = Vec::new();
    for (i, m) in c.mounts.iter().enumerate() {
        let volume_name = format!("v{i}");
        let source = match &m.kind {
            MountKind::Tmpfs => {
                volumes.push(Volume {
                    name: volume_name.clone(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        medium: Some("Memory".into()),
                        ..EmptyDirVolumeSource::default()
                    }),
                    ..Volume::default()
                });
                mounts.push(VolumeMount {
                    name: volume_name,
                    mount_path: m.target.clone(),
                    ..VolumeMount::default()
                });
                continue;
            }
            MountKind::Bind(path) => {
                if HOST_PATHS
                    .iter()
                    .any(|h| path == h || path.starts_with(&format!("{h}/")))
                {
                    report.left_out.push(format!(
                        "container {}: bind mount of {path} at {}: it gives the container the host itself; a pod gets no such access from an import",
                        c.name, m.target
                    ));
                    continue;
                }
                if m.is_file {
                    report.left_out.push(format!(
                        "container {}: bind mount of the file {path} at {}",
                        c.name, m.target
                    ));
                    check.push(format!(
                        "{ns}/{name}: put {path} into a ConfigMap (`kubectl create configmap {name}-files -n {ns} --from-file={path}`), or a Secret if it holds credentials, and mount it at {} (subPath)",
                        m.target
                    ));
                    continue;
                }
                (
                    format!("bind mount {path}"),
                    dns_label(
                        &format!(
                            "{name}-{}",
                            path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("data")
                        ),
                        "data",
                    ),
                )
            }
            MountKind::Volume(volume) => (format!("volume {volume}"), dns_label(volume, "data")),
        };
        let (what, wanted) = source;
        let key = (ns.to_string(), what.clone());
        let claim = match claims.get(&key) {
            Some(existing) => {
                check.push(format!(
                    "{ns}/{name}: {what} is shared with another container in {ns}; claim {existing} is ReadWriteOnce, so both pods must run on one node"
                ));
                existing.clone()
            }
            None => {
                let claim = wanted;
                claims.insert(key, claim.clone());
                let size = claim_size(m.used_bytes);
                let mut meta = ObjectMeta {
                    name: Some(claim.clone()),
                    namespace: Some(ns.to_string()),
                    labels: Some(BTreeMap::from([(
                        IMPORTED_LABEL.to_string(),
                        "docker".to_string(),
                    )])),
                    ..ObjectMeta::default()
                };
                let used = match m.used_bytes {
                    Some(bytes) => format!("{} used at import", human_bytes(bytes)),
                    None => {
                        check.push(format!(
                            "{ns}/{claim}: the size of {what} could not be measured; the claim asks for {size}"
                        ));
                        "size not measured".to_string()
                    }
                };
                meta.annotations = Some(BTreeMap::from([(
                    NOTE_ANNOTATION.to_string(),
                    format!(
                        "from {what} of container {} ({used}; sized at twice that, at least 1Gi)",
                        c.name
                    ),
                )]));
                documents.push(document(&PersistentVolumeClaim {
                    metadata: meta,
                    spec: Some(PersistentVolumeClaimSpec {
                        access_modes: Some(vec!["ReadWriteOnce".into()]),
                        storage_class_name: options.storage_class.map(str::to_string),
                        resources: Some(VolumeResourceRequirements {
                            requests: Some(BTreeMap::from([(
                                "storage".to_string(),
                                Quantity(size.clone()),
                            )])),
                            limits: None,
                        }),
                        ..PersistentVolumeClaimSpec::default()
                    }),
                    status: None,
                }));
                if m.holds_state() {
                    state_claims.push(claim.clone());
                }
                check.push(format!(
                    "{ns}/{claim}: copy the data of {what} into the claim before the old container stops (it starts empty)"
                ));
                claim_lines.push(format!("{claim} ({size})"));
                claim
            }
        };
        volumes.push(Volume {
            name: volume_name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim,
                read_only: None,
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume_name,
            mount_path: m.target.clone(),
            read_only: m.read_only.then_some(true),
            ..VolumeMount::default()
        });
    }

    // Devices other than the GPU's.
    for d in &c.devices {
        if super::model::gpu_of_device(&d.container).is_some() && gpu_count > 0 {
            continue;
        }
        report.left_out.push(format!(
            "container {}: device {} (at {}): a pod gets devices through a device plugin; add one for it, or run this one outside the cluster",
            c.name, d.host, d.container
        ));
    }

    // User.
    let mut security = None;
    if let Some(user) = &c.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user.as_str(), ""));
        match (uid.parse::<i64>(), gid.parse::<i64>()) {
            (Ok(uid), Ok(gid)) => {
                security = Some(PodSecurityContext {
                    run_as_user: Some(uid),
                    run_as_group: Some(gid),
                    ..PodSecurityContext::default()
                })
            }
            (Ok(uid), Err(_)) if gid.is_empty() => {
                security = Some(PodSecurityContext {
                    run_as_user: Some(uid),
                    ..PodSecurityContext::default()
                })
            }
            _ => check.push(format!(
                "{ns}/{name}: it ran as user {user:?}; Kubernetes needs numbers (runAsUser/runAsGroup): look them up in the image"
            )),
        }
    }

    // Restart policy.
    match c.restart.as_str() {
        "always" | "unless-stopped" => {}
        other => notes.push(format!(
            "its restart policy was {other:?}; a Deployment always restarts its pods"
        )),
    }
    if c.image.starts_with("localhost/") || c.image.starts_with("sha256:") {
        check.push(format!(
            "{ns}/{name}: image {} exists only on the old host; push it to a registry the cluster pulls from",
            c.image
        ));
    }
    if let Origin::Compose { file } = &c.origin {
        notes.push(format!("declared in {file}, not running when imported"));
    }

    // Labels.
    let mut labels = BTreeMap::from([
        (NAME_LABEL.to_string(), name.to_string()),
        (INSTANCE_LABEL.to_string(), name.to_string()),
        (CLASS_LABEL.to_string(), class_name.clone()),
        (
            IMPORTED_LABEL.to_string(),
            match c.origin {
                Origin::Docker { .. } => "docker".to_string(),
                Origin::Compose { .. } => "compose".to_string(),
            },
        ),
    ]);
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &c.labels {
        if !k.starts_with("com.docker.compose.") && valid_label(k, v) && !labels.contains_key(k) {
            labels.insert(k.clone(), v.clone());
        } else {
            annotations.insert(k.clone(), v.clone());
        }
    }
    let mut workload_annotations = BTreeMap::new();
    if !notes.is_empty() {
        workload_annotations.insert(NOTE_ANNOTATION.to_string(), notes.join("; "));
    }

    let ports: Vec<ContainerPort> = c
        .ports
        .iter()
        .map(|p| ContainerPort {
            name: Some(format!("{}-{}", p.protocol.to_lowercase(), p.container)),
            container_port: p.container,
            protocol: Some(p.protocol.clone()),
            ..ContainerPort::default()
        })
        .collect();
    let container = PodContainer {
        name: name.to_string(),
        image: Some(c.image.clone()),
        command: (!command.is_empty()).then_some(command),
        args: (!args.is_empty()).then_some(args),
        working_dir: c.working_dir.clone(),
        env: (!env.is_empty()).then_some(env),
        ports: (!ports.is_empty()).then_some(ports),
        readiness_probe: readiness,
        startup_probe: startup,
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..ResourceRequirements::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..PodContainer::default()
    };
    let selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            INSTANCE_LABEL.to_string(),
            name.to_string(),
        )])),
        match_expressions: None,
    };
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            affinity: Some(workload::affinity(class)),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            volumes: (!volumes.is_empty()).then_some(volumes),
            security_context: security,
            host_network: (c.network_mode == NetworkMode::Host).then_some(true),
            automount_service_account_token: Some(false),
            ..PodSpec::default()
        }),
    };
    if c.network_mode == NetworkMode::Host {
        check.push(format!(
            "{ns}/{name}: it used the host's network; the pod does too (hostNetwork), which ties it to one node's ports"
        ));
    }
    let meta = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        labels: Some(labels.clone()),
        annotations: (!workload_annotations.is_empty()).then_some(workload_annotations),
        ..ObjectMeta::default()
    };
    let stateful = c.stateful();
    let kind = if stateful {
        "StatefulSet"
    } else {
        "Deployment"
    };
    let runner = if stateful {
        document(&StatefulSet {
            metadata: meta.clone(),
            spec: StatefulSetSpec {
                replicas: Some(1),
                selector,
                service_name: Some(name.to_string()),
                template,
                ..StatefulSetSpec::default()
            },
            status: None,
        })
    } else {
        document(&Deployment {
            metadata: meta.clone(),
            spec: DeploymentSpec {
                replicas: Some(1),
                selector,
                template,
                // A GPU or a ReadWriteOnce claim cannot be held by the old and the new pod
                // at once.
                strategy: (gpu_count > 0 || !claim_lines.is_empty()).then(|| DeploymentStrategy {
                    type_: Some("Recreate".into()),
                    rolling_update: None,
                }),
                ..DeploymentSpec::default()
            },
            status: None,
        })
    };
    documents.insert(0, runner);
    let service = (!c.ports.is_empty()).then(|| Service {
        metadata: ObjectMeta {
            annotations: None,
            ..meta.clone()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                INSTANCE_LABEL.to_string(),
                name.to_string(),
            )])),
            ports: Some(
                c.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(format!("{}-{}", p.protocol.to_lowercase(), p.container)),
                        port: p.container,
                        target_port: Some(IntOrString::Int(p.container)),
                        protocol: Some(p.protocol.clone()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    });
    if let Some(s) = &service {
        documents.insert(1, document(s));
    }
    for p in c.ports.iter().filter(|p| p.published.is_some()) {
        check.push(format!(
            "{ns}/{name}: port {} was published on the host as {}; reach it through an Ingress, a LoadBalancer or a NodePort Service now",
            p.container,
            p.published.unwrap_or_default()
        ));
    }

    // State-registry properties: the new workload, and the old container.
    let mut properties = Vec::new();
    let id = format!("{}.{}", id_segment(ns), id_segment(name));
    let api = "apps/v1";
    let limit_field = |r: &str| format!("/spec/template/spec/containers/0/resources/limits/{r}");
    properties.push(severity(
        registry::property(
            format!("{id}.cpu-limit"),
            format!("{name} keeps its CPU limit of {}", asks.cpu.cpu()),
            json!(asks.cpu.cpu()),
            registry::kubernetes(api, kind, ns, name, &limit_field("cpu")),
        ),
        Severity::Critical,
    ));
    properties.push(severity(
        registry::property(
            format!("{id}.memory-limit"),
            format!(
                "{name} keeps its memory limit of {}",
                memory_quantity(asks.memory)
            ),
            json!(memory_quantity(asks.memory)),
            registry::kubernetes(api, kind, ns, name, &limit_field("memory")),
        ),
        Severity::Critical,
    ));
    properties.push(severity(
        registry::property(
            format!("{id}.image"),
            format!("{name} runs {}", c.image),
            json!(c.image),
            registry::kubernetes(
                api,
                kind,
                ns,
                name,
                "/spec/template/spec/containers/0/image",
            ),
        ),
        Severity::Info,
    ));
    properties.push(grace(
        compared(
            registry::property(
                format!("{id}.available"),
                format!("{name} has its pod ready in the cluster"),
                json!(1),
                registry::kubernetes(
                    api,
                    kind,
                    ns,
                    name,
                    if stateful {
                        "/status/readyReplicas"
                    } else {
                        "/status/availableReplicas"
                    },
                ),
            ),
            Comparison::AtLeast,
        ),
        "2m",
    ));
    if let (Some(o), Origin::Docker { endpoint }) = (&c.observed, &c.origin) {
        let endpoint = options.registry_docker_endpoint.unwrap_or(endpoint);
        let old = format!("{id}.docker");
        let docker = |field: &str| registry::docker(endpoint, &c.name, field);
        properties.push(severity(
            registry::property(
                format!("{old}.state"),
                format!(
                    "the old container {} is {} (it stops when you switch it off)",
                    c.name, o.status
                ),
                json!(o.status),
                docker("/State/Status"),
            ),
            Severity::Info,
        ));
        if o.nano_cpus > 0 {
            properties.push(severity(
                registry::property(
                    format!("{old}.cpu-limit"),
                    format!("the old container {} keeps its CPU limit", c.name),
                    json!(o.nano_cpus),
                    docker("/HostConfig/NanoCpus"),
                ),
                Severity::Info,
            ));
        }
        if o.memory > 0 {
            properties.push(severity(
                registry::property(
                    format!("{old}.memory-limit"),
                    format!("the old container {} keeps its memory limit", c.name),
                    json!(o.memory),
                    docker("/HostConfig/Memory"),
                ),
                Severity::Info,
            ));
        }
        properties.push(severity(
            registry::property(
                format!("{old}.image"),
                format!("the old container {} runs {}", c.name, c.image),
                json!(c.image),
                docker("/Config/Image"),
            ),
            Severity::Info,
        ));
        if let Some(health) = &o.health {
            properties.push(severity(
                registry::property(
                    format!("{old}.health"),
                    format!("the old container {} is {health}", c.name),
                    json!(health),
                    docker("/State/Health/Status"),
                ),
                Severity::Info,
            ));
        }
        properties.push(severity(
            compared(
                registry::property(
                    format!("{old}.restarts"),
                    format!(
                        "the old container {} restarted {} times before the import",
                        c.name, o.restart_count
                    ),
                    json!(o.restart_count),
                    docker("/RestartCount"),
                ),
                Comparison::AtMost,
            ),
            Severity::Info,
        ));
    }

    let mut secrets = Vec::new();
    if !secret_keys.is_empty() {
        secrets.push(super::report::SecretToCreate {
            namespace: ns.to_string(),
            name: secret_name.clone(),
            keys: secret_keys,
            known: BTreeMap::new(),
            purpose: format!("environment of {name} (the old container's values)"),
            role_of: None,
        });
    }
    let summary = format!(
        "{} {} → {ns}/{name}: {kind} on NodeClass {class_name}, CPU {}, memory {}{}{}{}{}",
        match c.origin {
            Origin::Docker { .. } => "container",
            Origin::Compose { .. } => "compose service",
        },
        c.name,
        asks.cpu.cpu(),
        memory_quantity(asks.memory),
        if gpu_count > 0 {
            format!(", {gpu_count} GPU")
        } else {
            String::new()
        },
        if c.ports.is_empty() {
            String::new()
        } else {
            format!(
                ", Service ports {}",
                c.ports
                    .iter()
                    .map(|p| format!("{}/{}", p.container, p.protocol))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        if claim_lines.is_empty() {
            String::new()
        } else {
            format!(", claims {}", claim_lines.join(", "))
        },
        if notes.is_empty() {
            String::new()
        } else {
            format!(" — {}", notes.join("; "))
        },
    );
    Ok(Built {
        documents,
        properties,
        state_claims,
        secrets,
        hidden,
        summary,
        check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::model::{Mount, Port};

    fn classes() -> Classes {
        let pi: NodeClassSpec = serde_yaml::from_str(
            "nodeSelector: {homeplane.dev/class: pi}\narchitecture: arm64\ndefaults: {cpu: 250m, memory: 256Mi}",
        )
        .unwrap();
        let gpu: NodeClassSpec = serde_yaml::from_str(
            "nodeSelector: {homeplane.dev/class: gpu}\ngpuResource: amd.com/gpu\ndefaults: {cpu: '1', memory: 2Gi}",
        )
        .unwrap();
        Classes {
            specs: BTreeMap::from([("pi".to_string(), pi), ("gpu".to_string(), gpu)]),
            default: "pi".into(),
            gpu: Some("gpu".into()),
        }
    }

    fn docker(name: &str, networks: &[&str]) -> Container {
        let mut c = Container::new(
            name,
            "registry.example/app:1",
            Origin::Docker {
                endpoint: "tcp://gpu-host:2375".into(),
            },
        );
        c.networks = networks.iter().map(|n| n.to_string()).collect();
        c.restart = "unless-stopped".into();
        c.observed = Some(super::super::model::Observed {
            id: format!("{name}-id"),
            status: "running".into(),
            health: None,
            restart_count: 0,
            nano_cpus: 0,
            memory: 0,
        });
        c
    }

    fn volume(name: &str, target: &str) -> Mount {
        Mount {
            kind: MountKind::Volume(name.into()),
            target: target.into(),
            read_only: false,
            used_bytes: Some(3 << 30),
            is_file: false,
        }
    }

    fn build(input: &[Container]) -> (BTreeMap<String, NamespaceOut>, Report) {
        let networks = BTreeMap::from([
            (
                "homelab_edge".to_string(),
                Network {
                    short_name: "edge".into(),
                    internal: false,
                    default: false,
                },
            ),
            (
                "data".to_string(),
                Network {
                    short_name: "data".into(),
                    internal: true,
                    default: false,
                },
            ),
        ]);
        let options = Options {
            namespace: "homelab",
            storage_class: Some("local-path"),
            registry_docker_endpoint: None,
        };
        let mut report = Report::default();
        let out = containers(input, &networks, &classes(), &options, &mut report);
        (out, report)
    }

    fn doc<'a>(
        out: &'a BTreeMap<String, NamespaceOut>,
        ns: &str,
        kind: &str,
        name: &str,
    ) -> &'a Value {
        out[ns]
            .files
            .values()
            .flatten()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {ns}/{name}"))
    }

    #[test]
    fn networks_become_namespaces_and_policies_keep_them_apart() {
        let mut proxy = docker("caddy", &["homelab_edge", "data"]);
        proxy.ports.push(Port {
            container: 443,
            protocol: "TCP".into(),
            published: Some(443),
        });
        let mut db = docker("postgres", &["data"]);
        db.mounts.push(volume("pgdata", "/var/lib/postgresql/data"));
        db.cpu = Some(Milli(1000));
        db.memory = Some(Milli((1 << 30) * 1000));
        let cache = docker("redis", &["data"]);
        let web = docker("authelia", &["homelab_edge"]);
        let (out, report) = build(&[proxy, db, cache, web]);
        assert_eq!(
            out.keys().collect::<Vec<_>>(),
            ["data", "edge"],
            "{report:?}"
        );
        // caddy shares data with two others, edge with one: its home is data.
        let caddy = doc(&out, "data", "Deployment", "caddy");
        assert_eq!(
            caddy["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
            "pi"
        );
        let into_caddy = doc(&out, "data", "NetworkPolicy", "caddy-other-networks");
        assert_eq!(
            into_caddy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "edge"
        );
        let from_caddy = doc(
            &out,
            "edge",
            "NetworkPolicy",
            "from-containers-on-this-network",
        );
        assert_eq!(
            from_caddy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
            "caddy"
        );
        let published = doc(&out, "data", "NetworkPolicy", "caddy-published");
        assert_eq!(published["spec"]["ingress"][0]["ports"][0]["port"], 443);
        assert!(
            published["spec"]["ingress"][0]["from"].is_null(),
            "anyone may reach a published port"
        );
        assert!(doc(&out, "edge", "NetworkPolicy", "same-network-only").is_object());
        // State: a StatefulSet with a claim sized at twice its use, and a registry.
        let pg = doc(&out, "data", "StatefulSet", "postgres");
        assert_eq!(
            pg["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"],
            serde_json::json!({"cpu": "1", "memory": "1Gi"})
        );
        let claim = doc(&out, "data", "PersistentVolumeClaim", "pgdata");
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "6Gi");
        assert_eq!(claim["spec"]["storageClassName"], "local-path");
        assert_eq!(out["data"].state_claims, ["pgdata"]);
        let ids: Vec<&str> = out["data"]
            .properties
            .iter()
            .map(|p| p.id.as_str())
            .collect();
        assert!(ids.contains(&"data.postgres.cpu-limit"));
        assert!(ids.contains(&"data.postgres.docker.state"));
        registry::check("data", &out["data"].properties).unwrap();
        // Defaults are named.
        let redis = doc(&out, "data", "Deployment", "redis");
        assert!(
            redis["metadata"]["annotations"][NOTE_ANNOTATION]
                .as_str()
                .unwrap()
                .contains("default CPU 250m and memory 256Mi")
        );
        assert!(
            report
                .check
                .iter()
                .any(|l| l.starts_with("namespace data: its Docker network was internal"))
        );
    }

    #[test]
    fn what_cannot_be_imported_is_left_out_with_a_reason() {
        let mut files = docker("homeassistant", &["homelab_edge"]);
        files.mounts.push(Mount {
            kind: MountKind::Bind("/etc/ha/configuration.yaml".into()),
            target: "/config/configuration.yaml".into(),
            read_only: true,
            used_bytes: Some(100),
            is_file: true,
        });
        files.mounts.push(Mount {
            kind: MountKind::Bind("/var/run/docker.sock".into()),
            target: "/var/run/docker.sock".into(),
            read_only: false,
            used_bytes: None,
            is_file: false,
        });
        files.devices.push(super::super::model::Device {
            host: "/dev/ttyUSB0".into(),
            container: "/dev/zigbee".into(),
        });
        let mut sidecar = docker("vpn-client", &[]);
        sidecar.network_mode = NetworkMode::Container("gluetun".into());
        let mut leaky = docker("grafana", &["homelab_edge"]);
        leaky
            .env
            .push(("GF_SECURITY_ADMIN_PASSWORD".into(), "hunter2hunter2".into()));
        leaky
            .labels
            .insert("note".into(), "password is hunter2hunter2".into());
        let (out, report) = build(&[files, sidecar, leaky]);
        let text = serde_json::to_string(&out["edge"].files).unwrap();
        assert!(!text.contains("hunter2hunter2"));
        assert!(
            !text.contains("grafana"),
            "the container whose secret leaks elsewhere is left out"
        );
        let left = report.left_out.join("\n");
        assert!(
            left.contains("bind mount of the file /etc/ha/configuration.yaml"),
            "{left}"
        );
        assert!(left.contains("/var/run/docker.sock"), "{left}");
        assert!(left.contains("device /dev/ttyUSB0"), "{left}");
        assert!(
            left.contains("container vpn-client: it shares the network of container gluetun"),
            "{left}"
        );
        assert!(
            left.contains("container grafana: one of its secret values also appears"),
            "{left}"
        );
        assert!(
            report
                .check
                .iter()
                .any(|l| l.contains("kubectl create configmap homeassistant-files"))
        );
    }

    #[test]
    fn a_gpu_container_goes_to_the_gpu_class() {
        let mut llm = docker("ollama", &[]);
        llm.gpu = Some(Gpu::Amd);
        llm.devices.push(super::super::model::Device {
            host: "/dev/kfd".into(),
            container: "/dev/kfd".into(),
        });
        llm.cpu = Some(Milli(8000));
        llm.memory = Some(Milli((24 << 30) * 1000));
        let (out, report) = build(&[llm]);
        let d = doc(&out, "homelab", "Deployment", "ollama");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["amd.com/gpu"],
            "1"
        );
        assert_eq!(
            d["spec"]["strategy"]["type"], "Recreate",
            "one GPU cannot be held twice"
        );
        assert!(
            report.left_out.is_empty(),
            "the GPU device is the class's resource now: {:?}",
            report.left_out
        );
    }

    #[test]
    fn quantities_are_exact() {
        assert_eq!(memory_quantity(Milli((256 << 20) * 1000)), "256Mi");
        assert_eq!(memory_quantity(Milli(300_000_000 * 1000)), "300M");
        assert_eq!(memory_quantity(Milli(123_456_789 * 1000)), "123456789");
        assert_eq!(claim_size(None), "1Gi");
        assert_eq!(claim_size(Some(0)), "1Gi");
        assert_eq!(claim_size(Some(3 << 30)), "6Gi");
        assert_eq!(claim_size(Some((1 << 30) + 1)), "3Gi");
    }
}
