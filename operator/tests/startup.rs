//! Start-up on a cluster of its own, without homeplane's CRDs: the operator says which CRD is
//! missing and how to install it, or waits for the CRDs and becomes ready once they are
//! Established.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use homeplane_testkit::{Cluster, Operator, eventually, repo_root};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");

#[test]
fn missing_crds_are_named_and_waited_for() {
    let dir =
        std::env::temp_dir().join(format!("homeplane-startup-{}", homeplane_testkit::suffix()));
    let cluster = Cluster::start(&dir).unwrap();
    cluster
        .kubectl_ok(&["create", "namespace", "homeplane-system"])
        .unwrap();

    // Without CRDs and a short timeout: a clear error and exit code 1.
    let mut impatient = Operator::start(
        BINARY,
        &cluster,
        "homeplane-system",
        "impatient",
        &["--crd-timeout", "2"],
    )
    .unwrap();
    let code = eventually(Duration::from_secs(30), "the operator to give up", || {
        Ok(impatient.terminate_if_exited())
    })
    .unwrap();
    assert_eq!(code, Some(1));
    let log = impatient.log();
    assert!(
        log.contains("CustomResourceDefinition nodeclasses.homeplane.dev is not installed; install them with `homeplane crd | kubectl apply --server-side -f -`"),
        "{log}"
    );

    // A patient operator is live but not ready until the CRDs are installed, then leads.
    let patient = Operator::start(
        BINARY,
        &cluster,
        "homeplane-system",
        "patient",
        &["--crd-timeout", "120"],
    )
    .unwrap();
    eventually(Duration::from_secs(30), "/healthz", || {
        Ok((patient.get("/healthz").map(|r| r.0) == Some(200)).then_some(()))
    })
    .unwrap();
    assert_eq!(
        patient.get("/readyz").map(|r| r.0),
        Some(503),
        "not ready without CRDs"
    );
    let crds = repo_root().join("crds/generated");
    cluster
        .kubectl_ok(&["apply", "--server-side", "-f", &crds.to_string_lossy()])
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "/readyz 200 after the CRDs",
        || Ok((patient.get("/readyz").map(|r| r.0) == Some(200)).then_some(())),
    )
    .unwrap();
    eventually(Duration::from_secs(30), "leadership", || {
        Ok((patient.metric("homeplane_leader") == Some(1.0)).then_some(()))
    })
    .unwrap();

    // The pi-1 node of the fresh cluster is planned as soon as a class asks for it.
    let (ok, text) = cluster
        .apply("default", "apiVersion: homeplane.dev/v1alpha1\nkind: NodeClass\nmetadata: {name: pi}\nspec: {nodeSelector: {homeplane.dev/class: pi}}\n")
        .unwrap();
    assert!(ok, "{text}");
    cluster
        .kubectl_ok(&[
            "wait",
            "nodeclass/pi",
            "--for=condition=Ready",
            "--timeout=60s",
        ])
        .unwrap();
    let nodes = cluster
        .kubectl_ok(&["get", "nodeclass", "pi", "-o", "jsonpath={.status.nodes}"])
        .unwrap();
    assert_eq!(nodes, r#"["pi-1"]"#);
    drop(patient);
    cluster.stop().unwrap();
}
