//! GitOps with the real Flux: source-controller and kustomize-controller v1.9.6 built from their
//! Go modules, a Git server speaking smart HTTP on loopback, the test control plane,
//! PostgreSQL and the operator. Each test pushes a small homelab to a repository of its own
//! and lets a GitRepository and a Kustomization (with the health expressions of
//! manifests/flux/homeplane.yaml) apply it to its own namespace, as a person's Flux would:
//! Flux becomes Ready only once homeplane has made every object Ready, never before; a
//! commit flows through to PostgreSQL; a commit homeplane cannot satisfy fails the
//! Kustomization at once; a file deleted from Git is pruned with homeplane's deletionPolicy
//! honoured; a hand edit is put back by Flux and reported by the state registry meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use homeplane_testkit::{
    Cluster, Install, Operator, Postgres, TestNamespace, TestNode, eventually, repo_root, suffix,
};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");
const WAIT: Duration = Duration::from_secs(120);

/// The Git server of this test run: the one `make test` started (`HOMEPLANE_TEST_GIT_URL`,
/// `HOMEPLANE_TEST_GIT_ROOT`), or Flux started now for this process by scripts/flux.sh against
/// the shared cluster (stopped when the process exits).
struct GitServer {
    url: String,
    root: PathBuf,
}

static GIT_SERVER: OnceLock<GitServer> = OnceLock::new();

impl GitServer {
    fn shared() -> &'static GitServer {
        GIT_SERVER.get_or_init(|| {
            if let (Ok(url), Ok(root)) = (
                std::env::var("HOMEPLANE_TEST_GIT_URL"),
                std::env::var("HOMEPLANE_TEST_GIT_ROOT"),
            ) {
                return GitServer {
                    url,
                    root: root.into(),
                };
            }
            let cluster = Cluster::shared();
            let dir = std::env::temp_dir().join(format!("homeplane-flux-{}", std::process::id()));
            let status = Command::new("bash")
                .arg(repo_root().join("scripts/flux.sh"))
                .arg("up")
                .arg(&dir)
                .arg(&cluster.kubeconfig)
                .env("HOMEPLANE_FLUX_OWNER_PID", std::process::id().to_string())
                .status()
                .expect("failed to run scripts/flux.sh");
            assert!(
                status.success(),
                "scripts/flux.sh up {} failed",
                dir.display()
            );
            let env = std::fs::read_to_string(dir.join("env")).unwrap();
            let value = |name: &str| {
                env.lines()
                    .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                    .unwrap_or_else(|| panic!("{name} missing from {}/env", dir.display()))
                    .to_string()
            };
            GitServer {
                url: value("FLUX_GIT_URL"),
                root: value("FLUX_GIT_ROOT").into(),
            }
        })
    }
}

/// A repository on the Git server and a working copy to commit in, as a person has at home.
struct Repo {
    url: String,
    work: PathBuf,
}

