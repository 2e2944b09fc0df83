//! homeplane as its Helm chart installs it, on the real node (`scripts/realnode.sh`: a kubelet
//! and containerd beside the simulated Pi and GPU node), and what it creates really running
//! there through the real scheduler, kubelet and containerd:
//!
//! - the chart with the operator's image built from the binary under test: two replicas Ready
//!   under the chart's ServiceAccount, probes and securityContext, one leader, a handover when
//!   the leader's pod is deleted, and no `forbidden` in the operator's logs while every
//!   controller does its happy path in a namespace of its own (so the chart's RBAC is what the
//!   code needs);
//! - a managed Database: a PostgreSQL pod with its volume, roles and tiers applied through its
//!   Service's name, an application pod that reads and writes what each role's tier allows and
//!   is refused the rest, and `deletionPolicy: Retain` bringing the same data back;
//! - a MemoryServer whose managed Redis answers PING from the server's pod at `REDIS_URL`;
//! - a PVC BackupPolicy whose Job archives a volume a pod wrote and uploads it, and the
//!   restore Job of `examples/restore/` putting the files back into a new claim byte for byte;
//! - AgentRuns of the example agent (`examples/agent/`) under their Agent's ServiceAccount: the
//!   observer is refused a write by the API server and says so in the contract it wrote.
//!
//! One test holds the install (it is cluster-wide, so it must be gone before the next test
//! binary runs): the scenarios run side by side in it, and each failure is reported by name.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use homeplane_backups::store::{S3Config, Store};
use homeplane_testkit::{
    Cluster, N8n, Postgres, S3Server, TestNamespace, eventually, repo_root, suffix,
};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");
/// The chart's release and namespace.
const RELEASE: &str = "homeplane";
const RELEASE_NS: &str = "homeplane-system";
/// How long a pod of the real node may take to start (images are local; PostgreSQL's initdb
/// under a CPU limit takes the longest).
const START: Duration = Duration::from_secs(240);
/// Placement of what the tests run themselves on the real node.
const ON_REAL_NODE: &str = "nodeSelector: {homeplane.dev/class: real}\n  tolerations: [{key: homeplane.dev/real-node, operator: Exists, effect: NoSchedule}]";
const TOOLBOX: &str = "localhost/homeplane/toolbox:1";

/// Runs a project script; its stdout, trimmed. Its stderr goes to the test's output.
fn script(name: &str, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts").join(name))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/{name} {args:?} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The real node of the test cluster (started now when the cluster was started without it).
struct RealNode {
    dir: String,
}

impl RealNode {
    fn up(cluster: &Cluster) -> RealNode {
        let dir = cluster
            .kubeconfig
            .parent()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        script("realnode.sh", &["up", &dir]);
        RealNode { dir }
    }

    /// The address at which pods reach the host's `127.0.0.1:port`.
    fn forward(&self, port: u16) -> String {
        script("realnode.sh", &["forward", &self.dir, &port.to_string()])
    }

    /// The operator's image made from the binary under test, loaded into the node.
    fn operator_image(&self) -> String {
        let out = script("realnode-images.sh", &["operator", BINARY]);
        let (image, archive) = out.split_once(' ').unwrap();
        script("realnode.sh", &["import", &self.dir, archive]);
        image.to_string()
    }
}

/// The port of a `scheme://host:port[/...]` URL.
fn port_of(url: &str) -> u16 {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap();
    hostport.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn helm(cluster: &Cluster, args: &[&str]) -> (bool, String) {
    let out = cluster.helm_command().args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn try_json(cluster: &Cluster, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&cluster.kubectl_ok(&all)?)?)
}

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    try_json(cluster, args).unwrap()
}

/// An object; `ns` empty for a cluster-scoped one.
fn try_get(cluster: &Cluster, ns: &str, kind: &str, name: &str) -> anyhow::Result<Value> {
    if ns.is_empty() {
        try_json(cluster, &["get", kind, name])
    } else {
        try_json(cluster, &["get", kind, name, "-n", ns])
    }
}

fn get(cluster: &Cluster, ns: &str, kind: &str, name: &str) -> Value {
    try_get(cluster, ns, kind, name).unwrap()
}

fn apply(cluster: &Cluster, ns: &str, yaml: &str) {
    let (ok, text) = cluster.apply(ns, yaml).unwrap();
    assert!(ok, "{text}\n{yaml}");
}

/// (status, reason, message) of condition `type_` of an object.
fn condition(obj: &Value, type_: &str) -> (String, String, String) {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
        .unwrap_or_default()
}

/// Waits until `kind/name` is Ready=True; fails with its last Ready condition.
fn wait_ready(cluster: &Cluster, ns: &str, kind: &str, name: &str) -> Value {
    let mut last = Default::default();
    eventually(START, &format!("{kind} {ns}/{name} Ready"), || {
        let obj = try_get(cluster, ns, kind, name)?;
        last = condition(&obj, "Ready");
        Ok((last.0 == "True").then_some(obj))
    })
    .unwrap_or_else(|e| panic!("{e}; last Ready condition {last:?}"))
}

/// Runs `script` with sh in a pod of `image` on the real node until it ends; (succeeded, log).
/// `extra` is added to the container (env, volumeMounts), `volumes` to the pod.
fn run_pod(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    image: &str,
    script: &str,
    extra: &str,
    volumes: &str,
) -> (bool, String) {
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  {ON_REAL_NODE}
  containers:
  - name: main
    image: {image}
    command: [sh, -c, {script}]
    resources: {{limits: {{cpu: 50m, memory: 64Mi}}}}
{extra}
{volumes}
"#,
        script = serde_json::to_string(script).unwrap()
    );
    apply(cluster, ns, &yaml);
    let phase = eventually(START, &format!("pod {ns}/{name} to end"), || {
        let p = try_get(cluster, ns, "pod", name)?["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok((p == "Succeeded" || p == "Failed").then_some(p))
    })
    .unwrap();
    let log = cluster
        .kubectl_ok(&["logs", name, "-n", ns])
        .unwrap_or_else(|e| format!("(no log: {e})"));
    (phase == "Succeeded", log)
}

