//! Test support: the real control plane (shared by every test binary of a `make test` run, or
//! started for this process alone), a namespace per test, kubectl, simulated nodes, and the
//! operator binary as a child process — running as the ServiceAccount of homeplane's chart,
//! with the chart's RBAC and admission policies rendered from `charts/homeplane` and applied
//! ([`Install`]), so that the tests exercise exactly the rights homeplane ships with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running control plane.
pub struct Cluster {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Folder of kubectl, kube-apiserver, etc.
    pub bin: PathBuf,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

impl Cluster {
    /// The cluster of this test run: the one named by `HOMEPLANE_TEST_KUBECONFIG` (started by
    /// `make test`), or one started now for this test process (stopped when it exits). CRDs
    /// are installed either way.
    pub fn shared() -> &'static Cluster {
        CLUSTER.get_or_init(|| match Self::connect() {
            Ok(c) => c,
            Err(e) => panic!("no test control plane: {e:#}"),
        })
    }

    fn connect() -> Result<Cluster> {
        let cluster = match std::env::var_os("HOMEPLANE_TEST_KUBECONFIG") {
            Some(path) => Cluster {
                kubeconfig: PathBuf::from(path),
                bin: cluster_bin()?,
            },
            None => {
                let dir = format!("homeplane-test-{}", std::process::id());
                Self::start(&std::env::temp_dir().join(dir))?
            }
        };
        cluster.install_crds()?;
        cluster.record_requesters()?;
        Ok(cluster)
    }

    /// Starts a control plane of its own in `dir` (without homeplane's CRDs); it is stopped
    /// when this test process exits, or earlier with [`Cluster::stop`].
    pub fn start(dir: &Path) -> Result<Cluster> {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/cluster.sh"))
            .arg("up")
            .arg(dir)
            .env(
                "HOMEPLANE_CLUSTER_OWNER_PID",
                std::process::id().to_string(),
            )
            .status()
            .context("failed to run scripts/cluster.sh")?;
        if !status.success() {
            bail!("scripts/cluster.sh up {} failed", dir.display());
        }
        Ok(Cluster {
            kubeconfig: dir.join("kubeconfig"),
            bin: cluster_bin()?,
        })
    }

    /// Stops a control plane started with [`Cluster::start`].
    pub fn stop(&self) -> Result<()> {
        let dir = self
            .kubeconfig
            .parent()
            .context("kubeconfig has no folder")?;
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/cluster.sh"))
            .arg("down")
            .arg(dir)
            .status()?;
        if !status.success() {
            bail!("scripts/cluster.sh down {} failed", dir.display());
        }
        Ok(())
    }

