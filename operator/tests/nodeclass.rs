//! NodeClass on the real control plane: the status matches the pods the real scheduler placed
//! on the class's nodes, and limits beyond allocatable minus the reserve are flagged.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use homeplane_testkit::{Cluster, Operator, TestNamespace, TestNode, eventually};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");

fn nodeclass(cluster: &Cluster, name: &str) -> Value {
    let json = cluster
        .kubectl_ok(&["get", "nodeclass", name, "-o", "json"])
        .unwrap_or_default();
    serde_json::from_str(&json).unwrap_or(Value::Null)
}

fn condition<'a>(nc: &'a Value, type_: &str) -> Option<&'a Value> {
    nc.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn deployment(
    name: &str,
    node: &TestNode,
    replicas: u32,
    cpu: &str,
    memory: &str,
    gpu: bool,
) -> String {
    let gpu = if gpu { ", amd.com/gpu: \"1\"" } else { "" };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, app.kubernetes.io/managed-by: homeplane}}}}
    spec:
      {placement}
      containers:
      - name: main
        image: example/{name}:1
        resources:
          requests: {{cpu: {cpu}, memory: {memory}{gpu}}}
          limits: {{cpu: {cpu}, memory: {memory}{gpu}}}
"#,
        placement = node.placement_yaml()
    )
}

/// Names of the pods the scheduler bound to `node` and that run there.
fn running_pods_on(cluster: &Cluster, node: &str) -> Vec<String> {
    let out = cluster
        .kubectl_ok(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            &format!("spec.nodeName={node},status.phase=Running"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .unwrap_or_default();
    let mut names: Vec<String> = out.split_whitespace().map(String::from).collect();
    names.sort();
    names
}

fn listed_pods(nc: &Value) -> Vec<String> {
    let mut names: Vec<String> = nc
        .pointer("/status/pods")
        .and_then(Value::as_array)
        .map(|pods| {
            pods.iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn status_matches_what_the_scheduler_placed_and_flags_overcommit() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "nodeclass").unwrap();
    let node = TestNode::new(cluster, "arm64", "4", "8Gi", 0).unwrap();
    let class = format!("pi-{}", node.key);
    let spec = format!(
        "apiVersion: homeplane.dev/v1alpha1\nkind: NodeClass\nmetadata: {{name: {class}}}\nspec:\n  nodeSelector: {{homeplane.dev/test-node: \"{}\"}}\n  reserved: {{cpu: 500m, memory: 1Gi}}\n",
        node.key
    );
    let (ok, text) = cluster.apply(&ns.name, &spec).unwrap();
    assert!(ok, "{text}");
    let _operator =
        Operator::start(BINARY, cluster, &ns.name, &format!("nc-{}", node.key), &[]).unwrap();

    // Three pods of 500m / 512Mi, placed by the real scheduler.
    let (ok, text) = cluster
        .apply(
            &ns.name,
            &deployment("svc", &node, 3, "500m", "512Mi", false),
        )
        .unwrap();
    assert!(ok, "{text}");
    let nc = eventually(
        Duration::from_secs(60),
        "the plan to count 3 running pods",
        || {
            let nc = nodeclass(cluster, &class);
            let running = running_pods_on(cluster, &node.name);
            Ok(
                (running.len() == 3 && nc.pointer("/status/podCount") == Some(&Value::from(3)))
                    .then_some(nc),
            )
        },
    )
    .unwrap();
    assert_eq!(
        listed_pods(&nc),
        running_pods_on(cluster, &node.name),
        "status lists exactly the scheduled pods"
    );
    assert_eq!(
        nc.pointer("/status/nodes"),
        Some(&serde_json::json!([node.name]))
    );
    let cpu = &nc["status"]["capacity"]["cpu"];
    assert_eq!(
        (
            cpu["allocatable"].as_str(),
            cpu["requested"].as_str(),
            cpu["limits"].as_str()
        ),
        (Some("4"), Some("1500m"), Some("1500m"))
    );
    assert_eq!(cpu["free"], "2");
    let memory = &nc["status"]["capacity"]["memory"];
    assert_eq!(
        (memory["allocatable"].as_str(), memory["requested"].as_str()),
        (Some("8Gi"), Some("1536Mi"))
    );
    assert_eq!(
        condition(&nc, "Ready").map(|c| c["status"].clone()),
        Some("True".into())
    );
    let over = condition(&nc, "Overcommitted").cloned().unwrap_or_default();
    assert_eq!(over["status"], "False", "{over}");
    assert_eq!(over["observedGeneration"], nc["metadata"]["generation"]);

    // Eight pods: the scheduler fits them in the node's 4 CPUs, but the class keeps 500m in
    // reserve, so the plan is overcommitted.
    cluster
        .kubectl_ok(&["scale", "deployment/svc", "-n", &ns.name, "--replicas=8"])
        .unwrap();
    let nc = eventually(Duration::from_secs(60), "Overcommitted=True", || {
        let nc = nodeclass(cluster, &class);
        Ok(condition(&nc, "Overcommitted")
            .is_some_and(|c| c["status"] == "True")
            .then_some(nc))
    })
    .unwrap();
    let over = condition(&nc, "Overcommitted").cloned().unwrap_or_default();
    assert_eq!(over["reason"], "LimitsExceedCapacity");
    let message = over["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(
            "CPU requests 4 exceed the 3500m available (4 allocatable minus 500m reserved)"
        ),
        "{message}"
    );
    assert_eq!(nc["status"]["capacity"]["cpu"]["free"], "-500m");

    // A person sees it in `kubectl get nodeclass` and as a Warning event.
    let table = cluster.kubectl_ok(&["get", "nodeclass", &class]).unwrap();
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..7],
        [class.as_str(), "1", "4", "4", "4Gi", "8Gi", "True"],
        "{table}"
    );
    eventually(
        Duration::from_secs(30),
        "a Warning event Overcommitted",
        || {
            let events = cluster.kubectl_ok(&[
                "get",
                "events",
                "-A",
                "--field-selector",
                "reason=Overcommitted",
                "-o",
                "wide",
            ])?;
            Ok(events.contains(&class).then_some(()))
        },
    )
    .unwrap();

    // Back within capacity when the workload shrinks.
    cluster
        .kubectl_ok(&["scale", "deployment/svc", "-n", &ns.name, "--replicas=2"])
        .unwrap();
    eventually(Duration::from_secs(60), "Overcommitted=False again", || {
        let nc = nodeclass(cluster, &class);
        Ok(
            (condition(&nc, "Overcommitted").is_some_and(|c| c["status"] == "False")
                && nc.pointer("/status/podCount") == Some(&Value::from(2)))
            .then_some(()),
        )
    })
    .unwrap();
    cluster
        .kubectl_ok(&["delete", "nodeclass", &class])
        .unwrap();
}

