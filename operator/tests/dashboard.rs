//! The status dashboard over HTTP against the real control plane, PostgreSQL, S3 server and
//! n8n: every page with the demo's objects in their real states, a Database's matrix against
//! what PostgreSQL lets each role do, a NodeClass's bars against its status, no Secret value
//! and no markup from the cluster in any response, who may look (forward auth, token), actions
//! (refused when off, forged forms refused, recorded as Events naming who asked), and
//! `kubectl homeplane status` / `trace` through kubectl's real plugin mechanism.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod dashboard_support;

use std::collections::{BTreeSet, VecDeque};

use dashboard_support::{BINARY, Dash, Demo, Part, ROLES, WAIT, curl};
use homeplane_testkit::{Cluster, Postgres, S3Server, TestNamespace, eventually, suffix};

/// The demo's objects, and whether each page shows them with the state kubectl shows.
#[test]
fn every_page_shows_the_demo_objects_in_their_real_states() {
    let demo = Demo::apply("dash-pages");
    let ns = demo.ns.name.clone();
    let s = demo.s.clone();
    let dash = Dash::start(
        demo.cluster,
        &ns,
        "dash-pages",
        &["--history-database-url", &demo.history_url],
    );
    demo.wait_ready("database", "homelab", "True");
    demo.wait_ready("workflow", "email-classifier", "True");
    demo.take_backup();

    // Every object's page shows its Ready condition as kubectl reads it.
    let objects = [
        ("NodeClass", "nodeclass", format!("pi-{s}")),
        ("NodeClass", "nodeclass", format!("gpu-{s}")),
        ("Database", "database", "homelab".to_string()),
        ("MemoryServer", "memoryserver", "memory".to_string()),
        ("Agent", "agent", "auditor".to_string()),
        ("Agent", "agent", "director".to_string()),
        (
            "AgentRun",
            "agentrun",
            "audit-automation-limits".to_string(),
        ),
        ("VoicePipeline", "voicepipeline", "assistant".to_string()),
        ("BackupPolicy", "backuppolicy", "postgres".to_string()),
        ("Backup", "backup", "demo".to_string()),
        ("Workflow", "workflow", "email-classifier".to_string()),
        ("StateRegistry", "stateregistry", "homelab".to_string()),
    ];
    for (kind, resource, name) in &objects {
        let path = if *kind == "NodeClass" {
            format!("/object/{kind}/{name}")
        } else {
            format!("/object/{kind}/{ns}/{name}")
        };
        eventually(
            WAIT,
            &format!("{path} to show the Ready condition kubectl shows"),
            || {
                let jsonpath =
                    |f: &str| format!("{{.status.conditions[?(@.type==\"Ready\")].{f}}}");
                let args = |f: &str| {
                    let mut a = vec![
                        "get".to_string(),
                        resource.to_string(),
                        name.clone(),
                        "-o".into(),
                        format!("jsonpath={}", jsonpath(f)),
                    ];
                    if *kind != "NodeClass" {
                        a.extend(["-n".to_string(), ns.clone()]);
                    }
                    a
                };
                let run = |f: &str| {
                    let a = args(f);
                    let a: Vec<&str> = a.iter().map(String::as_str).collect();
                    demo.cluster.kubectl_ok(&a).unwrap_or_default()
                };
                let (status, reason) = (run("status"), run("reason"));
                if status.is_empty() {
                    return Ok(None);
                }
                let page = dash.get(&path);
                assert_eq!(page.status, 200, "{path}: {}", page.body);
                Ok(page
                    .body
                    .contains(&format!("<td>Ready</td><td>{status}</td><td>{reason}</td>"))
                    .then_some(()))
            },
        )
        .unwrap();
    }

    // The landing page: tiles for every kind, the run in progress.
    let landing = dash.get("/");
    for kind in [
        "NodeClass",
        "Database",
        "BackupPolicy",
        "Backup",
        "Workflow",
        "Agent",
        "AgentRun",
        "VoicePipeline",
        "MemoryServer",
        "StateRegistry",
    ] {
        assert!(
            landing.body.contains(&format!("<strong>{kind}</strong>")),
            "no {kind} tile:\n{}",
            landing.body
        );
    }
    assert!(landing.body.contains("AgentRun"), "{}", landing.body);
    assert!(
        landing.body.contains("<strong>leader</strong>"),
        "{}",
        landing.body
    );

    // Drift appears on the drift page and the landing page, with its history.
    demo.set_flag("changed");
    let drift = dash.wait_for("/drift", "dash.flag.mode");
    assert!(drift.contains("<code>changed</code>"), "{drift}");
    assert!(drift.contains("pill critical"), "{drift}");
    let landing = dash.wait_for("/", "dash.flag.mode");
    assert!(landing.contains("Drifted"), "{landing}");
    let history = dash.wait_for(
        &format!("/drift/history?property=dash.flag.mode&namespace={ns}"),
        "Drifted</span>",
    );
    assert!(history.contains("<svg class=\"timeline\""), "{history}");
    demo.set_flag("steady");
    dash.wait_for("/drift", "Nothing has drifted");
    dash.wait_for("/activity", "back in its desired state");

    // Capacity: each class's numbers are its status's.
    for (class, resources) in [
        (format!("pi-{s}"), vec!["cpu", "memory"]),
        (format!("gpu-{s}"), vec!["cpu", "memory", "gpu"]),
    ] {
        eventually(WAIT, &format!("the bars of {class} to match its status"), || {
            let page = dash.get("/capacity");
            let mut all = true;
            for r in &resources {
                let get = |f: &str| {
                    demo.cluster
                        .kubectl_ok(&["get", "nodeclass", &class, "-o", &format!("jsonpath={{.status.capacity.{r}.{f}}}")])
                        .unwrap_or_default()
                };
                let line = format!(
                    "allocatable <strong>{}</strong> · reserved {} · requested <strong>{}</strong> · limits {} · free <strong>{}</strong>",
                    get("allocatable"),
                    get("reserved"),
                    get("requested"),
                    get("limits"),
                    get("free")
                );
                all &= !get("allocatable").is_empty() && page.body.contains(&line);
            }
            Ok(all.then_some(()))
        })
        .unwrap();
    }
    let capacity = dash.get("/capacity");
    assert!(
        capacity.body.contains("<svg class=\"bar\""),
        "{}",
        capacity.body
    );
    assert!(
        capacity.body.contains("amd.com&#x2F;gpu"),
        "{}",
        capacity.body
    );

    // Backups: the run, and the words for what is missing.
    let backups = dash.get("/backups");
    assert!(backups.body.contains("demo</a>"), "{}", backups.body);
    assert!(backups.body.contains("never verified"), "{}", backups.body);
    assert!(backups.body.contains("Succeeded"), "{}", backups.body);
    // Workflows: n8n's id and a link into n8n.
    let id = demo.get("workflow", "email-classifier", "{.status.n8nId}");
    let workflows = dash.get("/workflows");
    assert!(
        unescaped(&workflows.body).contains(&format!("/workflow/{id}\"")),
        "{}",
        workflows.body
    );
    // AI: what each agent's RBAC allows, the run, the voice chain and the memory server.
    let ai = dash.get("/ai");
    assert!(
        unescaped(&ai.body).contains(&format!(
            "get/list/watch configmaps, pods, apps/deployments in {ns}"
        )),
        "{}",
        ai.body
    );
    assert!(ai.body.contains("in every namespace"), "{}", ai.body);
    assert!(ai.body.contains("audit-automation-limits"), "{}", ai.body);
    for stage in ["wake", "stt", "router", "llm", "tts", "sonos"] {
        assert!(
            ai.body.contains(&format!("<strong>{stage}</strong>")),
            "{stage}: {}",
            ai.body
        );
    }
    assert!(ai.body.contains("MemoryServer"), "{}", ai.body);
    // Every page answers, fast enough to say so in a header.
    for path in [
        "/",
        "/drift",
        "/capacity",
        "/databases",
        "/backups",
        "/workflows",
        "/ai",
        "/activity",
        "/kind/Agent",
    ] {
        let page = dash.get(path);
        assert_eq!(page.status, 200, "{path}");
        assert!(
            page.header("server-timing")
                .is_some_and(|t| t.starts_with("render;dur=")),
            "{path}: {}",
            page.headers
        );
    }
}

