//! Kinds whose controllers come later never pretend: a valid object is stored and its status
//! says `Ready=False, reason NotImplemented`, with the generation it was computed from.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use homeplane_testkit::{Cluster, Operator, TestNamespace, eventually};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");

const POLICY: &str = r#"apiVersion: homeplane.dev/v1alpha1
kind: BackupPolicy
metadata: {name: homelab}
spec:
  schedule: "0 3 * * *"
  source: {database: {name: homelab}}
  destination: {endpoint: "https://r2.example.com", bucket: homelab-backups, credentialsSecret: r2}
  recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
"#;

#[test]
fn kinds_without_a_controller_report_not_implemented() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "pending").unwrap();
    let (ok, text) = cluster.apply(&ns.name, POLICY).unwrap();
    assert!(ok, "{text}");
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    let reason = eventually(
        Duration::from_secs(60),
        "status of the BackupPolicy",
        || {
            let reason = cluster.kubectl_ok(&[
                "get",
                "backuppolicy",
                "homelab",
                "-n",
                &ns.name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
            ])?;
            Ok((!reason.is_empty()).then_some(reason))
        },
    )
    .unwrap();
    assert_eq!(reason, "NotImplemented");
    let message = cluster
        .kubectl_ok(&[
            "get",
            "backuppolicy",
            "homelab",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.conditions[0].message}",
        ])
        .unwrap();
    assert!(
        message.contains("does not reconcile BackupPolicy objects yet")
            && message.contains("nothing was created or changed"),
        "{message}"
    );
    let generation = cluster
        .kubectl_ok(&[
            "get",
            "backuppolicy",
            "homelab",
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
            "backuppolicy/homelab",
            "-n",
            &ns.name,
            "--for=condition=Ready",
            "--timeout=2s",
        ])
        .unwrap();
    assert!(
        !waited.status.success(),
        "kubectl wait must not see a BackupPolicy nobody reconciles as Ready"
    );
    // `kubectl get` shows it in the Ready column.
    let table = cluster.kubectl_ok(&["get", "bp", "-n", &ns.name]).unwrap();
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(
        table.starts_with("NAME") && table.contains("READY") && row.contains(" False "),
        "{table}"
    );
}
