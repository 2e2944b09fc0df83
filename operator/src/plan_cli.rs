//! `homeplane plan -f DIR`: the capacity plan of a folder of manifests, offline. The same
//! builder and the same arithmetic as the controllers: NodeClasses give the room (their
//! `capacity`, or Node manifests in the folder), Deployments/StatefulSets/Pods pinned to a
//! class are what already runs, and MemoryServers, VoicePipelines and managed Databases are
//! expanded into the workloads homeplane would create. Exits non-zero when something does not fit.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use homeplane_crds::database::Database;
use homeplane_crds::memory::MemoryServer;
use homeplane_crds::nodeclass::{NodeClass, NodeClassSpec};
use homeplane_crds::voice::VoicePipeline;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, NodeStatus, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use crate::controllers::database::managed;
use crate::controllers::nodeclass::plan as class_plan;
use crate::controllers::{memory, voice};
use crate::quantity::Milli;
use crate::workload::capacity::{self, Demand};
use crate::workload::{self, Class, Owner, Workload};

/// Options of `homeplane plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Folder (or file) of manifests; a folder with a kustomization.yaml is read through its
    /// `resources`. May be repeated.
    #[arg(short = 'f', long = "filename", required = true)]
    pub paths: Vec<PathBuf>,
}

/// Every YAML document under `path`, following kustomization `resources` where present.
fn documents(
    path: &Path,
    seen: &mut BTreeSet<PathBuf>,
    out: &mut Vec<(PathBuf, serde_yaml::Value)>,
) -> Result<()> {
    let canonical = path
        .canonicalize()
        .with_context(|| format!("{} does not exist", path.display()))?;
    if !seen.insert(canonical.clone()) {
        return Ok(());
    }
    if canonical.is_dir() {
        let kustomization = ["kustomization.yaml", "kustomization.yml", "Kustomization"]
            .iter()
            .map(|n| canonical.join(n))
            .find(|p| p.exists());
        if let Some(k) = kustomization {
            let text = std::fs::read_to_string(&k)?;
            let doc: serde_yaml::Value = serde_yaml::from_str(&text)
                .with_context(|| format!("{} is not YAML", k.display()))?;
            for r in doc["resources"].as_sequence().into_iter().flatten() {
                if let Some(r) = r.as_str() {
                    documents(&canonical.join(r), seen, out)?;
                }
            }
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&canonical)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            let yaml = e.extension().is_some_and(|x| x == "yaml" || x == "yml");
            if e.is_dir() || yaml {
                documents(&e, seen, out)?;
            }
        }
        return Ok(());
    }
    let text = std::fs::read_to_string(&canonical)?;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
            .with_context(|| format!("{} is not YAML", canonical.display()))?;
        if !value.is_null() {
            out.push((canonical.clone(), value));
        }
    }
    Ok(())
}

/// A pod template's placement: whether it is pinned to the class's nodes.
fn pinned(spec: &PodSpec, class: &NodeClassSpec) -> bool {
    let by_selector = spec
        .node_selector
        .as_ref()
        .is_some_and(|s| class.node_selector.iter().all(|(k, v)| s.get(k) == Some(v)));
    let by_affinity = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|sel| {
            sel.node_selector_terms.iter().any(|t| {
                class.node_selector.iter().all(|(k, v)| {
                    t.match_expressions.iter().flatten().any(|e| {
                        &e.key == k
                            && e.operator == "In"
                            && e.values.iter().flatten().any(|x| x == v)
                    })
                })
            })
        });
    by_selector || by_affinity
}

/// Nodes standing for a class's declared capacity.
fn declared_nodes(name: &str, spec: &NodeClassSpec) -> Result<Vec<Node>> {
    let Some(c) = &spec.capacity else {
        bail!(
            "NodeClass {name} declares no spec.capacity and the folder has no Node of the class: add capacity (nodes, cpu, memory, gpu) so the plan knows what the class can give"
        );
    };
    let mut allocatable = BTreeMap::from([
        ("cpu".to_string(), Quantity(c.cpu.clone())),
        ("memory".to_string(), Quantity(c.memory.clone())),
    ]);
    if let Some(g) = &spec.gpu_resource {
        allocatable.insert(g.clone(), Quantity(c.gpu.to_string()));
    }
    Ok((1..=c.nodes.max(1))
        .map(|i| Node {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{i}")),
                labels: Some(spec.node_selector.clone()),
                ..ObjectMeta::default()
            },
            status: Some(NodeStatus {
                allocatable: Some(allocatable.clone()),
                ..NodeStatus::default()
            }),
            ..Node::default()
        })
        .collect())
}