/// Everything the scenarios share.
struct Env {
    cluster: &'static Cluster,
    node: RealNode,
    image: String,
}

/// The chart's install; uninstalled when dropped, also when a scenario failed.
struct Install<'a> {
    cluster: &'a Cluster,
}

impl Drop for Install<'_> {
    fn drop(&mut self) {
        let (ok, text) = helm(
            self.cluster,
            &[
                "uninstall",
                RELEASE,
                "-n",
                RELEASE_NS,
                "--wait",
                "--timeout",
                "120s",
            ],
        );
        if !ok && !text.contains("not found") {
            eprintln!("helm uninstall failed: {text}");
        }
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", RELEASE_NS, "--wait=false"]);
    }
}

fn install(env: &Env) -> Install<'_> {
    let cluster = env.cluster;
    // What an earlier run that was killed left: gone first, so that one operator runs.
    drop(Install { cluster });
    let _ = cluster.kubectl(&[
        "delete",
        "clusterrole,clusterrolebinding",
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/managed-by=Helm"),
    ]);
    eventually(
        Duration::from_secs(120),
        "the old release's namespace gone",
        || {
            let out = cluster.kubectl_ok(&[
                "get",
                "namespace",
                RELEASE_NS,
                "--ignore-not-found",
                "-o",
                "name",
            ])?;
            Ok((!out.contains("namespace")).then_some(()))
        },
    )
    .unwrap();
    cluster
        .kubectl_ok(&["create", "namespace", RELEASE_NS])
        .unwrap();
    // homeplane's own database (drift history), on the test PostgreSQL, reached from the pods.
    let pg = Postgres::shared();
    let db = format!("hp_history_{}", suffix());
    pg.admin("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();
    let url = format!(
        "postgres://{}:{}@{}/{db}",
        pg.user,
        pg.password,
        env.node.forward(pg.port)
    );
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "homeplane-history",
            "-n",
            RELEASE_NS,
            &format!("--from-literal=url={url}"),
        ])
        .unwrap();
    let (repository, tag) = env.image.rsplit_once(':').unwrap();
    let values = std::env::temp_dir().join(format!("homeplane-realnode-values-{}.yaml", suffix()));
    std::fs::write(
        &values,
        format!(
            "image: {{repository: {repository}, tag: {tag}, pullPolicy: Never}}\n{}\n",
            ON_REAL_NODE.replace("\n  ", "\n")
        ),
    )
    .unwrap();
    let chart = repo_root().join("charts/homeplane");
    let (ok, text) = helm(
        cluster,
        &[
            "install",
            RELEASE,
            &chart.to_string_lossy(),
            "-n",
            RELEASE_NS,
            "-f",
            &values.to_string_lossy(),
        ],
    );
    let _ = std::fs::remove_file(&values);
    assert!(ok, "helm install failed: {text}");
    Install { cluster }
}