    /// Applies homeplane's CRDs (idempotent) and waits until they are Established.
    pub fn install_crds(&self) -> Result<()> {
        let dir = repo_root().join("crds/generated");
        self.kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &dir.to_string_lossy(),
        ])?;
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &dir.to_string_lossy(),
        ])?;
        Ok(())
    }

    /// Installs, for the whole test run, the chart's MutatingAdmissionPolicy that records who
    /// asks for each Agent (release `hp-tests-requester`), and waits until it takes effect.
    ///
    /// Every operator a test starts installs the chart's admission policies cluster-wide and
    /// removes them when it stops, and the API server's mutating and validating admission
    /// plugins each learn of a policy on their own schedule. An Agent created by one test while
    /// another test's ValidatingAdmissionPolicy had taken effect and no MutatingAdmissionPolicy
    /// had was refused ("who asks for this Agent could not be recorded"). One recorder that
    /// lives as long as the cluster closes that window; it records exactly what each release's
    /// own would. Install's probe Agent is left to the release's own policy (by its label).
    fn record_requesters(&self) -> Result<()> {
        let chart = repo_root().join("charts/homeplane");
        let rendered = self
            .helm_command()
            .args(["template", "hp-tests-requester"])
            .arg(&chart)
            .args(["--namespace", "default", "--kube-version", "v1.37.2"])
            .args(["--show-only", "templates/agent-admission.yaml"])
            .output()
            .context("failed to run helm")?;
        if !rendered.status.success() {
            bail!(
                "helm template failed: {}",
                String::from_utf8_lossy(&rendered.stderr)
            );
        }
        let as_json = self.kubectl_stdin(
            &["create", "--dry-run=client", "-o", "json", "-f", "-"],
            Some(&String::from_utf8_lossy(&rendered.stdout)),
        )?;
        if !as_json.status.success() {
            bail!(
                "kubectl could not read the chart's admission policies: {}",
                String::from_utf8_lossy(&as_json.stderr)
            );
        }
        // One JSON object per document, one after the other.
        let mut items = Vec::new();
        for object in serde_json::Deserializer::from_slice(&as_json.stdout).into_iter() {
            let object: serde_json::Value = object?;
            if object["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("MutatingAdmissionPolicy"))
            {
                items.push(object);
            }
        }
        for item in &mut items {
            if item["kind"] == "MutatingAdmissionPolicy" {
                let conditions = item["spec"]["matchConditions"]
                    .as_array_mut()
                    .context("the chart's MutatingAdmissionPolicy has no matchConditions")?;
                conditions.push(serde_json::json!({
                    "name": "not-an-install-probe",
                    "expression": format!("object.metadata.?labels[?'{PROBE_LABEL}'].orValue('') == ''"),
                }));
            }
        }
        if items.len() != 2 {
            bail!(
                "the chart's agent-admission.yaml no longer holds one MutatingAdmissionPolicy and its binding"
            );
        }
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        self.kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&list.to_string()),
        )
        .and_then(|out| {
            if out.status.success() {
                Ok(())
            } else {
                bail!(
                    "installing the requester recorder failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            }
        })?;
        let probe = "apiVersion: homeplane.dev/v1alpha1\nkind: Agent\nmetadata: {name: requester-probe, namespace: default}\nspec:\n  tier: observer\n  image: probe\n  scope: {resources: [{resource: configmaps}]}\n  budget: {cpu: \"1\", memory: 1Gi, maxRunSeconds: 60}\n";
        eventually(
            Duration::from_secs(60),
            "the requester recorder to take effect",
            || {
                let out = self.kubectl_stdin(
                    &["create", "--dry-run=server", "-o", "json", "-f", "-"],
                    Some(probe),
                )?;
                Ok(String::from_utf8_lossy(&out.stdout)
                    .contains("homeplane.dev/requested-by")
                    .then_some(()))
            },
        )
    }

    /// helm of this cluster, as its admin, with its cache and configuration in the temporary
    /// folder (not in the user's home).
    pub fn helm_command(&self) -> Command {
        let mut helm = Command::new(self.bin.join("helm"));
        helm.env("KUBECONFIG", &self.kubeconfig).envs(helm_env());
        helm
    }

    /// Runs kubectl with `args`.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_stdin(args, None)
    }

    /// kubectl of this cluster, as its admin, with a discovery cache of this cluster's own.
    pub fn kubectl_command(&self) -> Command {
        kubectl_command(&self.bin, &self.kubeconfig)
    }

    /// Runs kubectl with `args` and `stdin` as its input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut child = self
            .kubectl_command()
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("failed to start kubectl")?;
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            input.write_all(text.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// The JSONPath `path` (e.g. `.status.phase`) of object `kind/name` in `ns`; empty when it
    /// or the object is not there.
    pub fn jsonpath(&self, ns: &str, kind: &str, name: &str, path: &str) -> String {
        self.kubectl_ok(&[
            "get",
            kind,
            name,
            "-n",
            ns,
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
        .unwrap_or_default()
    }

    /// Runs kubectl and returns its stdout; fails with its stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of `yaml`; returns (success, stdout+stderr).
    pub fn apply(&self, namespace: &str, yaml: &str) -> Result<(bool, String)> {
        let out = self.kubectl_stdin(&["apply", "-n", namespace, "-f", "-"], Some(yaml))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// The pod of Job `job` in `ns`, once it is scheduled and Running (KWOK's doing).
    pub fn running_job_pod(
        &self,
        ns: &str,
        job: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        eventually(timeout, &format!("a Running pod of Job {job}"), || {
            let out = self.kubectl_ok(&[
                "get",
                "pods",
                "-n",
                ns,
                "-l",
                &format!("batch.kubernetes.io/job-name={job}"),
                "-o",
                "json",
            ])?;
            let list: serde_json::Value = serde_json::from_str(&out)?;
            Ok(list["items"]
                .as_array()
                .and_then(|items| items.first().cloned())
                .filter(|p| p["status"]["phase"] == "Running"))
        })
    }

    /// What a kubelet writes when the only container of `pod` exits (no container really runs
    /// on a KWOK node, and KWOK leaves pods of agent runs and PVC backups running for this):
    /// the terminated state with `exit_code`, `reason` (e.g. `Completed`, `Error`,
    /// `OOMKilled`) and `message` (the termination message), and the pod's final phase.
    pub fn end_pod(
        &self,
        ns: &str,
        pod: &serde_json::Value,
        exit_code: i32,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        let name = pod["metadata"]["name"]
            .as_str()
            .context("the pod has no name")?;
        let container = &pod["spec"]["containers"][0];
        let now = jiff::Timestamp::now()
            .round(jiff::Unit::Second)?
            .to_string();
        let patch = serde_json::json!({"status": {
            "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
            "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
            "containerStatuses": [{
                "name": container["name"], "image": container["image"], "imageID": "",
                "ready": false, "restartCount": 0, "started": false,
                "state": {"terminated": {
                    "exitCode": exit_code, "reason": reason, "message": message,
                    "startedAt": pod["status"]["startTime"], "finishedAt": now
                }}
            }]
        }});
        self.kubectl_ok(&[
            "patch",
            "pod",
            name,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])?;
        Ok(())
    }

    /// A key of a Secret, decoded.
    pub fn secret_value(&self, ns: &str, secret: &str, key: &str) -> Result<String> {
        self.kubectl_ok(&[
            "get",
            "secret",
            secret,
            "-n",
            ns,
            "-o",
            &format!("go-template={{{{index .data \"{key}\" | base64decode}}}}"),
        ])
    }

    /// A Kubernetes client for this cluster.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }
}

/// The folder of the control-plane binaries: `HOMEPLANE_CLUSTER_BIN`, or what
/// `scripts/build-cluster.sh` prints (building them the first time).
pub fn cluster_bin() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("HOMEPLANE_CLUSTER_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/build-cluster.sh"))
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run scripts/build-cluster.sh")?;
    if !out.status.success() {
        bail!("scripts/build-cluster.sh failed");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `len` bytes that look random and are the same for the same `seed` (xorshift64), for data
/// whose content must not compress or repeat.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A short random-enough suffix for names.
pub fn suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:08x}", h.finish() as u32)
}

/// A namespace for one test, deleted when dropped.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    cluster: &'static Cluster,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>`.
    pub fn new(cluster: &'static Cluster, prefix: &str) -> Result<Self> {
        let name = format!("{prefix}-{}", suffix());
        cluster.kubectl_ok(&["create", "namespace", &name])?;
        Ok(Self { name, cluster })
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// A simulated node (managed by KWOK) that only this test's pods tolerate, so that what is
/// scheduled on it is exactly what the test placed.
pub struct TestNode {
    /// Its name.
    pub name: String,
    /// The value of its `homeplane.dev/test-node` label and taint.
    pub key: String,
    cluster: &'static Cluster,
}

impl TestNode {
    /// Creates a Ready node with `cpu` and `memory` allocatable (and `gpus` of `amd.com/gpu`).
    pub fn new(
        cluster: &'static Cluster,
        arch: &str,
        cpu: &str,
        memory: &str,
        gpus: u32,
    ) -> Result<Self> {
        let key = suffix();
        let name = format!("test-{key}");
        let gpu = if gpus > 0 {
            format!(", amd.com/gpu: \"{gpus}\"")
        } else {
            String::new()
        };
        let yaml = format!(
            r#"apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations: {{kwok.x-k8s.io/node: fake}}
  labels: {{kubernetes.io/arch: {arch}, kubernetes.io/os: linux, kubernetes.io/hostname: {name}, homeplane.dev/test-node: "{key}", type: kwok}}
spec:
  taints: [{{key: homeplane.dev/test-node, value: "{key}", effect: NoSchedule}}]
status:
  allocatable: {{cpu: "{cpu}", memory: {memory}, pods: "110"{gpu}}}
  capacity: {{cpu: "{cpu}", memory: {memory}, pods: "110"{gpu}}}
"#
        );
        let (ok, text) = cluster.apply("default", &yaml)?;
        if !ok {
            bail!("failed to create node {name}: {text}");
        }
        cluster.kubectl_ok(&[
            "wait",
            &format!("node/{name}"),
            "--for=condition=Ready",
            "--timeout=60s",
        ])?;
        Ok(Self { name, key, cluster })
    }

    /// Pod-spec YAML fragment (indented for a Deployment template's `spec:`) that places a pod
    /// on this node.
    pub fn placement_yaml(&self) -> String {
        format!(
            "nodeSelector: {{homeplane.dev/test-node: \"{k}\"}}\n      tolerations: [{{key: homeplane.dev/test-node, operator: Equal, value: \"{k}\", effect: NoSchedule}}]",
            k = self.key
        )
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "node", &self.name, "--wait=false"]);
    }
}