/// What runs (or would run) in one class.
#[derive(Default)]
struct ClassPlan {
    /// (name, kind, pods) already declared as plain workloads.
    existing: Vec<(String, String, i32, class_plan::Asks)>,
    /// Workloads homeplane creates, by owner.
    homeplane: Vec<(String, Demand)>,
}

/// Which declared workloads do not fit beside the others in a class whose declared workloads
/// exceed it: the largest are taken out, one at a time, until the rest fit (a scheduler places
/// them in no particular order; these are the ones to shrink, move or give a node).
fn overflow(
    room: &capacity::ClassRoom,
    existing: &[(String, String, i32, class_plan::Asks)],
) -> String {
    let available = |r: &capacity::Room| r.allocatable - r.reserved;
    let gpu_room = room.gpu.as_ref().map(|(_, r)| available(r));
    let mut kept: Vec<&(String, String, i32, class_plan::Asks)> = existing.iter().collect();
    let total = |kept: &[&(String, String, i32, class_plan::Asks)]| {
        kept.iter().fold(
            (Milli::ZERO, Milli::ZERO, Milli::ZERO),
            |(c, m, g), (_, _, n, a)| {
                let n = i128::from((*n).max(0));
                (
                    c + Milli(a.cpu_request.0 * n),
                    m + Milli(a.memory_request.0 * n),
                    g + Milli(a.gpu.0 * n),
                )
            },
        )
    };
    let over = |(c, m, g): (Milli, Milli, Milli)| {
        c > available(&room.cpu) || m > available(&room.memory) || gpu_room.is_some_and(|r| g > r)
    };
    let (cpu, memory, _) = total(&kept);
    let mut out_of_room = Vec::new();
    // Largest first: by the share of the class each asks for.
    let share = |a: &class_plan::Asks| {
        let part = |x: Milli, of: Milli| x.0 as f64 / (of.0.max(1)) as f64;
        part(a.cpu_request, available(&room.cpu))
            .max(part(a.memory_request, available(&room.memory)))
    };
    kept.sort_by(|(_, _, _, a), (_, _, _, b)| share(b).total_cmp(&share(a)));
    while over(total(&kept)) && !kept.is_empty() {
        let (name, _, replicas, a) = kept.remove(0);
        out_of_room.push(format!(
            "{name} ({}cpu {}, memory {}{})",
            if *replicas > 1 {
                format!("{replicas} pods, each ")
            } else {
                String::new()
            },
            a.cpu_request.cpu(),
            a.memory_request.memory(),
            if a.gpu.0 > 0 {
                format!(", {} GPU", a.gpu.count())
            } else {
                String::new()
            }
        ));
    }
    format!(
        "the workloads declared for it ask for cpu {} and memory {}, of cpu {} and memory {} available; these do not fit beside the others: {}",
        cpu.cpu(),
        memory.memory(),
        available(&room.cpu).cpu(),
        available(&room.memory).memory(),
        out_of_room.join("; ")
    )
}