/// The operator's pods (those not being deleted).
fn operator_pods(cluster: &Cluster) -> Vec<Value> {
    json(
        cluster,
        &[
            "get",
            "pods",
            "-n",
            RELEASE_NS,
            "-l",
            &format!("app.kubernetes.io/name=homeplane,app.kubernetes.io/instance={RELEASE}"),
        ],
    )["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

fn pod_ready(pod: &Value) -> bool {
    condition(pod, "Ready").0 == "True"
}

/// The holder of the operator's Lease.
fn leader(cluster: &Cluster) -> String {
    cluster
        .kubectl_ok(&[
            "get",
            "lease",
            &format!("{RELEASE}-operator"),
            "-n",
            RELEASE_NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap_or_default()
}

/// A pod's `/metrics`, through the API server's proxy (the host routes to the node's pods).
fn metrics(cluster: &Cluster, pod: &str) -> String {
    cluster
        .kubectl_ok(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{RELEASE_NS}/pods/{pod}:8080/proxy/metrics"),
        ])
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The chart's pods.

fn chart_pods_run_as_installed(env: &Env) -> Option<TestNamespace> {
    let cluster = env.cluster;
    let pods = eventually(START, "two operator pods Ready", || {
        let pods = operator_pods(cluster);
        Ok((pods.len() == 2 && pods.iter().all(pod_ready)).then_some(pods))
    })
    .unwrap_or_else(|e| {
        let describe = cluster
            .kubectl(&["describe", "pods", "-n", RELEASE_NS])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!("{e}\n{describe}")
    });
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let spec = &pod["spec"];
        assert_eq!(spec["nodeName"], "real-1", "{name}");
        assert_eq!(spec["serviceAccountName"], RELEASE, "{name}");
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
        let c = &spec["containers"][0];
        assert_eq!(c["image"], env.image.as_str());
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        // The process really runs as the unprivileged user, with the chart's ServiceAccount
        // token (what its RBAC is checked against).
        let id = cluster
            .kubectl_ok(&["exec", name, "-n", RELEASE_NS, "--", "id", "-u"])
            .unwrap();
        assert_eq!(id.trim(), "65532", "{name}");
        let account = cluster
            .kubectl_ok(&[
                "exec",
                name,
                "-n",
                RELEASE_NS,
                "--",
                "cat",
                "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
            ])
            .unwrap();
        assert_eq!(account.trim(), RELEASE_NS);
    }
    // Exactly one leads: the Lease names it, and only its /metrics says so.
    let names: Vec<String> = pods
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let holder = eventually(Duration::from_secs(60), "a leader", || {
        let l = leader(cluster);
        Ok(names.contains(&l).then_some(l))
    })
    .unwrap();
    eventually(
        Duration::from_secs(60),
        "one pod reporting leadership",
        || {
            let leading: Vec<&String> = names
                .iter()
                // (The metric's HELP line also says "homeplane_leader 1 while...".)
                .filter(|n| {
                    metrics(cluster, n)
                        .lines()
                        .any(|l| l == "homeplane_leader 1")
                })
                .collect();
            Ok((leading == [&holder]).then_some(()))
        },
    )
    .unwrap();

    // The NodeClass of the real node sees it.
    let class = wait_ready(cluster, "", "nodeclass", "real");
    assert_eq!(class["status"]["nodes"][0], "real-1", "{class}");
    None
}

/// Deletes the leader's pod: the standby takes the Lease and reconciles (a new Agent becomes
/// Ready), and the Deployment brings the second replica back. Returns the deleted pod's log
/// and the Agent's namespace.
fn handover(env: &Env) -> (String, TestNamespace) {
    let cluster = env.cluster;
    let old = leader(cluster);
    assert!(!old.is_empty(), "no leader before the handover");
    let log = cluster
        .kubectl_ok(&["logs", &old, "-n", RELEASE_NS])
        .unwrap();
    let started = Instant::now();
    cluster
        .kubectl_ok(&["delete", "pod", &old, "-n", RELEASE_NS, "--wait=false"])
        .unwrap();
    let new = eventually(Duration::from_secs(90), "another leader", || {
        let l = leader(cluster);
        Ok((!l.is_empty() && l != old).then_some(l))
    })
    .unwrap();
    eprintln!(
        "handover: {old} -> {new} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let ns = TestNamespace::new(cluster, "rn-handover").unwrap();
    apply(cluster, &ns.name, &agent_yaml("after-handover", "observer"));
    wait_ready(cluster, &ns.name, "agent", "after-handover");
    eventually(START, "two operator pods Ready again", || {
        let pods = operator_pods(cluster);
        Ok((pods.len() == 2 && pods.iter().all(pod_ready)).then_some(()))
    })
    .unwrap();
    (log, ns)
}

// ---------------------------------------------------------------------------------------------
// A managed Database.

fn database_yaml(name: &str, policy: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: {name}}}
spec:
  deletionPolicy: {policy}
  server:
    managed:
      image: localhost/homeplane/postgres:17
      storage: 1Gi
      storageClass: real-local
      placement: {{class: real, cpu: 200m, memory: 256Mi}}
{extra}"#
    )
}

/// psql as each role, through the Service's name in the role's Secret, from a pod on the node.
fn psql_script(checks: &[(&str, &str, &str)]) -> String {
    let mut script = String::from("set -u\n");
    for (label, role, sql) in checks {
        script.push_str(&format!(
            "if out=$(psql \"$URI_{role}\" -X -q -t -A -v ON_ERROR_STOP=1 -c {sql} 2>&1); then echo \"{label}: ok $out\"; else echo \"{label}: refused $out\"; fi\n",
            role = role.to_uppercase(),
            sql = shell_quote(sql)
        ));
    }
    script
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn role_env(db: &str, roles: &[&str]) -> String {
    let mut env = String::from("    env:\n");
    for role in roles {
        env.push_str(&format!(
            "    - {{name: URI_{}, valueFrom: {{secretKeyRef: {{name: {db}-{role}, key: uri}}}}}}\n",
            role.to_uppercase()
        ));
    }
    env
}

fn a_managed_database_runs_and_keeps_its_data(env: &Env) -> Option<TestNamespace> {
    let cluster = env.cluster;
    let ns = TestNamespace::new(cluster, "rn-database").unwrap();
    let spec = "  tiers:\n  - {name: sacred, schemas: [clinical]}\n  - {name: convenience, schemas: [facts]}\n  roles:\n  - {name: app, access: [{tier: sacred, level: write}, {tier: convenience, level: write}]}\n  - {name: reader, access: [{tier: convenience, level: read}]}\n  migrations: {inline: [{id: \"0001_init\", sql: \"CREATE TABLE clinical.notes (id int, body text); CREATE TABLE facts.facts (id int, body text); INSERT INTO facts.facts VALUES (1, 'public');\"}]}\n";
    let yaml = database_yaml("shop", "Retain", spec);
    apply(cluster, &ns.name, &yaml);
    let db = wait_ready(cluster, &ns.name, "database", "shop");

    // A real PostgreSQL pod on the real node, its data on a volume of the node.
    let pod = get(cluster, &ns.name, "pod", "shop-postgres-0");
    assert_eq!(pod["spec"]["nodeName"], "real-1");
    assert!(
        pod["status"]["containerStatuses"][0]["state"]["running"].is_object(),
        "{pod}"
    );
    let claim = get(cluster, &ns.name, "pvc", "data-shop-postgres-0");
    assert_eq!(claim["status"]["phase"], "Bound");
    let volume = claim["spec"]["volumeName"].as_str().unwrap().to_string();
    let pv = json(cluster, &["get", "pv", &volume]);
    let folder = PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap());
    assert!(
        folder.join("pgdata/PG_VERSION").is_file(),
        "the server's data is not on volume {volume} ({})",
        folder.display()
    );
    let uri = cluster.secret_value(&ns.name, "shop-app", "uri").unwrap();
    assert!(
        uri.contains(&format!("@shop-postgres.{}.svc:5432/", ns.name)),
        "the role Secret names the Service: {}",
        db["status"]
    );

    // An application pod connects with each role's Secret through the Service's DNS name:
    // PostgreSQL itself allows what each tier grants and refuses the rest.
    let checks = [
        (
            "app writes sacred",
            "app",
            "INSERT INTO clinical.notes VALUES (1, 'kept across Retain')",
        ),
        ("app reads sacred", "app", "SELECT body FROM clinical.notes"),
        (
            "app writes convenience",
            "app",
            "INSERT INTO facts.facts VALUES (2, 'app')",
        ),
        (
            "reader reads convenience",
            "reader",
            "SELECT count(*) FROM facts.facts",
        ),
        (
            "reader reads sacred",
            "reader",
            "SELECT body FROM clinical.notes",
        ),
        (
            "reader writes convenience",
            "reader",
            "INSERT INTO facts.facts VALUES (3, 'reader')",
        ),
    ];
    let (ok, log) = run_pod(
        cluster,
        &ns.name,
        "app",
        TOOLBOX,
        &psql_script(&checks),
        &role_env("shop", &["app", "reader"]),
        "",
    );
    assert!(ok, "{log}");
    for expected in [
        "app writes sacred: ok",
        "app reads sacred: ok kept across Retain",
        "app writes convenience: ok",
        "reader reads convenience: ok 2",
        "reader reads sacred: refused",
        "reader writes convenience: refused",
    ] {
        assert!(log.contains(expected), "{expected:?} missing from:\n{log}");
    }
    assert!(
        log.contains("permission denied for schema clinical")
            || log.contains("permission denied for table notes"),
        "{log}"
    );

    // A backup of it: the pg_dump of the operator's own image runs in the operator's pod
    // against the instance, and the dump goes through the pipeline into the bucket.
    let dir = std::env::temp_dir().join(format!("hp-rn-database-{}", suffix()));
    let (endpoint, bucket, recipient) = bucket(env, &ns.name, "rn-database", &dir);
    apply(
        cluster,
        &ns.name,
        &policy_yaml(
            "shop",
            "{database: {name: shop}}",
            &endpoint,
            &bucket,
            &recipient,
        ),
    );
    let backup = back_up_now(cluster, &ns.name, "shop-1", "shop");
    assert!(
        backup["status"]["objectKey"]
            .as_str()
            .unwrap()
            .ends_with(".pgdump.zst.age"),
        "{}",
        backup["status"]
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Retain: the Database goes, its server's volume stays; declared again, the same data is
    // back.
    cluster
        .kubectl_ok(&[
            "delete",
            "database",
            "shop",
            "-n",
            &ns.name,
            "--timeout=120s",
        ])
        .unwrap();
    eventually(START, "the server's pod gone", || {
        let out = cluster.kubectl_ok(&[
            "get",
            "pod",
            "shop-postgres-0",
            "-n",
            &ns.name,
            "--ignore-not-found",
            "-o",
            "name",
        ])?;
        Ok(out.trim().is_empty().then_some(()))
    })
    .unwrap();
    assert_eq!(
        get(cluster, &ns.name, "pvc", "data-shop-postgres-0")["spec"]["volumeName"],
        volume.as_str(),
        "the volume was kept"
    );
    apply(cluster, &ns.name, &yaml);
    wait_ready(cluster, &ns.name, "database", "shop");
    let (ok, log) = run_pod(
        cluster,
        &ns.name,
        "app-again",
        TOOLBOX,
        &psql_script(&[("app reads sacred", "app", "SELECT body FROM clinical.notes")]),
        &role_env("shop", &["app"]),
        "",
    );
    assert!(
        ok && log.contains("app reads sacred: ok kept across Retain"),
        "{log}"
    );
    Some(ns)
}

// ---------------------------------------------------------------------------------------------
// A MemoryServer with a managed Redis.

fn a_memory_server_reaches_its_redis(env: &Env) -> Option<TestNamespace> {
    let cluster = env.cluster;
    let ns = TestNamespace::new(cluster, "rn-memory").unwrap();
    // Deleted at the end with its volume (deletionPolicy Delete), which the chart must allow.
    let database = database_yaml(
        "homelab",
        "Delete",
        "  extensions: [{name: vector}]\n  tiers: [{name: memory, schemas: [memory]}]\n  roles: [{name: memory, access: [{tier: memory, level: write}]}]\n",
    );
    apply(cluster, &ns.name, &database);
    apply(
        cluster,
        &ns.name,
        &format!(
            r#"apiVersion: homeplane.dev/v1alpha1
kind: MemoryServer
metadata: {{name: memory}}
spec:
  image: {TOOLBOX}
  placement: {{class: real, cpu: 50m, memory: 64Mi}}
  database: {{name: homelab}}
  cache:
    managed: {{image: localhost/homeplane/redis:8, placement: {{class: real, cpu: 50m, memory: 64Mi}}}}
  embedding:
    model: {{image: {TOOLBOX}, model: nomic-embed-text, port: 8080, placement: {{class: real, cpu: 50m, memory: 64Mi}}}}
  layers: {{episodicTtl: 72h}}
"#
        ),
    );
    let ms = wait_ready(cluster, &ns.name, "memoryserver", "memory");
    assert!(
        ms["status"]["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["ready"] == true),
        "{}",
        ms["status"]
    );
    let pods_of = |instance: &str| {
        json(
            cluster,
            &[
                "get",
                "pods",
                "-n",
                &ns.name,
                "-l",
                &format!("app.kubernetes.io/instance={instance}"),
            ],
        )["items"][0]
            .clone()
    };
    assert_eq!(pods_of("memory-cache")["spec"]["nodeName"], "real-1");
    let server = pods_of("memory");
    assert_eq!(server["spec"]["nodeName"], "real-1");
    let server = server["metadata"]["name"].as_str().unwrap();
    let out = cluster
        .kubectl_ok(&[
            "exec",
            server,
            "-n",
            &ns.name,
            "--",
            "sh",
            "-c",
            "echo \"$REDIS_URL\"; redis-cli -u \"$REDIS_URL\" PING; psql \"$DATABASE_URL\" -X -t -A -c \"SELECT extname FROM pg_extension WHERE extname = 'vector'\"",
        ])
        .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            format!("redis://memory-cache.{}.svc:6379", ns.name).as_str(),
            "PONG",
            "vector"
        ],
        "{out}"
    );

    // Deleting the Database (Delete) removes its server's volume.
    cluster
        .kubectl_ok(&["delete", "memoryserver", "memory", "-n", &ns.name])
        .unwrap();
    cluster
        .kubectl_ok(&[
            "delete",
            "database",
            "homelab",
            "-n",
            &ns.name,
            "--timeout=120s",
        ])
        .unwrap();
    eventually(START, "the server's volume deleted", || {
        let out = cluster.kubectl_ok(&[
            "get",
            "pvc",
            "-n",
            &ns.name,
            "--ignore-not-found",
            "-o",
            "name",
        ])?;
        Ok(out.trim().is_empty().then_some(()))
    })
    .unwrap();
    Some(ns)
}

// ---------------------------------------------------------------------------------------------
// A PVC backup and its restore.

/// A bucket of its own on the test S3 server, a Secret `r2` with the server's credentials in
/// `ns`, and an age key in `dir`: (endpoint as pods reach it, bucket, age recipient).
fn bucket(env: &Env, ns: &str, prefix: &str, dir: &Path) -> (String, String, String) {
    let s3 = S3Server::shared();
    let endpoint = format!("http://{}", env.node.forward(port_of(&s3.endpoint)));
    let bucket = S3Server::bucket_name(prefix);
    let store = Store::new(&S3Config {
        endpoint: s3.endpoint.clone(),
        bucket: bucket.clone(),
        region: "auto".into(),
        path_style: true,
        access_key_id: s3.access_key_id.clone(),
        secret_access_key: s3.secret_access_key.clone(),
    });
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(store.ensure_bucket())
        .unwrap();
    env.cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "r2",
            "-n",
            ns,
            &format!("--from-literal=accessKeyId={}", s3.access_key_id),
            &format!("--from-literal=secretAccessKey={}", s3.secret_access_key),
        ])
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    (endpoint, bucket, keygen(dir))
}