/// `html` with the slashes the templates escape (`&#x2F;`) written as slashes.
fn unescaped(html: &str) -> String {
    html.replace("&#x2F;", "/")
}

/// The cells of one role's row of the matrix: (declared, enforced) per tier.
fn matrix_row(page: &str, role: &str) -> Vec<(String, String)> {
    let start = page
        .find(&format!("<th scope=\"row\">{role}</th>"))
        .unwrap_or_else(|| panic!("no row for {role}:\n{page}"));
    let row = &page[start..];
    let row = &row[..row.find("</tr>").unwrap()];
    row.split("data-declared=\"")
        .skip(1)
        .map(|cell| {
            let declared = cell.split('"').next().unwrap().to_string();
            let enforced = cell
                .split("data-enforced=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string();
            (declared, enforced)
        })
        .collect()
}

/// What PostgreSQL lets `role` do with `table`: `write`, `read` or `none`.
fn enforced(
    pg: &Postgres,
    db: &str,
    role: &str,
    password: &str,
    table: &str,
    insert: &str,
) -> &'static str {
    let (writes, out) = pg
        .psql_as(
            role,
            password,
            db,
            &format!("BEGIN; INSERT INTO {table} {insert}; ROLLBACK;"),
        )
        .unwrap();
    if writes {
        return "write";
    }
    assert!(
        out.contains("permission denied"),
        "{role} on {table}: {out}"
    );
    let (reads, out) = pg
        .psql_as(role, password, db, &format!("SELECT count(*) FROM {table}"))
        .unwrap();
    if reads {
        return "read";
    }
    assert!(
        out.contains("permission denied"),
        "{role} on {table}: {out}"
    );
    "none"
}

