//! What the dashboard's tests share: the demo's objects (manifests/homelab) in a namespace of
//! their own, on simulated nodes of their own, against the real PostgreSQL, S3 server and n8n;
//! the operator serving the dashboard; and HTTP through curl (which can send from another
//! loopback address, as a reverse proxy would).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use homeplane_testkit::{
    Cluster, Install, N8n, Operator, Postgres, S3Server, TestNamespace, TestNode, eventually,
    free_port, repo_root,
};
use serde_yaml::Value;

pub const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");
pub const WAIT: Duration = Duration::from_secs(90);

/// An HTTP response.
#[derive(Debug, Clone, Default)]
pub struct Http {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Http {
    /// The value of a response header (the first one).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// Every `Set-Cookie` value, as `name=value`.
    pub fn cookies(&self) -> Vec<String> {
        self.headers
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("set-cookie")
                    .then(|| v.trim().split(';').next().unwrap_or_default().to_string())
            })
            .collect()
    }
}

/// Runs curl with `args` (`-sS -i` added) and splits status, headers and body.
pub fn curl(args: &[&str]) -> Http {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "30"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Http::default();
    };
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Http {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

/// The chart as the demo installs it into `ns`: the homelab's director dispatches runs, so
/// agentruns and agents are grantable (docs/security.md). Installing it again is harmless (the
/// installs of one release are counted).
pub fn demo_install(cluster: &Cluster, ns: &str) -> Install {
    let mut release = format!("hpd-{ns}");
    release.truncate(40);
    Install::new(
        cluster,
        &release,
        ns,
        &[
            "agents.extraGrantable[0].apiGroup=homeplane.dev",
            "agents.extraGrantable[0].resource=agentruns",
            "agents.extraGrantable[1].apiGroup=homeplane.dev",
            "agents.extraGrantable[1].resource=agents",
        ],
        false,
    )
    .unwrap()
}

/// The operator with its dashboard.
pub struct Dash {
    pub operator: Operator,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub port: u16,
}

impl Dash {
    /// Starts `homeplane run` for `ns` with the dashboard on a free port and `extra` flags;
    /// waits until the dashboard answers.
    pub fn start(cluster: &Cluster, ns: &str, identity: &str, extra: &[&str]) -> Dash {
        Self::start_on(cluster, ns, identity, free_port().unwrap(), extra)
    }

    /// As [`Dash::start`], on `port`.
    pub fn start_on(
        cluster: &Cluster,
        ns: &str,
        identity: &str,
        port: u16,
        extra: &[&str],
    ) -> Dash {
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["--dashboard-addr", addr.as_str()];
        args.extend_from_slice(extra);
        let install = demo_install(cluster, ns);
        let operator =
            Operator::start_installed(BINARY, std::sync::Arc::new(install), identity, &args)
                .unwrap();
        let dash = Dash {
            operator,
            url: format!("http://{addr}"),
            port,
        };
        eventually(WAIT, "the dashboard to answer", || {
            Ok((dash.get("/healthz").status == 200).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", dash.operator.log()));
        dash
    }

    /// GETs `path` from 127.0.0.1.
    pub fn get(&self, path: &str) -> Http {
        curl(&[&format!("{}{path}", self.url)])
    }

    /// GETs `path` with extra curl arguments (headers, source address).
    pub fn get_with(&self, path: &str, args: &[&str]) -> Http {
        let url = format!("{}{path}", self.url);
        let mut all: Vec<&str> = args.to_vec();
        all.push(&url);
        curl(&all)
    }

    /// Waits until the page at `path` contains `text`, and returns it.
    pub fn wait_for(&self, path: &str, text: &str) -> String {
        eventually(WAIT, &format!("{path} to show {text:?}"), || {
            let page = self.get(path);
            Ok(page.body.contains(text).then_some(page.body))
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nlast page:\n{}\noperator log:\n{}",
                self.get(path).body,
                tail(&self.operator.log())
            )
        })
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The parts of the demo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Database,
    Memory,
    Agents,
    Voice,
    Backup,
    Workflow,
    Registry,
}

impl Part {
    pub const ALL: [Part; 7] = [
        Part::Database,
        Part::Memory,
        Part::Agents,
        Part::Voice,
        Part::Backup,
        Part::Workflow,
        Part::Registry,
    ];
}

/// A namespace with the demo's objects in it.
pub struct Demo {
    pub cluster: &'static Cluster,
    pub ns: TestNamespace,
    /// The test's suffix: role names end in it, classes are `pi-<s>` and `gpu-<s>`.
    pub s: String,
    pub pi: TestNode,
    pub gpu: TestNode,
    /// The PostgreSQL database of the `homelab` Database.
    pub dbname: String,
    /// homeplane's own history database, with its URL.
    pub history_url: String,
    pub bucket: String,
    pub dir: PathBuf,
    /// The chart, installed before any object is applied (its admission policy records who
    /// asked for each Agent).
    pub install: std::sync::Arc<Install>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for class in [format!("pi-{}", self.s), format!("gpu-{}", self.s)] {
            let _ = self
                .cluster
                .kubectl(&["delete", "nodeclass", &class, "--wait=false"]);
        }
    }
}

/// The role names of the demo's Database, with the suffix that keeps them apart from other
/// tests' roles on the shared server.
pub const ROLES: [&str; 6] = [
    "app",
    "mcp_proxy",
    "readonly",
    "remote_rw",
    "memory",
    "migrator",
];

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join("manifests/homelab").join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Replaces, anywhere in `v`, the value of key `class` `pi`/`gpu` by this test's classes, and
/// role names by the suffixed ones.
fn rename(v: &mut Value, s: &str) {
    match v {
        Value::Mapping(map) => {
            for (k, val) in map.iter_mut() {
                let key = k.as_str().unwrap_or_default();
                if key == "class"
                    && let Some(c) = val.as_str()
                    && (c == "pi" || c == "gpu")
                {
                    *val = Value::String(format!("{c}-{s}"));
                    continue;
                }
                if key == "role"
                    && let Some(r) = val.as_str()
                    && ROLES.contains(&r)
                {
                    *val = Value::String(format!("{r}_{s}"));
                    continue;
                }
                rename(val, s);
            }
        }
        Value::Sequence(seq) => seq.iter_mut().for_each(|x| rename(x, s)),
        _ => {}
    }
}

fn set(v: &mut Value, path: &[&str], value: Value) {
    let mut at = v;
    for (i, key) in path.iter().enumerate() {
        if i + 1 == path.len() {
            at[*key] = value;
            return;
        }
        if at.get(*key).is_none() {
            at[*key] = Value::Mapping(Default::default());
        }
        at = &mut at[*key];
    }
}

fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// An age identity in `dir`; returns its public key.
pub fn keygen(dir: &Path) -> String {
    let path = dir.join("age.key");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A kubectl of its own for `cluster` (a test namespace's helper).
pub fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    cluster.kubectl_ok(args).unwrap()
}

impl Demo {
    /// The demo's objects, shaped as `make demo` applies them, in a new namespace: NodeClasses
    /// `pi`/`gpu` (as `pi-<s>`/`gpu-<s>`, on simulated nodes of their own with the Pi's and
    /// the GPU node's sizes), the homelab Database (roles suffixed) on the test PostgreSQL with
    /// its migrations, the MemoryServer, the Agents and their run, the VoicePipeline, the
    /// database BackupPolicy to the test S3 server with one Backup, the first Workflow on the
    /// test n8n, and a StateRegistry watching a ConfigMap the tests flip.
    pub fn apply(prefix: &str) -> Demo {
        Self::apply_parts(prefix, &Part::ALL)
    }

    /// Only some of the demo's objects (the classes, Secrets and bucket always).
    pub fn apply_parts(prefix: &str, parts: &[Part]) -> Demo {
        let has = |p: Part| parts.contains(&p);
        let cluster = Cluster::shared();
        let ns = TestNamespace::new(cluster, prefix).unwrap();
        let install = std::sync::Arc::new(demo_install(cluster, &ns.name));
        let s = ns.name.rsplit('-').next().unwrap().to_string();
        let pg = Postgres::shared();
        let s3 = S3Server::shared();
        let n8n = N8n::shared();
        let dir = std::env::temp_dir().join(format!("hp-dash-{s}"));
        std::fs::create_dir_all(&dir).unwrap();

        // Nodes and classes: the demo's sizes, on nodes only this test uses.
        let pi = TestNode::new(cluster, "arm64", "4", "8Gi", 0).unwrap();
        let gpu = TestNode::new(cluster, "amd64", "16", "64Gi", 1).unwrap();
        let mut classes = documents("nodeclasses.yaml");
        for class in &mut classes {
            let name = class["metadata"]["name"].as_str().unwrap().to_string();
            let node = if name == "pi" { &pi } else { &gpu };
            class["metadata"]["name"] = Value::String(format!("{name}-{s}"));
            class["spec"]["nodeSelector"] =
                serde_yaml::from_str(&format!("{{homeplane.dev/test-node: \"{}\"}}", node.key))
                    .unwrap();
            let mut tolerations: Vec<Value> = class["spec"]["tolerations"]
                .as_sequence()
                .cloned()
                .unwrap_or_default();
            tolerations.push(
                serde_yaml::from_str(&format!(
                    "{{key: homeplane.dev/test-node, operator: Equal, value: \"{}\", effect: NoSchedule}}",
                    node.key
                ))
                .unwrap(),
            );
            class["spec"]["tolerations"] = Value::Sequence(tolerations);
        }
        let (ok, out) = cluster.apply("default", &to_yaml(&classes)).unwrap();
        assert!(ok, "{out}");

        // Secrets the demo creates by hand.
        let bucket = S3Server::bucket_name("dash");
        let recipient = keygen(&dir);
        for (name, pairs) in [
            (
                "pg-admin",
                vec![
                    ("username", pg.user.clone()),
                    ("password", pg.password.clone()),
                ],
            ),
            (
                "r2",
                vec![
                    ("accessKeyId", s3.access_key_id.clone()),
                    ("secretAccessKey", s3.secret_access_key.clone()),
                ],
            ),
            ("n8n-api", vec![("apiKey", n8n.api_key.clone())]),
        ] {
            let mut args = vec![
                "create".to_string(),
                "secret".into(),
                "generic".into(),
                name.into(),
                "-n".into(),
                ns.name.clone(),
            ];
            for (k, v) in pairs {
                args.push(format!("--from-literal={k}={v}"));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cluster.kubectl_ok(&args).unwrap();
        }
        let ensured = Command::new(BINARY)
            .args([
                "backup",
                "ensure-bucket",
                "--bucket",
                &bucket,
                "--endpoint",
                &s3.endpoint,
            ])
            .env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key)
            .output()
            .unwrap();
        assert!(
            ensured.status.success(),
            "{}",
            String::from_utf8_lossy(&ensured.stderr)
        );

        // homeplane's own database, for the drift history.
        let history_db = format!("hp_dash_history_{s}");
        pg.admin("postgres", &format!("CREATE DATABASE {history_db}"))
            .unwrap();
        let history_url = pg.uri(&pg.user, &pg.password, &history_db);

        let mut docs = Vec::new();
        let dbname = format!("homelab_{s}");
        for mut d in documents("database.yaml")
            .into_iter()
            .filter(|_| has(Part::Database))
        {
            if d["kind"] == "Database" {
                set(
                    &mut d,
                    &["spec", "databaseName"],
                    Value::String(dbname.clone()),
                );
                set(
                    &mut d,
                    &["spec", "server", "external", "host"],
                    Value::String(pg.host.clone()),
                );
                set(
                    &mut d,
                    &["spec", "server", "external", "port"],
                    Value::Number(pg.port.into()),
                );
                // Roles on the shared server are global: suffixed.
                for role in d["spec"]["roles"].as_sequence_mut().unwrap() {
                    let name = role["name"].as_str().unwrap().to_string();
                    role["name"] = Value::String(format!("{name}_{s}"));
                }
            }
            docs.push(d);
        }
        docs.extend(
            documents("memory.yaml")
                .into_iter()
                .filter(|_| has(Part::Memory)),
        );
        for mut d in documents("agents.yaml")
            .into_iter()
            .filter(|_| has(Part::Agents))
        {
            if d["kind"] == "Agent" && d["spec"]["scope"]["namespaces"].is_sequence() {
                d["spec"]["scope"]["namespaces"] =
                    Value::Sequence(vec![Value::String(ns.name.clone())]);
            }
            docs.push(d);
        }
        docs.extend(
            documents("voice.yaml")
                .into_iter()
                .filter(|_| has(Part::Voice)),
        );
        for mut d in documents("backup.yaml") {
            if d["metadata"]["name"] != "postgres" || !has(Part::Backup) {
                continue;
            }
            set(
                &mut d,
                &["spec", "destination", "endpoint"],
                Value::String(s3.endpoint.clone()),
            );
            set(
                &mut d,
                &["spec", "destination", "bucket"],
                Value::String(bucket.clone()),
            );
            d["spec"]["recipients"] = Value::Sequence(vec![Value::String(recipient.clone())]);
            docs.push(d);
        }
        for mut d in documents("workflows.yaml") {
            if d["metadata"]["name"] != "email-classifier" || !has(Part::Workflow) {
                continue;
            }
            set(
                &mut d,
                &["spec", "n8n", "url"],
                Value::String(n8n.url.clone()),
            );
            docs.push(d);
        }
        docs.push(
            serde_yaml::from_str(
                r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: dash-flag}
data: {mode: steady}
"#,
            )
            .unwrap(),
        );
        if has(Part::Registry) {
            docs.push(
            serde_yaml::from_str(&format!(
                r#"
apiVersion: homeplane.dev/v1alpha1
kind: StateRegistry
metadata: {{name: homelab}}
spec:
  interval: 2s
  properties:
  - id: dash.flag.mode
    description: the flag the dashboard tests flip
    desired: steady
    severity: critical
    observe:
      kubernetes: {{apiVersion: v1, kind: ConfigMap, namespace: {ns}, name: dash-flag, field: /data/mode}}
"#,
                ns = ns.name
            ))
            .unwrap(),
        );
        }
        for d in &mut docs {
            rename(d, &s);
            d["metadata"]["namespace"] = Value::String(ns.name.clone());
        }
        let (ok, out) = cluster.apply(&ns.name, &to_yaml(&docs)).unwrap();
        assert!(ok, "{out}");
        Demo {
            cluster,
            ns,
            s,
            pi,
            gpu,
            dbname,
            history_url,
            bucket,
            dir,
            install,
        }
    }

    /// `kubectl get KIND NAME -n NS -o jsonpath=PATH`.
    pub fn get(&self, kind: &str, name: &str, path: &str) -> String {
        self.cluster
            .kubectl(&[
                "get",
                kind,
                name,
                "-n",
                &self.ns.name,
                "-o",
                &format!("jsonpath={path}"),
            ])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits until `kind/name` has a `Ready` condition with status `status`.
    pub fn wait_ready(&self, kind: &str, name: &str, status: &str) {
        eventually(WAIT, &format!("{kind}/{name} Ready={status}"), || {
            let got = self.get(
                kind,
                name,
                "{.status.conditions[?(@.type==\"Ready\")].status}",
            );
            Ok((got == status).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}: {}", self.get(kind, name, "{.status.conditions}")));
    }

    /// Takes the demo's backup (`Backup demo`, as `make demo` does) once the Database is Ready,
    /// and waits until it succeeded.
    pub fn take_backup(&self) {
        self.wait_ready("database", "homelab", "True");
        let backup = format!(
            "apiVersion: homeplane.dev/v1alpha1\nkind: Backup\nmetadata: {{name: demo, namespace: {}}}\nspec: {{policy: postgres}}\n",
            self.ns.name
        );
        let (ok, out) = self.cluster.apply(&self.ns.name, &backup).unwrap();
        assert!(ok, "{out}");
        eventually(WAIT, "the demo backup to succeed", || {
            Ok((self.get("backup", "demo", "{.status.phase}") == "Succeeded").then_some(()))
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {}",
                self.get("backup", "demo", "{.status.conditions}")
            )
        });
    }

    /// Sets the ConfigMap the registry watches: `steady` is in sync, anything else drifts.
    pub fn set_flag(&self, value: &str) {
        self.cluster
            .kubectl_ok(&[
                "patch",
                "configmap",
                "dash-flag",
                "-n",
                &self.ns.name,
                "--type=merge",
                "-p",
                &format!("{{\"data\":{{\"mode\":\"{value}\"}}}}"),
            ])
            .unwrap();
    }
}
