//! `homeplane import` against the real things: containers created in Podman (through its
//! Docker-compatible API) with limits, two networks, a named volume, a bind mount, secrets in
//! the environment and on the command line, health checks and a GPU device become a tree that
//! applies to the test control plane, where every object becomes Ready (an operator running)
//! with the containers' limits, namespaces, Service ports and probes and no secret value in
//! any file; a PostgreSQL prepared like the seed (five roles, three tiers, Sacred readable
//! only by the application role) becomes a Database whose first plan changes no privilege;
//! n8n workflows become Workflows that adopt them, Ready and in sync, nothing duplicated. And
//! offline: a compose file whose services do not fit the example NodeClasses is written,
//! planned, and named as not fitting.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use homeplane_testkit::{
    Cluster, N8n, Operator, Podman, Postgres, TestNamespace, TestNode, eventually, suffix,
};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");

/// Runs `homeplane import ARGS`: (exit code, stdout, stderr).
fn import(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BINARY)
        .arg("import")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tempdir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("homeplane-{prefix}-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file under `dir` with its text.
fn files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
        }
    }
    out
}

/// Every YAML document of the tree, as JSON.
fn documents(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for (path, text) in files(dir) {
        if path.extension().is_none_or(|e| e != "yaml") || path.ends_with("kustomization.yaml") {
            continue;
        }
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push(v);
            }
        }
    }
    out
}

/// The documents `kubectl apply -k` applies: those the kustomizations name.
fn applied_documents(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let root: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    for ns in root["resources"].as_sequence().unwrap() {
        let folder = dir.join(ns.as_str().unwrap());
        let k: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(folder.join("kustomization.yaml")).unwrap(),
        )
        .unwrap();
        for file in k["resources"].as_sequence().unwrap() {
            let text = std::fs::read_to_string(folder.join(file.as_str().unwrap())).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                out.push(serde::Deserialize::deserialize(doc).unwrap());
            }
        }
    }
    out
}

/// Asserts that none of `values` occurs in any file under `dir`.
fn assert_no_secret(dir: &Path, values: &[&str]) {
    for (path, text) in files(dir) {
        for v in values {
            assert!(
                !text.contains(v),
                "the secret value {v:?} is in {}",
                path.display()
            );
        }
    }
}

/// Runs the README's `kubectl create secret` commands with the values of `values` (by key)
/// in place of `...`; every `...` must have a value.
fn create_secrets(cluster: &Cluster, dir: &Path, values: &BTreeMap<&str, String>) -> usize {
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mut n = 0;
    for line in readme
        .lines()
        .filter(|l| l.starts_with("kubectl create secret generic "))
    {
        let words: Vec<String> = line
            .split_whitespace()
            .skip(1)
            .map(|w| match w.strip_prefix("--from-literal=") {
                Some(kv) => {
                    let (k, v) = kv.split_once('=').unwrap();
                    let v = if v == "..." {
                        values
                            .get(k)
                            .unwrap_or_else(|| panic!("no value for {k} in: {line}"))
                            .clone()
                    } else {
                        v.to_string()
                    };
                    format!("--from-literal={k}={v}")
                }
                None => w.to_string(),
            })
            .collect();
        let args: Vec<&str> = words.iter().map(String::as_str).collect();
        cluster.kubectl_ok(&args).unwrap();
        n += 1;
    }
    n
}

/// Applies each namespace first, then the Secrets, then the whole tree — as the README says.
fn apply_tree(cluster: &Cluster, dir: &Path, values: &BTreeMap<&str, String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let ns = entry.path().join("namespace.yaml");
        if ns.exists() {
            cluster
                .kubectl_ok(&["apply", "-f", &ns.to_string_lossy()])
                .unwrap();
        }
    }
    create_secrets(cluster, dir, values);
    cluster
        .kubectl_ok(&["apply", "-k", &dir.to_string_lossy()])
        .unwrap();
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Whether one applied object is ready, by its kind's own rule.
fn ready(cluster: &Cluster, doc: &Value) -> anyhow::Result<Option<()>> {
    let kind = doc["kind"].as_str().unwrap();
    let api = doc["apiVersion"].as_str().unwrap();
    let group = api.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let resource = if group.is_empty() {
        kind.to_lowercase()
    } else {
        format!("{}.{group}", kind.to_lowercase())
    };
    let name = doc["metadata"]["name"].as_str().unwrap();
    let mut args = vec!["get", resource.as_str(), name, "-o", "json"];
    if let Some(ns) = doc["metadata"]["namespace"].as_str() {
        args.extend(["-n", ns]);
    }
    let live: Value = serde_json::from_str(&cluster.kubectl_ok(&args)?)?;
    let status = &live["status"];
    let ok = match kind {
        "Namespace" => status["phase"] == "Active",
        "Deployment" => {
            status["observedGeneration"] == live["metadata"]["generation"]
                && status["availableReplicas"].as_i64() >= live["spec"]["replicas"].as_i64()
        }
        "StatefulSet" => {
            status["observedGeneration"] == live["metadata"]["generation"]
                && status["readyReplicas"].as_i64() >= live["spec"]["replicas"].as_i64()
        }
        "PersistentVolumeClaim" => status["phase"] == "Bound",
        "Service" | "NetworkPolicy" | "ConfigMap" => true,
        _ => condition(&live, "Ready").is_some_and(|c| c["status"] == "True"),
    };
    Ok(ok.then_some(()))
}