/// The role × tier matrix is what PostgreSQL enforces: each role tries to read and write a
/// table of each tier; a hand-made grant shows at once and, revoked by homeplane, is marked.
#[test]
fn a_databases_matrix_is_what_postgresql_enforces() {
    let demo = Demo::apply_parts("dash-matrix", &[Part::Database]);
    let ns = demo.ns.name.clone();
    let s = demo.s.clone();
    let dash = Dash::start(demo.cluster, &ns, "dash-matrix", &[]);
    demo.wait_ready("database", "homelab", "True");
    let pg = Postgres::shared();
    let tables = [
        ("clinical.records", "(kind, body) VALUES ('x', 'y')"),
        (
            "messages.messages",
            "(platform, sent_at, sender, body) VALUES ('email', now(), 's', 'b')",
        ),
        (
            "public_data.weather",
            "(observed_at, celsius) VALUES (now(), 1)",
        ),
    ];
    let path = format!("/databases/{ns}/homelab");
    let check = |expect_differs: Option<&str>| {
        let page = dash.get(&path);
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(
            !page.body.contains("class=\"error critical\""),
            "{}",
            page.body
        );
        for role in ROLES {
            let role = format!("{role}_{s}");
            let password = demo
                .cluster
                .secret_value(
                    &ns,
                    &format!("homelab-{}", role.replace('_', "-")),
                    "password",
                )
                .unwrap();
            let row = matrix_row(&page.body, &role);
            assert_eq!(row.len(), 4, "{role}: {row:?}");
            for (i, (table, insert)) in tables.iter().enumerate() {
                let real = enforced(pg, &demo.dbname, &role, &password, table, insert);
                assert_eq!(
                    row[i].1, real,
                    "{role} on {table}: page says {:?}, PostgreSQL {real}",
                    row[i]
                );
                if expect_differs != Some(role.as_str()) || i != 0 {
                    assert_eq!(row[i].0, real, "{role} on {table} declared {}", row[i].0);
                }
            }
        }
        page.body
    };
    let page = check(None);
    assert!(
        page.contains("<code>homelab-app-"),
        "role Secrets are named: {page}"
    );
    assert!(
        page.contains("0005"),
        "migrations with their versions: {page}"
    );
    // A grant made by hand: readonly may read the sacred tier now, and the page says so.
    let readonly = format!("readonly_{s}");
    pg.admin(&demo.dbname, &format!("GRANT USAGE ON SCHEMA clinical TO {readonly}; GRANT SELECT ON clinical.records TO {readonly}; GRANT USAGE ON SCHEMA therapy TO {readonly}; GRANT SELECT ON therapy.notes TO {readonly};"))
        .unwrap();
    eventually(WAIT, "the hand-made grant to show", || {
        let page = dash.get(&path);
        let row = matrix_row(&page.body, &readonly);
        Ok((row[0] == ("none".to_string(), "read".to_string())).then_some(()))
    })
    .unwrap();
    check(Some(&readonly));
    // homeplane takes it back at its next pass (asked for now), and the page marks it.
    demo.cluster
        .kubectl_ok(&[
            "annotate",
            "database",
            "homelab",
            "-n",
            &ns,
            "--overwrite",
            &format!("homeplane.dev/reapply-requested={}", suffix()),
        ])
        .unwrap();
    let page = dash.wait_for(&path, "Hand-made grants homeplane revoked");
    assert!(
        page.contains(&format!("REVOKE SELECT ON TABLE &quot;clinical&quot;.&quot;records&quot; FROM &quot;{readonly}&quot;")),
        "{page}"
    );
    eventually(WAIT, "the matrix to follow the revoke", || {
        let page = dash.get(&path);
        let row = matrix_row(&page.body, &readonly);
        Ok((row[0] == ("none".to_string(), "none".to_string())).then_some(page.body))
    })
    .map(|page| assert!(page.contains("hand-made grants revoked"), "{page}"))
    .unwrap();
    check(None);
}

