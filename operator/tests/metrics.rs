//! The operator's per-object metrics on the real control plane: every homeplane object the
//! operator can see has a `homeplane_object_ready` and `homeplane_object_stalled` series, read
//! from its watch caches at each scrape, and a deleted object leaves no series behind.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use homeplane_testkit::{Cluster, Operator, TestNamespace, eventually};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");
const WAIT: Duration = Duration::from_secs(60);

fn agent(name: &str) -> String {
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {{name: {name}}}
spec:
  tier: observer
  image: ghcr.io/homeplane/example-agent:0.1
  scope:
    resources:
    - {{resource: configmaps}}
  budget: {{cpu: "1", memory: 1Gi, maxRunSeconds: 600}}
"#
    )
}

/// A Database whose admin Secret does not exist: never Ready.
fn database(name: &str) -> String {
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: {name}}}
spec:
  server:
    external: {{host: 127.0.0.1, port: 1, adminSecret: missing-admin}}
"#
    )
}

#[test]
fn every_object_has_a_readiness_series_until_it_is_deleted() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "metrics").unwrap();
    let operator = Operator::start(BINARY, cluster, &ns.name, "metrics", &[]).unwrap();
    cluster.apply(&ns.name, &agent("watcher")).unwrap();
    cluster.apply(&ns.name, &database("nowhere")).unwrap();

    let ready = |kind: &str, name: &str| {
        format!(
            "homeplane_object_ready{{kind=\"{kind}\",namespace=\"{}\",name=\"{name}\"}}",
            ns.name
        )
    };
    let stalled = |kind: &str, name: &str| {
        format!(
            "homeplane_object_stalled{{kind=\"{kind}\",namespace=\"{}\",name=\"{name}\"}}",
            ns.name
        )
    };
    eventually(WAIT, "the Agent to be exported as ready", || {
        Ok((operator.metric(&ready("Agent", "watcher")) == Some(1.0)).then_some(()))
    })
    .unwrap();
    eventually(WAIT, "the Database to be exported as not ready", || {
        Ok(operator
            .metric(&ready("Database", "nowhere"))
            .map(|v| assert_eq!(v, 0.0)))
    })
    .unwrap();
    assert_eq!(operator.metric(&stalled("Agent", "watcher")), Some(0.0));

    cluster
        .kubectl_ok(&["delete", "agent", "watcher", "-n", &ns.name, "--wait=true"])
        .unwrap();
    eventually(WAIT, "the deleted Agent's series to go", || {
        let (_, text) = operator.get("/metrics").unwrap_or_default();
        Ok((!text.contains(&ready("Agent", "watcher"))).then_some(()))
    })
    .unwrap();
    let (_, text) = operator.get("/metrics").unwrap_or_default();
    assert!(text.contains(&ready("Database", "nowhere")), "{text}");
}
