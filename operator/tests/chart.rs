//! The Helm chart as a person installs it: it lints strictly, renders, and everything it
//! renders (CRDs included) is accepted by the real API server.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use homeplane_testkit::{Cluster, TestNamespace, repo_root};

fn helm(args: &[&str]) -> std::process::Output {
    let cluster = Cluster::shared();
    std::process::Command::new(cluster.bin.join("helm"))
        .args(args)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("homeplane-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("homeplane-helm-config"),
        )
        .output()
        .expect("helm runs")
}

fn chart() -> String {
    repo_root()
        .join("charts/homeplane")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn chart_lints_strictly() {
    let out = helm(&["lint", "--strict", &chart()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rendered_chart_is_accepted_by_the_api_server() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "chart").unwrap();
    let out = helm(&[
        "template",
        "homeplane",
        &chart(),
        "--kube-version",
        "v1.37.2",
        "--namespace",
        &ns.name,
        "--include-crds",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        rendered.matches("kind: CustomResourceDefinition").count(),
        11,
        "the chart ships every CRD"
    );
    for arg in [
        "- run",
        "--leader-elect=true",
        "--lease-duration-seconds=15",
    ] {
        assert!(rendered.contains(arg), "{arg} missing:\n{rendered}");
    }
    let applied = cluster
        .kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--dry-run=server",
                "-n",
                &ns.name,
                "-f",
                "-",
            ],
            Some(&rendered),
        )
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
}

#[test]
fn several_replicas_without_leader_election_are_refused() {
    let out = helm(&[
        "template",
        "homeplane",
        &chart(),
        "--kube-version",
        "v1.37.2",
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs leaderElection.enabled=true"));
    let single = helm(&[
        "template",
        "homeplane",
        &chart(),
        "--kube-version",
        "v1.37.2",
        "--set",
        "leaderElection.enabled=false,replicaCount=1",
    ]);
    assert!(
        single.status.success(),
        "{}",
        String::from_utf8_lossy(&single.stderr)
    );
}