impl Repo {
    fn new(name: &str) -> Repo {
        let server = GitServer::shared();
        let bare = server.root.join(format!("{name}.git"));
        git(
            &server.root,
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                &bare.to_string_lossy(),
            ],
        );
        let work = std::env::temp_dir().join(format!("homeplane-git-{name}"));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        Repo {
            url: format!("{}/{name}.git", server.url),
            work,
        }
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.work.join(file), text).unwrap();
    }

    fn remove(&self, file: &str) {
        git(&self.work, &["rm", "-q", file]);
    }

    /// Commits everything and pushes over smart HTTP; returns the commit's SHA-1.
    fn push(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", &self.url, "main"]);
        git(&self.work, &["rev-parse", "HEAD"]).trim().to_string()
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=homeplane test",
            "-c",
            "user.email=test@homeplane.dev",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("failed to run git");
    assert!(
        out.status.success(),
        "git {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The health expressions the project ships for its kinds (the `homelab` Kustomization of
/// manifests/flux/homeplane.yaml), so that the tests check what a person installs.
fn shipped_health_checks() -> Value {
    let text = std::fs::read_to_string(repo_root().join("manifests/flux/homeplane.yaml")).unwrap();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let object: Value = serde::Deserialize::deserialize(document).unwrap();
        if object["kind"] == "Kustomization" && object["metadata"]["name"] == "homelab" {
            let exprs = object["spec"]["healthCheckExprs"].clone();
            assert!(
                exprs.is_array(),
                "the homelab Kustomization has no healthCheckExprs"
            );
            return exprs;
        }
    }
    panic!("manifests/flux/homeplane.yaml has no homelab Kustomization");
}

/// A GitRepository and a Kustomization named `homelab` in `ns` that apply the repository's
/// root, waiting for health up to `timeout`. Both reconcile only when asked (an hour's
/// interval), so each step of a test is one push and one request.
fn sync(cluster: &Cluster, ns: &str, repo: &Repo, timeout: &str) {
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
         "metadata": {"name": "homelab", "namespace": ns},
         "spec": {"interval": "1h", "url": repo.url, "ref": {"branch": "main"}, "timeout": "20s"}},
        {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
         "metadata": {"name": "homelab", "namespace": ns},
         "spec": {"interval": "1h", "sourceRef": {"kind": "GitRepository", "name": "homelab"},
                  "path": "./", "prune": true, "wait": true, "timeout": timeout,
                  "healthCheckExprs": shipped_health_checks()}}
    ]});
    let (ok, out) = cluster.apply(ns, &objects.to_string()).unwrap();
    assert!(ok, "{out}");
}

/// Asks Flux to fetch Git now (what `flux reconcile source git homelab` does).
fn fetch_now(cluster: &Cluster, ns: &str) {
    request_reconcile(cluster, ns, "gitrepository");
}

fn request_reconcile(cluster: &Cluster, ns: &str, kind: &str) {
    cluster
        .kubectl_ok(&[
            "annotate",
            kind,
            "homelab",
            "-n",
            ns,
            "--overwrite",
            &format!("reconcile.fluxcd.io/requestedAt={}", suffix()),
        ])
        .unwrap();
}

fn get(cluster: &Cluster, kind: &str, name: &str, ns: &str) -> Option<Value> {
    let out = cluster
        .kubectl(&["get", kind, name, "-n", ns, "-o", "json"])
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn kustomization(cluster: &Cluster, ns: &str) -> Value {
    get(cluster, "kustomization", "homelab", ns).expect("the Kustomization exists")
}

/// Waits until the Kustomization is Ready at `revision` (`main@sha1:…`); returns it.
fn wait_applied(cluster: &Cluster, ns: &str, revision: &str) -> Value {
    eventually(
        WAIT,
        &format!("the Kustomization Ready at {revision}"),
        || {
            let k = kustomization(cluster, ns);
            let ready = condition(&k, "Ready").is_some_and(|c| c["status"] == "True");
            Ok((ready && k["status"]["lastAppliedRevision"] == revision).then_some(k))
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}; Kustomization: {:#}",
            kustomization(cluster, ns)["status"]
        )
    })
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

fn database_yaml(ns: &str, pg: &Postgres, db: &str, roles: &[&str], policy: &str) -> String {
    let roles: Vec<String> = roles
        .iter()
        .map(|r| format!("  - {{name: {r}, access: [{{tier: convenience, level: write}}]}}"))
        .collect();
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: homelab, namespace: {ns}}}
spec:
  databaseName: {db}
  deletionPolicy: {policy}
  server: {{external: {{host: "{host}", port: {port}, adminSecret: pg-admin, sslMode: disable}}}}
  tiers: [{{name: convenience, schemas: [notes]}}]
  roles:
{roles}
  migrations: {{inline: [{{id: "0001_notes", sql: "CREATE TABLE notes.kept (id int); INSERT INTO notes.kept VALUES (1);"}}]}}
"#,
        host = pg.host,
        port = pg.port,
        roles = roles.join("\n")
    )
}

fn agent_yaml(ns: &str, cpu: &str) -> String {
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {{name: auditor, namespace: {ns}}}
spec:
  tier: observer
  image: ghcr.io/homeplane/example-agent:0.1
  scope: {{resources: [{{resource: configmaps}}]}}
  budget: {{cpu: "{cpu}", memory: 256Mi, maxRunSeconds: 300}}
"#
    )
}