/// Every link of every page, followed from the landing page.
fn crawl(dash: &Dash, start: &[&str]) -> Vec<(String, String)> {
    let mut seen = BTreeSet::new();
    let mut todo: VecDeque<String> = start.iter().map(|s| s.to_string()).collect();
    let mut pages = Vec::new();
    while let Some(path) = todo.pop_front() {
        if !seen.insert(path.clone()) || seen.len() > 200 {
            continue;
        }
        let page = dash.get(&path);
        for part in page.body.split("href=\"").skip(1) {
            let link = part
                .split('"')
                .next()
                .unwrap_or_default()
                .replace("&#x2F;", "/")
                .replace("&amp;", "&");
            if link.starts_with('/') && !link.starts_with("//") && !link.starts_with("/static/") {
                todo.push_back(link);
            }
        }
        pages.push((path, format!("{}\n{}", page.headers, page.body)));
    }
    pages
}

/// No Secret value anywhere, and every value from the cluster shown as text.
#[test]
fn no_secret_value_is_shown_and_markup_from_the_cluster_is_text() {
    let demo = Demo::apply_parts(
        "dash-secrets",
        &[Part::Database, Part::Workflow, Part::Backup],
    );
    let ns = demo.ns.name.clone();
    let s = demo.s.clone();
    let known = format!("known-{s}-value");
    let token = format!("token-{s}-value");
    for (name, key, value) in [
        ("known", "apiKey", known.as_str()),
        ("dash-token", "token", token.as_str()),
    ] {
        demo.cluster
            .kubectl_ok(&[
                "create",
                "secret",
                "generic",
                name,
                "-n",
                &ns,
                &format!("--from-literal={key}={value}"),
            ])
            .unwrap();
    }
    // Objects whose annotations, messages and values hold markup; one uses the known Secret.
    let markup = r#"apiVersion: homeplane.dev/v1alpha1
kind: Workflow
metadata:
  name: leaky
  annotations: {note: "<script>alert('annotation')</script>"}
spec:
  n8n: {url: "http://127.0.0.1:1/<script>alert('message')</script>", apiKeySecret: {name: known, key: apiKey}}
  definition: {name: "<b>leaky</b>", nodes: [], connections: {}}
---
apiVersion: homeplane.dev/v1alpha1
kind: Drift
metadata: {name: manual.markup}
spec: {registry: homelab, property: "x.<b>bold</b>", desired: "<i>1</i>", observed: "<script>alert('observed')</script>", severity: critical, since: "2026-11-30T10:00:00Z", message: "<img src=x onerror=alert(1)>"}
"#;
    let (ok, out) = demo.cluster.apply(&ns, markup).unwrap();
    assert!(ok, "{out}");
    demo.cluster
        .kubectl_ok(&[
            "annotate",
            "database",
            "homelab",
            "-n",
            &ns,
            "note=<script>alert('db')</script>",
        ])
        .unwrap();
    let dash = Dash::start(
        demo.cluster,
        &ns,
        "dash-secrets",
        &["--dashboard-token-secret", "dash-token"],
    );
    demo.wait_ready("database", "homelab", "True");
    demo.wait_ready("workflow", "leaky", "False");
    dash.wait_for(&format!("/object/Workflow/{ns}/leaky"), "N8nUnreachable");

    let pg = Postgres::shared();
    let s3 = S3Server::shared();
    let mut secrets = vec![
        known.clone(),
        token.clone(),
        pg.password.clone(),
        s3.secret_access_key.clone(),
        homeplane_testkit::N8n::shared().api_key.clone(),
    ];
    for role in ROLES {
        let secret = format!("homelab-{}-{s}", role.replace('_', "-"));
        secrets.push(demo.cluster.secret_value(&ns, &secret, "password").unwrap());
        secrets.push(demo.cluster.secret_value(&ns, &secret, "uri").unwrap());
    }
    let mut pages = crawl(
        &dash,
        &[
            "/",
            &format!("/object/Workflow/{ns}/leaky"),
            &format!("/object/Drift/{ns}/manual.markup"),
            &format!("/object/Database/{ns}/homelab"),
            &format!("/databases/{ns}/homelab"),
            "/drift?q=%3Cscript%3E",
            "/kind/Workflow?q=%3Cscript%3E",
            "/nowhere/%3Cscript%3E",
        ],
    );
    for page in ["/", "/drift", &format!("/object/Workflow/{ns}/leaky")] {
        let events = curl(&[
            "--max-time",
            "3",
            &format!("{}/events?page={}", dash.url, page.replace('/', "%2F")),
        ]);
        pages.push((format!("events {page}"), events.body));
    }
    assert!(pages.len() > 20, "only {} pages were reached", pages.len());
    for (path, body) in &pages {
        for secret in &secrets {
            assert!(
                !body.contains(secret.as_str()),
                "{path} shows a Secret's value"
            );
        }
        let scripts = body.matches("<script").count();
        let ours = body.matches("<script src=\"/static/app.js?v=").count();
        assert_eq!(
            scripts, ours,
            "{path} holds markup from the cluster:\n{body}"
        );
        assert!(!body.contains("<img src=x"), "{path}:\n{body}");
        assert!(!body.contains("<b>bold</b>"), "{path}:\n{body}");
    }
    let leaky = &pages.iter().find(|(p, _)| p.ends_with("/leaky")).unwrap().1;
    assert!(
        leaky.contains("&lt;script&gt;alert(&#x27;annotation&#x27;)&lt;&#x2F;script&gt;"),
        "{leaky}"
    );
    assert!(
        leaky.contains("&lt;script&gt;alert(&#x27;message&#x27;)"),
        "{leaky}"
    );
    let drift = &pages
        .iter()
        .find(|(p, _)| p.ends_with("manual.markup"))
        .unwrap()
        .1;
    assert!(
        drift.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{drift}"
    );
    // The policy that stops what escaping would miss.
    let landing = dash.get("/");
    let csp = landing.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(
        landing.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
}

/// Who may look: the forward-auth header only from the trusted proxy, a token from
/// anywhere, 127.0.0.1 otherwise; actions refused when off and forged forms refused.
#[test]
fn only_the_trusted_proxy_names_the_user_and_actions_are_refused_when_off() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "dash-access").unwrap();
    let agent = r#"apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {name: watcher}