/// Waits until every object of the tree is ready.
fn wait_all_ready(cluster: &Cluster, dir: &Path) {
    for doc in applied_documents(dir) {
        let what = format!(
            "{} {}/{} to be ready",
            doc["kind"].as_str().unwrap(),
            doc["metadata"]["namespace"].as_str().unwrap_or("-"),
            doc["metadata"]["name"].as_str().unwrap()
        );
        eventually(Duration::from_secs(120), &what, || ready(cluster, &doc)).unwrap();
    }
}

fn get(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&cluster.kubectl_ok(&all).unwrap()).unwrap()
}

/// An operator per namespace of the tree that holds homeplane objects.
fn operators(cluster: &Cluster, dir: &Path, s: &str) -> Vec<Operator> {
    let mut namespaces: Vec<String> = applied_documents(dir)
        .iter()
        .filter(|d| {
            d["apiVersion"]
                .as_str()
                .unwrap()
                .starts_with("homeplane.dev/")
        })
        .filter_map(|d| d["metadata"]["namespace"].as_str().map(str::to_string))
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
        .iter()
        .map(|ns| Operator::start(BINARY, cluster, ns, &format!("imp-{ns}-{s}"), &[]).unwrap())
        .collect()
}

fn age_recipient() -> String {
    let out = Command::new("age-keygen").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string()
}

