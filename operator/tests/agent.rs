//! The Agent controller on the test cluster: each tier's ServiceAccount gets exactly the rights
//! of its tier and scope, checked by the API server itself with
//! `kubectl auth can-i --as=system:serviceaccount:…`; changing tier or scope narrows or widens
//! them; nothing generated has a wildcard; deleting the Agent removes its rights.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use homeplane_testkit::{Cluster, Operator, TestNamespace, eventually};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");
const WAIT: Duration = Duration::from_secs(60);

fn agent_yaml(name: &str, tier: &str, namespaces: &[&str], cluster_wide: bool) -> String {
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {{name: {name}}}
spec:
  tier: {tier}
  image: ghcr.io/homeplane/example-agent:0.1
  scope:
    namespaces: [{}]
    clusterWide: {cluster_wide}
    resources:
    - {{resource: configmaps}}
    - {{apiGroup: apps, resource: deployments}}
  budget: {{cpu: "1", memory: 1Gi, maxRunSeconds: 600}}
"#,
        namespaces.join(", ")
    )
}

/// `kubectl auth can-i VERB RESOURCE -n NS --as=system:serviceaccount:AGENT_NS:agent-NAME`.
fn can(
    cluster: &Cluster,
    agent_ns: &str,
    agent: &str,
    verb: &str,
    resource: &str,
    ns: &str,
) -> bool {
    let out = cluster
        .kubectl(&[
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            ns,
            &format!("--as=system:serviceaccount:{agent_ns}:agent-{agent}"),
        ])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// Waits until every `(verb, resource, namespace, allowed)` holds.
fn wait_rights(
    cluster: &Cluster,
    agent_ns: &str,
    agent: &str,
    checks: &[(&str, &str, &str, bool)],
) {
    let mut wrong = vec![];
    let result = eventually(WAIT, &format!("the rights of {agent}"), || {
        wrong = checks
            .iter()
            .filter(|(verb, res, ns, allowed)| {
                can(cluster, agent_ns, agent, verb, res, ns) != *allowed
            })
            .map(|c| format!("{c:?}"))
            .collect();
        Ok(wrong.is_empty().then_some(()))
    });
    if result.is_err() {
        panic!("{agent}: wrong rights {wrong:?}");
    }
}

fn ready(cluster: &Cluster, ns: &str, name: &str) -> String {
    eventually(WAIT, &format!("Agent {name} Ready"), || {
        let out = cluster.kubectl_ok(&[
            "get",
            "agent",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}|{.status.conditions[?(@.type==\"Ready\")].message}",
        ])?;
        Ok(out.strip_prefix("True|").map(str::to_string))
    })
    .unwrap()
}

#[test]
fn each_tier_gets_exactly_its_rights() {
    let cluster = Cluster::shared();
    let home = TestNamespace::new(cluster, "agents").unwrap();
    let work = TestNamespace::new(cluster, "agent-work").unwrap();
    let other = TestNamespace::new(cluster, "agent-other").unwrap();
    let (h, w, o) = (home.name.as_str(), work.name.as_str(), other.name.as_str());
    let _operator = Operator::start(BINARY, cluster, h, h, &[]).unwrap();
    for yaml in [
        agent_yaml("watcher", "observer", &[], false),
        agent_yaml("fixer", "builder", &[w], false),
        agent_yaml("lead", "director", &[w], false),
        agent_yaml("chief", "director", &[], true),
    ] {
        let (ok, text) = cluster.apply(h, &yaml).unwrap();
        assert!(ok, "{text}");
    }
    let message = ready(cluster, h, "watcher");
    assert!(
        message.contains("observer rights (get, list, watch) on configmaps, apps/deployments")
            && message.contains(&format!("in namespace(s) {h}")),
        "{message}"
    );

    // Observer: may list in its own namespace, but not patch, and nothing else anywhere.
    wait_rights(
        cluster,
        h,
        "watcher",
        &[
            ("list", "configmaps", h, true),
            ("watch", "deployments.apps", h, true),
            ("patch", "configmaps", h, false),
            ("delete", "configmaps", h, false),
            ("list", "secrets", h, false),
            ("list", "configmaps", w, false),
        ],
    );
    // Builder: changes things in its scope's namespace only — not in another namespace, not
    // even its own.
    ready(cluster, h, "fixer");
    wait_rights(
        cluster,
        h,
        "fixer",
        &[
            ("patch", "configmaps", w, true),
            ("create", "deployments.apps", w, true),
            ("delete", "configmaps", w, true),
            ("patch", "configmaps", o, false),
            ("list", "configmaps", o, false),
            ("patch", "configmaps", h, false),
            ("list", "secrets", w, false),
        ],
    );
    // Director without clusterWide: like a builder.
    ready(cluster, h, "lead");
    wait_rights(
        cluster,
        h,
        "lead",
        &[
            ("patch", "configmaps", w, true),
            ("patch", "configmaps", o, false),
        ],
    );
    // Director with clusterWide: everywhere, still only the scope's resources.
    let message = ready(cluster, h, "chief");
    assert!(message.contains("in every namespace"), "{message}");
    wait_rights(
        cluster,
        h,
        "chief",
        &[
            ("patch", "configmaps", o, true),
            ("list", "deployments.apps", "default", true),
            ("list", "secrets", o, false),
        ],
    );

    // Everything generated carries the label and no wildcard.
    let generated = cluster
        .kubectl_ok(&[
            "get",
            "roles,rolebindings,clusterroles,clusterrolebindings,serviceaccounts",
            "-A",
            "-l",
            &format!("homeplane.dev/agent-namespace={h}"),
            "-o",
            "json",
        ])
        .unwrap();
    let list: serde_json::Value = serde_json::from_str(&generated).unwrap();
    let items = list["items"].as_array().unwrap();
    // 3 namespaced agents x (Role + RoleBinding), 1 ClusterRole + binding, 4 ServiceAccounts.
    assert_eq!(items.len(), 12, "{generated}");
    for item in items {
        assert_eq!(
            item["metadata"]["labels"]["app.kubernetes.io/managed-by"], "homeplane",
            "{item}"
        );
    }
    assert!(
        !generated.contains('*'),
        "a wildcard in generated RBAC: {generated}"
    );

    // CEL refuses a wildcard and a cluster-wide non-director before anything is created.
    let (ok, text) = cluster
        .apply(h, &agent_yaml("greedy", "builder", &[], true))
        .unwrap();
    assert!(
        !ok && text.contains("clusterWide is allowed only for tier director"),
        "{text}"
    );
    let wildcard = agent_yaml("wild", "observer", &[], false)
        .replace("{resource: configmaps}", "{resource: '*'}");
    let (ok, text) = cluster.apply(h, &wildcard).unwrap();
    assert!(!ok && text.contains("wildcards are refused"), "{text}");
    let wildcard =
        agent_yaml("wild", "observer", &[], false).replace("{apiGroup: apps,", "{apiGroup: '*',");
    let (ok, text) = cluster.apply(h, &wildcard).unwrap();
    assert!(!ok && text.contains("wildcards are refused"), "{text}");

    // Narrowing: builder -> observer loses write at the next reconcile.
    let (ok, text) = cluster
        .apply(h, &agent_yaml("fixer", "observer", &[w], false))
        .unwrap();
    assert!(ok, "{text}");
    wait_rights(
        cluster,
        h,
        "fixer",
        &[
            ("patch", "configmaps", w, false),
            ("list", "configmaps", w, true),
        ],
    );
    // Moving the scope: the old namespace's rights go, the new one's come.
    let (ok, text) = cluster
        .apply(h, &agent_yaml("fixer", "builder", &[o], false))
        .unwrap();
    assert!(ok, "{text}");
    wait_rights(
        cluster,
        h,
        "fixer",
        &[
            ("patch", "configmaps", o, true),
            ("list", "configmaps", w, false),
        ],
    );
    let roles = cluster
        .kubectl_ok(&["get", "roles", "-n", w, "-o", "name"])
        .unwrap();
    assert!(
        !roles.contains("fixer"),
        "the old Role was not pruned: {roles}"
    );
    // Widening a director to cluster-wide, then back.
    let (ok, text) = cluster
        .apply(h, &agent_yaml("lead", "director", &[w], true))
        .unwrap();
    assert!(ok, "{text}");
    wait_rights(cluster, h, "lead", &[("patch", "configmaps", o, true)]);
    let (ok, text) = cluster
        .apply(h, &agent_yaml("lead", "director", &[w], false))
        .unwrap();
    assert!(ok, "{text}");
    wait_rights(
        cluster,
        h,
        "lead",
        &[
            ("patch", "configmaps", o, false),
            ("patch", "configmaps", w, true),
        ],
    );

    // A namespace that does not exist is a clear condition.
    let (ok, text) = cluster
        .apply(
            h,
            &agent_yaml("lost", "observer", &["no-such-namespace-x"], false),
        )
        .unwrap();
    assert!(ok, "{text}");
    let reason = eventually(WAIT, "NamespaceMissing", || {
        let r = cluster.kubectl_ok(&[
            "get",
            "agent",
            "lost",
            "-n",
            h,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
        ])?;
        Ok((!r.is_empty()).then_some(r))
    })
    .unwrap();
    assert_eq!(reason, "NamespaceMissing");

    // Deleting the Agents removes their rights everywhere.
    cluster
        .kubectl_ok(&[
            "delete",
            "agents",
            "--all",
            "-n",
            h,
            "--wait=true",
            "--timeout=60s",
        ])
        .unwrap();
    wait_rights(cluster, h, "chief", &[("patch", "configmaps", o, false)]);
    let left = cluster
        .kubectl_ok(&[
            "get",
            "roles,rolebindings,clusterroles,clusterrolebindings",
            "-A",
            "-l",
            &format!("homeplane.dev/agent-namespace={h}"),
            "-o",
            "name",
        ])
        .unwrap();
    assert!(left.trim().is_empty(), "left behind: {left}");
}
