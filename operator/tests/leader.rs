//! Two operator replicas: exactly one reconciles; when it is killed, the other takes over
//! within the lease duration; a replica stopped with SIGTERM releases the lease at once.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use homeplane_testkit::{Cluster, Operator, TestNamespace, eventually};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");
const LEASE_SECONDS: u64 = 15;

fn holder(cluster: &Cluster, ns: &str) -> String {
    cluster
        .kubectl_ok(&[
            "get",
            "lease",
            "homeplane-operator",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap_or_default()
}

fn reconciles(op: &Operator) -> f64 {
    op.metric("homeplane_reconciles_total{controller=\"nodeclass\"}")
        .unwrap_or(0.0)
}

#[test]
fn exactly_one_replica_reconciles_and_a_standby_takes_over() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "leader").unwrap();
    let a = Operator::start(BINARY, cluster, &ns.name, &format!("{}-a", ns.name), &[]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let b = Operator::start(BINARY, cluster, &ns.name, &format!("{}-b", ns.name), &[]).unwrap();
    let mut replicas = [a, b];

    // Both are live and ready (ready means: CRDs established; standing by is healthy).
    for op in &replicas {
        eventually(Duration::from_secs(30), "/readyz 200", || {
            Ok((op.get("/readyz").map(|r| r.0) == Some(200)).then_some(()))
        })
        .unwrap();
        assert_eq!(op.get("/healthz").map(|r| r.0), Some(200));
    }
    let leader = eventually(Duration::from_secs(30), "one leader", || {
        let leading: Vec<usize> = (0..2)
            .filter(|&i| replicas[i].metric("homeplane_leader") == Some(1.0))
            .collect();
        Ok((leading.len() == 1).then(|| leading[0]))
    })
    .unwrap();
    let standby = 1 - leader;
    assert_eq!(holder(cluster, &ns.name), replicas[leader].identity);
    assert_eq!(replicas[standby].metric("homeplane_leader"), Some(0.0));

    // Make work: a NodeClass. Only the leader reconciles it.
    let class = format!("leader-{}", homeplane_testkit::suffix());
    let (ok, text) = cluster
        .apply(&ns.name, &format!("apiVersion: homeplane.dev/v1alpha1\nkind: NodeClass\nmetadata: {{name: {class}}}\nspec:\n  nodeSelector: {{homeplane.dev/class: pi}}\n"))
        .unwrap();
    assert!(ok, "{text}");
    eventually(Duration::from_secs(30), "the leader to reconcile", || {
        Ok((reconciles(&replicas[leader]) > 0.0).then_some(()))
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        reconciles(&replicas[standby]),
        0.0,
        "the standby must not reconcile"
    );

    // Kill the leader without letting it release the lease.
    let killed = Instant::now();
    replicas[leader].kill_hard();
    eventually(
        Duration::from_secs(LEASE_SECONDS * 3),
        "the standby to lead",
        || Ok((replicas[standby].metric("homeplane_leader") == Some(1.0)).then_some(())),
    )
    .unwrap();
    let handover = killed.elapsed();
    println!(
        "leader handover after SIGKILL took {:.1}s (lease duration {LEASE_SECONDS}s)",
        handover.as_secs_f64()
    );
    // The standby counts the lease's duration from when it last saw the lease change (its own
    // clock, as client-go does): up to one retry period after the leader's last renew, plus up
    // to one more before its next attempt.
    assert!(
        handover <= Duration::from_secs(LEASE_SECONDS + 6),
        "handover took {handover:?}, more than the lease duration plus two retry periods"
    );
    assert_eq!(holder(cluster, &ns.name), replicas[standby].identity);
    let before = reconciles(&replicas[standby]);
    cluster
        .kubectl_ok(&["label", "nodeclass", &class, "touched=yes"])
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the new leader to reconcile",
        || Ok((reconciles(&replicas[standby]) > before).then_some(())),
    )
    .unwrap();

    // SIGTERM: a clean exit that gives the lease up.
    assert_eq!(
        replicas[standby].terminate(),
        Some(0),
        "log:\n{}",
        replicas[standby].log()
    );
    assert_eq!(
        holder(cluster, &ns.name),
        "",
        "the lease must be released on shutdown"
    );
    cluster
        .kubectl_ok(&["delete", "nodeclass", &class])
        .unwrap();
}

#[test]
fn a_missing_lease_namespace_is_a_clear_error() {
    let cluster = Cluster::shared();
    let missing = format!("no-such-ns-{}", homeplane_testkit::suffix());
    let mut op = Operator::start(BINARY, cluster, &missing, &missing, &[]).unwrap();
    let code = eventually(Duration::from_secs(30), "the operator to exit", || {
        Ok(op.terminate_if_exited())
    })
    .unwrap();
    assert_eq!(code, Some(1));
    let log = op.log();
    assert!(
        log.contains("leader election failed") && log.contains(&missing),
        "{log}"
    );
}