/// Prints the plan of the manifests under `args.paths`; fails when something does not fit.
pub fn run(args: PlanArgs) -> Result<()> {
    let (text, fits) = plan(&args.paths)?;
    print!("{text}");
    if !fits {
        bail!("some workloads do not fit their NodeClass (see above)");
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(
    file: &Path,
    doc: &serde_yaml::Value,
    kind: &str,
) -> Result<T> {
    serde_yaml::from_value(doc.clone()).with_context(|| {
        format!(
            "{}: {kind} {}",
            file.display(),
            doc["metadata"]["name"].as_str().unwrap_or("?")
        )
    })
}

/// The plan as text, and whether everything fits.
pub fn plan(paths: &[PathBuf]) -> Result<(String, bool)> {
    let mut docs = Vec::new();
    let mut seen = BTreeSet::new();
    for p in paths {
        documents(p, &mut seen, &mut docs)?;
    }
    let mut classes: BTreeMap<String, NodeClassSpec> = BTreeMap::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut templates: Vec<(String, String, i32, PodSpec)> = Vec::new();
    let mut owned: Vec<(Owner, Vec<Workload>)> = Vec::new();
    for (file, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let ns = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match kind {
            "NodeClass" => {
                let nc: NodeClass = parse(file, doc, kind)?;
                classes.insert(nc.name_any(), nc.spec);
            }
            "Node" => nodes.push(parse(file, doc, kind)?),
            "Deployment" => {
                let d: Deployment = parse(file, doc, kind)?;
                if let Some(spec) = d.spec.template.spec {
                    templates.push((
                        format!("{ns}/{name}"),
                        kind.into(),
                        d.spec.replicas.unwrap_or(1),
                        spec,
                    ));
                }
            }
            "StatefulSet" => {
                let s: StatefulSet = parse(file, doc, kind)?;
                if let Some(spec) = s.spec.template.spec {
                    templates.push((
                        format!("{ns}/{name}"),
                        kind.into(),
                        s.spec.replicas.unwrap_or(1),
                        spec,
                    ));
                }
            }
            "Pod" => {
                let p: Pod = parse(file, doc, kind)?;
                if let Some(spec) = p.spec {
                    templates.push((format!("{ns}/{name}"), kind.into(), 1, spec));
                }
            }
            "MemoryServer" => {
                let mut ms: MemoryServer = parse(file, doc, kind)?;
                ms.metadata.namespace = Some(ns.clone());
                owned.push((Owner::of(&ms), memory::plan::workloads(&ms, None)));
            }
            "VoicePipeline" => {
                let mut vp: VoicePipeline = parse(file, doc, kind)?;
                vp.metadata.namespace = Some(ns.clone());
                owned.push((Owner::of(&vp), voice::plan::workloads(&vp)));
            }
            "Database" => {
                let mut db: Database = parse(file, doc, kind)?;
                db.metadata.namespace = Some(ns.clone());
                if let Some(server) = db.spec.server.managed.clone() {
                    owned.push((Owner::of(&db), vec![managed::workload(&db, &server)]));
                }
            }
            _ => {}
        }
    }

    let mut out = String::new();
    let mut fits = true;
    let mut per_class: BTreeMap<String, ClassPlan> = BTreeMap::new();
    let mut unplaced = Vec::new();
    for (name, kind, replicas, spec) in &templates {
        let class = classes
            .iter()
            .find(|(_, c)| pinned(spec, c))
            .map(|(n, _)| n.clone());
        let pod = Pod {
            spec: Some(spec.clone()),
            ..Pod::default()
        };
        match class {
            Some(c) => {
                let gpu = classes[&c].gpu_resource.clone();
                let asks = class_plan::asks(&pod, gpu.as_deref());
                per_class.entry(c).or_default().existing.push((
                    name.clone(),
                    kind.clone(),
                    *replicas,
                    asks,
                ));
            }
            None => unplaced.push(name.clone()),
        }
    }
    for (owner, workloads) in &owned {
        for w in workloads {
            let who = format!(
                "{}/{} ({} {})",
                owner.namespace, w.name, owner.kind, owner.name
            );
            let Some(spec) = classes.get(&w.placement.class) else {
                writeln!(
                    out,
                    "error: {who} asks for NodeClass {}, which is not in the manifests",
                    w.placement.class
                )?;
                fits = false;
                continue;
            };
            let class = Class {
                name: &w.placement.class,
                spec,
            };
            match workload::asks(&w.name, &w.placement, class) {
                Ok(asks) => per_class
                    .entry(w.placement.class.clone())
                    .or_default()
                    .homeplane
                    .push((
                        who,
                        Demand {
                            name: w.name.clone(),
                            asks,
                            replicas: w.replicas,
                        },
                    )),
                Err(e) => {
                    writeln!(out, "error: {who}: {e}")?;
                    fits = false;
                }
            }
        }
    }

    for (name, spec) in &classes {
        let class_nodes: Vec<Node> = {
            let listed: Vec<Node> = nodes
                .iter()
                .filter(|n| {
                    spec.node_selector
                        .iter()
                        .all(|(k, v)| n.labels().get(k) == Some(v))
                })
                .cloned()
                .collect();
            if listed.is_empty() {
                declared_nodes(name, spec)?
            } else {
                listed
            }
        };
        let plan = per_class.remove(name).unwrap_or_default();
        // What already runs becomes pods on the first node.
        let first = class_nodes.first().map(|n| n.name_any());
        let pods: Vec<Pod> = plan
            .existing
            .iter()
            .flat_map(|(_, _, replicas, asks)| {
                let q = |m: Milli, f: fn(Milli) -> String| Quantity(f(m));
                let mut requests = BTreeMap::from([
                    ("cpu".to_string(), q(asks.cpu_request, Milli::cpu)),
                    ("memory".to_string(), q(asks.memory_request, Milli::memory)),
                ]);
                if let Some(g) = &spec.gpu_resource {
                    requests.insert(g.clone(), q(asks.gpu, Milli::count));
                }
                let pod = Pod {
                    spec: Some(PodSpec {
                        node_name: first.clone(),
                        containers: vec![k8s_openapi::api::core::v1::Container {
                            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                                requests: Some(requests),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..PodSpec::default()
                    }),
                    ..Pod::default()
                };
                std::iter::repeat_n(pod, usize::try_from(*replicas).unwrap_or(0))
            })
            .collect();
        let room = capacity::room(name, spec, &class_nodes, &pods, None)?;
        writeln!(
            out,
            "NodeClass {name}: {} node(s){}; allocatable cpu {}, memory {}{}; reserved cpu {}, memory {}",
            room.nodes,
            spec.architecture
                .map(|a| format!(" ({})", a.label()))
                .unwrap_or_default(),
            room.cpu.allocatable.cpu(),
            room.memory.allocatable.memory(),
            room.gpu
                .as_ref()
                .map(|(g, r)| format!(", {} {g}", r.allocatable.count()))
                .unwrap_or_default(),
            room.cpu.reserved.cpu(),
            room.memory.reserved.memory(),
        )?;
        writeln!(
            out,
            "  {:<52} {:>6} {:>8} {:>9} {:>4}",
            "WORKLOAD", "PODS", "CPU", "MEMORY", "GPU"
        )?;
        let mut lines: Vec<(String, i32, Milli, Milli, Milli, &str)> = Vec::new();
        for (name, _, replicas, asks) in &plan.existing {
            lines.push((
                name.clone(),
                *replicas,
                asks.cpu_request,
                asks.memory_request,
                asks.gpu,
                "",
            ));
        }
        for (who, d) in &plan.homeplane {
            lines.push((
                who.clone(),
                d.replicas,
                d.asks.cpu,
                d.asks.memory,
                Milli(i128::from(d.asks.gpu) * 1000),
                "*",
            ));
        }
        for (who, replicas, cpu, memory, gpu, mark) in &lines {
            let gpu = if gpu.0 == 0 {
                "-".to_string()
            } else {
                gpu.count()
            };
            writeln!(
                out,
                "{mark:1} {who:<52} {replicas:>6} {:>8} {:>9} {gpu:>4}",
                cpu.cpu(),
                memory.memory()
            )?;
        }
        let demands: Vec<Demand> = plan.homeplane.iter().map(|(_, d)| d.clone()).collect();
        let new = capacity::total(&demands);
        let cpu_total = room.cpu.running + new.cpu;
        let memory_total = room.memory.running + new.memory;
        writeln!(
            out,
            "  {:<52} {:>6} {:>8} {:>9} {:>4}",
            "total",
            "",
            cpu_total.cpu(),
            memory_total.memory(),
            room.gpu
                .as_ref()
                .map(|(_, r)| (r.running + Milli(i128::from(new.gpu) * 1000)).count())
                .unwrap_or_else(|| "-".into()),
        )?;
        writeln!(
            out,
            "  {:<52} {:>6} {:>8} {:>9} {:>4}",
            "available (allocatable minus reserved)",
            "",
            (room.cpu.allocatable - room.cpu.reserved).cpu(),
            (room.memory.allocatable - room.memory.reserved).memory(),
            room.gpu
                .as_ref()
                .map(|(_, r)| r.allocatable.count())
                .unwrap_or_else(|| "-".into()),
        )?;
        let already_over = room.cpu.free() < Milli::ZERO
            || room.memory.free() < Milli::ZERO
            || room
                .gpu
                .as_ref()
                .is_some_and(|(_, r)| r.free() < Milli::ZERO);
        if already_over {
            // The declared workloads alone exceed the class: name the ones that do not fit.
            fits = false;
            writeln!(out, "  DOES NOT FIT: {}\n", overflow(&room, &plan.existing))?;
        } else {
            match capacity::fit(&room, &demands) {
                Ok(()) => writeln!(out, "  fits\n")?,
                Err(e) => {
                    fits = false;
                    writeln!(out, "  DOES NOT FIT: {}\n", e.0)?;
                }
            }
        }
    }
    if !unplaced.is_empty() {
        writeln!(
            out,
            "not pinned to any NodeClass (not counted): {}",
            unplaced.join(", ")
        )?;
    }
    writeln!(
        out,
        "* = created by homeplane from a MemoryServer, VoicePipeline or managed Database"
    )?;
    Ok((out, fits))
}