#[test]
fn gpu_class_counts_the_gpu_resource() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "gpuclass").unwrap();
    let node = TestNode::new(cluster, "amd64", "16", "64Gi", 1).unwrap();
    let class = format!("gpu-{}", node.key);
    let spec = format!(
        "apiVersion: homeplane.dev/v1alpha1\nkind: NodeClass\nmetadata: {{name: {class}}}\nspec:\n  nodeSelector: {{homeplane.dev/test-node: \"{}\"}}\n  gpuResource: amd.com/gpu\n",
        node.key
    );
    let (ok, text) = cluster.apply(&ns.name, &spec).unwrap();
    assert!(ok, "{text}");
    let _operator =
        Operator::start(BINARY, cluster, &ns.name, &format!("gpu-{}", node.key), &[]).unwrap();
    let (ok, text) = cluster
        .apply(&ns.name, &deployment("whisper", &node, 1, "2", "8Gi", true))
        .unwrap();
    assert!(ok, "{text}");
    let nc = eventually(Duration::from_secs(60), "one GPU requested", || {
        let nc = nodeclass(cluster, &class);
        Ok((nc.pointer("/status/capacity/gpu/requested") == Some(&Value::from("1"))).then_some(nc))
    })
    .unwrap();
    assert_eq!(nc["status"]["capacity"]["gpu"]["allocatable"], "1");
    assert_eq!(nc["status"]["pods"][0]["gpu"], 1);
    cluster
        .kubectl_ok(&["delete", "nodeclass", &class])
        .unwrap();
}

#[test]
fn a_class_without_nodes_says_which_labels_it_looked_for() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "nonodes").unwrap();
    let class = format!("nowhere-{}", homeplane_testkit::suffix());
    let spec = format!(
        "apiVersion: homeplane.dev/v1alpha1\nkind: NodeClass\nmetadata: {{name: {class}}}\nspec:\n  nodeSelector: {{homeplane.dev/class: {class}}}\n"
    );
    let (ok, text) = cluster.apply(&ns.name, &spec).unwrap();
    assert!(ok, "{text}");
    let _operator = Operator::start(BINARY, cluster, &ns.name, &class, &[]).unwrap();
    let ready = eventually(
        Duration::from_secs(60),
        "Ready=False NoMatchingNodes",
        || {
            let nc = nodeclass(cluster, &class);
            Ok(condition(&nc, "Ready")
                .filter(|c| c["reason"] == "NoMatchingNodes")
                .cloned())
        },
    )
    .unwrap();
    assert_eq!(ready["status"], "False");
    assert!(
        ready["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("homeplane.dev/class={class}"))
    );
    let waited = cluster
        .kubectl(&[
            "wait",
            &format!("nodeclass/{class}"),
            "--for=condition=Ready",
            "--timeout=2s",
        ])
        .unwrap();
    assert!(
        !waited.status.success(),
        "kubectl wait must not report a class without nodes as Ready"
    );
    cluster
        .kubectl_ok(&["delete", "nodeclass", &class])
        .unwrap();
}