fn policy_yaml(name: &str, source: &str, endpoint: &str, bucket: &str, recipient: &str) -> String {
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: BackupPolicy
metadata: {{name: {name}}}
spec:
  schedule: "0 3 1 1 *"
  source: {source}
  destination: {{endpoint: "{endpoint}", bucket: {bucket}, prefix: homelab/{name}, credentialsSecret: r2, partSizeMiB: 5}}
  recipients: ["{recipient}"]
"#
    )
}

/// Creates Backup `name` of `policy` now and waits for it to end; it must succeed.
fn back_up_now(cluster: &Cluster, ns: &str, name: &str, policy: &str) -> Value {
    wait_ready(cluster, ns, "backuppolicy", policy);
    apply(
        cluster,
        ns,
        &format!(
            "apiVersion: homeplane.dev/v1alpha1\nkind: Backup\nmetadata: {{name: {name}}}\nspec: {{policy: {policy}}}\n"
        ),
    );
    let backup = eventually(START, &format!("Backup {name} to end"), || {
        let b = try_get(cluster, ns, "backup", name)?;
        let phase = b["status"]["phase"].as_str().unwrap_or_default();
        Ok((phase == "Succeeded" || phase == "Failed").then_some(b))
    })
    .unwrap();
    assert_eq!(
        backup["status"]["phase"], "Succeeded",
        "{}",
        backup["status"]
    );
    backup
}

