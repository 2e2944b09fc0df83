//! Alerting end to end: the rules pass `promtool check rules` and their unit tests (every alert
//! shown firing and silent), every alert has a runbook section and bounded labels, the chart
//! renders its PrometheusRule, ServiceMonitor and dashboard only when asked and only when the
//! Prometheus Operator's CRDs exist (and the API server accepts them), and a real Prometheus and
//! Alertmanager scraping a running operator against the test cluster raise an alert for a
//! Stalled object, a critical drift past its grace and a backup policy whose last success is
//! too old — each delivered to a webhook receiver and to the real n8n through the example
//! Workflow, and each resolved once its cause is fixed.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeplane_testkit::{
    Cluster, N8n, Operator, Postgres, S3Server, TestNamespace, eventually, repo_root, suffix,
};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("{program} does not run (scripts/setup.sh installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The alert rules of the plain rules file: name -> rule.
fn rules() -> BTreeMap<String, serde_yaml::Value> {
    let file: serde_yaml::Value =
        serde_yaml::from_str(&read("alerts/homeplane.rules.yaml")).unwrap();
    let mut out = BTreeMap::new();
    for group in file["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_string();
            assert!(
                out.insert(name.clone(), rule.clone()).is_none(),
                "{name} twice"
            );
        }
    }
    out
}

#[test]
fn promtool_checks_the_rules_and_every_alert_is_shown_firing_and_silent() {
    let (ok, text) = run(
        "promtool",
        &["check", "rules", "alerts/homeplane.rules.yaml"],
    );
    assert!(ok, "{text}");
    let (ok, text) = run(
        "promtool",
        &["test", "rules", "alerts/homeplane.rules.test.yaml"],
    );
    assert!(ok, "{text}");
    assert!(text.contains("SUCCESS"), "{text}");

    // Each alert is evaluated at least once where it fires and once where it must not.
    let tests: serde_yaml::Value =
        serde_yaml::from_str(&read("alerts/homeplane.rules.test.yaml")).unwrap();
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for test in tests["tests"].as_sequence().unwrap() {
        for case in test["alert_rule_test"].as_sequence().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_string();
            let expected = case["exp_alerts"].as_sequence().unwrap();
            if expected.is_empty() {
                silent.insert(name);
            } else {
                for alert in expected {
                    assert!(
                        alert["exp_annotations"]["summary"].is_string(),
                        "{name}: a firing case checks the summary"
                    );
                }
                firing.insert(name);
            }
        }
    }
    let names: BTreeSet<String> = rules().into_keys().collect();
    assert_eq!(firing, names, "alerts without a firing case");
    assert_eq!(silent, names, "alerts without a silent case");
}

#[test]
fn every_alert_says_what_is_wrong_and_how_to_see_more_with_bounded_labels() {
    let runbook = read("docs/alerts.md");
    // Labels an alert may carry: names of what a person declared and words of fixed lists.
    let allowed: BTreeSet<&str> = [
        "kind",
        "namespace",
        "name",
        "registry",
        "property",
        "policy",
        "reason",
        "agent",
        "controller",
        "category",
        "severity",
    ]
    .into();
    let by = regex_lite_by();
    for (name, rule) in rules() {
        let summary = rule["annotations"]["summary"].as_str().unwrap();
        assert!(summary.contains("kubectl "), "{name}: {summary}");
        let severity = rule["labels"]["severity"].as_str().unwrap();
        assert!(["critical", "warning"].contains(&severity), "{name}");
        let anchor = name.to_lowercase();
        assert_eq!(
            rule["annotations"]["runbook_url"].as_str().unwrap(),
            format!("https://github.com/homeplane/homeplane/blob/main/docs/alerts.md#{anchor}")
        );
        assert!(
            runbook.contains(&format!("\n## {name}\n")),
            "docs/alerts.md has no section ## {name}"
        );
        // Every label the expression keeps, and every label an annotation prints.
        let expr = rule["expr"].as_str().unwrap();
        for labels in by(expr) {
            for label in labels {
                assert!(allowed.contains(label.as_str()), "{name}: by ({label})");
            }
        }
        for text in rule["annotations"].as_mapping().unwrap().values() {
            for part in text.as_str().unwrap().split("$labels.").skip(1) {
                let label: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(allowed.contains(label.as_str()), "{name}: $labels.{label}");
            }
        }
    }
}