fn registry_yaml(ns: &str) -> String {
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {{name: homelab, namespace: {ns}}}
spec:
  interval: 1h
"#
    )
}

/// Asks the registry to evaluate now and waits until it has.
fn evaluate_now(cluster: &Cluster, ns: &str) {
    let before =
        get(cluster, "stateregistry", "homelab", ns).unwrap()["status"]["lastEvaluationTime"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    std::thread::sleep(Duration::from_millis(1100)); // the next evaluation ends in a later second
    cluster
        .kubectl_ok(&[
            "annotate",
            "stateregistry",
            "homelab",
            "-n",
            ns,
            "--overwrite",
            &format!("homeplane.dev/evaluate-requested={}", suffix()),
        ])
        .unwrap();
    eventually(WAIT, "a new evaluation", || {
        let now =
            get(cluster, "stateregistry", "homelab", ns).unwrap()["status"]["lastEvaluationTime"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        Ok((now > before).then_some(()))
    })
    .unwrap();
}

fn drift(cluster: &Cluster, ns: &str, property: &str) -> Option<Value> {
    get(cluster, "drift", &format!("homelab.{property}"), ns)
}

fn inventory(k: &Value) -> Vec<String> {
    k["status"]["inventory"]["entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn timestamp(value: &Value) -> jiff::Timestamp {
    value
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("not a timestamp: {value}"))
}

#[test]
fn flux_applies_the_pushed_homelab_and_is_ready_only_once_homeplane_made_every_object_ready() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "flux-push").unwrap();
    let s = suffix();
    admin_secret(cluster, &ns.name, pg);
    let repo = Repo::new(&ns.name);
    repo.write(
        "database.yaml",
        &database_yaml(
            &ns.name,
            pg,
            &format!("hp_flux_{s}"),
            &[&format!("app_{s}")],
            "Delete",
        ),
    );
    repo.write("agent.yaml", &agent_yaml(&ns.name, "500m"));
    repo.write("registry.yaml", &registry_yaml(&ns.name));
    let commit = repo.push("the homelab");
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    sync(cluster, &ns.name, &repo, "5m");

    let revision = format!("main@sha1:{commit}");
    let k = wait_applied(cluster, &ns.name, &revision);
    let source = get(cluster, "gitrepository", "homelab", &ns.name).unwrap();
    assert_eq!(
        source["status"]["artifact"]["revision"], revision,
        "the GitRepository fetched the commit pushed"
    );
    let ids = inventory(&k);
    for (kind, name) in [
        ("Database", "homelab"),
        ("Agent", "auditor"),
        ("StateRegistry", "homelab"),
    ] {
        assert!(
            ids.contains(&format!("{}_{name}_homeplane.dev_{kind}", ns.name)),
            "the inventory lists {kind} {name}: {ids:?}"
        );
    }
    // Flux turned Ready after homeplane made every object Ready at its current generation.
    let flux_ready = timestamp(&condition(&k, "Ready").unwrap()["lastTransitionTime"]);
    for (kind, name) in [
        ("database", "homelab"),
        ("agent", "auditor"),
        ("stateregistry", "homelab"),
    ] {
        let object = get(cluster, kind, name, &ns.name).unwrap();
        let ready = condition(&object, "Ready")
            .unwrap_or_else(|| panic!("{kind} {name} has no Ready condition: {object:#}"));
        assert_eq!(ready["status"], "True", "{kind} {name}: {ready}");
        assert_eq!(
            object["status"]["observedGeneration"], object["metadata"]["generation"],
            "{kind} {name} observed its current generation"
        );
        assert!(
            timestamp(&ready["lastTransitionTime"]) <= flux_ready,
            "{kind} {name} became Ready at {} but Flux said Ready at {flux_ready}",
            ready["lastTransitionTime"]
        );
    }
    let role_secret = format!("homelab-app-{s}");
    assert!(
        !cluster
            .secret_value(&ns.name, &role_secret, "uri")
            .unwrap()
            .is_empty(),
        "the role's Secret exists"
    );
}