fn keygen(dir: &Path) -> String {
    let key = dir.join("key.txt");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Lists every entry under /data: path, type, mode, size and SHA-256 (links: their target).
const LISTING: &str = r#"cd /data && find . -mindepth 1 ! -name lost+found | LC_ALL=C sort | while read -r f; do
  if [ -L "$f" ]; then echo "$f -> $(readlink "$f")";
  elif [ -d "$f" ]; then echo "$f/ $(stat -c %a "$f")";
  else echo "$f $(stat -c '%a %s' "$f") $(sha256sum < "$f" | cut -d' ' -f1)"; fi
done"#;

fn claim_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  storageClassName: real-local\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 1Gi}}}}\n"
    )
}

fn a_volume_is_backed_up_by_a_job_and_restored_byte_for_byte(env: &Env) -> Option<TestNamespace> {
    let cluster = env.cluster;
    let ns = TestNamespace::new(cluster, "rn-backup").unwrap();
    let dir = std::env::temp_dir().join(format!("hp-rn-backup-{}", suffix()));
    let (endpoint, bucket, recipient) = bucket(env, &ns.name, "rn-backup", &dir);

    // An app writes its data folder on a volume of the real node, then keeps running.
    apply(cluster, &ns.name, &claim_yaml("n8n-data"));
    let write = r#"set -e
mkdir -p /data/database/wal /data/nodes/custom
printf '{"encryptionKey":"demo"}' > /data/config
head -c 3000000 /dev/urandom > /data/database/database.sqlite
echo wal > /data/database/wal/0001
printf '#!/bin/sh\n' > /data/nodes/custom/run.sh && chmod 755 /data/nodes/custom/run.sh
ln -s database/database.sqlite /data/current.sqlite
ln /data/config /data/config.hardlink
touch /tmp/written
exec sleep infinity"#;
    apply(
        cluster,
        &ns.name,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: n8n}}