/// homeplane's chart installed in a test cluster the way a person installs it, minus the
/// Deployment (the operator runs as a process of the test): its ServiceAccount, RBAC, the
/// Agents' ClusterRoles and the admission policies, all rendered by `helm template` from
/// `charts/homeplane`, plus a kubeconfig holding a token of that ServiceAccount. An operator
/// started with it has exactly the rights the chart gives.
pub struct Install {
    /// The Helm release name (prefix of every cluster-scoped object).
    pub release: String,
    /// The release namespace: the ServiceAccount and the leader-election Role live there.
    pub namespace: String,
    /// A kubeconfig that authenticates as the chart's ServiceAccount (a token).
    pub kubeconfig: PathBuf,
    /// The operator flags that name the objects of this release.
    pub flags: Vec<String>,
    admin: PathBuf,
    bin: PathBuf,
    /// A namespace this install created for itself (deleted with it).
    own_namespace: bool,
}

/// Live operators per release, so that an install shared by several operators (replicas of
/// one test) is removed with the last of them.
static INSTALLS: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();

impl Install {
    /// Installs the chart as release `release` into `namespace` with `values` (`key=value`
    /// pairs for `--set`); creates the namespace when `create_namespace`.
    pub fn new(
        cluster: &Cluster,
        release: &str,
        namespace: &str,
        values: &[&str],
        create_namespace: bool,
    ) -> Result<Install> {
        let kubectl = |args: &[&str], stdin: Option<&str>| -> Result<String> {
            let out = cluster.kubectl_stdin(args, stdin)?;
            if !out.status.success() {
                bail!(
                    "kubectl {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        if create_namespace {
            kubectl(&["create", "namespace", namespace], None)?;
        }
        let chart = repo_root().join("charts/homeplane");
        let mut helm = Command::new(cluster.bin.join("helm"));
        helm.args(["template", release])
            .arg(&chart)
            .args(["--namespace", namespace, "--kube-version", "v1.37.2"])
            .args(["--show-only", "templates/rbac.yaml"])
            .args(["--show-only", "templates/agent-roles.yaml"])
            .args(["--show-only", "templates/agent-admission.yaml"])
            .envs(helm_env());
        for value in values {
            helm.args(["--set", value]);
        }
        let rendered = helm.output().context("failed to run helm")?;
        if !rendered.status.success() {
            bail!(
                "helm template failed: {}",
                String::from_utf8_lossy(&rendered.stderr)
            );
        }
        let yaml = String::from_utf8_lossy(&rendered.stdout).into_owned();
        kubectl(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&yaml),
        )?;
        // Admission policies take effect a moment after they are created: wait until a dry run
        // of an Agent comes back with the requester recorded (when homeplane's CRDs are there).
        let probe = format!(
            "apiVersion: homeplane.dev/v1alpha1\nkind: Agent\nmetadata: {{name: install-probe, namespace: {namespace}, labels: {{{PROBE_LABEL}: \"true\"}}}}\nspec:\n  tier: observer\n  image: probe\n  scope: {{resources: [{{resource: configmaps}}]}}\n  budget: {{cpu: \"1\", memory: 1Gi, maxRunSeconds: 60}}\n"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = cluster.kubectl_stdin(
                &["create", "--dry-run=server", "-o", "json", "-f", "-"],
                Some(&probe),
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            let errors = String::from_utf8_lossy(&out.stderr);
            // Without homeplane's CRDs (or the namespace) there is nothing to wait for. A kind
            // the admission plugins' discovery has not caught up with yet is refused with
            // ServiceUnavailable ("Resource kind … not found. There can be a delay…"): wait.
            let absent = errors.contains("no matches for kind")
                || (errors.contains("namespaces \"") && errors.contains("not found"));
            if text.contains("homeplane.dev/requested-by") || absent {
                break;
            }
            if Instant::now() > deadline {
                bail!("the admission policies of {release} did not take effect: {errors}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let token = kubectl(
            &[
                "create",
                "token",
                release,
                "-n",
                namespace,
                "--duration",
                "48h",
            ],
            None,
        )?;
        let admin = kube::config::Kubeconfig::read_from(&cluster.kubeconfig)?;
        let server_cluster = admin
            .clusters
            .first()
            .and_then(|c| c.cluster.clone())
            .context("the admin kubeconfig names no cluster")?;
        let server = server_cluster
            .server
            .context("the admin kubeconfig has no server")?;
        let ca = server_cluster
            .certificate_authority_data
            .context("the admin kubeconfig has no certificate-authority-data")?;
        let kubeconfig = std::env::temp_dir().join(format!("homeplane-{release}.kubeconfig"));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {release}\n  user:\n    token: {}\ncontexts:\n- name: {release}\n  context: {{cluster: test, user: {release}}}\ncurrent-context: {release}\n",
                token.trim()
            ),
        )?;
        if let Ok(mut live) = INSTALLS.get_or_init(Default::default).lock() {
            *live.entry(release.to_string()).or_insert(0) += 1;
        }
        let corrector = values
            .iter()
            .find_map(|v| v.strip_prefix("stateRegistry.correctorServiceAccount="))
            .unwrap_or("homeplane-corrector");
        Ok(Install {
            release: release.to_string(),
            namespace: namespace.to_string(),
            kubeconfig,
            flags: vec![
                format!("--agent-role-prefix={release}-agent"),
                format!("--agent-policy={release}-agents"),
                format!("--corrector-service-account={corrector}"),
            ],
            admin: cluster.kubeconfig.clone(),
            bin: cluster.bin.clone(),
            own_namespace: create_namespace,
        })
    }

    /// The cluster-wide install (the chart's defaults) for an operator whose leader Lease is
    /// in `namespace`: installed into that namespace (release `hp-<namespace>`), or into a
    /// namespace of its own when `namespace` does not exist (the operator then fails to elect,
    /// as it would). Operators of one namespace share it.
    pub fn for_lease_namespace(cluster: &Cluster, namespace: &str) -> Result<Install> {
        let release = release_name(namespace);
        let exists = cluster
            .kubectl(&["get", "namespace", namespace])?
            .status
            .success();
        if exists {
            Install::new(cluster, &release, namespace, &[], false)
        } else {
            let own = format!("{release}-op");
            Install::new(cluster, &release, &own, &[], true)
        }
    }

    /// `kubectl auth can-i …` as the chart's ServiceAccount: whether the API server allows it.
    pub fn can(&self, args: &[&str]) -> Result<bool> {
        let out = kubectl_command(&self.bin, &self.admin)
            .args(["auth", "can-i"])
            .args(args)
            .arg(format!(
                "--as=system:serviceaccount:{}:{}",
                self.namespace, self.release
            ))
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        let last = match INSTALLS.get_or_init(Default::default).lock() {
            Ok(mut live) => {
                let n = live.entry(self.release.clone()).or_insert(1);
                *n = n.saturating_sub(1);
                *n == 0
            }
            Err(_) => true,
        };
        if !last {
            return;
        }
        let selector = format!("app.kubernetes.io/instance={}", self.release);
        let _ = kubectl_command(&self.bin, &self.admin)
            .args([
                "delete",
                "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings,mutatingadmissionpolicies,mutatingadmissionpolicybindings",
                "-l",
                &selector,
                "--wait=false",
            ])
            .output();
        if self.own_namespace {
            let _ = kubectl_command(&self.bin, &self.admin)
                .args(["delete", "namespace", &self.namespace, "--wait=false"])
                .output();
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// The label of the Agent [`Install::new`] dry-runs to see its release's policies take effect
/// (the run-wide requester recorder leaves it alone).
const PROBE_LABEL: &str = "homeplane.dev/install-probe";

/// Helm's cache and configuration in the temporary folder, not in the user's home.
fn helm_env() -> [(&'static str, PathBuf); 2] {
    [
        (
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("homeplane-helm-cache"),
        ),
        (
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("homeplane-helm-config"),
        ),
    ]
}

/// kubectl in `bin` with `kubeconfig`, and a discovery cache beside the kubeconfig. kubectl's
/// default cache is keyed by host and port only, and test clusters come and go on reused
/// loopback ports: a cache written by an earlier cluster with homeplane's CRDs made kubectl
/// POST Agents to a fresh cluster without them (NotFound instead of "no matches for kind").
pub fn kubectl_command(bin: &Path, kubeconfig: &Path) -> Command {
    let cache = kubeconfig
        .parent()
        .map_or_else(|| PathBuf::from("kube-cache"), |d| d.join("kube-cache"));
    let mut command = Command::new(bin.join("kubectl"));
    command
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", cache);
    command
}

/// A release name for the install of `namespace`: `hp-<namespace>`, hashed when too long
/// (Helm allows 53 characters).
fn release_name(namespace: &str) -> String {
    let name = format!("hp-{namespace}");
    if name.len() <= 40 {
        return name;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    namespace.hash(&mut h);
    format!("hp-{}-{:08x}", &namespace[..28], h.finish() as u32)
}

/// The operator binary running as a child process; SIGTERM on drop.
pub struct Operator {
    child: Child,
    /// Address of its /healthz, /readyz and /metrics.
    pub http: String,
    /// Its leader-election identity.
    pub identity: String,
    /// The chart install it runs under (none for [`Operator::start_as_admin`]).
    pub install: Option<std::sync::Arc<Install>>,
}

impl Operator {
    /// Starts `binary run` against `cluster` with the leader Lease in `namespace`, reconciling
    /// the namespaced objects of `namespace` only (unless `extra` names another
    /// `--watch-namespace`), so that operators of tests running side by side never touch each
    /// other's objects. It runs as the chart's ServiceAccount, with the chart's RBAC.
    pub fn start(
        binary: &str,
        cluster: &Cluster,
        namespace: &str,
        identity: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_with_env(binary, cluster, namespace, identity, extra, &[])
    }

    /// [`Operator::start`] with more environment variables (e.g. `RUST_LOG`).
    pub fn start_with_env(
        binary: &str,
        cluster: &Cluster,
        namespace: &str,
        identity: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let install = std::sync::Arc::new(Install::for_lease_namespace(cluster, namespace)?);
        let kubeconfig = install.kubeconfig.clone();
        Self::spawn(
            binary,
            namespace,
            identity,
            extra,
            env,
            &kubeconfig,
            Some(install),
        )
    }

    /// Starts the operator under an install of one's own (e.g. a namespace-scoped one).
    pub fn start_installed(
        binary: &str,
        install: std::sync::Arc<Install>,
        identity: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let namespace = install.namespace.clone();
        let kubeconfig = install.kubeconfig.clone();
        Self::spawn(
            binary,
            &namespace,
            identity,
            extra,
            &[],
            &kubeconfig,
            Some(install),
        )
    }

    /// Starts the operator with the cluster's admin credentials (for what no install can
    /// express, such as a cluster without homeplane's CRDs).
    pub fn start_as_admin(
        binary: &str,
        cluster: &Cluster,
        namespace: &str,
        identity: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::spawn(
            binary,
            namespace,
            identity,
            extra,
            &[],
            &cluster.kubeconfig,
            None,
        )
    }

    fn spawn(
        binary: &str,
        namespace: &str,
        identity: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        kubeconfig: &Path,
        install: Option<std::sync::Arc<Install>>,
    ) -> Result<Self> {
        let port = free_port()?;
        let http = format!("127.0.0.1:{port}");
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("homeplane-{identity}.log")))?;
        let flags: Vec<String> = install
            .as_ref()
            .map(|i| {
                i.flags
                    .iter()
                    .filter(|f| {
                        let name = f.split('=').next().unwrap_or_default();
                        !extra.iter().any(|e| e.starts_with(name))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut command = Command::new(binary);
        command
            .args([
                "run",
                "--http-addr",
                &http,
                "--leader-election-namespace",
                namespace,
                "--identity",
                identity,
            ])
            .args(if extra.contains(&"--watch-namespace") {
                vec![]
            } else {
                vec!["--watch-namespace", namespace]
            })
            .args(&flags)
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info");
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("failed to start the operator")?;
        Ok(Self {
            child,
            http,
            identity: identity.to_string(),
            install,
        })
    }

    /// GETs `path` from the operator's HTTP server; `None` while it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.http, path)
    }

    /// The value of an unlabelled or labelled metric line, e.g. `homeplane_leader`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics")?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
    }

    /// Sends SIGKILL: the process dies without releasing its lease.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill_hard();
        None
    }

    /// `Some(exit code)` once the process has exited by itself, `None` while it runs.
    pub fn terminate_if_exited(&mut self) -> Option<Option<i32>> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.code()),
            _ => None,
        }
    }

    /// The operator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(
            std::env::temp_dir().join(format!("homeplane-{}.log", self.identity)),
        )
        .unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// A free TCP port on 127.0.0.1, chosen at random below the kernel's ephemeral range (as
/// `free_port` in scripts/lib.sh does): a port the kernel hands out to a bind to port 0 or to
/// an outgoing connection could be handed out again before the process it is meant for binds it.
pub fn free_port() -> Result<u16> {
    use std::hash::{BuildHasher as _, Hasher as _};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let first = low.saturating_sub(12_000).max(1024);
    if first < low {
        for _ in 0..100 {
            let mut random = std::collections::hash_map::RandomState::new().build_hasher();
            random.write_u32(std::process::id());
            let port = first + (random.finish() % u64::from(low - first)) as u32;
            let port = u16::try_from(port)?;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A minimal HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `check` every 250 ms until it returns `Some`, or fails after `timeout` with `what`
/// and the last value seen.
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::new();
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} {last_error}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A real PostgreSQL server: the one named by `HOMEPLANE_TEST_DATABASE_URL` (started by
/// `make test`), or one started now for this test process.
pub struct Postgres {
    /// Host (loopback).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Superuser name.
    pub user: String,
    /// Superuser password.
    pub password: String,
}

static POSTGRES: OnceLock<Postgres> = OnceLock::new();

impl Postgres {
    /// The server of this test run.
    pub fn shared() -> &'static Postgres {
        POSTGRES.get_or_init(|| match Self::connect() {
            Ok(p) => p,
            Err(e) => panic!("no test PostgreSQL: {e:#}"),
        })
    }

    fn connect() -> Result<Postgres> {
        match std::env::var("HOMEPLANE_TEST_DATABASE_URL") {
            Ok(url) => Self::from_url(&url),
            Err(_) => Self::start_own(
                &std::env::temp_dir().join(format!("homeplane-pg-{}", std::process::id())),
            ),
        }
    }

    /// A server of its own in `dir` (stopped when this test process exits), whose log is
    /// `dir/postgres.log`: for tests that read or change the server's own settings.
    pub fn start_own(dir: &Path) -> Result<Postgres> {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/postgres.sh"))
            .arg("up")
            .arg(dir)
            .env(
                "HOMEPLANE_POSTGRES_OWNER_PID",
                std::process::id().to_string(),
            )
            .status()?;
        if !status.success() {
            bail!("scripts/postgres.sh up {} failed", dir.display());
        }
        let env = std::fs::read_to_string(dir.join("env"))?;
        Self::from_url(env.trim().trim_start_matches("export DATABASE_URL="))
    }

    /// Stops a server started with [`Postgres::start_own`].
    pub fn stop_own(dir: &Path) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/postgres.sh"))
            .arg("down")
            .arg(dir)
            .status();
    }

    fn from_url(url: &str) -> Result<Postgres> {
        // postgres://user:password@host:port/db
        let rest = url
            .strip_prefix("postgres://")
            .context("DATABASE_URL is not postgres://")?;
        let (credentials, location) = rest
            .split_once('@')
            .context("DATABASE_URL has no credentials")?;
        let (user, password) = credentials
            .split_once(':')
            .context("DATABASE_URL has no password")?;
        let hostport = location.split('/').next().unwrap_or_default();
        let (host, port) = hostport
            .split_once(':')
            .context("DATABASE_URL has no port")?;
        Ok(Postgres {
            host: host.into(),
            port: port.parse()?,
            user: user.into(),
            password: password.into(),
        })
    }

    /// A connection URI for `user`/`password` to database `db`.
    pub fn uri(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{user}:{password}@{}:{}/{db}",
            self.host, self.port
        )
    }

    /// Runs `sql` with psql as `user`/`password` on `db`; (success, stdout+stderr).
    pub fn psql_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
        sql: &str,
    ) -> Result<(bool, String)> {
        let out = Command::new("psql")
            .arg(self.uri(user, password, db))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .context("failed to run psql")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text.trim().to_string()))
    }