spec:
  tier: observer
  image: ghcr.io/homeplane/example-agent:0.1
  scope: {resources: [{resource: configmaps}]}
  budget: {cpu: "1", memory: 1Gi, maxRunSeconds: 600}
"#;
    let (ok, out) = cluster.apply(&ns.name, agent).unwrap();
    assert!(ok, "{out}");
    let dash = Dash::start(
        cluster,
        &ns.name,
        "dash-access",
        &["--dashboard-trusted-proxy", "127.0.0.2/32"],
    );
    let from = |ip: &str, extra: &[&str]| {
        let mut args = vec!["--interface", ip];
        args.extend_from_slice(extra);
        dash.get_with("/", &args)
    };
    // Untrusted address with the header: refused, whoever it claims to be.
    let forged = from("127.0.0.1", &["-H", "Remote-User: mallory"]);
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("trusted proxy"), "{}", forged.body);
    let forged = from("127.0.0.3", &["-H", "Remote-User: mallory"]);
    assert_eq!(forged.status, 403, "{}", forged.body);
    // The trusted proxy: let in as the user it names.
    let alice = from("127.0.0.2", &["-H", "Remote-User: alice"]);
    assert_eq!(alice.status, 200, "{}", alice.body);
    assert!(alice.body.contains("you are alice"), "{}", alice.body);
    // The proxy without a user: refused (forward auth not set up).
    assert_eq!(from("127.0.0.2", &[]).status, 403);
    // Another address without a token configured: refused; 127.0.0.1 is let in.
    assert_eq!(from("127.0.0.3", &[]).status, 403);
    assert_eq!(from("127.0.0.1", &[]).status, 200);
    // Actions are off: a well-formed form is refused and nothing changes.
    let csrf = alice
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("hp_csrf="))
        .unwrap();
    let token = csrf.trim_start_matches("hp_csrf=").to_string();
    let post = dash.get_with(
        "/actions/reconcile",
        &[
            "--interface",
            "127.0.0.2",
            "-H",
            "Remote-User: alice",
            "-H",
            &format!("Cookie: {csrf}"),
            "--data-urlencode",
            &format!("csrf={token}"),
            "--data-urlencode",
            "kind=Agent",
            "--data-urlencode",
            &format!("namespace={}", ns.name),
            "--data-urlencode",
            "name=watcher",
        ],
    );
    assert_eq!(post.status, 403, "{}", post.body);
    assert!(post.body.contains("--dashboard-actions"), "{}", post.body);
    let annotations = cluster
        .kubectl_ok(&[
            "get",
            "agent",
            "watcher",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.metadata.annotations}",
        ])
        .unwrap();
    assert!(!annotations.contains("reapply-requested"), "{annotations}");
    drop(dash);

    // A token from a Secret, and actions on.
    let value = format!("tok-{}", suffix());
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "dash-token",
            "-n",
            &ns.name,
            &format!("--from-literal=token={value}"),
        ])
        .unwrap();
    let dash = Dash::start(
        cluster,
        &ns.name,
        "dash-access-2",
        &[
            "--dashboard-token-secret",
            "dash-token",
            "--dashboard-actions",
        ],
    );
    let far = |extra: &[&str]| {
        let mut args = vec!["--interface", "127.0.0.3"];
        args.extend_from_slice(extra);
        dash.get_with("/", &args)
    };
    eventually(WAIT, "the token to be read", || {
        Ok((far(&["-H", &format!("Authorization: Bearer {value}")]).status == 200).then_some(()))
    })
    .unwrap();
    assert_eq!(far(&[]).status, 401);
    assert_eq!(far(&["-H", "Accept: text/html"]).status, 303);
    assert_eq!(far(&["-H", "Authorization: Bearer wrong"]).status, 403);
    // Signing in keeps the token's hash in a cookie, never the token.
    let login = dash.get_with(
        "/login",
        &[
            "--interface",
            "127.0.0.3",
            "--data-urlencode",
            &format!("token={value}"),
        ],
    );
    assert_eq!(login.status, 303, "{}", login.body);
    let cookie = login
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("hp_token="))
        .unwrap();
    assert!(!cookie.contains(&value));
    let page = far(&["-H", &format!("Cookie: {cookie}")]);
    assert_eq!(page.status, 200);
    let csrf = page
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("hp_csrf="))
        .unwrap();
    let token = csrf.trim_start_matches("hp_csrf=").to_string();
    let form = |csrf_field: &str, extra: &[&str]| {
        let mut args = vec![
            "--interface".to_string(),
            "127.0.0.3".into(),
            "-H".into(),
            format!("Cookie: {cookie}; {csrf}"),
            "--data-urlencode".into(),
            format!("csrf={csrf_field}"),
            "--data-urlencode".into(),
            "kind=Agent".into(),
            "--data-urlencode".into(),
            format!("namespace={}", ns.name),
            "--data-urlencode".into(),
            "name=watcher".into(),
            "--data-urlencode".into(),
            format!("back=/object/Agent/{}/watcher", ns.name),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dash.get_with("/actions/reconcile", &args)
    };
    // Forged: no matching token, or sent from another site.
    assert_eq!(form("0123456789abcdef0123456789abcdef", &[]).status, 403);
    assert_eq!(
        form(&token, &["-H", "Origin: http://evil.example"]).status,
        403
    );
    assert_eq!(
        form(&token, &["-H", "Sec-Fetch-Site: cross-site"]).status,
        403
    );
    // The real form: done, and recorded as an Event naming who asked.
    let done = form(&token, &["-H", &format!("Origin: {}", dash.url)]);
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(
        done.header("location").as_deref(),
        Some(format!("/object/Agent/{}/watcher", ns.name).as_str())
    );
    let annotations = cluster
        .kubectl_ok(&[
            "get",
            "agent",
            "watcher",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.metadata.annotations}",
        ])
        .unwrap();
    assert!(
        annotations.contains("homeplane.dev/reapply-requested"),
        "{annotations}"
    );
    let events = eventually(WAIT, "the action's Event", || {
        let out = cluster.kubectl_ok(&[
            "get",
            "events",
            "-n",
            &ns.name,
            "--field-selector",
            "reason=ReconcileRequested",
            "-o",
            "jsonpath={.items[*].message}",
        ])?;
        Ok((!out.is_empty()).then_some(out))
    })
    .unwrap();
    assert!(
        events.contains("requested from the dashboard by a holder of the dashboard token"),
        "{events}"
    );
}