#[test]
fn no_early_pass_flux_waits_while_the_operator_is_stopped() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "flux-early").unwrap();
    let s = suffix();
    // homeplane installed (its chart: CRDs, RBAC, admission policies) but not running.
    let install = std::sync::Arc::new(Install::for_lease_namespace(cluster, &ns.name).unwrap());
    admin_secret(cluster, &ns.name, pg);
    let repo = Repo::new(&ns.name);
    repo.write(
        "database.yaml",
        &database_yaml(
            &ns.name,
            pg,
            &format!("hp_early_{s}"),
            &[&format!("app_{s}")],
            "Delete",
        ),
    );
    repo.write("agent.yaml", &agent_yaml(&ns.name, "500m"));
    let commit = repo.push("the homelab, with no operator running");
    sync(cluster, &ns.name, &repo, "10m");

    // Flux applies both objects; with the default kstatus rules an object without status counts
    // as healthy and the Kustomization would be Ready at once.
    eventually(WAIT, "Flux to apply the objects", || {
        Ok((get(cluster, "database", "homelab", &ns.name).is_some()
            && get(cluster, "agent", "auditor", &ns.name).is_some())
        .then_some(()))
    })
    .unwrap();
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(20) {
        let k = kustomization(cluster, &ns.name);
        let ready = condition(&k, "Ready").cloned().unwrap_or_default();
        assert_ne!(
            ready["status"], "True",
            "Flux passed objects homeplane has not seen: {ready}"
        );
        assert!(
            get(cluster, "database", "homelab", &ns.name).unwrap()["status"].is_null(),
            "nothing wrote a status"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let healthy = condition(&kustomization(cluster, &ns.name), "Healthy").cloned();
    assert!(
        healthy.as_ref().is_some_and(|c| c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Running health checks")),
        "Flux is still running its health checks: {healthy:?}"
    );

    let _operator = Operator::start_installed(BINARY, install, &ns.name, &[]).unwrap();
    wait_applied(cluster, &ns.name, &format!("main@sha1:{commit}"));
    let database = get(cluster, "database", "homelab", &ns.name).unwrap();
    assert_eq!(condition(&database, "Ready").unwrap()["status"], "True");
}

#[test]
fn a_commit_that_adds_a_role_ends_with_the_role_in_postgresql_and_its_secret() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "flux-role").unwrap();
    let s = suffix();
    let db = format!("hp_role_{s}");
    let (app, reporting) = (format!("app_{s}"), format!("reporting_{s}"));
    admin_secret(cluster, &ns.name, pg);
    let repo = Repo::new(&ns.name);
    repo.write(
        "database.yaml",
        &database_yaml(&ns.name, pg, &db, &[&app], "Delete"),
    );
    let first = repo.push("a database with one role");
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    sync(cluster, &ns.name, &repo, "5m");
    wait_applied(cluster, &ns.name, &format!("main@sha1:{first}"));
    let roles = |name: &str| {
        pg.admin(
            "postgres",
            &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{name}'"),
        )
        .unwrap()
    };
    assert_eq!(roles(&reporting), "0");

    repo.write(
        "database.yaml",
        &database_yaml(&ns.name, pg, &db, &[&app, &reporting], "Delete"),
    );
    let second = repo.push("a reporting role");
    fetch_now(cluster, &ns.name);
    wait_applied(cluster, &ns.name, &format!("main@sha1:{second}"));
    assert_eq!(roles(&reporting), "1", "the new role exists in PostgreSQL");
    let uri = cluster
        .secret_value(&ns.name, &format!("homelab-reporting-{s}"), "uri")
        .unwrap();
    let (ok, out) = pg
        .psql_as(
            &reporting,
            &cluster
                .secret_value(&ns.name, &format!("homelab-reporting-{s}"), "password")
                .unwrap(),
            &db,
            "SELECT count(*) FROM notes.kept",
        )
        .unwrap();
    assert!(
        ok && out == "1",
        "the role's Secret logs in and reads its tier: {out}"
    );
    assert!(uri.contains(&reporting), "the Secret's URI names the role");
}

