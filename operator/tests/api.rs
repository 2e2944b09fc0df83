//! End-to-end tests of the API as a person meets it with kubectl: the CRDs install and are
//! Established, `kubectl explain` shows the documentation, bad objects are refused by the API
//! server with a message naming the field, and `kubectl get drift` works.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use homeplane_testkit::{Cluster, TestNamespace};

#[test]
fn crds_are_established_and_explained() {
    let cluster = Cluster::shared();
    let crds = cluster.kubectl_ok(&["get", "crd", "-o", "name"]).unwrap();
    for kind in [
        "nodeclasses",
        "databases",
        "backuppolicies",
        "backups",
        "workflows",
        "agents",
        "agentruns",
        "voicepipelines",
        "memoryservers",
        "stateregistries",
        "drifts",
    ] {
        assert!(
            crds.contains(&format!("{kind}.homeplane.dev")),
            "{kind} missing from:\n{crds}"
        );
        let established = cluster
            .kubectl_ok(&[
                "get",
                "crd",
                &format!("{kind}.homeplane.dev"),
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ])
            .unwrap();
        assert_eq!(established, "True", "{kind} not Established");
    }
    let explained = cluster.kubectl_ok(&["explain", "database.spec"]).unwrap();
    assert!(
        explained.contains("A PostgreSQL database that homeplane makes match its declaration"),
        "{explained}"
    );
    assert!(
        explained.contains("Data-classification tiers"),
        "{explained}"
    );
    let field = cluster
        .kubectl_ok(&["explain", "backuppolicy.spec.recipients"])
        .unwrap();
    assert!(field.contains("age public keys"), "{field}");
}

#[test]
fn kubectl_get_drift_works_and_is_empty() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "drift").unwrap();
    let out = cluster.kubectl(&["get", "drift", "-n", &ns.name]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("No resources found"));
    // The short name and the columns a person reads.
    let drift = r#"apiVersion: homeplane.dev/v1alpha1
kind: Drift
metadata: {name: pi-cpu-limits}
spec:
  registry: homelab
  property: pi.containers.cpu-limits
  desired: "true"
  observed: "false"
  severity: critical
  since: "2026-11-24T10:00:00Z"
"#;
    let (ok, text) = cluster.apply(&ns.name, drift).unwrap();
    assert!(ok, "{text}");
    let table = cluster.kubectl_ok(&["get", "dr", "-n", &ns.name]).unwrap();
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "PROPERTY", "DESIRED", "OBSERVED", "SEVERITY", "SINCE", "AGE"
        ]
    );
    assert!(
        table.contains("pi.containers.cpu-limits") && table.contains("critical"),
        "{table}"
    );
}

/// Each case: a name, an invalid object, and what the API server's refusal must say.
const INVALID: &[(&str, &str, &[&str])] = &[
    (
        "role granting access to an undeclared tier",
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {name: bad-tier}
spec:
  server: {external: {host: db, adminSecret: pg-admin}}
  tiers: [{name: sacred, schemas: [clinical]}]
  roles: [{name: app, access: [{tier: sensitive, level: read}]}]
"#,
        &["spec.roles", "must be declared in spec.tiers"],
    ),
    (
        "backup policy with no age recipient",
        r#"apiVersion: homeplane.dev/v1alpha1
kind: BackupPolicy
metadata: {name: no-recipient}
spec:
  schedule: "0 3 * * *"
  source: {database: {name: homelab}}
  destination: {endpoint: "https://r2.example", bucket: backups, credentialsSecret: r2}
  recipients: []
"#,
        &["spec.recipients", "at least one age public key"],
    ),
    (
        "agent with an unknown tier",
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {name: bad-tier}
spec:
  tier: overlord
  scope: {resources: [{resource: configmaps}]}
  image: agent:1
  budget: {cpu: "1", memory: 1Gi, maxRunSeconds: 600}
"#,
        &["spec.tier", "Unsupported value", "observer"],
    ),
    (
        "malformed cron schedule",
        r#"apiVersion: homeplane.dev/v1alpha1
kind: BackupPolicy
metadata: {name: bad-cron}
spec:
  schedule: "every night"
  source: {database: {name: homelab}}
  destination: {endpoint: "https://r2.example", bucket: backups, credentialsSecret: r2}
  recipients: ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
"#,
        &["spec.schedule", "five-field cron expression"],
    ),
    (
        "negative CPU",
        r#"apiVersion: homeplane.dev/v1alpha1
kind: MemoryServer
metadata: {name: negative-cpu}
spec:
  image: memory:1
  placement: {class: pi, cpu: "-1"}
  database: {name: homelab}
  cache: {external: "redis://redis:6379"}
  embedding: {endpoint: {url: "http://gpu:8080", model: qwen3}}
"#,
        &["spec.placement.cpu", "positive quantity"],
    ),
    (
        "malformed age recipient",
        r#"apiVersion: homeplane.dev/v1alpha1
kind: BackupPolicy
metadata: {name: bad-key}
spec:
  schedule: "@daily"
  source: {pvc: {claimName: data}}
  destination: {endpoint: "https://r2.example", bucket: backups, credentialsSecret: r2}
  recipients: ["AGE-SECRET-KEY-1QQQ"]
"#,
        &["spec.recipients[0]", "should match"],
    ),
    (
        "database with both an external and a managed server",
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {name: two-servers}
spec:
  server:
    external: {host: db, adminSecret: pg-admin}
    managed: {image: "postgres:16", storage: 20Gi, placement: {class: pi}}
"#,
        &["spec.server", "exactly one of external or managed"],
    ),
    (
        "role name with a quote (SQL injection)",
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {name: injection}
spec:
  server: {external: {host: db, adminSecret: pg-admin}}
  roles: [{name: "app\"; DROP TABLE clinical.notes; --"}]
"#,
        &["spec.roles[0].name", "should match"],
    ),
    (
        "cluster-wide observer agent",
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {name: wide-observer}
spec:
  tier: observer
  scope: {resources: [{resource: pods}], clusterWide: true}
  image: agent:1
  budget: {cpu: "1", memory: 1Gi, maxRunSeconds: 600}
"#,
        &["spec.scope.clusterWide", "only for tier director"],
    ),
    (
        "wildcard RBAC resource",
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {name: wildcard}
spec:
  tier: builder
  scope: {resources: [{apiGroup: apps, resource: "*"}]}
  image: agent:1
  budget: {cpu: "1", memory: 1Gi, maxRunSeconds: 600}
"#,
        &["spec.scope.resources[0].resource", "wildcards are refused"],
    ),
];

