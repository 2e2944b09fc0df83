//! Kinds whose controllers come later never pretend: a valid object is stored and its status
//! says `Ready=False, reason NotImplemented`, with the generation it was computed from.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use homeplane_testkit::{Cluster, Operator, TestNamespace, eventually};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");

const WORKFLOW: &str = r#"apiVersion: homeplane.dev/v1alpha1
kind: Workflow
metadata: {name: email-classifier}
spec:
  n8n: {url: "http://n8n.automation:5678", apiKeySecret: {name: n8n-api, key: apiKey}}
  active: true
  definition:
    name: Email classification
    nodes: []
    connections: {}
"#;

#[test]
fn kinds_without_a_controller_report_not_implemented() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "pending").unwrap();
    let (ok, text) = cluster.apply(&ns.name, WORKFLOW).unwrap();
    assert!(ok, "{text}");
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    let reason = eventually(Duration::from_secs(60), "status of the Workflow", || {
        let reason = cluster.kubectl_ok(&[
            "get",
            "workflow",
            "email-classifier",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
        ])?;
        Ok((!reason.is_empty()).then_some(reason))
    })
    .unwrap();
    assert_eq!(reason, "NotImplemented");
    let message = cluster
        .kubectl_ok(&[
            "get",
            "workflow",
            "email-classifier",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.conditions[0].message}",
        ])
        .unwrap();
    assert!(
        message.contains("does not reconcile Workflow objects yet")
            && message.contains("nothing was created or changed"),
        "{message}"
    );
    let generation = cluster
        .kubectl_ok(&[
            "get",
            "workflow",
            "email-classifier",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.metadata.generation}/{.status.observedGeneration}",
        ])
        .unwrap();
    assert_eq!(generation, "1/1");
    let waited = cluster
        .kubectl(&[
            "wait",
            "workflow/email-classifier",
            "-n",
            &ns.name,
            "--for=condition=Ready",
            "--timeout=2s",
        ])
        .unwrap();
    assert!(
        !waited.status.success(),
        "kubectl wait must not see a Workflow nobody reconciles as Ready"
    );
    // `kubectl get` shows it in the Ready column.
    let table = cluster.kubectl_ok(&["get", "wf", "-n", &ns.name]).unwrap();
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(
        table.starts_with("NAME") && table.contains("READY") && row.contains(" False "),
        "{table}"
    );
}