/// "Back up now" and "run the restore drill now" go through the API as a new Backup and an
/// annotation; the drill runs, and both are Events naming the user the proxy named.
#[test]
fn backing_up_and_drilling_now_name_who_asked() {
    let demo = Demo::apply_parts("dash-act", &[Part::Database, Part::Backup]);
    let ns = demo.ns.name.clone();
    let pg = Postgres::shared();
    // A drill restores into a scratch Database with the owner's identity.
    let identity = std::fs::read_to_string(demo.dir.join("age.key")).unwrap();
    let scratch = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: scratch, labels: {{homeplane.dev/scratch: "true"}}}}
spec:
  databaseName: scratch_{s}
  server: {{external: {{host: "{host}", port: {port}, adminSecret: pg-admin}}}}
"#,
        s = demo.s,
        host = pg.host,
        port = pg.port
    );
    let (ok, out) = demo.cluster.apply(&ns, &scratch).unwrap();
    assert!(ok, "{out}");
    demo.cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "drill-identity",
            "-n",
            &ns,
            &format!("--from-literal=identity={identity}"),
        ])
        .unwrap();
    demo.cluster
        .kubectl_ok(&["patch", "backuppolicy", "postgres", "-n", &ns, "--type=merge", "-p",
            r#"{"spec":{"verify":{"schedule":"0 4 1 1 *","identitySecret":"drill-identity","scratchDatabase":"scratch","queries":[{"name":"tables","sql":"SELECT count(*) FROM information_schema.tables WHERE table_schema = 'clinical'","min":1}]}}}"#])
        .unwrap();
    let dash = Dash::start(
        demo.cluster,
        &ns,
        "dash-act",
        &[
            "--dashboard-actions",
            "--dashboard-trusted-proxy",
            "127.0.0.2",
        ],
    );
    demo.wait_ready("database", "homelab", "True");
    demo.wait_ready("database", "scratch", "True");
    demo.wait_ready("backuppolicy", "postgres", "True");
    let as_alice = |path: &str, extra: &[&str]| {
        let mut args = vec!["--interface", "127.0.0.2", "-H", "Remote-User: alice"];
        args.extend_from_slice(extra);
        dash.get_with(path, &args)
    };
    let page = as_alice("/backups", &[]);
    assert!(page.body.contains("Back up now"), "{}", page.body);
    assert!(
        page.body.contains("Run the restore drill now"),
        "{}",
        page.body
    );
    let csrf = page
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("hp_csrf="))
        .unwrap();
    let token = csrf.trim_start_matches("hp_csrf=").to_string();
    let act = |action: &str| {
        as_alice(
            &format!("/actions/{action}"),
            &[
                "-H",
                &format!("Cookie: {csrf}"),
                "--data-urlencode",
                &format!("csrf={token}"),
                "--data-urlencode",
                "kind=BackupPolicy",
                "--data-urlencode",
                &format!("namespace={ns}"),
                "--data-urlencode",
                "name=postgres",
                "--data-urlencode",
                "back=/backups",
            ],
        )
    };
    let done = act("backup");
    assert_eq!(done.status, 303, "{}", done.body);
    let name = eventually(WAIT, "the Backup asked for to succeed", || {
        let out = demo.cluster.kubectl_ok(&["get", "backups", "-n", &ns, "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.annotations.homeplane\\.dev/requested-by} {.status.phase}{\"\\n\"}{end}"])?;
        Ok(out.lines().find(|l| l.contains("-now-") && l.ends_with(" alice Succeeded")).map(|l| l.split(' ').next().unwrap().to_string()))
    })
    .unwrap();
    dash.wait_for("/backups", &name);
    let done = act("drill");
    assert_eq!(done.status, 303, "{}", done.body);
    eventually(WAIT, "the restore drill asked for to pass", || {
        let verified = demo.get(
            "backuppolicy",
            "postgres",
            "{.status.conditions[?(@.type==\"Verified\")].status}",
        );
        Ok((verified == "True").then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            demo.get("backuppolicy", "postgres", "{.status.conditions}")
        )
    });
    assert_eq!(demo.get("backup", &name, "{.status.verified}"), "true");
    dash.wait_for("/backups", "old</strong>");
    let events = demo
        .cluster
        .kubectl_ok(&[
            "get",
            "events",
            "-n",
            &ns,
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
        ])
        .unwrap();
    assert!(
        events.contains(&format!(
            "BackupRequested: backup {name} requested from the dashboard by alice"
        )),
        "{events}"
    );
    assert!(
        events
            .contains("RestoreDrillRequested: restore drill requested from the dashboard by alice"),
        "{events}"
    );
}