/// The label lists of every `by (...)` in a PromQL expression.
fn regex_lite_by() -> impl Fn(&str) -> Vec<Vec<String>> {
    |expr: &str| {
        expr.split(" by (")
            .skip(1)
            .map(|rest| {
                rest.split(')')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|l| l.trim().to_string())
                    .collect()
            })
            .collect()
    }
}

#[test]
fn the_chart_ships_the_plain_rules_unchanged_and_the_example_routing_is_valid() {
    assert_eq!(
        read("charts/homeplane/alerts/homeplane.rules.yaml"),
        read("alerts/homeplane.rules.yaml"),
        "the chart's copy is stale: cp alerts/homeplane.rules.yaml charts/homeplane/alerts/"
    );
    let (ok, text) = run("amtool", &["check-config", "alerts/alertmanager.yml"]);
    assert!(ok, "{text}");
    let dashboard: Value =
        serde_json::from_str(&read("charts/homeplane/dashboards/homeplane.json")).unwrap();
    assert_eq!(dashboard["uid"], "homeplane");
    assert!(dashboard_queries(&dashboard).len() >= 15);
}

/// Every PromQL query of the dashboard's panels.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

fn helm(cluster: &Cluster, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = cluster
        .helm_command()
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const ALL_MONITORING: &str = "metrics.prometheusRule.enabled=true,metrics.serviceMonitor.enabled=true,metrics.grafanaDashboard.enabled=true";

fn kinds(rendered: &str) -> Vec<&str> {
    rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect()
}

/// `helm template --validate` (capabilities from the cluster) of the chart with everything
/// asked for, then a server-side dry run of what it rendered.
fn render_and_dry_run(cluster: &Cluster, kubeconfig: &Path, namespace: &str) -> String {
    let chart = repo_root().join("charts/homeplane");
    // A release name of its own: Helm refuses to take over cluster-scoped objects (the
    // ClusterRole is named after the release) that another test created.
    let release = format!("hp-{}", suffix());
    let (ok, rendered, err) = helm(
        cluster,
        kubeconfig,
        &[
            "template",
            &release,
            &chart.to_string_lossy(),
            "--validate",
            "--namespace",
            namespace,
            "--set",
            ALL_MONITORING,
        ],
    );
    assert!(ok, "{err}");
    let out = cluster
        .kubectl_command()
        .args([
            "apply",
            "--server-side",
            "--dry-run=server",
            "-n",
            namespace,
            "-f",
            "-",
        ])
        .env("KUBECONFIG", kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(rendered.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{rendered}",
        String::from_utf8_lossy(&out.stderr)
    );
    rendered
}

#[test]
fn the_chart_renders_monitoring_only_when_asked_and_only_when_its_crds_exist() {
    let cluster = Cluster::shared();
    let chart = repo_root().join("charts/homeplane");
    let chart = chart.to_string_lossy();
    for set in ["replicaCount=2", ALL_MONITORING] {
        let (ok, out, err) = helm(
            cluster,
            &cluster.kubeconfig,
            &["lint", "--strict", &chart, "--set", set],
        );
        assert!(ok, "{out}{err}");
    }
    let template = |extra: &[&str]| {
        let mut args = vec![
            "template",
            "homeplane",
            &*chart,
            "--kube-version",
            "v1.37.2",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = helm(cluster, &cluster.kubeconfig, &args);
        assert!(ok, "{err}");
        out
    };
    let crds = [
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
    ];
    // Not asked: nothing, even with the CRDs there.
    let default = template(&crds);
    for kind in ["PrometheusRule", "ServiceMonitor", "ConfigMap"] {
        assert!(!kinds(&default).contains(&kind), "{kind} rendered unasked");
    }
    // Asked, CRDs there: all three, the rules exactly as in the plain file.
    let mut asked = vec!["--set", ALL_MONITORING];
    asked.extend_from_slice(&crds);
    let all = template(&asked);
    for kind in ["PrometheusRule", "ServiceMonitor", "ConfigMap", "Service"] {
        assert!(kinds(&all).contains(&kind), "{kind} missing:\n{all}");
    }
    assert!(all.contains("jobLabel: app.kubernetes.io/name"), "{all}");
    assert!(all.contains("grafana_dashboard: \"1\""), "{all}");
    let rules = template(&[
        "--set",
        ALL_MONITORING,
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
        "--show-only",
        "templates/prometheusrule.yaml",
    ]);
    let object: serde_yaml::Value = serde_yaml::from_str(&rules).unwrap();
    let plain: serde_yaml::Value =
        serde_yaml::from_str(&read("alerts/homeplane.rules.yaml")).unwrap();
    assert_eq!(object["spec"]["groups"], plain["groups"]);

    // Against the test cluster, which has no Prometheus Operator: asked for, they are left out
    // (the dashboard stays) and what is rendered is accepted; NOTES say why.
    let ns = TestNamespace::new(cluster, "chart-mon").unwrap();
    let without = render_and_dry_run(cluster, &cluster.kubeconfig, &ns.name);
    assert!(!kinds(&without).contains(&"PrometheusRule"), "{without}");
    assert!(!kinds(&without).contains(&"ServiceMonitor"), "{without}");
    assert!(kinds(&without).contains(&"ConfigMap"), "{without}");
    let (ok, notes, err) = helm(
        cluster,
        &cluster.kubeconfig,
        &[
            "install",
            &format!("hp-{}", suffix()),
            &chart,
            "--dry-run=server",
            "--namespace",
            &ns.name,
            "--set",
            ALL_MONITORING,
        ],
    );
    assert!(ok, "{err}");
    assert!(notes.contains("were left out"), "{notes}");

    // A control plane of its own with the Prometheus Operator's CRDs (from its Go module): the
    // PrometheusRule and ServiceMonitor render, and the API server validates them.
    let dir = std::env::temp_dir().join(format!("homeplane-monitoring-{}", suffix()));
    let own = Cluster::start(&dir).unwrap();
    let (ok, crd_dir) = run("bash", &["scripts/prometheus.sh", "crds"]);
    assert!(ok, "{crd_dir}");
    let crd_dir = PathBuf::from(crd_dir.lines().last().unwrap().trim());
    for crd in ["prometheusrules", "servicemonitors"] {
        let file = crd_dir.join(format!("monitoring.coreos.com_{crd}.yaml"));
        let file = file.to_string_lossy();
        own.kubectl_ok(&["apply", "--server-side", "-f", &file])
            .unwrap();
        own.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &file,
        ])
        .unwrap();
    }
    own.kubectl_ok(&["create", "namespace", "homeplane-system"])
        .unwrap();
    let with = render_and_dry_run(cluster, &own.kubeconfig, "homeplane-system");
    own.stop().unwrap();
    for kind in ["PrometheusRule", "ServiceMonitor", "ConfigMap"] {
        assert!(kinds(&with).contains(&kind), "{kind} missing:\n{with}");
    }
}

/// A webhook receiver of the test: keeps every JSON body posted to it.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            // A thread per connection: a slow one never holds up the next notification.
            for stream in listener.incoming().map_while(Result::ok) {
                let kept = kept.clone();
                std::thread::spawn(move || {
                    if let Some(body) = read_post(stream) {
                        kept.lock().unwrap().push(body);
                    }
                });
            }
        });
        Self { url, bodies }
    }

    /// Whether a notification with `status` ("firing"/"resolved") carried `alertname` with
    /// label `key` = `value`.
    fn got(&self, status: &str, alertname: &str, key: &str, value: &str) -> bool {
        self.bodies.lock().unwrap().iter().any(|b| {
            b["alerts"].as_array().into_iter().flatten().any(|a| {
                a["status"] == status
                    && a["labels"]["alertname"] == alertname
                    && a["labels"][key] == value
            })
        })
    }
}