#[test]
fn a_commit_homeplane_cannot_satisfy_fails_the_kustomization_at_once_with_homeplanes_reason() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "flux-gpu").unwrap();
    // One node with one GPU and the class that selects it: set up with the nodes, not in Git.
    let node = TestNode::new(cluster, "amd64", "16", "64Gi", 1).unwrap();
    let class = format!("gpu-{}", node.key);
    let (ok, out) = cluster
        .apply(
            "default",
            &format!(
                r#"apiVersion: homeplane.dev/v1alpha1
kind: NodeClass
metadata: {{name: {class}}}
spec:
  nodeSelector: {{homeplane.dev/test-node: "{k}"}}
  tolerations: [{{key: homeplane.dev/test-node, operator: Equal, value: "{k}", effect: NoSchedule}}]
  gpuResource: amd.com/gpu
  defaults: {{cpu: "1", memory: 1Gi}}
"#,
                k = node.key
            ),
        )
        .unwrap();
    assert!(ok, "{out}");
    let pipeline = |gpus: u32| {
        format!(
            r#"apiVersion: homeplane.dev/v1alpha1
kind: VoicePipeline
metadata: {{name: assistant, namespace: {ns}}}
spec:
  stages:
  - {{name: llm, role: llm, workload: {{image: "ollama/ollama:0.5", port: 11434, placement: {{class: {class}, gpu: {gpus}}}}}}}
"#,
            ns = ns.name
        )
    };
    let repo = Repo::new(&ns.name);
    repo.write("voice.yaml", &pipeline(2));
    repo.write("registry.yaml", &registry_yaml(&ns.name));
    let commit = repo.push("an LLM on two GPUs");
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    let pushed = Instant::now();
    sync(cluster, &ns.name, &repo, "10m");

    let ready = eventually(WAIT, "the Kustomization to fail", || {
        let k = kustomization(cluster, &ns.name);
        Ok(condition(&k, "Ready")
            .filter(|c| c["status"] == "False" && c["reason"] == "HealthCheckFailed")
            .cloned())
    })
    .unwrap();
    let took = pushed.elapsed();
    println!("the Kustomization failed {took:?} after the push (its timeout: 10m)");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("failed early due to stalled resources")
            && message.contains(&format!(
                "VoicePipeline/{}/assistant status: 'Failed'",
                ns.name
            )),
        "Flux names the object homeplane gave up on: {message}"
    );
    let vp = get(cluster, "voicepipeline", "assistant", &ns.name).unwrap();
    let stalled = condition(&vp, "Stalled").unwrap();
    assert_eq!(
        (&stalled["status"], &stalled["reason"]),
        (&json!("True"), &json!("Unschedulable"))
    );
    let reason = format!(
        "assistant-llm ask for 2 amd.com/gpu on NodeClass {class}, which has 1 in all and 1 free"
    );
    assert!(
        stalled["message"].as_str().unwrap().starts_with(&reason),
        "{stalled}"
    );
    // Flux's message names the object but never says why (kustomize-controller prints only the
    // status); the registry's Kustomization property puts homeplane's reason beside it.
    evaluate_now(cluster, &ns.name);
    let d = drift(cluster, &ns.name, "kustomization.homelab.ready")
        .expect("a Drift for the failed Kustomization");
    let said = d["spec"]["message"].as_str().unwrap_or_default();
    assert!(
        said.contains(message)
            && said.contains(&format!(
                "VoicePipeline {}/assistant: Unschedulable: {reason}",
                ns.name
            )),
        "{said}"
    );
    assert!(
        drift(cluster, &ns.name, "kustomization.homelab.applied-revision").is_some(),
        "the cluster is not at Git's HEAD"
    );
    assert_ne!(
        kustomization(cluster, &ns.name)["status"]["lastAppliedRevision"],
        format!("main@sha1:{commit}")
    );

    // The fix is a commit too: one GPU fits, Stalled goes, Flux becomes Ready.
    repo.write("voice.yaml", &pipeline(1));
    let fix = repo.push("the LLM on one GPU");
    fetch_now(cluster, &ns.name);
    wait_applied(cluster, &ns.name, &format!("main@sha1:{fix}"));
    let vp = get(cluster, "voicepipeline", "assistant", &ns.name).unwrap();
    assert!(condition(&vp, "Stalled").is_none(), "{:#}", vp["status"]);
    let _ = cluster.kubectl(&["delete", "nodeclass", &class, "--wait=false"]);
}