/// A folder where the binary is `kubectl-homeplane` and `kubectl_complete-homeplane`, as a
/// person installs the plugin, and kubectl's own.
fn plugin_path(cluster: &Cluster) -> String {
    let dir = std::env::temp_dir().join(format!("hp-plugin-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["kubectl-homeplane", "kubectl_complete-homeplane"] {
        std::os::unix::fs::symlink(BINARY, dir.join(name)).unwrap();
    }
    format!(
        "{}:{}:{}",
        dir.display(),
        cluster.bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn kubectl_plugin(cluster: &Cluster, path: &str, args: &[&str]) -> (i32, String) {
    let out = cluster
        .kubectl_command()
        .args(args)
        .env("PATH", path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `kubectl homeplane status` and `trace` through kubectl's plugin mechanism, on the demo's
/// Database, MemoryServer and Workflow: healthy (exit 0), then with the Database's admin
/// Secret gone (exit 1, and the Secret is the first broken link).
#[test]
fn kubectl_homeplane_reports_status_and_traces_to_the_first_broken_link() {
    let demo = Demo::apply_parts(
        "dash-plugin",
        &[Part::Database, Part::Memory, Part::Workflow],
    );
    let ns = demo.ns.name.clone();
    let path = plugin_path(demo.cluster);
    let _operator = Dash::start(demo.cluster, &ns, "dash-plugin", &[]);
    demo.wait_ready("database", "homelab", "True");
    demo.wait_ready("workflow", "email-classifier", "True");
    demo.wait_ready("memoryserver", "memory", "True");

    let (code, out) = kubectl_plugin(demo.cluster, &path, &["homeplane", "status", "-n", &ns]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Nothing needs you"), "{out}");
    let (code, out) = kubectl_plugin(
        demo.cluster,
        &path,
        &["homeplane", "trace", "memoryserver/memory", "-n", &ns],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("MemoryServer {ns}/memory  [ok]")),
        "{out}"
    );
    assert!(
        out.contains(&format!("Database {ns}/homelab  [ok]")),
        "{out}"
    );
    assert!(
        out.contains(&format!("Secret {ns}/homelab-memory-{}  [ok]", demo.s)),
        "{out}"
    );
    assert!(out.contains("Every link is healthy."), "{out}");
    // The other commands are there too, and the plugin completes its arguments.
    let (code, out) = kubectl_plugin(
        demo.cluster,
        &path,
        &[
            "homeplane",
            "plan",
            "-f",
            &homeplane_testkit::repo_root()
                .join("manifests/homelab/nodeclasses.yaml")
                .to_string_lossy(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (_, out) = kubectl_plugin(demo.cluster, &path, &["__complete", "homeplane", "tr"]);
    assert!(out.lines().any(|l| l.starts_with("trace")), "{out}");
    let (_, out) = kubectl_plugin(
        demo.cluster,
        &path,
        &[
            "__complete",
            "homeplane",
            "trace",
            "-n",
            &ns,
            "memoryserver/",
        ],
    );
    assert!(
        out.lines().any(|l| l.starts_with("memoryserver/memory")),
        "{out}"
    );

    // Break it: the admin Secret goes, and homeplane looks again.
    demo.cluster
        .kubectl_ok(&["delete", "secret", "pg-admin", "-n", &ns])
        .unwrap();
    demo.cluster
        .kubectl_ok(&[
            "annotate",
            "database",
            "homelab",
            "-n",
            &ns,
            "--overwrite",
            &format!("homeplane.dev/reapply-requested={}", suffix()),
        ])
        .unwrap();
    demo.wait_ready("database", "homelab", "False");
    let (code, out) = kubectl_plugin(demo.cluster, &path, &["homeplane", "status", "-n", &ns]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("Database {ns}/homelab")) && out.contains("AdminSecretMissing"),
        "{out}"
    );
    assert!(
        out.contains(&format!("kubectl describe database homelab -n {ns}")),
        "{out}"
    );
    let (code, out) = kubectl_plugin(
        demo.cluster,
        &path,
        &["homeplane", "trace", "memoryserver/memory", "-n", &ns],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "First broken link: Secret {ns}/pg-admin (missing)"
        )),
        "{out}"
    );
    let (code, out) = kubectl_plugin(
        demo.cluster,
        &path,
        &["homeplane", "trace", "nodeclass/nowhere"],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("NodeClass nowhere not found"), "{out}");
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

/// The chart turns the dashboard on (on 127.0.0.1 in the pod, read-only), and puts it behind
/// a Service and an Ingress only with a way in: a trusted proxy or a token.
#[test]
fn the_chart_serves_the_dashboard_and_opens_it_only_with_a_way_in() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "dash-chart").unwrap();
    let chart = homeplane_testkit::repo_root()
        .join("charts/homeplane")
        .to_string_lossy()
        .into_owned();
    let template = |set: &str| {
        let mut args = vec![
            "template",
            "homeplane",
            chart.as_str(),
            "--kube-version",
            "v1.37.2",
            "--namespace",
            &ns.name,
        ];
        if !set.is_empty() {
            args.extend(["--set", set]);
        }
        helm(cluster, &args)
    };
    let (ok, plain) = template("");
    assert!(ok, "{plain}");
    assert!(
        plain.contains("- --dashboard-addr=127.0.0.1:8081"),
        "{plain}"
    );
    assert!(
        !plain.contains("--dashboard-actions"),
        "read-only by default: {plain}"
    );
    assert!(
        plain.contains("resources: [events]") && plain.contains("verbs: [get, list, watch]"),
        "{plain}"
    );
    assert!(!plain.contains("kind: Ingress"), "{plain}");

    let (ok, out) = template("dashboard.service.enabled=true");
    assert!(!ok, "a Service without a way in must be refused: {out}");
    assert!(
        out.contains("dashboard.trustedProxies") && out.contains("dashboard.tokenSecret"),
        "{out}"
    );

    let (ok, open) = template(
        "dashboard.service.enabled=true,dashboard.ingress.enabled=true,dashboard.actions=true,dashboard.trustedProxies={10.0.0.7/32},dashboard.tokenSecret=dash-token,dashboard.port=9000",
    );
    assert!(ok, "{open}");
    for arg in [
        "- --dashboard-addr=0.0.0.0:9000",
        "- --dashboard-actions",
        "- --dashboard-trusted-proxy=10.0.0.7/32",
        "- --dashboard-token-secret=dash-token",
        "- --dashboard-user-header=Remote-User",
        "kind: Ingress",
        "name: homeplane-dashboard",
    ] {
        assert!(open.contains(arg), "{arg} missing:\n{open}");
    }
    let applied = cluster
        .kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "-n",
                &ns.name,
                "-f",
                "-",
            ],
            Some(&open),
        )
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
}
