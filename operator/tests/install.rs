//! homeplane installed namespace-scoped (`rbac.scope=namespace`): the chart's Role in the
//! watched namespace and the few cluster-wide reads, rendered from the chart and applied; the
//! operator runs as that ServiceAccount and manages a Database, an Agent and a StateRegistry
//! there — and the API server confirms it can touch nothing in another namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use homeplane_testkit::{Cluster, Install, Operator, Postgres, TestNamespace, eventually, suffix};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");
const WAIT: Duration = Duration::from_secs(90);

fn ready(cluster: &Cluster, ns: &str, kind: &str, name: &str) -> (String, String) {
    eventually(WAIT, &format!("{kind} {name} Ready=True"), || {
        let out = cluster.kubectl_ok(&[
            "get",
            kind,
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}|{.status.conditions[?(@.type==\"Ready\")].reason}|{.status.conditions[?(@.type==\"Ready\")].message}",
        ])?;
        let parts: Vec<&str> = out.splitn(3, '|').collect();
        Ok((parts.first() == Some(&"True"))
            .then(|| (parts[1].to_string(), parts.get(2).unwrap_or(&"").to_string())))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            cluster
                .kubectl_ok(&["get", kind, name, "-n", ns, "-o", "yaml"])
                .unwrap_or_default()
        )
    })
}

#[test]
fn a_namespace_scoped_install_manages_its_namespace_only() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "hp-scoped").unwrap();
    let other = TestNamespace::new(cluster, "hp-outside").unwrap();
    let (n, o) = (ns.name.as_str(), other.name.as_str());
    let s = suffix();
    let release = format!("hpns-{s}");
    let watch = format!("watchNamespace={n}");
    let install = Arc::new(
        Install::new(
            cluster,
            &release,
            n,
            &["rbac.scope=namespace", &watch],
            false,
        )
        .unwrap(),
    );

    // What the API server lets this ServiceAccount do.
    for (args, allowed) in [
        (vec!["create", "secrets", "-n", n], true),
        (vec!["create", "deployments.apps", "-n", n], true),
        (vec!["create", "rolebindings", "-n", n], true),
        (vec!["get", "secrets", "-n", o], false),
        (vec!["list", "secrets", "-A"], false),
        (vec!["create", "deployments.apps", "-n", o], false),
        (vec!["create", "rolebindings", "-n", o], false),
        (vec!["create", "clusterrolebindings"], false),
        (vec!["list", "nodes"], true),
        (vec!["escalate", "clusterroles"], false),
    ] {
        assert_eq!(
            install.can(&args).unwrap(),
            allowed,
            "can-i {args:?} as the namespace-scoped install"
        );
    }

    let db = format!("hp_scoped_{s}");
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "pg-admin",
            "-n",
            n,
            &format!("--from-literal=username={}", pg.user),
            &format!("--from-literal=password={}", pg.password),
        ])
        .unwrap();
    let manifests = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: notes}}
spec:
  databaseName: {db}
  server: {{external: {{host: "{}", port: {}, adminSecret: pg-admin, sslMode: disable}}}}
  tiers: [{{name: convenience, schemas: [public_data]}}]
  roles: [{{name: reader_{s}, access: [{{tier: convenience, level: read}}]}}]
---
apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {{name: tidy}}
spec:
  tier: observer
  image: ghcr.io/homeplane/example-agent:0.1
  scope: {{resources: [{{resource: configmaps}}]}}
  budget: {{cpu: "1", memory: 1Gi, maxRunSeconds: 600}}
---
apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {{name: roamer}}
spec:
  tier: observer
  image: ghcr.io/homeplane/example-agent:0.1
  scope: {{namespaces: [{o}], resources: [{{resource: configmaps}}]}}
  budget: {{cpu: "1", memory: 1Gi, maxRunSeconds: 600}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{mode: strict}}
---
apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {{name: local}}
spec:
  interval: 2s
  derived: false
  properties:
  - id: settings.mode
    desired: strict
    observe: {{kubernetes: {{apiVersion: v1, kind: ConfigMap, name: settings, field: /data/mode}}}}
"#,
        pg.host, pg.port
    );
    let (ok, text) = cluster.apply(n, &manifests).unwrap();
    assert!(ok, "{text}");
    let _operator =
        Operator::start_installed(BINARY, install.clone(), &format!("ns-{s}"), &[]).unwrap();

    let (reason, _) = ready(cluster, n, "database", "notes");
    assert_eq!(reason, "Reconciled");
    let (_, message) = ready(cluster, n, "agent", "tidy");
    assert!(
        message.contains(&format!("in namespace(s) {n}")),
        "{message}"
    );
    let can_list = cluster
        .kubectl_ok(&[
            "auth",
            "can-i",
            "list",
            "configmaps",
            "-n",
            n,
            &format!("--as=system:serviceaccount:{n}:agent-tidy"),
        ])
        .unwrap_or_default();
    assert_eq!(can_list.trim(), "yes");
    // The API server refuses this install a binding in another namespace.
    let reason = eventually(WAIT, "the roaming Agent refused", || {
        let r = cluster.kubectl_ok(&[
            "get",
            "agent",
            "roamer",
            "-n",
            n,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
        ])?;
        Ok((!r.is_empty()).then_some(r))
    })
    .unwrap();
    assert_eq!(reason, "RbacForbidden");
    eventually(WAIT, "the registry in sync", || {
        let out = cluster.kubectl_ok(&[
            "get",
            "stateregistry",
            "local",
            "-n",
            n,
            "-o",
            "jsonpath={.status.inSync}",
        ])?;
        Ok((out == "1").then_some(()))
    })
    .unwrap();
    let _ = pg.admin(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}