#[test]
fn podman_containers_become_a_homelab_that_applies_and_runs() {
    let cluster = Cluster::shared();
    let podman = Podman::shared();
    let s = suffix();
    let image = podman.test_image().unwrap();
    let pi = TestNode::new(cluster, "arm64", "4", "8Gi", 0).unwrap();
    let gpu = TestNode::new(cluster, "amd64", "8", "16Gi", 1).unwrap();
    let work = tempdir("import-podman");

    // The classes: one per test node.
    let classes = work.join("nodeclasses.yaml");
    let class = |name: &str, node: &TestNode, arch: &str, extra: &str| {
        format!(
            r#"apiVersion: homeplane.dev/v1alpha1
kind: NodeClass
metadata: {{name: {name}}}
spec:
  nodeSelector: {{homeplane.dev/test-node: "{key}"}}
  tolerations: [{{key: homeplane.dev/test-node, operator: Equal, value: "{key}", effect: NoSchedule}}]
  architecture: {arch}
  defaults: {{cpu: 250m, memory: 256Mi}}
  {extra}
"#,
            key = node.key
        )
    };
    std::fs::write(
        &classes,
        format!(
            "{}---\n{}",
            class(
                &format!("imp-pi-{s}"),
                &pi,
                "arm64",
                "capacity: {cpu: \"4\", memory: 8Gi}"
            ),
            class(
                &format!("imp-gpu-{s}"),
                &gpu,
                "amd64",
                "gpuResource: amd.com/gpu\n  capacity: {cpu: \"8\", memory: 16Gi, gpu: 1}"
            )
        ),
    )
    .unwrap();

    // Volumes for the claims, on the Pi test node.
    let storage_class = format!("imp-{s}");
    for i in 0..3 {
        let path = work.join(format!("pv-{i}"));
        std::fs::create_dir_all(&path).unwrap();
        let (ok, text) = cluster
            .apply(
                "default",
                &format!(
                    r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: imp-{s}-{i}}}
spec:
  storageClassName: {storage_class}
  capacity: {{storage: 5Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {{path: {}, type: Directory}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{}]}}]
"#,
                    path.display(),
                    pi.name
                ),
            )
            .unwrap();
        assert!(ok, "{text}");
    }

    // The old world: two networks, a named volume, a bind mount, secrets, health checks.
    let front = format!("imp{s}f");
    let back = format!("imp{s}b");
    let volume = format!("imp{s}data");
    podman.podman(&["network", "create", &front]).unwrap();
    podman.podman(&["network", "create", &back]).unwrap();
    podman.podman(&["volume", "create", &volume]).unwrap();
    let www = work.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "<h1>homelab</h1>\n").unwrap();
    let db_password = format!("Pg-{s}-Xw9kQz7Lm2");
    let web_password = format!("Web-{s}-hunter2hunter2");
    let seed = format!("Q8jF2LkPz0XwV7bNc4RtYs9u{s}");
    let cache_password = format!("cache-{s}-r3d1s");
    let label = format!("homeplane-test={s}");
    let (web, db, cache, llm) = (
        format!("web{s}"),
        format!("db{s}"),
        format!("cache{s}"),
        format!("llm{s}"),
    );
    let create = |args: &[&str]| {
        let mut all = vec!["create", "--label", &label];
        all.extend(args);
        podman.podman(&all).unwrap();
    };
    create(&[
        "--name",
        &web,
        "--network",
        &front,
        "--network",
        &back,
        "--cpus",
        "0.5",
        "--memory",
        "256m",
        "-p",
        "18080:80",
        "-e",
        &format!("DB_PASSWORD={web_password}"),
        "-e",
        "MODE=prod",
        "-e",
        &format!("SESSION_SEED={seed}"),
        "-v",
        &format!("{}:/srv/www:ro", www.display()),
        "--health-cmd",
        "wget -q -O- http://localhost/ || exit 1",
        "--health-interval",
        "15s",
        "--health-retries",
        "4",
        "--restart",
        "unless-stopped",
        "--workdir",
        "/srv",
        &image,
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/srv/www",
    ]);
    create(&[
        "--name",
        &db,
        "--network",
        &back,
        "--cpus",
        "1",
        "--memory",
        "512m",
        "-v",
        &format!("{volume}:/var/lib/data"),
        "-e",
        &format!("POSTGRES_PASSWORD={db_password}"),
        "--expose",
        "5432",
        "--health-cmd",
        "pg_isready",
        "--restart",
        "always",
        "--user",
        "70:70",
        &image,
        "/bin/busybox",
        "sleep",
        "3600",
    ]);
    create(&[
        "--name",
        &cache,
        "--network",
        &front,
        "--expose",
        "6379",
        &image,
        "redis-server",
        "--requirepass",
        &cache_password,
    ]);
    create(&[
        "--name",
        &llm,
        "--cpus",
        "2",
        "--memory",
        "1g",
        "--device",
        "/dev/null:/dev/kfd",
        "--restart",
        "unless-stopped",
        &image,
        "/bin/busybox",
        "sleep",
        "3600",
    ]);

    // Import.
    let out = work.join("homelab");
    let home = format!("imp{s}home");
    let recipient = age_recipient();
    let (code, stdout, stderr) = import(&[
        "--docker",
        &podman.endpoint(),
        "--filter",
        &format!("label={label}"),
        "--nodeclasses",
        &classes.to_string_lossy(),
        "--namespace",
        &home,
        "--storage-class",
        &storage_class,
        "--out",
        &out.to_string_lossy(),
        "--backup-endpoint",
        "http://127.0.0.1:9",
        "--backup-bucket",
        "imported",
        "--age-recipient",
        &recipient,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("fits"), "{stdout}");
    assert_no_secret(&out, &[&db_password, &web_password, &seed, &cache_password]);
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("kubectl create secret generic web{s}-env -n")),
        "{readme}"
    );

    // Apply, as the README says, with an operator for the homeplane objects.
    let values = BTreeMap::from([
        ("DB_PASSWORD", web_password.clone()),
        ("SESSION_SEED", seed.clone()),
        ("POSTGRES_PASSWORD", db_password.clone()),
        ("ARG_REQUIREPASS", cache_password.clone()),
        ("accessKeyId", "imported".to_string()),
        ("secretAccessKey", "imported-secret".to_string()),
    ]);
    apply_tree(cluster, &out, &values);
    let _operators = operators(cluster, &out, &s);
    wait_all_ready(cluster, &out);

    // The limits, namespaces, ports and probes are the containers' own.
    let docs = documents(&out);
    let find = |name: &str| -> Value {
        docs.iter()
            .find(|d| {
                matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet"))
                    && d["metadata"]["name"] == name
            })
            .unwrap_or_else(|| panic!("no workload {name}"))
            .clone()
    };
    let live = |doc: &Value| -> Value {
        get(
            cluster,
            &[
                "get",
                &format!("{}.apps", doc["kind"].as_str().unwrap().to_lowercase()),
                doc["metadata"]["name"].as_str().unwrap(),
                "-n",
                doc["metadata"]["namespace"].as_str().unwrap(),
            ],
        )
    };
    let (front_ns, back_ns) = (front.clone(), back.clone());
    let limits =
        |w: &Value| w["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].clone();

    let web_doc = live(&find(&web));
    let web_ns = web_doc["metadata"]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(web_ns == front_ns || web_ns == back_ns, "{web_ns}");
    assert_eq!(
        web_doc["kind"], "Deployment",
        "a read-only bind mount holds no state"
    );
    assert_eq!(limits(&web_doc), json!({"cpu": "500m", "memory": "256Mi"}));
    let web_container = &web_doc["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        web_container["readinessProbe"]["exec"]["command"],
        json!(["/bin/sh", "-c", "wget -q -O- http://localhost/ || exit 1"])
    );
    assert_eq!(web_container["readinessProbe"]["periodSeconds"], 15);
    assert_eq!(web_container["readinessProbe"]["failureThreshold"], 4);
    assert_eq!(web_container["workingDir"], "/srv");
    assert_eq!(
        web_container["command"],
        json!(["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/srv/www"])
    );
    let env = web_container["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "MODE" && e["value"] == "prod")
    );
    assert_eq!(
        env.iter().find(|e| e["name"] == "SESSION_SEED").unwrap()["valueFrom"]["secretKeyRef"]["name"],
        format!("web{s}-env"),
        "a random-looking value goes to the Secret"
    );
    let web_service = get(cluster, &["get", "service", &web, "-n", &web_ns]);
    assert_eq!(web_service["spec"]["ports"][0]["port"], 80);
    assert_eq!(web_service["spec"]["ports"][0]["protocol"], "TCP");
    // The other network's namespace lets web in.
    let other = if web_ns == front_ns {
        &back_ns
    } else {
        &front_ns
    };
    let policy = get(
        cluster,
        &[
            "get",
            "networkpolicy",
            "from-containers-on-this-network",
            "-n",
            other,
        ],
    );
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        web
    );

    let db_doc = live(&find(&db));
    assert_eq!(db_doc["metadata"]["namespace"], back_ns);
    assert_eq!(
        db_doc["kind"], "StatefulSet",
        "a writable volume holds state"
    );
    assert_eq!(limits(&db_doc), json!({"cpu": "1", "memory": "512Mi"}));
    let db_spec = &db_doc["spec"]["template"]["spec"];
    assert_eq!(
        db_spec["containers"][0]["readinessProbe"]["exec"]["command"],
        json!(["/bin/sh", "-c", "pg_isready"])
    );
    assert_eq!(db_spec["securityContext"]["runAsUser"], 70);
    let db_service = get(cluster, &["get", "service", &db, "-n", &back_ns]);
    assert_eq!(db_service["spec"]["ports"][0]["port"], 5432);
    let claim = get(cluster, &["get", "pvc", &volume, "-n", &back_ns]);
    assert_eq!(claim["status"]["phase"], "Bound");
    let policies = get(cluster, &["get", "backuppolicy", &volume, "-n", &back_ns]);
    assert_eq!(policies["spec"]["source"]["pvc"]["claimName"], volume);

    let cache_doc = live(&find(&cache));
    assert_eq!(cache_doc["metadata"]["namespace"], front_ns);
    assert_eq!(
        limits(&cache_doc),
        json!({"cpu": "250m", "memory": "256Mi"}),
        "no limits: the NodeClass defaults"
    );
    assert!(
        cache_doc["metadata"]["annotations"]["homeplane.dev/import-note"]
            .as_str()
            .unwrap()
            .contains("default"),
        "and a note says so"
    );
    assert_eq!(
        cache_doc["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["redis-server", "--requirepass", "$(ARG_REQUIREPASS)"]),
        "a secret flag is read from the Secret"
    );

    let llm_doc = live(&find(&llm));
    assert_eq!(
        llm_doc["metadata"]["namespace"], home,
        "the default network"
    );
    assert_eq!(
        limits(&llm_doc),
        json!({"cpu": "2", "memory": "1Gi", "amd.com/gpu": "1"})
    );
    let llm_pods = get(
        cluster,
        &[
            "get",
            "pods",
            "-n",
            &home,
            "-l",
            &format!("app.kubernetes.io/instance={llm}"),
        ],
    );
    assert_eq!(
        llm_pods["items"][0]["spec"]["nodeName"], gpu.name,
        "the GPU class's node"
    );

    // The catalogue: in sync on day one; the old container switched off shows as drift.
    let registry = get(
        cluster,
        &["get", "stateregistry", "imported", "-n", &front_ns],
    );
    assert!(
        registry["status"]["properties"].as_i64().unwrap() > 4,
        "{registry}"
    );
    eventually(
        Duration::from_secs(60),
        "the front registry in sync",
        || {
            let r = get(
                cluster,
                &["get", "stateregistry", "imported", "-n", &front_ns],
            );
            Ok((r["status"]["drifted"] == 0 && r["status"]["unknown"] == 0).then_some(()))
        },
    )
    .unwrap();
    podman.podman(&["rm", "-f", "-t", "0", &cache]).unwrap();
    cluster
        .kubectl_ok(&[
            "annotate",
            "stateregistry",
            "imported",
            "-n",
            &front_ns,
            "--overwrite",
            &format!("homeplane.dev/evaluate-requested={}", suffix()),
        ])
        .unwrap();
    let drift_name = format!("imported.{front_ns}.cache{s}.docker.state");
    eventually(
        Duration::from_secs(60),
        "the old container's state as drift",
        || {
            let out =
                cluster.kubectl(&["get", "drift", &drift_name, "-n", &front_ns, "-o", "json"])?;
            Ok(out.status.success().then_some(()))
        },
    )
    .unwrap();

    // Clean up what is not in a namespace of the test.
    for c in [&web, &db, &llm] {
        let _ = podman.podman(&["rm", "-f", "-t", "0", c]);
    }
    let _ = podman.podman(&["volume", "rm", "-f", &volume]);
    let _ = podman.podman(&["network", "rm", "-f", &front, &back]);
    for ns in [&front_ns, &back_ns, &home] {
        let _ = cluster.kubectl(&[
            "delete",
            "backuppolicy,stateregistry",
            "--all",
            "-n",
            ns,
            "--wait=true",
            "--timeout=30s",
        ]);
        let _ = cluster.kubectl(&["delete", "namespace", ns, "--wait=false"]);
    }
    for i in 0..3 {
        let _ = cluster.kubectl(&["delete", "pv", &format!("imp-{s}-{i}"), "--wait=false"]);
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// The privileges each role holds on every table and schema of the tiers, and CONNECT.
fn privilege_matrix(pg: &Postgres, db: &str, roles: &[String]) -> String {
    let list = roles
        .iter()
        .map(|r| format!("'{r}'"))
        .collect::<Vec<_>>()
        .join(", ");
    pg.admin(
        db,
        &format!(
            "SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
               SELECT r.rolname || ' ' || n.nspname || '.' || c.relname || ' ' || p.priv || '=' ||
                      has_table_privilege(r.oid, c.oid, p.priv) AS line
               FROM pg_roles r, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                    unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p(priv)
               WHERE r.rolname IN ({list}) AND c.relkind = 'r'
                 AND n.nspname IN ('clinical', 'therapy', 'messages', 'health', 'public_data')
               UNION ALL
               SELECT r.rolname || ' schema ' || n.nspname || '=' || has_schema_privilege(r.oid, n.oid, 'USAGE')
               FROM pg_roles r, pg_namespace n
               WHERE r.rolname IN ({list}) AND n.nspname IN ('clinical', 'therapy', 'messages', 'health', 'public_data')
               UNION ALL
               SELECT r.rolname || ' connect=' || has_database_privilege(r.oid, current_database(), 'CONNECT')
               FROM pg_roles r WHERE r.rolname IN ({list})
             ) m"
        ),
    )
    .unwrap()
}

#[test]
fn a_seed_database_imports_with_nothing_to_change() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "imp-db").unwrap();
    let s = suffix();
    let db = format!("hp_imp_{s}");
    let role = |r: &str| format!("{r}_{s}");
    let (app, mcp, readonly, remote, migrator) = (
        role("app"),
        role("mcp_proxy"),
        role("readonly"),
        role("remote_rw"),
        role("migrator"),
    );
    let roles = [
        app.clone(),
        mcp.clone(),
        readonly.clone(),
        remote.clone(),
        migrator.clone(),
    ];
    let password = |r: &str| format!("pw-{r}-Zx81");
    for r in &roles {
        pg.admin(
            "postgres",
            &format!("CREATE ROLE {r} LOGIN PASSWORD '{}'", password(r)),
        )
        .unwrap();
    }
    pg.admin("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();

    // The seed: three tiers, Sacred (clinical, therapy) for the application role only.
    let mut sql = format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC;\n");
    for r in &roles {
        sql.push_str(&format!("GRANT CONNECT ON DATABASE {db} TO {r};\n"));
    }
    for schema in ["clinical", "therapy", "messages", "health", "public_data"] {
        sql.push_str(&format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.records (id bigserial PRIMARY KEY, body text NOT NULL);\n"
        ));
    }
    sql.push_str(
        "INSERT INTO messages.records (body) SELECT 'message ' || i FROM generate_series(1, 1200) i;
         INSERT INTO health.records (body) SELECT 'pulse ' || i FROM generate_series(1, 300) i;
         INSERT INTO clinical.records (body) VALUES ('note');
         CREATE TABLE public.schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
         INSERT INTO public.schema_migrations VALUES (1, false), (2, false), (227, false);\n",
    );
    // (schemas, [(role, writes)]) of each tier.
    type Tier<'a> = (&'a [&'a str], Vec<(&'a String, bool)>);
    let tiers: [Tier; 3] = [
        (&["clinical", "therapy"], vec![(&app, true)]),
        (
            &["messages", "health"],
            vec![(&app, true), (&mcp, false), (&migrator, false)],
        ),
        (
            &["public_data"],
            vec![
                (&app, true),
                (&mcp, false),
                (&readonly, false),
                (&remote, true),
                (&migrator, true),
            ],
        ),
    ];
    for (schemas, grants) in &tiers {
        for schema in *schemas {
            for (r, write) in grants {
                let (tables, sequences) = if *write {
                    ("SELECT, INSERT, UPDATE, DELETE", "SELECT, USAGE, UPDATE")
                } else {
                    ("SELECT", "SELECT, USAGE")
                };
                sql.push_str(&format!(
                    "GRANT USAGE ON SCHEMA {schema} TO {r};
                     GRANT {tables} ON ALL TABLES IN SCHEMA {schema} TO {r};
                     GRANT {sequences} ON ALL SEQUENCES IN SCHEMA {schema} TO {r};
                     ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {schema} GRANT {tables} ON TABLES TO {r};
                     ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {schema} GRANT {sequences} ON SEQUENCES TO {r};
                     ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {schema} GRANT EXECUTE ON ROUTINES TO {r};\n",
                    admin = pg.user
                ));
            }
        }
    }
    pg.admin(&db, &sql).unwrap();
    let before = privilege_matrix(pg, &db, &roles);
    assert!(before.contains(&format!("{app} clinical.records SELECT=true")));
    assert!(before.contains(&format!("{readonly} clinical.records SELECT=false")));

    // Import.
    let work = tempdir("import-db");
    let out = work.join("homelab");
    let url = pg.uri(&pg.user, &pg.password, &db);
    let (code, stdout, stderr) = import(&[
        "--database-url",
        &url,
        "--namespace",
        &ns.name,
        "--database-name",
        "homelab",
        "--out",
        &out.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_no_secret(&out, &[&pg.password]);
    let docs = documents(&out);
    let database = docs.iter().find(|d| d["kind"] == "Database").unwrap();
    let spec = &database["spec"];
    assert_eq!(spec["databaseName"], db);
    assert_eq!(spec["roles"].as_array().unwrap().len(), 5);
    assert_eq!(spec["tiers"].as_array().unwrap().len(), 3, "{spec}");
    let sacred = &spec["tiers"][0];
    assert_eq!(
        sacred["schemas"],
        json!(["clinical", "therapy"]),
        "the most restricted tier first"
    );
    let readers: Vec<&str> = spec["roles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["access"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["tier"] == sacred["name"])
        })
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        readers,
        [app.as_str()],
        "Sacred is the application role's alone"
    );
    assert_eq!(spec["migrations"]["baseline"], 227);
    assert_eq!(spec["migrations"]["adopt"]["table"], "schema_migrations");

    // Apply with the roles' current passwords, and run the operator.
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    for line in readme
        .lines()
        .filter(|l| l.starts_with("kubectl create secret generic "))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        let secret = words[4];
        let username = words
            .iter()
            .find_map(|w| w.strip_prefix("--from-literal=username="))
            .unwrap();
        let value = if secret == "pg-admin" {
            pg.password.clone()
        } else {
            password(username)
        };
        let args = [
            "create",
            "secret",
            "generic",
            secret,
            "-n",
            &ns.name,
            &format!("--from-literal=username={username}"),
            &format!("--from-literal=password={value}"),
        ];
        cluster.kubectl_ok(&args).unwrap();
    }
    // ... and hand the role Secrets to homeplane, as the README says.
    let handovers: Vec<&str> = readme
        .lines()
        .filter(|l| {
            l.starts_with("kubectl label secret ") || l.starts_with("kubectl annotate secret ")
        })
        .collect();
    let role_secrets = readme
        .lines()
        .filter(|l| l.starts_with("kubectl create secret generic ") && !l.contains(" pg-admin "))
        .count();
    assert!(role_secrets > 0);
    assert_eq!(
        handovers.len(),
        2 * role_secrets,
        "a label and an annotation for each role Secret"
    );
    for line in handovers {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        cluster.kubectl_ok(&words).unwrap();
    }
    cluster
        .kubectl_ok(&["apply", "-k", &out.to_string_lossy()])
        .unwrap();
    let _operator =
        Operator::start(BINARY, cluster, &ns.name, &format!("imp-db-{s}"), &[]).unwrap();
    wait_all_ready(cluster, &out);

    // The plan changed nothing: only the roles were marked as homeplane's.
    let live = get(cluster, &["get", "database", "homelab", "-n", &ns.name]);
    let plan: Vec<&str> = live["status"]["lastPlan"]
        .as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(plan.len(), 5, "one mark per role: {plan:#?}");
    assert!(
        plan.iter().all(|l| l.starts_with("COMMENT ON ROLE ")),
        "the first plan changed more than the roles' marks: {plan:#?}"
    );
    assert_eq!(
        privilege_matrix(pg, &db, &roles),
        before,
        "the privilege matrix is unchanged"
    );
    for r in &roles {
        let (ok, text) = pg.psql_as(r, &password(r), &db, "SELECT 1").unwrap();
        assert!(ok, "{r} still logs in with its password: {text}");
    }
    let registry = get(
        cluster,
        &["get", "stateregistry", "imported", "-n", &ns.name],
    );
    assert_eq!(registry["status"]["drifted"], 0, "{registry}");

    let _ = cluster.kubectl(&[
        "delete",
        "database,stateregistry",
        "--all",
        "-n",
        &ns.name,
        "--wait=true",
        "--timeout=30s",
    ]);
    drop(_operator);
    let _ = pg.admin("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
    for r in &roles {
        let _ = pg.admin("postgres", &format!("DROP ROLE {r}"));
    }
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn n8n_workflows_are_adopted_not_duplicated() {
    let cluster = Cluster::shared();
    let n8n = N8n::shared();
    let ns = TestNamespace::new(cluster, "imp-n8n").unwrap();
    let s = suffix();
    let tag = format!("imp-{s}");
    let (status, created_tag) = n8n
        .api("POST", "/tags", Some(&json!({"name": tag})))
        .unwrap();
    assert!(status < 300, "{created_tag}");
    let mut ids = BTreeMap::new();
    for (name, active) in [("email classifier", false), ("health monitor", true)] {
        let title = format!("imp-{s} {name}");
        let trigger = if active {
            json!({"name": "Every hour", "type": "n8n-nodes-base.scheduleTrigger", "typeVersion": 1.2,
                   "position": [0, 0], "parameters": {"rule": {"interval": [{"field": "hours"}]}}})
        } else {
            json!({"name": "Start", "type": "n8n-nodes-base.manualTrigger", "typeVersion": 1,
                   "position": [0, 0], "parameters": {}})
        };
        let first = trigger["name"].as_str().unwrap().to_string();
        let body = json!({
            "name": title,
            "nodes": [trigger, {"name": "Note", "type": "n8n-nodes-base.noOp", "typeVersion": 1, "position": [220, 0], "parameters": {}}],
            "connections": {first: {"main": [[{"node": "Note", "type": "main", "index": 0}]]}},
            "settings": {"executionOrder": "v1"}
        });
        let (status, wf) = n8n.api("POST", "/workflows", Some(&body)).unwrap();
        assert!(status < 300, "{wf}");
        let id = wf["id"].as_str().unwrap().to_string();
        let (status, tagged) = n8n
            .api(
                "PUT",
                &format!("/workflows/{id}/tags"),
                Some(&json!([{"id": created_tag["id"]}])),
            )
            .unwrap();
        assert!(status < 300, "{tagged}");
        if active {
            let (status, body) = n8n
                .api("POST", &format!("/workflows/{id}/activate"), None)
                .unwrap();
            assert!(status < 300, "{body}");
        }
        ids.insert(title, (id, active));
    }

    let work = tempdir("import-n8n");
    let out = work.join("homelab");
    let (code, stdout, stderr) = import(&[
        "--n8n-url",
        &n8n.url,
        "--n8n-api-key",
        &n8n.api_key,
        "--n8n-tag",
        &tag,
        "--namespace",
        &ns.name,
        "--out",
        &out.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_no_secret(&out, &[&n8n.api_key]);
    let workflows: Vec<Value> = documents(&out)
        .into_iter()
        .filter(|d| d["kind"] == "Workflow")
        .collect();
    assert_eq!(workflows.len(), 2, "only the tagged workflows");

    apply_tree(
        cluster,
        &out,
        &BTreeMap::from([("apiKey", n8n.api_key.clone())]),
    );
    let _operator =
        Operator::start(BINARY, cluster, &ns.name, &format!("imp-n8n-{s}"), &[]).unwrap();
    wait_all_ready(cluster, &out);
    for wf in &workflows {
        let name = wf["metadata"]["name"].as_str().unwrap();
        let live = eventually(Duration::from_secs(60), "the workflow in sync", || {
            let live = get(cluster, &["get", "workflow", name, "-n", &ns.name]);
            Ok(condition(&live, "Drifted")
                .is_some_and(|c| c["status"] == "False")
                .then_some(live))
        })
        .unwrap();
        let title = wf["metadata"]["annotations"]["homeplane.dev/n8n-id"]
            .as_str()
            .unwrap();
        let (id, active) = ids.values().find(|(id, _)| id == title).unwrap();
        assert_eq!(
            live["status"]["n8nId"],
            id.as_str(),
            "the existing workflow was adopted"
        );
        assert_eq!(live["spec"]["active"], *active);
        assert_eq!(live["status"]["active"], *active);
    }
    // Nothing duplicated: n8n holds exactly the two workflows, with their ids.
    let (_, list) = n8n.api("GET", "/workflows?limit=250", None).unwrap();
    let mine: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| {
            w["name"]
                .as_str()
                .unwrap()
                .starts_with(&format!("imp-{s} "))
        })
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = ids.values().map(|(id, _)| id.as_str()).collect();
    let mut found = mine.clone();
    expected.sort();
    found.sort();
    assert_eq!(found, expected);

    let _ = cluster.kubectl(&[
        "delete",
        "workflow,stateregistry",
        "--all",
        "-n",
        &ns.name,
        "--wait=true",
        "--timeout=30s",
    ]);
    for (id, _) in ids.values() {
        let _ = n8n.api("DELETE", &format!("/workflows/{id}"), None);
    }
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn a_compose_file_that_does_not_fit_is_written_and_named() {
    let work = tempdir("import-compose");
    let file = work.join("compose.yaml");
    std::fs::write(
        &file,
        r#"services:
  llm:
    image: ollama/ollama:0.12.0
    deploy:
      resources:
        limits: {cpus: "6", memory: 24g}
  proxy:
    image: caddy:2.8
    ports: ["443:443"]
    mem_limit: 128m
    cpus: 0.2
    environment:
      CF_API_TOKEN: ${CF_API_TOKEN}
"#,
    )
    .unwrap();
    let out = work.join("homelab");
    let (code, stdout, stderr) = import(&[
        "--compose",
        &file.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("DOES NOT FIT"), "{stdout}");
    assert!(stdout.contains("/llm "), "the plan names it: {stdout}");
    assert!(stderr.contains("does not fit the NodeClasses"), "{stderr}");
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("it does NOT fit"), "{readme}");
    assert!(
        readme.contains("--from-literal=CF_API_TOKEN=..."),
        "a variable compose takes from the environment comes from a Secret: {readme}"
    );
    // The tree is there, plan.txt too; a second import refuses to write over it.
    assert!(out.join("plan.txt").exists());
    let (code, _, stderr) = import(&[
        "--compose",
        &file.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("is not empty"), "{stderr}");
    let (code, _, stderr) = import(&["--out", &work.join("x").to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("nothing to import"), "{stderr}");
    let _ = std::fs::remove_dir_all(&work);
}