/// Reads one HTTP request with a Content-Length body and answers 200.
fn read_post(mut stream: std::net::TcpStream) -> Option<Value> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let (head_end, length) = loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..i]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (i + 4, length);
        }
    };
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    serde_json::from_slice(&data[head_end..]).ok()
}

/// The real Prometheus and Alertmanager of scripts/prometheus.sh, stopped on drop.
struct Monitoring {
    dir: PathBuf,
    prometheus: String,
    alertmanager: String,
}

impl Monitoring {
    fn start(target: &str, webhooks: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("homeplane-prometheus-{}", suffix()));
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/prometheus.sh"))
            .arg("up")
            .arg(&dir)
            .env("PROMETHEUS_TARGETS", target)
            .env("PROMETHEUS_INTERVAL", "1s")
            // Every `for:` cut to 2 s so that the test takes minutes, not hours.
            .env("PROMETHEUS_RULES_FOR", "2s")
            .env("ALERTMANAGER_WEBHOOKS", webhooks.join(","))
            .env("ALERTMANAGER_GROUP_WAIT", "1s")
            .env("ALERTMANAGER_GROUP_INTERVAL", "2s")
            .env(
                "HOMEPLANE_PROMETHEUS_OWNER_PID",
                std::process::id().to_string(),
            )
            .status()
            .unwrap();
        assert!(status.success(), "scripts/prometheus.sh up failed");
        let env = std::fs::read_to_string(dir.join("env")).unwrap();
        let value = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap()
                .to_string()
        };
        Self {
            prometheus: value("PROMETHEUS_URL"),
            alertmanager: value("ALERTMANAGER_URL"),
            dir,
        }
    }

    fn get(url: &str, query: &[(&str, &str)]) -> Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-G", url]);
        for (k, v) in query {
            cmd.args(["--data-urlencode", &format!("{k}={v}")]);
        }
        let out = cmd.output().unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{url}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The active alerts in Alertmanager's API.
    fn alerts(&self) -> Vec<Value> {
        Self::get(
            &format!("{}/api/v2/alerts", self.alertmanager),
            &[("active", "true")],
        )
        .as_array()
        .cloned()
        .unwrap_or_default()
    }

    fn active(&self, alertname: &str, key: &str, value: &str) -> Option<Value> {
        self.alerts()
            .into_iter()
            .find(|a| a["labels"]["alertname"] == alertname && a["labels"][key] == value)
    }

    fn query(&self, expr: &str) -> Value {
        Self::get(
            &format!("{}/api/v1/query", self.prometheus),
            &[("query", expr)],
        )
    }
}

