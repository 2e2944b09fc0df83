//! The StateRegistry controller against the real world: the test control plane, PostgreSQL,
//! an HTTP server in this process and Podman's Docker-compatible API. A property in sync gives
//! no Drift; changing the world by hand gives a Drift with the right desired and observed
//! values; undoing it removes the Drift; a failing observer is Unknown; a malformed catalogue
//! is refused precisely; `Correct` mode puts a declared object back (acting as the
//! namespace's corrector ServiceAccount) and the transitions land in the history database; a
//! registry sees only its own namespace, never a Secret, never a metadata address, and a
//! template that breaks its sandbox makes its one property Unknown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeplane_testkit::{
    Cluster, Operator, Podman, Postgres, TestNamespace, eventually, free_port, suffix,
};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");
const WAIT: Duration = Duration::from_secs(90);

/// A real HTTP server on loopback answering every request with the current body.
struct JsonServer {
    port: u16,
    body: Arc<Mutex<String>>,
}

impl JsonServer {
    fn start(body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = Arc::new(Mutex::new(body.to_string()));
        let shared = body.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.read(&mut buf);
                let text = shared.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        Self { port, body }
    }

    fn set(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }
}

fn admin_secret(cluster: &Cluster, ns: &str, pg: &Postgres) {
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "pg-admin",
            "-n",
            ns,
            &format!("--from-literal=username={}", pg.user),
            &format!("--from-literal=password={}", pg.password),
        ])
        .unwrap();
}

fn status(cluster: &Cluster, ns: &str, name: &str) -> Value {
    let out = cluster
        .kubectl_ok(&["get", "stateregistry", name, "-n", ns, "-o", "json"])
        .unwrap();
    serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
}

fn drifts(cluster: &Cluster, ns: &str) -> Vec<Value> {
    let out = cluster
        .kubectl_ok(&["get", "drift", "-n", ns, "-o", "json"])
        .unwrap();
    serde_json::from_str::<Value>(&out).unwrap()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// (property, desired, observed) of every Drift, sorted.
fn drift_values(cluster: &Cluster, ns: &str) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = drifts(cluster, ns)
        .iter()
        .map(|d| {
            let s = &d["spec"];
            (
                s["property"].as_str().unwrap_or_default().to_string(),
                s["desired"].as_str().unwrap_or_default().to_string(),
                s["observed"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn events(cluster: &Cluster, ns: &str) -> String {
    cluster
        .kubectl_ok(&[
            "get",
            "events",
            "-n",
            ns,
            "-o",
            "custom-columns=REASON:.reason,NOTE:.note,MESSAGE:.message",
        ])
        .unwrap_or_default()
}

fn condition(status: &Value, type_: &str) -> (String, String, String) {
    let c = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(Value::Null);
    let text = |f: &str| c[f].as_str().unwrap_or_default().to_string();
    (text("status"), text("reason"), text("message"))
}

#[test]
fn the_observed_world_drifts_and_comes_back() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let podman = Podman::shared();
    let ns = TestNamespace::new(cluster, "reg-world").unwrap();
    let s = suffix();

    // The world: a database row, a Deployment with CPU limits, an HTTP service, a container.
    let db = format!("hp_reg_{s}");
    pg.admin("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();
    pg.admin(
        &db,
        "CREATE TABLE settings (k text PRIMARY KEY, v text); INSERT INTO settings VALUES ('mode', 'strict')",
    )
    .unwrap();
    admin_secret(cluster, &ns.name, pg);
    let http = JsonServer::start(r#"{"status": "ok", "version": "1.123.4"}"#);
    let closed = free_port().unwrap();
    let image = podman.test_image().unwrap();
    let container = format!("ollama-{s}");
    podman
        .podman(&[
            "run",
            "-d",
            "--name",
            &container,
            &image,
            "/bin/busybox",
            "sleep",
            "3600",
        ])
        .unwrap();
    let (host, port) = (&pg.host, pg.port);
    let endpoint = podman.endpoint();
    let nsn = &ns.name;
    let world = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: n8n}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: n8n}}}}
  template:
    metadata: {{labels: {{app: n8n}}}}
    spec:
      containers:
      - name: n8n
        image: n8nio/n8n:1.123.4
        resources: {{limits: {{cpu: 500m, memory: 512Mi}}}}
---
apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: homelab}}
spec:
  server: {{external: {{host: "{host}", port: {port}, adminSecret: pg-admin, sslMode: disable}}}}
  databaseName: {db}
