//! Kinds whose controllers come later never pretend: a valid object is stored and its status
//! says `Ready=False, reason NotImplemented`, with the generation it was computed from.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use homeplane_testkit::{Cluster, Operator, TestNamespace, eventually};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");

const DATABASE: &str = r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {name: homelab}
spec:
  server: {external: {host: postgres.data, adminSecret: pg-admin}}
  extensions: [{name: pg_trgm}]
  tiers:
  - {name: sacred, description: "clinical records, therapy notes", schemas: [clinical]}
  - {name: sensitive, schemas: [messages, health]}
  - {name: convenience, schemas: [public_data]}
  roles:
  - name: app
    access: [{tier: sacred, level: write}, {tier: sensitive, level: write}, {tier: convenience, level: write}]
  - name: analyst
    access: [{tier: convenience, level: read}]
  migrations:
    inline: [{id: "0001_init", sql: "create table clinical.notes (id bigint primary key)"}]
"#;

#[test]
fn kinds_without_a_controller_report_not_implemented() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "pending").unwrap();
    let (ok, text) = cluster.apply(&ns.name, DATABASE).unwrap();
    assert!(ok, "{text}");
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    let reason = eventually(Duration::from_secs(60), "status of the Database", || {
        let reason = cluster.kubectl_ok(&[
            "get",
            "database",
            "homelab",
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
            "database",
            "homelab",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.conditions[0].message}",
        ])
        .unwrap();
    assert!(
        message.contains("does not reconcile Database objects yet")
            && message.contains("nothing was created or changed"),
        "{message}"
    );
    let generation = cluster
        .kubectl_ok(&[
            "get",
            "database",
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
            "database/homelab",
            "-n",
            &ns.name,
            "--for=condition=Ready",
            "--timeout=2s",
        ])
        .unwrap();
    assert!(
        !waited.status.success(),
        "kubectl wait must not see a Database nobody reconciles as Ready"
    );
    // `kubectl get` shows it in the Ready column.
    let table = cluster.kubectl_ok(&["get", "db", "-n", &ns.name]).unwrap();
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .nth(1)
            == Some("False"),
        "{table}"
    );
}