spec:
  {ON_REAL_NODE}
  containers:
  - name: n8n
    image: {TOOLBOX}
    command: [sh, -c, {write}]
    resources: {{limits: {{cpu: 50m, memory: 64Mi}}}}
    readinessProbe: {{exec: {{command: [test, -f, /tmp/written]}}, periodSeconds: 1}}
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: n8n-data}}}}]
"#,
            write = serde_json::to_string(write).unwrap()
        ),
    );
    wait_ready(cluster, &ns.name, "pod", "n8n");
    let written = cluster
        .kubectl_ok(&["exec", "n8n", "-n", &ns.name, "--", "sh", "-c", LISTING])
        .unwrap();
    assert!(
        written.contains("./database/database.sqlite 644 3000000"),
        "{written}"
    );

    apply(
        cluster,
        &ns.name,
        &policy_yaml(
            "n8n-data",
            "{pvc: {claimName: n8n-data}}",
            &endpoint,
            &bucket,
            &recipient,
        ),
    );
    let backup = back_up_now(cluster, &ns.name, "n8n-data-1", "n8n-data");
    // Its Job really ran on the real node, next to the app that uses the claim.
    let job = backup["status"]["job"].as_str().unwrap();
    let job_pods = json(
        cluster,
        &[
            "get",
            "pods",
            "-n",
            &ns.name,
            "-l",
            &format!("batch.kubernetes.io/job-name={job}"),
        ],
    );
    let job_pod = &job_pods["items"][0];
    assert_eq!(job_pod["spec"]["nodeName"], "real-1");
    assert_eq!(job_pod["status"]["phase"], "Succeeded", "{job_pod}");
    assert!(
        backup["status"]["archive"]["files"]
            .as_i64()
            .unwrap_or_default()
            >= 4,
        "{}",
        backup["status"]
    );
    let key = backup["status"]["objectKey"].as_str().unwrap().to_string();

    // examples/restore/ as a person runs it: the identity in a temporary Secret, the Job
    // mounting a new claim.
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "restore-identity",
            "-n",
            &ns.name,
            &format!("--from-file=identity.txt={}", dir.join("key.txt").display()),
        ])
        .unwrap();
    apply(cluster, &ns.name, &claim_yaml("n8n-data-restored"));
    let example =
        std::fs::read_to_string(repo_root().join("examples/restore/pvc-restore-job.yaml")).unwrap();
    let mut job: serde_yaml::Value = serde_yaml::from_str(&example).unwrap();
    job["metadata"]["namespace"] = ns.name.clone().into();
    let pod = &mut job["spec"]["template"]["spec"];
    pod["nodeSelector"] = serde_yaml::from_str("{homeplane.dev/class: real}").unwrap();
    pod["tolerations"] = serde_yaml::from_str(
        "[{key: homeplane.dev/real-node, operator: Exists, effect: NoSchedule}]",
    )
    .unwrap();
    pod["volumes"][0]["persistentVolumeClaim"]["claimName"] = "n8n-data-restored".into();
    let container = &mut pod["containers"][0];
    container["image"] = env.image.clone().into();
    for arg in container["args"].as_sequence_mut().unwrap() {
        let text = arg.as_str().unwrap().to_string();
        *arg = match text.split_once('=') {
            Some(("--object", _)) => format!("--object={key}"),
            Some(("--endpoint", _)) => format!("--endpoint={endpoint}"),
            Some(("--bucket", _)) => format!("--bucket={bucket}"),
            _ => text,
        }
        .into();
    }
    apply(cluster, &ns.name, &serde_yaml::to_string(&job).unwrap());
    let done = eventually(START, "the restore Job to end", || {
        let j = try_get(cluster, &ns.name, "job", "restore-n8n-data")?;
        let (complete, failed) = (
            condition(&j, "Complete").0 == "True",
            condition(&j, "Failed").0 == "True",
        );
        Ok((complete || failed).then_some(complete))
    })
    .unwrap();
    let restore_log = cluster
        .kubectl_ok(&["logs", "job/restore-n8n-data", "-n", &ns.name])
        .unwrap_or_default();
    assert!(done, "the restore Job failed:\n{restore_log}");
    cluster
        .kubectl_ok(&["delete", "secret", "restore-identity", "-n", &ns.name])
        .unwrap();

    // The new claim holds the same files, byte for byte, with their modes and links.
    let (ok, restored) = run_pod(
        cluster,
        &ns.name,
        "check",
        TOOLBOX,
        LISTING,
        "    volumeMounts: [{name: data, mountPath: /data}]",
        "  volumes: [{name: data, persistentVolumeClaim: {claimName: n8n-data-restored}}]",
    );
    assert!(ok, "{restored}");
    assert_eq!(restored.trim(), written.trim());
    let _ = std::fs::remove_dir_all(&dir);
    Some(ns)
}

// ---------------------------------------------------------------------------------------------
// AgentRuns of the example agent.

fn agent_yaml(name: &str, tier: &str) -> String {
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {{name: {name}}}
spec:
  tier: {tier}
  scope: {{resources: [{{apiGroup: "", resource: configmaps}}]}}
  image: localhost/homeplane/example-agent:0.1
  budget: {{cpu: 100m, memory: 64Mi, maxRunSeconds: 120, maxConcurrentRuns: 1}}
  placement: {{class: real}}
"#
    )
}