---
apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {{name: homelab}}
spec:
  interval: 2s
  derived: false
  properties:
  - id: pi.containers.cpu-limits
    description: every container on the Pi has a CPU limit
    severity: critical
    desired: true
    observe:
      kubernetes:
        apiVersion: apps/v1
        kind: Deployment
        namespace: {nsn}
        field: /spec/template/spec/containers/*/resources/limits/cpu
        aggregate: all
  - id: pi.deployments.count
    desired: "{{{{ count.Database }}}}"
    observe: {{kubernetes: {{apiVersion: apps/v1, kind: Deployment, namespace: {nsn}, aggregate: count}}}}
  - id: db.settings.mode
    desired: strict
    observe: {{sql: {{database: homelab, query: "SELECT v FROM settings WHERE k = 'mode'"}}}}
  - id: db.broken.query
    desired: 1
    observe: {{sql: {{database: homelab, query: "SELECT 1 / (SELECT count(*) - 1 FROM settings)"}}}}
  - id: db.settings.rows
    desired: 1
    observe: {{sql: {{database: homelab, query: "SELECT count(*) FROM settings"}}}}
  - id: n8n.health
    desired: ok
    observe: {{http: {{url: "http://127.0.0.1:{hp}/healthz", jsonPointer: /status}}}}
  - id: n8n.version
    desired: "1"
    comparison: semverMajor
    observe: {{http: {{url: "http://127.0.0.1:{hp}/healthz", jsonPointer: /version}}}}
  - id: gpu.ollama.running
    severity: critical
    desired: running
    observe: {{docker: {{endpoint: "{endpoint}", container: {container}, field: /State/Status}}}}
  - id: broken.endpoint
    desired: 200
    observe: {{http: {{url: "http://127.0.0.1:{closed}/", timeoutSeconds: 2}}}}
"#,
        hp = http.port
    );
    let (ok, out) = cluster.apply(&ns.name, &world).unwrap();
    assert!(ok, "{out}");
    let _op = Operator::start(BINARY, cluster, &ns.name, &format!("reg-world-{s}"), &[]).unwrap();

    // In sync: no Drift; the failing observer is Unknown, not drift.
    let st = eventually(WAIT, "a first evaluation in sync", || {
        let st = status(cluster, &ns.name, "homelab");
        Ok((st["properties"] == 9 && st["inSync"] == 7 && st["unknown"] == 2).then_some(st))
    })
    .unwrap_or_else(|e| panic!("{e}; status {}", status(cluster, &ns.name, "homelab")));
    assert_eq!(st["drifted"], 0, "{st}");
    let reason = |property: &str| -> String {
        st["unknownProperties"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["property"] == property)
            .and_then(|u| u["reason"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        reason("broken.endpoint").contains("Connection refused"),
        "{st}"
    );
    // A query that fails is Unknown with PostgreSQL's reason, and the queries after it are
    // still observed (db.settings.rows is in sync).
    assert!(
        reason("db.broken.query").contains("division by zero"),
        "{st}"
    );
    assert!(drifts(cluster, &ns.name).is_empty());
    assert!(st["lastEvaluationTime"].is_string(), "{st}");
    assert_eq!(condition(&st, "Ready").0, "True", "{st}");
    let listing = cluster
        .kubectl_ok(&["get", "drift", "-n", &ns.name])
        .unwrap();
    assert!(listing.trim().is_empty(), "{listing}");
    eventually(WAIT, "an Unknown event for the failing observer", || {
        let e = events(cluster, &ns.name);
        Ok(e.contains("broken.endpoint: cannot be observed")
            .then_some(()))
    })
    .unwrap();

    // Change the world by hand.
    cluster
        .kubectl_ok(&[
            "patch", "deployment", "n8n", "-n", &ns.name, "--type=json", "-p",
            r#"[{"op": "remove", "path": "/spec/template/spec/containers/0/resources/limits/cpu"}]"#,
        ])
        .unwrap();
    pg.admin(&db, "UPDATE settings SET v = 'lax' WHERE k = 'mode'")
        .unwrap();
    http.set(r#"{"status": "degraded", "version": "2.0.1"}"#);
    podman.podman(&["stop", "-t", "0", &container]).unwrap();

    let expected = vec![
        (
            "db.settings.mode".to_string(),
            "strict".to_string(),
            "lax".to_string(),
        ),
        (
            "gpu.ollama.running".to_string(),
            "running".to_string(),
            "exited".to_string(),
        ),
        (
            "n8n.health".to_string(),
            "ok".to_string(),
            "degraded".to_string(),
        ),
        (
            "n8n.version".to_string(),
            "1".to_string(),
            "2.0.1".to_string(),
        ),
        (
            "pi.containers.cpu-limits".to_string(),
            "true".to_string(),
            "false".to_string(),
        ),
    ];
    eventually(WAIT, "five Drift objects", || {
        Ok((drift_values(cluster, &ns.name) == expected).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}; drifts {:?}", drift_values(cluster, &ns.name)));
    let listing = cluster
        .kubectl_ok(&["get", "drift", "-n", &ns.name])
        .unwrap();
    for column in ["PROPERTY", "DESIRED", "OBSERVED", "SEVERITY", "SINCE"] {
        assert!(listing.contains(column), "{listing}");
    }
    assert!(listing.contains("homelab.gpu.ollama.running"), "{listing}");
    let cpu = drifts(cluster, &ns.name)
        .into_iter()
        .find(|d| d["spec"]["property"] == "pi.containers.cpu-limits")
        .unwrap();
    assert_eq!(cpu["spec"]["severity"], "critical");
    let message = cpu["spec"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("{}/n8n", ns.name)), "{message}");
    assert_eq!(
        cpu["metadata"]["ownerReferences"][0]["kind"], "StateRegistry",
        "{cpu}"
    );
    let st = status(cluster, &ns.name, "homelab");
    assert_eq!(st["driftedBySeverity"]["critical"], 2, "{st}");
    let e = events(cluster, &ns.name);
    assert!(
        e.contains("db.settings.mode: desired strict, observed lax"),
        "{e}"
    );

    // A cap on Drift objects keeps the worst and counts the rest.
    cluster
        .kubectl_ok(&[
            "patch",
            "stateregistry",
            "homelab",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"spec": {"maxDriftObjects": 3}}"#,
        ])
        .unwrap();
    eventually(WAIT, "three Drift objects, the critical ones first", || {
        let kept: Vec<String> = drift_values(cluster, &ns.name)
            .into_iter()
            .map(|d| d.0)
            .collect();
        let st = status(cluster, &ns.name, "homelab");
        Ok((kept.len() == 3
            && kept.contains(&"gpu.ollama.running".to_string())
            && kept.contains(&"pi.containers.cpu-limits".to_string())
            && st["notMaterialized"] == 2)
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}; drifts {:?}", drift_values(cluster, &ns.name)));
    cluster
        .kubectl_ok(&[
            "patch",
            "stateregistry",
            "homelab",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"spec": {"maxDriftObjects": 500}}"#,
        ])
        .unwrap();

    // Undo it: every Drift goes away.
    cluster
        .kubectl_ok(&[
            "patch", "deployment", "n8n", "-n", &ns.name, "--type=json", "-p",
            r#"[{"op": "add", "path": "/spec/template/spec/containers/0/resources/limits/cpu", "value": "500m"}]"#,
        ])
        .unwrap();
    pg.admin(&db, "UPDATE settings SET v = 'strict' WHERE k = 'mode'")
        .unwrap();
    http.set(r#"{"status": "ok", "version": "1.124.0"}"#);
    podman.podman(&["start", &container]).unwrap();
    eventually(WAIT, "no Drift left", || {
        Ok(drifts(cluster, &ns.name).is_empty().then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}; drifts {:?}", drift_values(cluster, &ns.name)));
    let st = status(cluster, &ns.name, "homelab");
    assert_eq!(
        (st["inSync"].clone(), st["unknown"].clone()),
        (7.into(), 2.into()),
        "{st}"
    );
    assert!(events(cluster, &ns.name).contains("Resolved"));
    let _ = podman.podman(&["rm", "-f", "-t", "0", &container]);
    let _ = pg.admin(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

#[test]
fn a_malformed_catalogue_is_refused_precisely() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "reg-bad").unwrap();
    let s = suffix();
    let http = JsonServer::start(r#"{"status": "ok"}"#);

    // The API server refuses what the schema can tell.
    let inline = r#"apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {name: refused}
spec:
  properties:
  - id: no.observer
    desired: 1
    observe: {}
"#;
    let (ok, out) = cluster.apply(&ns.name, inline).unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("observe must set exactly one of kubernetes, sql, http or docker"),
        "{out}"
    );
    let (ok, out) = cluster
        .apply(
            &ns.name,
            &inline.replace("observe: {}", "observe: {http: {url: \"ftp://nas/\"}}"),
        )
        .unwrap();
    assert!(
        !ok && out.contains("url must be an http:// or https:// URL"),
        "{out}"
    );

    // A ConfigMap catalogue: the bad properties are refused by id and field, the good one runs.
    let catalogue = format!(
        r#"- id: n8n.health
  desired: ok
  observe: {{http: {{url: "http://127.0.0.1:{}/", jsonPointer: /status}}}}
- id: voice.latency
  desired: 2000
  comparison: withinPercent
  observe: {{http: {{url: "http://127.0.0.1:{}/"}}}}
- id: gpu.host.up
  desired: true
  observe: {{docker: {{endpoint: "ssh://gpu", container: ollama, field: /State/Running}}}}
"#,
        http.port, http.port
    );
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "seed-catalogue"},
        "data": {"catalogue.yaml": catalogue},
    });
    let (ok, out) = cluster.apply(&ns.name, &cm.to_string()).unwrap();
    assert!(ok, "{out}");
    let registry = r#"apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {name: seed}
spec:
  interval: 2s
  derived: false
  catalogs:
  - {name: seed-catalogue, key: catalogue.yaml}
  - {name: missing, key: catalogue.yaml}
"#;
    let (ok, out) = cluster.apply(&ns.name, registry).unwrap();
    assert!(ok, "{out}");
    let _op = Operator::start(BINARY, cluster, &ns.name, &format!("reg-bad-{s}"), &[]).unwrap();
    let st = eventually(WAIT, "an evaluation", || {
        let st = status(cluster, &ns.name, "seed");
        Ok(st["lastEvaluationTime"].is_string().then_some(st))
    })
    .unwrap();
    assert_eq!(
        (st["properties"].clone(), st["inSync"].clone()),
        (1.into(), 1.into()),
        "{st}"
    );
    assert_eq!(st["refused"], 3, "{st}");
    let (degraded, reason, message) = condition(&st, "Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "InvalidProperties")
    );
    for needle in [
        "3 properties refused",
        "ConfigMap seed-catalogue key catalogue.yaml: property voice.latency: tolerancePercent: withinPercent needs tolerancePercent",
        "property gpu.host.up: observe.docker.endpoint:",
        "catalogs[1]: ConfigMap",
        "/missing does not exist",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
}

#[test]
fn correct_mode_restores_a_declared_object_and_history_records_it() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "reg-fix").unwrap();
    let s = suffix();
    let history_db = format!("hp_history_{s}");
    pg.admin("postgres", &format!("CREATE DATABASE {history_db}"))
        .unwrap();
    let url = pg.uri(&pg.user, &pg.password, &history_db);
    let manifests = format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: authelia}}
data: {{policy: two_factor}}
---
apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {{name: homelab}}
spec:
  interval: 2s
  mode: Correct
  derived: false
  properties:
  - id: sso.authelia.policy
    desired: two_factor
    severity: critical
    observe: {{kubernetes: {{apiVersion: v1, kind: ConfigMap, namespace: {}, name: authelia, field: /data/policy}}}}
    corrector: {{patch: {{data: {{policy: two_factor}}}}}}
"#,
        ns.name
    );
    let (ok, out) = cluster.apply(&ns.name, &manifests).unwrap();
    assert!(ok, "{out}");
    let _op = Operator::start(
        BINARY,
        cluster,
        &ns.name,
        &format!("reg-fix-{s}"),
        &["--history-database-url", &url],
    )
    .unwrap();
    eventually(WAIT, "in sync", || {
        let st = status(cluster, &ns.name, "homelab");
        Ok((st["inSync"] == 1).then_some(()))
    })
    .unwrap();
    let st = status(cluster, &ns.name, "homelab");
    assert_eq!(condition(&st, "HistoryRecorded").0, "True", "{st}");

    // Someone weakens the policy by hand. The corrector acts as the ServiceAccount
    // homeplane-corrector of the registry's namespace: without rights, it cannot put it back,
    // and says so (it used to patch with the operator's own rights).
    cluster
        .kubectl_ok(&[
            "patch",
            "configmap",
            "authelia",
            "-n",
            &ns.name,
            "-p",
            r#"{"data":{"policy":"one_factor"}}"#,
        ])
        .unwrap();
    eventually(WAIT, "the correction refused by RBAC", || {
        Ok(events(cluster, &ns.name)
            .contains("the corrector acts as ServiceAccount")
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}; events {}", events(cluster, &ns.name)));
    assert!(
        events(cluster, &ns.name).contains(&format!("{}/homeplane-corrector", ns.name)),
        "{}",
        events(cluster, &ns.name)
    );
    let policy = cluster
        .kubectl_ok(&[
            "get",
            "configmap",
            "authelia",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.data.policy}",
        ])
        .unwrap();
    assert_eq!(policy, "one_factor", "nothing corrected without the rights");
    // Grant the corrector what it changes: now Correct mode puts the policy back.
    for args in [
        vec!["create", "serviceaccount", "homeplane-corrector"],
        vec![
            "create",
            "role",
            "corrector",
            "--verb=get,patch",
            "--resource=configmaps",
        ],
        vec![
            "create",
            "rolebinding",
            "corrector",
            "--role=corrector",
            "--serviceaccount",
        ],
    ] {
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        if args.last().map(String::as_str) == Some("--serviceaccount") {
            let last = args.len() - 1;
            args[last] = format!("--serviceaccount={}:homeplane-corrector", ns.name);
        }
        args.extend(["-n".to_string(), ns.name.clone()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster.kubectl_ok(&args).unwrap();
    }
    eventually(WAIT, "the policy corrected", || {
        let policy = cluster.kubectl_ok(&[
            "get",
            "configmap",
            "authelia",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.data.policy}",
        ])?;
        let e = events(cluster, &ns.name);
        Ok((policy == "two_factor" && e.contains("Corrected")).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}; events {}", events(cluster, &ns.name)));
    assert!(events(cluster, &ns.name).contains(&format!(
        "sso.authelia.policy: patched ConfigMap {}/authelia",
        ns.name
    )));
    eventually(WAIT, "the correction counted and no Drift left", || {
        let st = status(cluster, &ns.name, "homelab");
        Ok((st["corrections"].as_i64().unwrap_or(0) >= 1
            && st["inSync"] == 1
            && drifts(cluster, &ns.name).is_empty())
        .then_some(()))
    })
    .unwrap();

    // The transitions are in homeplane's database; the CLI prints them.
    let out = eventually(WAIT, "Drifted then InSync in the history", || {
        let out = std::process::Command::new(BINARY)
            .args([
                "drift",
                "history",
                "sso.authelia.policy",
                "--history-database-url",
                &url,
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let moves: Vec<(String, String)> = text
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                Some((cols.get(2)?.to_string(), cols.get(3)?.to_string()))
            })
            .collect();
        let drifted = moves
            .iter()
            .position(|m| m == &("InSync".into(), "Drifted".into()));
        let back = moves
            .iter()
            .position(|m| m == &("Drifted".into(), "InSync".into()));
        Ok(matches!((drifted, back), (Some(a), Some(b)) if a < b).then_some(text))
    })
    .unwrap();
    assert!(out.starts_with("TIME"), "{out}");
    assert!(out.contains(&format!("{}/homelab", ns.name)), "{out}");
    let _ = pg.admin(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {history_db} WITH (FORCE)"),
    );
}

#[test]
fn homeplane_kinds_contribute_derived_properties() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "reg-derived").unwrap();
    let s = suffix();
    let closed = free_port().unwrap();
    // A Database whose server does not answer: its controller reports Ready=False, and the
    // registry turns that into drift of the derived property without a catalogue.
    let manifests = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: pg-admin}}
stringData: {{username: postgres, password: nope}}
---
apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: memory}}
spec:
  server: {{external: {{host: 127.0.0.1, port: {closed}, adminSecret: pg-admin, sslMode: disable}}}}
  migrations:
    inline:
    - {{id: "0001_init", sql: "CREATE TABLE m (id int)"}}
---
apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {{name: derived}}
spec:
  interval: 2s
"#
    );
    let (ok, out) = cluster.apply(&ns.name, &manifests).unwrap();
    assert!(ok, "{out}");
    let _op = Operator::start(BINARY, cluster, &ns.name, &format!("reg-derived-{s}"), &[]).unwrap();
    let drift = eventually(WAIT, "the Database's derived Ready drift", || {
        Ok(drifts(cluster, &ns.name)
            .into_iter()
            .find(|d| d["spec"]["property"] == "database.memory.ready"))
    })
    .unwrap_or_else(|e| panic!("{e}; status {}", status(cluster, &ns.name, "derived")));
    assert_eq!(drift["spec"]["desired"], "true");
    assert_eq!(drift["spec"]["observed"], "false");
    let message = drift["spec"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("127.0.0.1"), "{message}");
    // Its migrations cannot be known while the server is down: Unknown, not drift.
    assert!(
        !drifts(cluster, &ns.name)
            .iter()
            .any(|d| d["spec"]["property"] == "database.memory.migrations.applied")
    );
    let st = status(cluster, &ns.name, "derived");
    assert!(st["unknown"].as_i64().unwrap_or(0) >= 1, "{st}");
}

#[test]
fn kubectl_get_drift_watch_shows_drift_appear_and_resolve() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "reg-watch").unwrap();
    let manifests = format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: caddy}}
data: {{tls: "on"}}
---
apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {{name: homelab}}
spec:
  interval: 1s
  derived: false
  properties:
  - id: edge.caddy.tls
    desired: "on"
    severity: critical
    observe: {{kubernetes: {{apiVersion: v1, kind: ConfigMap, namespace: {}, name: caddy, field: /data/tls}}}}
"#,
        ns.name
    );
    let (ok, out) = cluster.apply(&ns.name, &manifests).unwrap();
    assert!(ok, "{out}");
    let _op = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    eventually(WAIT, "in sync", || {
        Ok((status(cluster, &ns.name, "homelab")["inSync"] == 1).then_some(()))
    })
    .unwrap();

    // What a person runs to watch drift, as a child process whose output is collected.
    let mut watch = cluster
        .kubectl_command()
        .args([
            "get",
            "drift",
            "-n",
            &ns.name,
            "-w",
            "--output-watch-events",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let seen = |event: &str| {
        let lines = lines.clone();
        let event = event.to_string();
        eventually(
            WAIT,
            &format!("a {event} line for edge.caddy.tls"),
            move || {
                let lines = lines.lock().unwrap();
                Ok(lines
                    .iter()
                    .find(|l| l.starts_with(&event) && l.contains("edge.caddy.tls"))
                    .cloned())
            },
        )
    };

    cluster
        .kubectl_ok(&[
            "patch",
            "configmap",
            "caddy",
            "-n",
            &ns.name,
            "-p",
            r#"{"data":{"tls":"off"}}"#,
        ])
        .unwrap();
    let added = seen("ADDED").unwrap_or_else(|e| panic!("{e}: {:?}", lines.lock().unwrap()));
    // The printer columns: property, desired, observed, severity.
    for column in ["on", "off", "critical"] {
        assert!(added.split_whitespace().any(|w| w == column), "{added}");
    }
    cluster
        .kubectl_ok(&[
            "patch",
            "configmap",
            "caddy",
            "-n",
            &ns.name,
            "-p",
            r#"{"data":{"tls":"on"}}"#,
        ])
        .unwrap();
    seen("DELETED").unwrap_or_else(|e| panic!("{e}: {:?}", lines.lock().unwrap()));
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();
}

#[test]
fn a_registry_sees_and_touches_only_its_own_namespace() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let home = TestNamespace::new(cluster, "reg-home").unwrap();
    let other = TestNamespace::new(cluster, "reg-other").unwrap();
    let s = suffix();
    let (h, o) = (home.name.as_str(), other.name.as_str());
    let db = format!("hp_reg_other_{s}");
    pg.admin("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();
    admin_secret(cluster, o, pg);
    // The other namespace: a ConfigMap, and a Database with its admin credentials.
    let theirs = format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: theirs}}
data: {{mode: strict}}
---
apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: theirs}}
spec:
  server: {{external: {{host: "{}", port: {}, adminSecret: pg-admin, sslMode: disable}}}}
  databaseName: {db}
"#,
        pg.host, pg.port
    );
    let (ok, out) = cluster.apply(o, &theirs).unwrap();
    assert!(ok, "{out}");
    let mine = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: token}}
stringData: {{value: s3cr3t-value}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: mine}}
data: {{mode: strict}}
---
apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {{name: scoped}}
spec:
  interval: 2s
  mode: Correct
  derived: false
  properties:
  - id: own.configmap
    desired: strict
    observe: {{kubernetes: {{apiVersion: v1, kind: ConfigMap, name: mine, field: /data/mode}}}}
  - id: own.secret
    desired: x
    observe: {{kubernetes: {{apiVersion: v1, kind: Secret, name: token, field: /data/value}}}}
  - id: other.configmap
    desired: lax
    observe: {{kubernetes: {{apiVersion: v1, kind: ConfigMap, namespace: {o}, name: theirs, field: /data/mode}}}}
    corrector: {{patch: {{data: {{mode: lax}}}}}}
  - id: cluster.nodes
    desired: 0
    observe: {{kubernetes: {{apiVersion: v1, kind: Node, aggregate: count}}}}
  - id: other.database
    desired: 1
    observe: {{sql: {{database: theirs, namespace: {o}, query: "SELECT 1"}}}}
  - id: metadata.service
    desired: 200
    observe: {{http: {{url: "http://169.254.169.254/latest/meta-data/", timeoutSeconds: 2}}}}
  - id: template.env
    desired: '{{{{ get_env(name="HOME") }}}}'
    observe: {{kubernetes: {{apiVersion: v1, kind: ConfigMap, name: mine, field: /data/mode}}}}
  - id: template.range
    desired: '{{{{ range(end=100000000000) | length }}}}'
    observe: {{kubernetes: {{apiVersion: v1, kind: ConfigMap, name: mine, field: /data/mode}}}}
"#
    );
    let (ok, out) = cluster.apply(h, &mine).unwrap();
    assert!(ok, "{out}");
    let op = Operator::start(BINARY, cluster, h, &format!("reg-scope-{s}"), &[]).unwrap();
    let st = eventually(WAIT, "an evaluation", || {
        let st = status(cluster, h, "scoped");
        Ok((st["properties"] == 8 && st["unknown"] == 7).then_some(st))
    })
    .unwrap_or_else(|e| panic!("{e}; status {}", status(cluster, h, "scoped")));
    assert_eq!(st["inSync"], 1, "only its own ConfigMap: {st}");
    let reasons: std::collections::HashMap<String, String> = st["unknownProperties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["property"].as_str().unwrap().to_string(),
                u["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = |id: &str, needle: &str| {
        let reason = reasons.get(id).cloned().unwrap_or_default();
        assert!(
            reason.contains(needle),
            "{id}: {needle:?} not in {reason:?}"
        );
    };
    expect("own.secret", "Secrets are never observed");
    expect(
        "other.configmap",
        &format!("sees only its own namespace, not namespace {o}"),
    );
    expect("cluster.nodes", "not the cluster-scoped kind Node");
    expect(
        "other.database",
        &format!("not the Databases of namespace {o}"),
    );
    expect(
        "metadata.service",
        "169.254.169.254 is a link-local address",
    );
    expect("template.env", "get_env() is not available");
    expect("template.range", "range() is not available");
    // No value of the Secret anywhere: status, Drift objects, events.
    let everything = format!("{st} {:?} {}", drifts(cluster, h), events(cluster, h));
    assert!(!everything.contains("s3cr3t"), "{everything}");
    // Nothing of the other namespace was corrected (the property is Unknown, never drifted).
    let theirs_now = cluster
        .kubectl_ok(&[
            "get",
            "configmap",
            "theirs",
            "-n",
            o,
            "-o",
            "jsonpath={.data.mode}",
        ])
        .unwrap();
    assert_eq!(theirs_now, "strict");
    // The operator kept running through all of it.
    assert_eq!(op.get("/healthz").map(|r| r.0), Some(200));

    // A 20-digit interval (which used to panic the controller's task) is refused at once.
    let huge = r#"apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {name: huge}
spec:
  interval: 99999999999999999999s
"#;
    let (ok, out) = cluster.apply(h, huge).unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("interval must be a duration between 1s and 24h"),
        "{out}"
    );
    let (ok, out) = cluster
        .apply(h, &huge.replace("99999999999999999999s", "25h"))
        .unwrap();
    assert!(!ok && out.contains("between 1s and 24h"), "{out}");
    // The registry is still evaluated after those refusals.
    let before = status(cluster, h, "scoped")["lastEvaluationTime"].clone();
    eventually(WAIT, "another evaluation", || {
        Ok((status(cluster, h, "scoped")["lastEvaluationTime"] != before).then_some(()))
    })
    .unwrap();
    let _ = pg.admin(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

#[test]
fn a_trusted_namespace_sees_further() {
    let cluster = Cluster::shared();
    let home = TestNamespace::new(cluster, "reg-trusted").unwrap();
    let other = TestNamespace::new(cluster, "reg-seen").unwrap();
    let (h, o) = (home.name.as_str(), other.name.as_str());
    let (ok, out) = cluster
        .apply(
            o,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: theirs}\ndata: {mode: strict}\n",
        )
        .unwrap();
    assert!(ok, "{out}");
    let registry = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {{name: trusted}}
spec:
  interval: 2s
  derived: false
  properties:
  - id: other.configmap
    desired: strict
    observe: {{kubernetes: {{apiVersion: v1, kind: ConfigMap, namespace: {o}, name: theirs, field: /data/mode}}}}
  - id: secrets.never
    desired: 0
    observe: {{kubernetes: {{apiVersion: v1, kind: Secret, aggregate: count}}}}
"#
    );
    let (ok, out) = cluster.apply(h, &registry).unwrap();
    assert!(ok, "{out}");
    let _op = Operator::start(
        BINARY,
        cluster,
        h,
        &format!("reg-trusted-{}", suffix()),
        &["--trusted-registry-namespace", h],
    )
    .unwrap();
    let st = eventually(WAIT, "an evaluation", || {
        let st = status(cluster, h, "trusted");
        Ok((st["properties"] == 2 && st["inSync"] == 1).then_some(st))
    })
    .unwrap_or_else(|e| panic!("{e}; status {}", status(cluster, h, "trusted")));
    let reason = st["unknownProperties"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("Secrets are never observed"),
        "even trusted: {reason}"
    );
}