#[test]
fn a_file_deleted_from_git_is_pruned_and_retain_keeps_the_data() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "flux-prune").unwrap();
    let s = suffix();
    let db = format!("hp_prune_{s}");
    let role = format!("keeper_{s}");
    admin_secret(cluster, &ns.name, pg);
    let repo = Repo::new(&ns.name);
    repo.write(
        "database.yaml",
        &database_yaml(&ns.name, pg, &db, &[&role], "Retain"),
    );
    repo.write("agent.yaml", &agent_yaml(&ns.name, "500m"));
    let first = repo.push("a database to keep and an agent");
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    sync(cluster, &ns.name, &repo, "5m");
    wait_applied(cluster, &ns.name, &format!("main@sha1:{first}"));
    assert_eq!(
        pg.admin(&db, "SELECT count(*) FROM notes.kept").unwrap(),
        "1"
    );

    repo.remove("database.yaml");
    let second = repo.push("no more database");
    fetch_now(cluster, &ns.name);
    let k = wait_applied(cluster, &ns.name, &format!("main@sha1:{second}"));
    eventually(WAIT, "the Database to be pruned", || {
        Ok(get(cluster, "database", "homelab", &ns.name)
            .is_none()
            .then_some(()))
    })
    .unwrap();
    let ids = inventory(&k);
    assert!(
        !ids.iter().any(|id| id.ends_with("_homeplane.dev_Database")),
        "{ids:?}"
    );
    assert!(
        get(cluster, "agent", "auditor", &ns.name).is_some(),
        "the rest stays"
    );
    assert_eq!(
        pg.admin(
            "postgres",
            &format!("SELECT (SELECT count(*) FROM pg_database WHERE datname = '{db}'), (SELECT count(*) FROM pg_roles WHERE rolname = '{role}')")
        )
        .unwrap(),
        "1|1",
        "deletionPolicy Retain keeps the database and its role"
    );
    assert_eq!(
        pg.admin(&db, "SELECT count(*) FROM notes.kept").unwrap(),
        "1",
        "and its data"
    );
}

#[test]
fn a_hand_edit_is_put_back_by_flux_and_reported_as_drift_while_it_lasts() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "flux-edit").unwrap();
    let repo = Repo::new(&ns.name);
    repo.write("agent.yaml", &agent_yaml(&ns.name, "500m"));
    repo.write("registry.yaml", &registry_yaml(&ns.name));
    let commit = repo.push("an agent and the registry");
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    sync(cluster, &ns.name, &repo, "5m");
    wait_applied(cluster, &ns.name, &format!("main@sha1:{commit}"));
    evaluate_now(cluster, &ns.name);
    let property = "agent.auditor.matches-git";
    assert!(
        drift(cluster, &ns.name, property).is_none(),
        "no drift before the edit"
    );

    cluster
        .kubectl_ok(&[
            "patch",
            "agent",
            "auditor",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"spec":{"budget":{"cpu":"2"}}}"#,
        ])
        .unwrap();
    evaluate_now(cluster, &ns.name);
    let d = drift(cluster, &ns.name, property).expect("a Drift while the hand edit lasts");
    assert_eq!(
        (&d["spec"]["desired"], &d["spec"]["observed"]),
        (&json!("true"), &json!("false"))
    );
    let message = d["spec"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.budget.cpu by kubectl-patch")
            && message.contains(&format!(
                "Flux's Kustomization {}/homelab puts back what Git declares",
                ns.name
            )),
        "{message}"
    );

    // Flux's next reconciliation (here asked for at once) puts Git's value back.
    request_reconcile(cluster, &ns.name, "kustomization");
    eventually(WAIT, "Flux to put the budget back", || {
        let agent = get(cluster, "agent", "auditor", &ns.name).unwrap();
        Ok((agent["spec"]["budget"]["cpu"] == "500m").then_some(()))
    })
    .unwrap();
    evaluate_now(cluster, &ns.name);
    assert!(
        drift(cluster, &ns.name, property).is_none(),
        "the Drift is gone once Flux restored Git's version"
    );
}