    /// Runs `sql` as the superuser on `db` and returns its output; fails when it fails.
    pub fn admin(&self, db: &str, sql: &str) -> Result<String> {
        let (ok, text) = self.psql_as(&self.user, &self.password, db, sql)?;
        if !ok {
            bail!("psql on {db} failed: {text}");
        }
        Ok(text)
    }
}

/// A real S3-compatible server (versitygw): the one named by `HOMEPLANE_TEST_S3_ENDPOINT`
/// (started by `make test`), or one started now for this test process. Tests make their own
/// buckets.
pub struct S3Server {
    /// Endpoint URL.
    pub endpoint: String,
    /// Root access key id.
    pub access_key_id: String,
    /// Root secret access key.
    pub secret_access_key: String,
}

static S3_SERVER: OnceLock<S3Server> = OnceLock::new();

impl S3Server {
    /// The server of this test run.
    pub fn shared() -> &'static S3Server {
        S3_SERVER.get_or_init(|| match Self::connect() {
            Ok(s) => s,
            Err(e) => panic!("no test S3 server: {e:#}"),
        })
    }

    fn connect() -> Result<S3Server> {
        if let (Ok(endpoint), Ok(access_key_id), Ok(secret_access_key)) = (
            std::env::var("HOMEPLANE_TEST_S3_ENDPOINT"),
            std::env::var("HOMEPLANE_TEST_S3_ACCESS_KEY_ID"),
            std::env::var("HOMEPLANE_TEST_S3_SECRET_ACCESS_KEY"),
        ) {
            return Ok(S3Server {
                endpoint,
                access_key_id,
                secret_access_key,
            });
        }
        let dir = std::env::temp_dir().join(format!("homeplane-s3-{}", std::process::id()));
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/s3.sh"))
            .arg("up")
            .arg(&dir)
            .env("HOMEPLANE_S3_OWNER_PID", std::process::id().to_string())
            .status()?;
        if !status.success() {
            bail!("scripts/s3.sh up {} failed", dir.display());
        }
        let env = std::fs::read_to_string(dir.join("env"))?;
        let var = |name: &str| -> Result<String> {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(String::from)
                .with_context(|| format!("{name} missing from {}", dir.display()))
        };
        Ok(S3Server {
            endpoint: var("AWS_ENDPOINT_URL")?,
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
        })
    }

    /// A bucket name of its own for one test.
    pub fn bucket_name(prefix: &str) -> String {
        format!("{prefix}-{}", suffix())
    }
}

