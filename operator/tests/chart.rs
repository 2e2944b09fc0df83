//! The Helm chart as a person installs it: it lints strictly, renders, and everything it
//! renders (CRDs included) is accepted by the real API server.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use homeplane_testkit::{Cluster, TestNamespace, repo_root};

fn helm(args: &[&str]) -> std::process::Output {
    let cluster = Cluster::shared();
    cluster
        .helm_command()
        .args(args)
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

fn render(values: &[&str]) -> std::process::Output {
    let chart = chart();
    let mut args = vec![
        "template",
        "homeplane",
        chart.as_str(),
        "--kube-version",
        "v1.37.2",
        "--namespace",
        "homeplane-system",
    ];
    for v in values {
        args.push("--set");
        args.push(v);
    }
    helm(&args)
}

/// The documents of a rendered chart.
fn documents(out: &std::process::Output) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_json::Value>(d).ok())
        .filter(|d| d["kind"].is_string())
        .collect()
}

#[test]
fn the_operator_holds_no_escalate_and_binds_only_fixed_roles() {
    let out = render(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&out);
    let rules: Vec<serde_json::Value> = docs
        .iter()
        .filter(|d| {
            matches!(d["kind"].as_str(), Some("ClusterRole" | "Role"))
                && !d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("homeplane-agent:")
        })
        .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(!rules.is_empty());
    for rule in &rules {
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let resources: Vec<&str> = rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(!verbs.contains(&"escalate"), "escalate: {rule}");
        assert!(!verbs.contains(&"*") && !resources.contains(&"*"), "{rule}");
        if verbs.contains(&"bind") || verbs.contains(&"impersonate") {
            let names = rule["resourceNames"]
                .as_array()
                .map(|n| n.len())
                .unwrap_or(0);
            assert!(names > 0, "bind/impersonate without resourceNames: {rule}");
        }
        if resources.contains(&"secrets") {
            assert!(
                !verbs.contains(&"delete") && !verbs.contains(&"update"),
                "{rule}"
            );
        }
        assert!(
            !resources.contains(&"roles") && !resources.contains(&"clusterroles")
                || verbs.iter().all(|v| ["get", "bind"].contains(v)),
            "homeplane never writes a rule: {rule}"
        );
    }
    // Every grantable ClusterRole exists, read and write, with exactly its verbs.
    let agent_roles: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| {
            d["kind"] == "ClusterRole"
                && d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("homeplane-agent:")
        })
        .collect();
    assert!(
        agent_roles
            .iter()
            .any(|r| r["metadata"]["name"] == "homeplane-agent:write:apps:deployments")
    );
    assert!(
        agent_roles
            .iter()
            .any(|r| r["metadata"]["name"] == "homeplane-agent:read::pods:log")
    );
    assert!(
        !agent_roles.iter().any(|r| r["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .contains("secrets")),
        "secrets are not grantable by default"
    );
}

#[test]
fn a_namespace_scoped_install_is_roles_in_its_namespace() {
    let out = render(&["rbac.scope=namespace", "watchNamespace=homelab"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("- --watch-namespace=homelab"), "{text}");
    let docs = documents(&out);
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "homeplane")
        .expect("the operator's Role");
    assert_eq!(role["metadata"]["namespace"], "homelab");
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == "homelab")
    );
    // Cluster-wide, only what a Role cannot give: no Secret, no workload, no binding.
    let cluster_role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "homeplane-cluster")
        .unwrap();
    // Resources only: the names of the Agent roles it may bind mention deployments and jobs.
    let cluster_rules: Vec<&str> = cluster_role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap().iter())
        .map(|r| r.as_str().unwrap())
        .collect();
    for absent in [
        "secrets",
        "deployments",
        "rolebindings",
        "clusterrolebindings",
        "jobs",
    ] {
        assert!(
            !cluster_rules.contains(&absent),
            "{absent} cluster-wide: {cluster_rules:?}"
        );
    }
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "homeplane"),
        "no cluster-wide ClusterRole of the namespaced rules"
    );
    // The admission policies only look at the watched namespace.
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .unwrap();
    assert_eq!(
        policy["spec"]["matchConstraints"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "homelab"
    );
    let refused = render(&["rbac.scope=namespace"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("rbac.scope=namespace needs watchNamespace")
    );
    let refused = render(&["agents.grantable[0].resource=*"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("wildcards are refused"));
}

#[test]
fn the_kustomize_base_ships_the_chart_s_rbac() {
    let out = helm(&[
        "template",
        "homeplane",
        &chart(),
        "--namespace",
        "homeplane-system",
        "--kube-version",
        "v1.37.2",
        "--show-only",
        "templates/rbac.yaml",
        "--show-only",
        "templates/agent-roles.yaml",
        "--show-only",
        "templates/agent-admission.yaml",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: String = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("helm.sh/chart:")
                || t.starts_with("app.kubernetes.io/managed-by: Helm")
                || t.starts_with("# Source:"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let committed = std::fs::read_to_string(repo_root().join("manifests/base/rbac.yaml")).unwrap();
    let body: String = committed
        .lines()
        .skip_while(|l| l.starts_with("# "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        body == rendered,
        "manifests/base/rbac.yaml is stale: run `make crds` and commit the result"
    );
}
