//! The builder against YAML fixtures in `fixtures/`: `NAME.yaml` holds the class, owner and
//! workload; `NAME.expected.yaml` the objects it must produce. `HOMEPLANE_BLESS=1 cargo test`
//! rewrites the expected files after a deliberate change (review the diff).

use std::path::{Path, PathBuf};

use homeplane_crds::common::Placement;
use homeplane_crds::nodeclass::NodeClassSpec;
use serde::Deserialize;

use super::*;

#[derive(Deserialize)]
struct NamedClass {
    name: String,
    spec: NodeClassSpec,
}

#[derive(Deserialize)]
struct Fixture {
    class: NamedClass,
    owner: Owner,
    workload: Workload,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/workload/fixtures")
}

fn render(objects: &Objects) -> String {
    let mut docs = Vec::new();
    match &objects.runner {
        Runner::Deployment(d) => docs.push(serde_yaml::to_string(d).unwrap()),
        Runner::StatefulSet(s) => docs.push(serde_yaml::to_string(s).unwrap()),
    }
    if let Some(s) = &objects.service {
        docs.push(serde_yaml::to_string(s).unwrap());
    }
    docs.join("---\n")
}

fn pod_spec(objects: &Objects) -> &PodSpec {
    match &objects.runner {
        Runner::Deployment(d) => d.spec.template.spec.as_ref().unwrap(),
        Runner::StatefulSet(s) => s.spec.template.spec.as_ref().unwrap(),
    }
}

fn load(name: &str) -> (Fixture, Objects) {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}.yaml"))).unwrap();
    let f: Fixture = serde_yaml::from_str(&text).unwrap();
    let class = Class {
        name: &f.class.name,
        spec: &f.class.spec,
    };
    let objects = build(&f.workload, &f.owner, class).unwrap();
    (f, objects)
}

#[test]
fn fixtures_build_the_expected_objects() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let stem = name.strip_suffix(".yaml")?;
            (!stem.ends_with(".expected") && stem != "errors").then(|| stem.to_string())
        })
        .collect();
    names.sort();
    assert!(names.len() >= 3, "fixtures missing: {names:?}");
    let bless = std::env::var_os("HOMEPLANE_BLESS").is_some();
    for name in names {
        let (_, objects) = load(&name);
        let got = render(&objects);
        let path = fixtures().join(format!("{name}.expected.yaml"));
        if bless {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!("{} is missing: run with HOMEPLANE_BLESS=1", path.display())
        });
        assert_eq!(got, want, "fixture {name} differs from {}", path.display());
    }
}

#[test]
fn every_container_has_cpu_and_memory_requests_and_limits() {
    for name in ["pi-cache", "gpu-stage", "stateful"] {
        let (_, objects) = load(name);
        for c in &pod_spec(&objects).containers {
            let r = c.resources.as_ref().unwrap();
            for map in [r.requests.as_ref().unwrap(), r.limits.as_ref().unwrap()] {
                assert!(map.contains_key("cpu"), "{name}: no cpu");
                assert!(map.contains_key("memory"), "{name}: no memory");
            }
        }
    }
}

#[test]
fn class_defaults_fill_in_what_the_placement_leaves_out() {
    let (_, objects) = load("pi-cache");
    assert_eq!(objects.asks.cpu.cpu(), "250m");
    assert_eq!(objects.asks.memory.memory(), "256Mi");
    let (_, objects) = load("stateful");
    assert_eq!(objects.asks.cpu.cpu(), "250m");
    assert_eq!(objects.asks.memory.memory(), "1Gi");
}

#[test]
fn the_pi_is_pinned_to_arm64_and_the_gpu_class_tolerates_its_taint() {
    let (_, pi) = load("pi-cache");
    let terms = pod_spec(&pi)
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms
        .clone();
    let keys: Vec<(String, Vec<String>)> = terms[0]
        .match_expressions
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.values.unwrap()))
        .collect();
    assert!(keys.contains(&("kubernetes.io/arch".into(), vec!["arm64".into()])));
    assert!(keys.contains(&("homeplane.dev/class".into(), vec!["pi".into()])));
    assert!(pod_spec(&pi).tolerations.is_none());

    let (_, gpu) = load("gpu-stage");
    let spec = pod_spec(&gpu);
    assert_eq!(
        spec.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("amd.com/gpu")
    );
    let limits = spec.containers[0]
        .resources
        .as_ref()
        .unwrap()
        .limits
        .as_ref()
        .unwrap();
    assert_eq!(limits.get("amd.com/gpu"), Some(&Quantity("1".into())));
    assert!(!limits.contains_key("nvidia.com/gpu"));
}

#[test]
fn objects_carry_the_standard_labels_and_the_owner() {
    let (f, objects) = load("gpu-stage");
    let Runner::Deployment(d) = &objects.runner else {
        panic!("a workload without storage is a Deployment");
    };
    let labels = d.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[MANAGED_BY_LABEL], "homeplane");
    assert_eq!(labels[NAME_LABEL], "voice-stage");
    assert_eq!(labels[INSTANCE_LABEL], "assistant-llm");
    assert_eq!(labels[OWNER_LABEL], "voicepipeline.assistant");
    let refs = d.metadata.owner_references.as_ref().unwrap();
    assert_eq!(refs[0].uid, f.owner.uid);
    assert_eq!(refs[0].controller, Some(true));
    assert!(objects.service.is_some());
}

#[test]
fn storage_makes_a_statefulset_and_long_owner_labels_stay_valid() {
    let (f, objects) = load("stateful");
    assert!(matches!(objects.runner, Runner::StatefulSet(_)));
    let label = f.owner.label();
    assert!(label.len() <= 63, "{label}");
    assert!(label.starts_with("memoryserver.a-memory-server"));
    assert_ne!(
        label,
        Owner {
            name: format!("{}x", f.owner.name),
            ..f.owner.clone()
        }
        .label()
    );
}

#[derive(Deserialize)]
struct ErrorCase {
    name: String,
    class: NamedClass,
    placement: Placement,
    error: String,
}

#[test]
fn refused_placements_say_what_to_fix() {
    let text = std::fs::read_to_string(fixtures().join("errors.yaml")).unwrap();
    let cases: Vec<ErrorCase> = serde_yaml::from_str(&text).unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let class = Class {
            name: &case.class.name,
            spec: &case.class.spec,
        };
        let err = asks("redis cache", &case.placement, class).unwrap_err();
        assert_eq!(err.to_string(), case.error, "case {}", case.name);
    }
}