/// Podman's Docker-compatible API service: the one in `HOMEPLANE_TEST_PODMAN_DIR` (started by
/// `make test` with scripts/podman.sh), or one started now for this test process.
pub struct Podman {
    /// The folder of the service (socket, storage, `env`).
    pub dir: PathBuf,
}

static PODMAN: OnceLock<Podman> = OnceLock::new();
static TEST_IMAGE: OnceLock<String> = OnceLock::new();

impl Podman {
    /// The service of this test run.
    pub fn shared() -> &'static Podman {
        PODMAN.get_or_init(|| match Self::connect() {
            Ok(p) => p,
            Err(e) => panic!("no Podman API service: {e:#}"),
        })
    }

    fn connect() -> Result<Podman> {
        if let Some(dir) = std::env::var_os("HOMEPLANE_TEST_PODMAN_DIR") {
            return Ok(Podman { dir: dir.into() });
        }
        let dir = std::env::temp_dir().join(format!("homeplane-podman-{}", std::process::id()));
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/podman.sh"))
            .arg("up")
            .arg(&dir)
            .env("HOMEPLANE_PODMAN_OWNER_PID", std::process::id().to_string())
            .status()
            .context("failed to run scripts/podman.sh")?;
        if !status.success() {
            bail!("scripts/podman.sh up {} failed", dir.display());
        }
        Ok(Podman { dir })
    }

    /// The Docker Engine API endpoint, `unix:///…/podman.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.join("podman.sock").display())
    }

    /// Runs the podman CLI against the service's storage; returns stdout.
    pub fn podman(&self, args: &[&str]) -> Result<String> {
        let env = std::fs::read_to_string(self.dir.join("env"))?;
        let mut cmd = Command::new("podman");
        for line in env.lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                cmd.env(k, v.trim_matches('"'));
            }
        }
        let out = cmd.args(args).output().context("failed to run podman")?;
        if !out.status.success() {
            bail!(
                "podman {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// An image built here with `podman import` from a root file system holding a static
    /// busybox (no registry involved); built once per test process.
    pub fn test_image(&self) -> Result<String> {
        if let Some(image) = TEST_IMAGE.get() {
            return Ok(image.clone());
        }
        let root = std::env::temp_dir().join(format!("homeplane-rootfs-{}", std::process::id()));
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::copy("/usr/bin/busybox", root.join("bin/busybox"))
            .context("busybox is missing: scripts/setup.sh installs busybox-static")?;
        let tar = root.with_extension("tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()?;
        if !status.success() {
            bail!("tar of the test root file system failed");
        }
        let image = "localhost/homeplane-test:1".to_string();
        self.podman(&["import", &tar.to_string_lossy(), &image])?;
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_file(&tar);
        Ok(TEST_IMAGE.get_or_init(|| image).clone())
    }
}

/// A real n8n (installed from npm, started headless by `scripts/n8n.sh`) with an owner and an
/// API key: the one named by `HOMEPLANE_TEST_N8N_URL` and `HOMEPLANE_TEST_N8N_API_KEY` (started
/// by `make test`), or one started now for this test process (stopped when it exits).
pub struct N8n {
    /// Base URL, e.g. `http://127.0.0.1:5678`.
    pub url: String,
    /// An API key with every scope.
    pub api_key: String,
}

static N8N: OnceLock<N8n> = OnceLock::new();

impl N8n {
    /// The n8n of this test run.
    pub fn shared() -> &'static N8n {
        N8N.get_or_init(|| match Self::connect() {
            Ok(n) => n,
            Err(e) => panic!("no test n8n: {e:#}"),
        })
    }

    fn connect() -> Result<N8n> {
        if let (Ok(url), Ok(api_key)) = (
            std::env::var("HOMEPLANE_TEST_N8N_URL"),
            std::env::var("HOMEPLANE_TEST_N8N_API_KEY"),
        ) {
            return Ok(N8n { url, api_key });
        }
        let dir = std::env::temp_dir().join(format!("homeplane-n8n-{}", std::process::id()));
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/n8n.sh"))
            .arg("up")
            .arg(&dir)
            .env("HOMEPLANE_N8N_OWNER_PID", std::process::id().to_string())
            .status()
            .context("failed to run scripts/n8n.sh")?;
        if !status.success() {
            bail!("scripts/n8n.sh up {} failed", dir.display());
        }
        let env = std::fs::read_to_string(dir.join("env"))?;
        let value = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(str::to_string)
                .with_context(|| format!("{}/env has no {name}", dir.display()))
        };
        Ok(N8n {
            url: value("N8N_URL")?,
            api_key: value("N8N_API_KEY")?,
        })
    }

    /// Calls n8n's public API (`/api/v1` + `path`) with the API key: (HTTP status, JSON body).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let url = format!("{}/api/v1{path}", self.url);
        self.request(method, &url, Some(&self.api_key), body)
    }

    /// An HTTP request with curl: (status, JSON body or `null`).
    pub fn request(
        &self,
        method: &str,
        url: &str,
        api_key: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, url, "-w", "\n%{http_code}"]);
        if let Some(key) = api_key {
            cmd.args(["-H", &format!("X-N8N-API-KEY: {key}")]);
        }
        let mut child = cmd
            .args(if body.is_some() {
                vec![
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    "@-",
                ]
            } else {
                vec![]
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("failed to run curl")?;
        if let (Some(body), Some(mut input)) = (body, child.stdin.take()) {
            use std::io::Write;
            input.write_all(body.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "curl {method} {url} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
        let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
        Ok((code.trim().parse()?, json))
    }
}