#[test]
fn invalid_objects_are_refused_with_a_message_naming_the_field() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "invalid").unwrap();
    let mut failures = Vec::new();
    for (name, yaml, expected) in INVALID {
        let (ok, text) = cluster.apply(&ns.name, yaml).unwrap();
        if ok {
            failures.push(format!("{name}: accepted, but should be refused"));
            continue;
        }
        for part in *expected {
            if !text.contains(part) {
                failures.push(format!(
                    "{name}: refusal does not mention {part:?}:\n{text}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn immutable_runs_refuse_spec_changes() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "immutable").unwrap();
    let backup = |policy: &str| {
        format!(
            "apiVersion: homeplane.dev/v1alpha1\nkind: Backup\nmetadata: {{name: now}}\nspec: {{policy: {policy}}}\n"
        )
    };
    let (ok, text) = cluster.apply(&ns.name, &backup("nightly")).unwrap();
    assert!(ok, "{text}");
    let (ok, text) = cluster.apply(&ns.name, &backup("weekly")).unwrap();
    assert!(!ok, "changing a Backup's spec must be refused");
    assert!(
        text.contains("cannot change; create a new Backup"),
        "{text}"
    );
}

#[test]
fn the_install_manifests_and_the_example_homelab_are_valid() {
    let cluster = Cluster::shared();
    let root = homeplane_testkit::repo_root();
    // The operator install, checked by the API server without persisting it (its namespace
    // must exist for that).
    let _ = cluster.kubectl(&["create", "namespace", "homeplane-system"]);
    let base = cluster
        .kubectl_ok(&["kustomize", &root.join("manifests/base").to_string_lossy()])
        .unwrap();
    let out = cluster
        .kubectl_stdin(
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            Some(&base),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "manifests/base: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The whole Flux overlay renders.
    let overlay = cluster
        .kubectl_ok(&[
            "kustomize",
            &root.join("manifests/overlays/homelab").to_string_lossy(),
        ])
        .unwrap();
    assert!(
        overlay.contains("kind: Deployment") && overlay.contains("kind: NodeClass"),
        "{overlay}"
    );
    // The example system, applied as `make demo` applies it: every service lands on its
    // class's node, placed by the real scheduler.
    let out = cluster
        .kubectl(&[
            "apply",
            "--server-side",
            "-k",
            &root.join("manifests/homelab").to_string_lossy(),
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "manifests/homelab: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
        .kubectl_ok(&[
            "wait",
            "--for=condition=Available",
            "--timeout=90s",
            "deployment",
            "-A",
            "-l",
            "app.kubernetes.io/part-of=homelab",
        ])
        .unwrap();
    let placed = cluster
        .kubectl_ok(&["get", "pods", "-A", "-l", "app.kubernetes.io/part-of=homelab", "-o",
            "jsonpath={range .items[*]}{.metadata.labels.app\\.kubernetes\\.io/name}={.spec.nodeName}{\"\\n\"}{end}"])
        .unwrap();
    // (The GPU services are the VoicePipeline's and the MemoryServer's now, placed by the
    // operator: operator/tests/placement.rs.)
    for kind in [
        "voicepipeline/assistant -n ai",
        "memoryserver/memory -n data",
    ] {
        let args: Vec<&str> = std::iter::once("get").chain(kind.split(' ')).collect();
        cluster.kubectl_ok(&args).unwrap();
    }
    for expected in ["n8n=pi-1", "caddy=pi-1", "grafana=pi-1"] {
        assert!(
            placed.lines().any(|l| l == expected),
            "{expected} not in:\n{placed}"
        );
    }
    // The restore Job of the README is accepted as it is written.
    let out = cluster
        .kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            &root
                .join("examples/restore/pvc-restore-job.yaml")
                .to_string_lossy(),
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "examples/restore/pvc-restore-job.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