fn agent_runs_end_with_the_contract_they_wrote(env: &Env) -> Option<TestNamespace> {
    let cluster = env.cluster;
    let ns = TestNamespace::new(cluster, "rn-agent").unwrap();
    for cm in ["calendar", "mail"] {
        cluster
            .kubectl_ok(&["create", "configmap", cm, "-n", &ns.name])
            .unwrap();
    }
    for (agent, tier) in [("auditor", "observer"), ("fixer", "builder")] {
        apply(cluster, &ns.name, &agent_yaml(agent, tier));
        wait_ready(cluster, &ns.name, "agent", agent);
        apply(
            cluster,
            &ns.name,
            &format!(
                "apiVersion: homeplane.dev/v1alpha1\nkind: AgentRun\nmetadata: {{name: {agent}-1}}\nspec: {{agent: {agent}, task: count the configmaps}}\n"
            ),
        );
    }
    let ended = |run: &str| {
        eventually(START, &format!("AgentRun {run} to end"), || {
            let r = try_get(cluster, &ns.name, "agentrun", run)?;
            let phase = r["status"]["phase"].as_str().unwrap_or_default();
            Ok((!phase.is_empty() && phase != "Queued" && phase != "Running").then_some(r))
        })
        .unwrap()
    };

    // The observer ran under its ServiceAccount: it listed the ConfigMaps (kube-root-ca.crt,
    // calendar, mail) and was refused the write by the API server, which its contract says.
    let run = ended("auditor-1");
    let status = &run["status"];
    assert_eq!(status["phase"], "Partial", "{status}");
    let result = &status["result"];
    assert!(
        result["summary"]
            .as_str()
            .unwrap()
            .contains("3 ConfigMap(s) in rn-agent"),
        "{result}"
    );
    assert!(
        result["deviations"][0]
            .as_str()
            .unwrap()
            .contains("refused ConfigMap auditor-1-report (HTTP 403)"),
        "{result}"
    );
    assert_eq!(
        result["testsRun"],
        serde_json::json!(["list configmaps", "write report"])
    );
    let job = status["jobName"].as_str().unwrap();
    let pods = json(
        cluster,
        &[
            "get",
            "pods",
            "-n",
            &ns.name,
            "-l",
            &format!("batch.kubernetes.io/job-name={job}"),
        ],
    );
    let pod = &pods["items"][0];
    assert_eq!(pod["spec"]["nodeName"], "real-1", "{pod}");
    assert_eq!(pod["spec"]["serviceAccountName"], "agent-auditor");
    assert!(
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
            .as_str()
            .unwrap()
            .contains("\"status\":\"PARTIAL\""),
        "the contract is the container's own termination message: {pod}"
    );
    assert!(
        cluster
            .kubectl(&["get", "configmap", "auditor-1-report", "-n", &ns.name])
            .map(|o| !o.status.success())
            .unwrap()
    );

    // The builder may write: its report is there, and its contract is DONE.
    let run = ended("fixer-1");
    assert_eq!(run["status"]["phase"], "Done", "{}", run["status"]);
    let report = cluster
        .kubectl_ok(&[
            "get",
            "configmap",
            "fixer-1-report",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.data.summary}",
        ])
        .unwrap();
    assert!(report.contains("ConfigMap(s) in rn-agent"), "{report}");
    Some(ns)
}

// ---------------------------------------------------------------------------------------------
// The other controllers' happy paths, each in its own namespace.

fn a_workflow_reaches_n8n(env: &Env) -> Option<TestNamespace> {
    let cluster = env.cluster;
    let ns = TestNamespace::new(cluster, "rn-workflow").unwrap();
    let n8n = N8n::shared();
    let url = format!("http://{}", env.node.forward(port_of(&n8n.url)));
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "n8n-api",
            "-n",
            &ns.name,
            &format!("--from-literal=apiKey={}", n8n.api_key),
        ])
        .unwrap();
    let definition = serde_json::json!({
        "name": format!("realnode-{}", ns.name),
        "nodes": [{"name": "Start", "type": "n8n-nodes-base.manualTrigger", "typeVersion": 1,
                   "position": [0, 0], "parameters": {}}],
        "connections": {},
        "settings": {"executionOrder": "v1"}
    });
    apply(
        cluster,
        &ns.name,
        &format!(
            "apiVersion: homeplane.dev/v1alpha1\nkind: Workflow\nmetadata: {{name: hello}}\nspec:\n  n8n: {{url: \"{url}\", apiKeySecret: {{name: n8n-api, key: apiKey}}}}\n  deletionPolicy: Delete\n  definition: {definition}\n"
        ),
    );
    let wf = wait_ready(cluster, &ns.name, "workflow", "hello");
    let id = wf["status"]["n8nId"].as_str().unwrap().to_string();
    let (code, _) = n8n.api("GET", &format!("/workflows/{id}"), None).unwrap();
    assert_eq!(code, 200, "the workflow is in n8n");
    cluster
        .kubectl_ok(&[
            "delete",
            "workflow",
            "hello",
            "-n",
            &ns.name,
            "--timeout=60s",
        ])
        .unwrap();
    Some(ns)
}

fn a_voice_pipeline_runs_its_stage(env: &Env) -> Option<TestNamespace> {
    let cluster = env.cluster;
    let ns = TestNamespace::new(cluster, "rn-voice").unwrap();
    apply(
        cluster,
        &ns.name,
        &format!(
            r#"apiVersion: homeplane.dev/v1alpha1
kind: VoicePipeline
metadata: {{name: assistant}}
spec:
  latencyBudget: 2s
  stages:
  - {{name: wake, role: wakeWord, external: {{url: "tcp://satellite.lan:10700"}}}}
  - {{name: router, role: router, workload: {{image: "{TOOLBOX}", port: 8080, placement: {{class: real, cpu: 50m, memory: 64Mi}}}}}}
  - {{name: sonos, role: sink, external: {{url: "http://sonos.lan:1400"}}}}
"#
        ),
    );
    wait_ready(cluster, &ns.name, "voicepipeline", "assistant");
    let pods = json(
        cluster,
        &[
            "get",
            "pods",
            "-n",
            &ns.name,
            "-l",
            "app.kubernetes.io/instance=assistant-router",
        ],
    );
    assert_eq!(pods["items"][0]["spec"]["nodeName"], "real-1");
    Some(ns)
}