impl Drop for Monitoring {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/prometheus.sh"))
            .arg("down")
            .arg(&self.dir)
            .status();
    }
}

fn apply(cluster: &Cluster, ns: &str, yaml: &str) {
    let (ok, text) = cluster.apply(ns, yaml).unwrap();
    assert!(ok, "{text}");
}

fn create_backup(cluster: &Cluster, ns: &str, name: &str) {
    let yaml = format!(
        "apiVersion: homeplane.dev/v1alpha1\nkind: Backup\nmetadata: {{name: {name}}}\nspec: {{policy: postgres}}\n"
    );
    let out = cluster
        .kubectl_stdin(&["create", "-n", ns, "-f", "-"], Some(&yaml))
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(90),
        &format!("Backup {name} Succeeded"),
        || {
            let phase = cluster.kubectl_ok(&[
                "get",
                "backup",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.status.phase}",
            ])?;
            if phase == "Failed" {
                panic!(
                    "Backup {name} failed: {}",
                    cluster.kubectl_ok(&["describe", "backup", name, "-n", ns])?
                );
            }
            Ok((phase == "Succeeded").then_some(()))
        },
    )
    .unwrap();
}

fn age_recipient(dir: &Path) -> String {
    let key = dir.join("age.key");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The example Workflow of manifests/homelab/alerting.yaml, pointed at the test's n8n, in `ns`,
/// with a webhook path of its own (n8n's webhook paths are global).
fn example_workflow(n8n: &N8n, path: &str) -> String {
    read("manifests/homelab/alerting.yaml")
        .replace("  namespace: automation\n", "")
        .replace("http://n8n.automation:5678", &n8n.url)
        .replace("homeplane-alerts", path)
}

#[test]
fn alerts_fire_in_alertmanager_reach_n8n_and_resolve_when_fixed() {
    let started = Instant::now();
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let s3 = S3Server::shared();
    let n8n = N8n::shared();
    let ns = TestNamespace::new(cluster, "alerts").unwrap();
    let nsn = ns.name.as_str();
    let dir = std::env::temp_dir().join(format!("hp-alerts-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap();

    // The world: secrets, a bucket, a database to back up, a Database that cannot reach its
    // server (it stalls), a registry with a critical property, and the example Workflow.
    let secret = |name: &str, pairs: &[(&str, &str)]| {
        let mut args = vec![
            "create".to_string(),
            "secret".into(),
            "generic".into(),
            name.into(),
            "-n".into(),
            nsn.into(),
        ];
        args.extend(pairs.iter().map(|(k, v)| format!("--from-literal={k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster.kubectl_ok(&args).unwrap();
    };
    secret(
        "pg-admin",
        &[("username", &pg.user), ("password", &pg.password)],
    );
    secret(
        "r2",
        &[
            ("accessKeyId", &s3.access_key_id),
            ("secretAccessKey", &s3.secret_access_key),
        ],
    );
    secret("n8n-api", &[("apiKey", &n8n.api_key)]);
    let bucket = S3Server::bucket_name("alerts");
    let out = Command::new(BINARY)
        .args(["backup", "ensure-bucket"])
        .env("AWS_ENDPOINT_URL", &s3.endpoint)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key)
        .env("HOMEPLANE_BACKUP_BUCKET", &bucket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = format!("hp_alerts_{}", suffix());
    pg.admin("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();
    pg.admin(
        &db,
        "CREATE TABLE notes (id int PRIMARY KEY); INSERT INTO notes VALUES (1)",
    )
    .unwrap();
    let (host, port) = (&pg.host, pg.port);
    // Stalled: an extension the server does not have (a server that cannot be reached is
    // retried, never Stalled). Fixed by leaving the extension out.
    let stuck = |extensions: &str| {
        format!(
            "apiVersion: homeplane.dev/v1alpha1\nkind: Database\nmetadata: {{name: stuck}}\nspec:\n  databaseName: {db}\n  extensions: [{extensions}]\n  server: {{external: {{host: \"{host}\", port: {port}, adminSecret: pg-admin, sslMode: disable}}}}\n"
        )
    };
    let recipient = age_recipient(&dir);
    let path = format!("homeplane-alerts-{}", suffix());
    let world = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: homelab}}
spec:
  databaseName: {db}
  server: {{external: {{host: "{host}", port: {port}, adminSecret: pg-admin, sslMode: disable}}}}
---
apiVersion: homeplane.dev/v1alpha1
kind: BackupPolicy
metadata: {{name: postgres}}
spec:
  # Every minute, suspended: the backups the test takes by hand are all there are, so the
  # last one is too old 90 s after it (one and a half periods).
  schedule: "* * * * *"
  suspend: true
  source: {{database: {{name: homelab}}}}
  destination: {{endpoint: "{endpoint}", bucket: {bucket}, prefix: alerts, credentialsSecret: r2, partSizeMiB: 5}}
  recipients: ["{recipient}"]
---
apiVersion: v1
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
    gracePeriod: 3s
    observe: {{kubernetes: {{apiVersion: v1, kind: ConfigMap, namespace: {nsn}, name: caddy, field: /data/tls}}}}
---
{stuck}---
{workflow}"#,
        endpoint = s3.endpoint,
        stuck = stuck("{name: homeplane_no_such_extension}"),
        workflow = example_workflow(n8n, &path),
    );
    apply(cluster, nsn, &world);
    let operator =
        Operator::start(BINARY, cluster, nsn, &format!("alerts-{}", suffix()), &[]).unwrap();
    let receiver = Receiver::start();
    let n8n_webhook = format!("{}/webhook/{path}", n8n.url);
    let monitoring = Monitoring::start(&operator.http, &[&receiver.url, &n8n_webhook]);
    let wait = |what: &str, timeout: u64, check: &dyn Fn() -> bool| {
        eventually(Duration::from_secs(timeout), what, || {
            Ok(check().then_some(()))
        })
        .unwrap_or_else(|e| {
            let notified: Vec<String> = receiver
                .bodies
                .lock()
                .unwrap()
                .iter()
                .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
                .map(|a| {
                    format!(
                        "{} {} {}",
                        a["status"], a["labels"]["alertname"], a["labels"]
                    )
                })
                .collect();
            panic!(
                "{e}\nactive alerts: {:#}\nnotified: {notified:#?}\noperator log:\n{}",
                Value::Array(monitoring.alerts()),
                operator.log()
            )
        });
    };

    // A backup now; the workflow is in n8n and active before anything fires.
    cluster
        .kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            "--timeout=90s",
            "database/homelab",
            "-n",
            nsn,
        ])
        .unwrap();
    create_backup(cluster, nsn, "first");
    let backed_up = Instant::now();
    cluster
        .kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            "--timeout=90s",
            "workflow/alert-notifications",
            "-n",
            nsn,
        ])
        .unwrap();

    // The world goes wrong: TLS is switched off (critical, 3 s of grace), and the Database
    // that cannot reach its server stalls by itself.
    cluster
        .kubectl_ok(&[
            "patch",
            "configmap",
            "caddy",
            "-n",
            nsn,
            "-p",
            r#"{"data":{"tls":"off"}}"#,
        ])
        .unwrap();
    wait("HomeplaneObjectStalled in Alertmanager", 120, &|| {
        monitoring
            .active("HomeplaneObjectStalled", "name", "stuck")
            .is_some()
    });
    wait("HomeplaneCriticalDrift in Alertmanager", 60, &|| {
        monitoring
            .active("HomeplaneCriticalDrift", "property", "edge.caddy.tls")
            .is_some()
    });
    let stalled = monitoring
        .active("HomeplaneObjectStalled", "name", "stuck")
        .unwrap();
    assert_eq!(stalled["labels"]["kind"], "Database");
    assert_eq!(stalled["labels"]["namespace"], nsn);
    assert_eq!(stalled["labels"]["severity"], "critical");
    assert_eq!(
        stalled["annotations"]["summary"],
        format!(
            "Database {nsn}/stuck is Stalled: homeplane stopped retrying until its spec changes. kubectl describe database stuck -n {nsn}"
        )
    );
    let drift = monitoring
        .active("HomeplaneCriticalDrift", "property", "edge.caddy.tls")
        .unwrap();
    assert_eq!(drift["labels"]["registry"], "homelab");
    assert!(
        drift["annotations"]["summary"]
            .as_str()
            .unwrap()
            .ends_with(&format!("kubectl get drift -n {nsn} -o wide")),
        "{drift}"
    );

    // Someone is told before anything is fixed (an alert that fires and resolves within
    // Alertmanager's group wait is never notified at all).
    wait("the firing notifications", 30, &|| {
        receiver.got("firing", "HomeplaneObjectStalled", "name", "stuck")
            && receiver.got(
                "firing",
                "HomeplaneCriticalDrift",
                "property",
                "edge.caddy.tls",
            )
    });

    // Fixed: no such extension asked for, and TLS back on.
    apply(cluster, nsn, &stuck(""));
    cluster
        .kubectl_ok(&[
            "patch",
            "configmap",
            "caddy",
            "-n",
            nsn,
            "-p",
            r#"{"data":{"tls":"on"}}"#,
        ])
        .unwrap();
    wait("HomeplaneObjectStalled resolved", 90, &|| {
        monitoring
            .active("HomeplaneObjectStalled", "name", "stuck")
            .is_none()
            && receiver.got("resolved", "HomeplaneObjectStalled", "name", "stuck")
    });
    wait("HomeplaneCriticalDrift resolved", 60, &|| {
        monitoring
            .active("HomeplaneCriticalDrift", "property", "edge.caddy.tls")
            .is_none()
            && receiver.got(
                "resolved",
                "HomeplaneCriticalDrift",
                "property",
                "edge.caddy.tls",
            )
    });

    // No backup since the first: too old once one and a half minutes have passed.
    wait("HomeplaneBackupTooOld in Alertmanager", 150, &|| {
        monitoring
            .active("HomeplaneBackupTooOld", "policy", "postgres")
            .is_some()
    });
    assert!(
        // The age counts from the backup's completion, a moment before the test saw it.
        backed_up.elapsed() >= Duration::from_secs(85),
        "fired {:?} after the backup",
        backed_up.elapsed()
    );
    let old = monitoring
        .active("HomeplaneBackupTooOld", "policy", "postgres")
        .unwrap();
    assert_eq!(old["labels"]["namespace"], nsn);
    assert!(
        old["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("kubectl describe backuppolicy postgres -n {nsn}")),
        "{old}"
    );
    wait("the firing notification", 30, &|| {
        receiver.got("firing", "HomeplaneBackupTooOld", "policy", "postgres")
    });
    // Fixed: a new backup.
    create_backup(cluster, nsn, "second");
    wait("HomeplaneBackupTooOld resolved", 60, &|| {
        monitoring
            .active("HomeplaneBackupTooOld", "policy", "postgres")
            .is_none()
            && receiver.got("resolved", "HomeplaneBackupTooOld", "policy", "postgres")
    });
    for (alertname, key, value) in [
        ("HomeplaneObjectStalled", "name", "stuck"),
        ("HomeplaneCriticalDrift", "property", "edge.caddy.tls"),
        ("HomeplaneBackupTooOld", "policy", "postgres"),
    ] {
        assert!(
            receiver.got("firing", alertname, key, value),
            "no firing {alertname}"
        );
    }

    // n8n received the same notifications and formatted a message of each.
    let workflow_id = cluster
        .kubectl_ok(&[
            "get",
            "workflow",
            "alert-notifications",
            "-n",
            nsn,
            "-o",
            "jsonpath={.status.n8nId}",
        ])
        .unwrap();
    let texts = || -> Vec<String> {
        let (code, body) = n8n
            .api(
                "GET",
                &format!("/executions?workflowId={workflow_id}&includeData=true&limit=100"),
                None,
            )
            .unwrap();
        assert_eq!(code, 200, "{body}");
        body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                e["data"]["resultData"]["runData"]["Format message"][0]["data"]["main"][0][0]["json"]["text"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    };
    let expected = [
        format!("[FIRING:1] HomeplaneObjectStalled in {nsn}"),
        format!("[RESOLVED] HomeplaneObjectStalled in {nsn}"),
        format!("[FIRING:1] HomeplaneCriticalDrift in {nsn}"),
        format!("[RESOLVED] HomeplaneCriticalDrift in {nsn}"),
        format!("[FIRING:1] HomeplaneBackupTooOld in {nsn}"),
        format!("[RESOLVED] HomeplaneBackupTooOld in {nsn}"),
    ];
    eventually(Duration::from_secs(30), "n8n's formatted messages", || {
        let texts = texts();
        Ok(expected
            .iter()
            .all(|title| texts.iter().any(|t| t.starts_with(title.as_str())))
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", texts()));
    let stalled_message = texts()
        .into_iter()
        .find(|t| t.starts_with(&format!("[FIRING:1] HomeplaneObjectStalled in {nsn}")))
        .unwrap();
    assert!(
        stalled_message.contains(&format!("FIRING (critical) Database {nsn}/stuck is Stalled"))
            && stalled_message.contains("runbook: https://github.com/homeplane/homeplane/blob/main/docs/alerts.md#homeplaneobjectstalled"),
        "{stalled_message}"
    );

    // No secret and no unbounded label in any metric or alert.
    let (_, metrics) = operator.get("/metrics").unwrap();
    let notifications = serde_json::to_string(&*receiver.bodies.lock().unwrap()).unwrap();
    for (what, text) in [("/metrics", &metrics), ("notifications", &notifications)] {
        for secret in [&pg.password, &s3.secret_access_key, &n8n.api_key] {
            assert!(!text.contains(secret.as_str()), "a secret in {what}");
        }
    }
    check_labels(&metrics);

    // Every series the rules and the dashboard read is one the operator exports, and every
    // dashboard query runs in the real Prometheus.
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let dashboard: Value =
        serde_json::from_str(&read("charts/homeplane/dashboards/homeplane.json")).unwrap();
    let queries = dashboard_queries(&dashboard);
    let rules_text = read("alerts/homeplane.rules.yaml");
    let metrics_source = read("operator/src/metrics.rs") + &read("operator/src/metrics/cached.rs");
    for text in queries
        .iter()
        .map(String::as_str)
        .chain([rules_text.as_str()])
    {
        for part in text.split("homeplane_").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name.is_empty() {
                continue; // prose: "homeplane_* series"
            }
            let name = format!("homeplane_{name}");
            let family = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            // A family no object has fed yet prints nothing; its registration names it.
            let registered = metrics_source
                .contains(&format!("\"{}\"", family.trim_start_matches("homeplane_")));
            assert!(
                exported.contains(family) || registered,
                "{name} is not exported; the operator exports {exported:?}"
            );
        }
    }
    for expr in &queries {
        let answer = monitoring.query(expr);
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
    }
    let memory = monitoring.query("homeplane_process_resident_memory_bytes");
    assert_eq!(
        memory["data"]["result"].as_array().map(Vec::len),
        Some(1),
        "{memory}"
    );
    eprintln!("alerting end to end took {:?}", started.elapsed());
}

/// Every homeplane_* sample's label names are from a fixed list, its reason and category
/// values are single words, and object names fit Kubernetes' limits.
fn check_labels(metrics: &str) {
    let allowed: BTreeSet<&str> = [
        "controller",
        "category",
        "severity",
        "outcome",
        "namespace",
        "policy",
        "reason",
        "kind",
        "name",
        "registry",
        "property",
        "agent",
        "le",
    ]
    .into();
    for line in metrics.lines().filter(|l| l.starts_with("homeplane_")) {
        let Some((_, rest)) = line.split_once('{') else {
            continue;
        };
        let labels = rest.rsplit_once('}').unwrap().0;
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once("=\"").unwrap();
            let value = value.trim_end_matches('"');
            assert!(allowed.contains(key), "label {key} in {line}");
            if key == "reason" || key == "category" {
                assert!(
                    !value.is_empty()
                        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{key}=\"{value}\" is not a word: {line}"
                );
            }
            assert!(value.len() <= 253, "{line}");
        }
    }
}