fn a_state_registry_reports_drift(env: &Env) -> Option<TestNamespace> {
    let cluster = env.cluster;
    let ns = TestNamespace::new(cluster, "rn-registry").unwrap();
    cluster
        .kubectl_ok(&[
            "create",
            "configmap",
            "settings",
            "-n",
            &ns.name,
            "--from-literal=mode=lax",
        ])
        .unwrap();
    apply(
        cluster,
        &ns.name,
        &format!(
            r#"apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {{name: homelab}}
spec:
  interval: 2s
  properties:
  - id: settings.mode
    severity: warning
    desired: strict
    observe: {{kubernetes: {{apiVersion: v1, kind: ConfigMap, namespace: {ns}, name: settings, field: /data/mode}}}}
"#,
            ns = ns.name
        ),
    );
    let drift = eventually(START, "a Drift for settings.mode", || {
        let list = try_json(cluster, &["get", "drift", "-n", &ns.name])?;
        Ok(list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| {
                d["spec"]["property"] == "settings.mode"
                    || d["status"]["property"] == "settings.mode"
            })
            .cloned())
    })
    .unwrap();
    let text = drift.to_string();
    assert!(text.contains("lax") && text.contains("strict"), "{text}");
    // Its transitions are recorded in homeplane's own database, on the test PostgreSQL.
    let history = eventually(START, "the HistoryRecorded condition", || {
        let registry = try_get(cluster, &ns.name, "stateregistry", "homelab")?;
        let c = condition(&registry, "HistoryRecorded");
        Ok((!c.0.is_empty()).then_some(c))
    })
    .unwrap();
    assert_eq!(history.0, "True", "{history:?}");
    Some(ns)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_chart_runs_on_the_real_node_and_what_homeplane_creates_runs_there() {
    let started = Instant::now();
    let cluster = Cluster::shared();
    let node = RealNode::up(cluster);
    let image = node.operator_image();
    apply(
        cluster,
        "default",
        &format!(
            "apiVersion: homeplane.dev/v1alpha1\nkind: NodeClass\nmetadata: {{name: real}}\nspec:\n  {ON_REAL_NODE}\n  architecture: amd64\n  defaults: {{cpu: 100m, memory: 128Mi}}\n"
        ),
    );
    let env = Env {
        cluster,
        node,
        image,
    };
    let install = install(&env);
    eprintln!("installed in {:.1}s", started.elapsed().as_secs_f64());

    type Scenario = fn(&Env) -> Option<TestNamespace>;
    let scenarios: [(&str, Scenario); 8] = [
        ("the chart's pods", chart_pods_run_as_installed),
        (
            "a managed Database",
            a_managed_database_runs_and_keeps_its_data,
        ),
        ("a MemoryServer", a_memory_server_reaches_its_redis),
        (
            "a PVC backup and restore",
            a_volume_is_backed_up_by_a_job_and_restored_byte_for_byte,
        ),
        ("AgentRuns", agent_runs_end_with_the_contract_they_wrote),
        ("a Workflow", a_workflow_reaches_n8n),
        ("a VoicePipeline", a_voice_pipeline_runs_its_stage),
        ("a StateRegistry", a_state_registry_reports_drift),
    ];
    let mut failures = Vec::new();
    // Each scenario's namespace is kept until the logs are read: deleting it while the operator
    // still works on its objects makes the API server refuse (403) what goes into it.
    let mut namespaces = Vec::new();
    std::thread::scope(|s| {
        let running: Vec<_> = scenarios
            .iter()
            .map(|(name, scenario)| {
                let env = &env;
                (
                    *name,
                    s.spawn(move || {
                        let t = Instant::now();
                        let ns = scenario(env);
                        eprintln!("{name}: passed in {:.1}s", t.elapsed().as_secs_f64());
                        ns
                    }),
                )
            })
            .collect();
        for (name, handle) in running {
            match handle.join() {
                Ok(ns) => namespaces.extend(ns),
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("{name}: {message}"));
                }
            }
        }
    });

    // The leader's pod is deleted: the standby takes over and reconciles.
    let (deleted_leader_log, ns) = handover(&env);
    namespaces.push(ns);
    let logs = || {
        let mut logs = vec![deleted_leader_log.clone()];
        for pod in operator_pods(cluster) {
            let name = pod["metadata"]["name"].as_str().unwrap();
            logs.push(
                cluster
                    .kubectl_ok(&["logs", name, "-n", RELEASE_NS])
                    .unwrap_or_default(),
            );
        }
        logs.join("\n")
    };
    // Every controller ran under the chart's RBAC: nothing it did was refused. (The install is
    // cluster-wide, so it also sees what earlier test binaries left in namespaces still being
    // deleted; the API server refuses writes there whoever asks, and that is not RBAC.)
    let during = logs();
    let refused: Vec<&str> = during
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .filter(|l| !l.contains("because it is being terminated"))
        .collect();
    if !refused.is_empty() {
        failures.push(format!(
            "the operator was refused (the chart's RBAC lacks what the code needs):\n{}",
            refused.join("\n")
        ));
    }
    // The namespaces go while the operator runs, so that it finalizes their objects; what it
    // does then is refused only where a namespace is already terminating, never by RBAC.
    let names: Vec<String> = namespaces.iter().map(|n| n.name.clone()).collect();
    drop(namespaces);
    for name in &names {
        let gone = eventually(START, &format!("namespace {name} gone"), || {
            let out = cluster.kubectl_ok(&[
                "get",
                "namespace",
                name,
                "--ignore-not-found",
                "-o",
                "name",
            ])?;
            Ok(out.trim().is_empty().then_some(()))
        });
        if let Err(e) = gone {
            failures.push(format!("{e}"));
        }
    }
    let teardown = logs();
    let refused: Vec<&str> = teardown
        .lines()
        .filter(|l| l.contains("is forbidden: User"))
        .collect();
    if !refused.is_empty() {
        failures.push(format!(
            "the operator was refused while its objects were deleted:\n{}",
            refused.join("\n")
        ));
    }
    drop(install);
    eprintln!(
        "real node tests done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
