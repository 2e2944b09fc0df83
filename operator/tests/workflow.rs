//! The Workflow controller against a real n8n (installed from npm and started headless by
//! `scripts/n8n.sh`): create, update, activate and deactivate through the public API, the last
//! execution, edits made in n8n reported or corrected, the deletion policy, and each error as
//! a clear condition with n8n's own message.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use homeplane_testkit::{Cluster, N8n, Operator, TestNamespace, eventually, free_port, suffix};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");
const WAIT: Duration = Duration::from_secs(90);

/// Starts an operator for `ns` that compares Workflows with n8n every 2 seconds.
fn operator(cluster: &Cluster, ns: &str) -> Operator {
    Operator::start(BINARY, cluster, ns, ns, &["--workflow-resync", "2"]).unwrap()
}

fn api_key_secret(cluster: &Cluster, ns: &str, name: &str, key: &str) {
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            name,
            "-n",
            ns,
            &format!("--from-literal=apiKey={key}"),
        ])
        .unwrap();
}

/// A webhook-triggered workflow: webhook -> code. `path` makes its webhook URL unique.
fn definition(name: &str, path: &str, code: &str) -> Value {
    json!({
        "name": name,
        "nodes": [
            {"name": "Webhook", "type": "n8n-nodes-base.webhook", "typeVersion": 2,
             "position": [0, 0], "webhookId": path,
             "parameters": {"path": path, "httpMethod": "POST"}},
            {"name": "Classify", "type": "n8n-nodes-base.code", "typeVersion": 2,
             "position": [240, 0], "parameters": {"jsCode": code}}
        ],
        "connections": {"Webhook": {"main": [[{"node": "Classify", "type": "main", "index": 0}]]}},
        "settings": {"executionOrder": "v1", "binaryMode": "separate"},
        // What an export from the n8n UI carries and the API refuses.
        "id": "exported-id",
        "active": true,
        "tags": []
    })
}

fn workflow_yaml(name: &str, url: &str, secret: &str, extra: &str, definition: &Value) -> String {
    format!(
        "apiVersion: homeplane.dev/v1alpha1\nkind: Workflow\nmetadata: {{name: {name}}}\nspec:\n  n8n: {{url: \"{url}\", apiKeySecret: {{name: {secret}, key: apiKey}}}}\n{extra}  definition: {definition}\n"
    )
}

fn apply(cluster: &Cluster, ns: &str, yaml: &str) {
    let (ok, text) = cluster.apply(ns, yaml).unwrap();
    assert!(ok, "{text}");
}

/// (status, reason, message) of condition `type_`.
fn condition(cluster: &Cluster, ns: &str, name: &str, type_: &str) -> (String, String, String) {
    let out = cluster
        .kubectl_ok(&[
            "get",
            "workflow",
            name,
            "-n",
            ns,
            "-o",
            &format!(
                "jsonpath={{.status.conditions[?(@.type==\"{type_}\")].status}}|{{.status.conditions[?(@.type==\"{type_}\")].reason}}|{{.status.conditions[?(@.type==\"{type_}\")].message}}"
            ),
        ])
        .unwrap();
    let mut parts = out.splitn(3, '|').map(str::to_string);
    (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    )
}

/// Waits for condition `type_` with `status` and `reason`; returns its message.
fn wait_condition(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> String {
    let mut last = Default::default();
    eventually(
        WAIT,
        &format!("{name}: {type_}={status} ({reason})"),
        || {
            let c = condition(cluster, ns, name, type_);
            let done = c.0 == status && c.1 == reason;
            last = c.clone();
            Ok(done.then_some(c.2))
        },
    )
    .unwrap_or_else(|e| panic!("{e}; last seen {last:?}"))
}

fn field(cluster: &Cluster, ns: &str, name: &str, path: &str) -> String {
    cluster
        .kubectl_ok(&[
            "get",
            "workflow",
            name,
            "-n",
            ns,
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
        .unwrap()
}

fn n8n_workflow(n8n: &N8n, id: &str) -> (u16, Value) {
    n8n.api("GET", &format!("/workflows/{id}"), None).unwrap()
}

fn node<'a>(workflow: &'a Value, name: &str) -> &'a Value {
    workflow["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {workflow}"))
}

/// What the n8n UI does when someone edits a workflow: saves a changed copy.
fn edit_in_n8n(n8n: &N8n, id: &str, edit: impl FnOnce(&mut Value)) {
    let (_, mut wf) = n8n_workflow(n8n, id);
    edit(&mut wf);
    let body = json!({
        "name": wf["name"], "nodes": wf["nodes"], "connections": wf["connections"],
        "settings": {"executionOrder": wf["settings"]["executionOrder"]}
    });
    let (code, answer) = n8n
        .api("PUT", &format!("/workflows/{id}"), Some(&body))
        .unwrap();
    assert_eq!(code, 200, "{answer}");
}

/// Deletes every Workflow while the operator still runs, so finalizers do not hold the
/// namespace.
fn delete_all(cluster: &Cluster, ns: &str) {
    cluster
        .kubectl_ok(&[
            "delete",
            "workflow",
            "--all",
            "-n",
            ns,
            "--wait=true",
            "--timeout=60s",
        ])
        .unwrap();
}

#[test]
fn creates_updates_activates_and_reports_the_last_execution() {
    let cluster = Cluster::shared();
    let n8n = N8n::shared();
    let ns = TestNamespace::new(cluster, "wf-life").unwrap();
    api_key_secret(cluster, &ns.name, "n8n-api", &n8n.api_key);
    let path = format!("classify-{}", suffix());
    let first = definition("Email classification", &path, "return items;");
    let _operator = operator(cluster, &ns.name);
    apply(
        cluster,
        &ns.name,
        &workflow_yaml(
            "email-classifier",
            &n8n.url,
            "n8n-api",
            "  active: true\n",
            &first,
        ),
    );
    let message = wait_condition(
        cluster,
        &ns.name,
        "email-classifier",
        "Ready",
        "True",
        "Synced",
    );
    assert!(
        message.contains("is active")
            && message.contains("left out: active, id, settings.binaryMode, tags"),
        "{message}"
    );
    let id = field(cluster, &ns.name, "email-classifier", ".status.n8nId");
    assert!(!id.is_empty());
    let (code, wf) = n8n_workflow(n8n, &id);
    assert_eq!(code, 200, "{wf}");
    assert_eq!(wf["name"], "Email classification");
    assert_eq!(wf["active"], true);
    assert_eq!(
        node(&wf, "Classify")["parameters"]["jsCode"],
        "return items;"
    );
    assert_eq!(
        condition(cluster, &ns.name, "email-classifier", "Drifted").0,
        "False"
    );
    let hash = field(
        cluster,
        &ns.name,
        "email-classifier",
        ".status.definitionHash",
    );
    assert_eq!(hash.len(), 64, "{hash}");
    assert_eq!(
        field(cluster, &ns.name, "email-classifier", ".status.active"),
        "true"
    );

    // The webhook runs it; the status reports the execution.
    let (code, answer) = n8n
        .request(
            "POST",
            &format!("{}/webhook/{path}", n8n.url),
            None,
            Some(&json!({"subject": "hello"})),
        )
        .unwrap();
    assert_eq!(code, 200, "{answer}");
    let status = eventually(WAIT, "the last execution in status", || {
        let s = field(
            cluster,
            &ns.name,
            "email-classifier",
            ".status.lastExecution.status",
        );
        Ok((!s.is_empty()).then_some(s))
    })
    .unwrap();
    assert_eq!(status, "success");
    assert!(
        !field(
            cluster,
            &ns.name,
            "email-classifier",
            ".status.lastExecution.finishedAt"
        )
        .is_empty()
    );
    let table = cluster
        .kubectl_ok(&["get", "workflows", "-n", &ns.name])
        .unwrap();
    assert!(table.contains(&id) && table.contains("success"), "{table}");

    // A new declaration is pushed to the same n8n workflow.
    let second = definition("Email classification", &path, "return items.slice(0, 1);");
    apply(
        cluster,
        &ns.name,
        &workflow_yaml(
            "email-classifier",
            &n8n.url,
            "n8n-api",
            "  active: true\n",
            &second,
        ),
    );
    eventually(WAIT, "the new code in n8n", || {
        let (_, wf) = n8n_workflow(n8n, &id);
        Ok(
            (node(&wf, "Classify")["parameters"]["jsCode"] == "return items.slice(0, 1);")
                .then_some(()),
        )
    })
    .unwrap();
    // The status is written after n8n answered, so it may trail n8n by a moment.
    eventually(WAIT, "the new definition hash in status", || {
        let now = field(
            cluster,
            &ns.name,
            "email-classifier",
            ".status.definitionHash",
        );
        Ok((!now.is_empty() && now != hash).then_some(()))
    })
    .unwrap();
    assert_eq!(
        field(cluster, &ns.name, "email-classifier", ".status.n8nId"),
        id
    );

    // Deactivated by the spec.
    cluster
        .kubectl_ok(&[
            "patch",
            "workflow",
            "email-classifier",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"spec":{"active":false}}"#,
        ])
        .unwrap();
    eventually(WAIT, "the workflow inactive in n8n", || {
        let (_, wf) = n8n_workflow(n8n, &id);
        Ok((wf["active"] == false).then_some(()))
    })
    .unwrap();
    let message = wait_condition(
        cluster,
        &ns.name,
        "email-classifier",
        "Ready",
        "True",
        "Synced",
    );
    assert!(message.contains("is inactive"), "{message}");
    assert_eq!(
        field(cluster, &ns.name, "email-classifier", ".status.active"),
        "false"
    );
    delete_all(cluster, &ns.name);
}

#[test]
fn edits_in_n8n_are_reported_or_corrected_per_on_drift() {
    let cluster = Cluster::shared();
    let n8n = N8n::shared();
    let ns = TestNamespace::new(cluster, "wf-drift").unwrap();
    api_key_secret(cluster, &ns.name, "n8n-api", &n8n.api_key);
    let _operator = operator(cluster, &ns.name);
    let report = definition(
        "Calendar sync",
        &format!("cal-{}", suffix()),
        "return items;",
    );
    let correct = definition(
        "Health monitor",
        &format!("health-{}", suffix()),
        "return items;",
    );
    apply(
        cluster,
        &ns.name,
        &workflow_yaml(
            "calendar-sync",
            &n8n.url,
            "n8n-api",
            "  active: true\n  onDrift: Report\n",
            &report,
        ),
    );
    apply(
        cluster,
        &ns.name,
        &workflow_yaml(
            "health-monitor",
            &n8n.url,
            "n8n-api",
            "  active: true\n  onDrift: Correct\n",
            &correct,
        ),
    );
    for name in ["calendar-sync", "health-monitor"] {
        wait_condition(cluster, &ns.name, name, "Ready", "True", "Synced");
        wait_condition(cluster, &ns.name, name, "Drifted", "False", "InSync");
    }
    // Several passes later, nothing n8n rewrote by itself counts as drift.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        condition(cluster, &ns.name, "calendar-sync", "Drifted").1,
        "InSync"
    );

    // Someone edits the code and moves a node in the n8n UI.
    let report_id = field(cluster, &ns.name, "calendar-sync", ".status.n8nId");
    edit_in_n8n(n8n, &report_id, |wf| {
        for node in wf["nodes"].as_array_mut().unwrap() {
            node["position"] = json!([500, 500]);
            if node["name"] == "Classify" {
                node["parameters"]["jsCode"] = json!("return [];");
            }
        }
    });
    let message = wait_condition(
        cluster,
        &ns.name,
        "calendar-sync",
        "Drifted",
        "True",
        "EditedInN8n",
    );
    assert!(
        message.contains(r#"node "Classify" was changed in n8n"#) && message.contains("Report"),
        "{message}"
    );
    // Report changes nothing in n8n.
    std::thread::sleep(Duration::from_secs(5));
    let (_, wf) = n8n_workflow(n8n, &report_id);
    assert_eq!(node(&wf, "Classify")["parameters"]["jsCode"], "return [];");
    eventually(WAIT, "a Drifted event", || {
        let notes = cluster.kubectl_ok(&[
            "get",
            "events",
            "-n",
            &ns.name,
            "--field-selector",
            "reason=Drifted",
            "-o",
            "jsonpath={.items[*].message}",
        ])?;
        Ok(notes.contains("Classify").then_some(()))
    })
    .unwrap();
    // Moving nodes alone is not drift; the moved positions are still in n8n.
    assert_eq!(node(&wf, "Webhook")["position"], json!([500, 500]));

    // Correct puts the declaration back: the code, and the activation.
    let correct_id = field(cluster, &ns.name, "health-monitor", ".status.n8nId");
    edit_in_n8n(n8n, &correct_id, |wf| {
        for node in wf["nodes"].as_array_mut().unwrap() {
            if node["name"] == "Classify" {
                node["parameters"]["jsCode"] = json!("return [];");
            }
        }
    });
    let (code, _) = n8n
        .api("POST", &format!("/workflows/{correct_id}/deactivate"), None)
        .unwrap();
    assert_eq!(code, 200);
    eventually(WAIT, "the declaration back in n8n", || {
        let (_, wf) = n8n_workflow(n8n, &correct_id);
        Ok(
            (node(&wf, "Classify")["parameters"]["jsCode"] == "return items;"
                && wf["active"] == true)
                .then_some(()),
        )
    })
    .unwrap();
    let events = eventually(WAIT, "a DriftCorrected event", || {
        let notes = cluster.kubectl_ok(&[
            "get",
            "events",
            "-n",
            &ns.name,
            "--field-selector",
            "reason=DriftCorrected",
            "-o",
            "jsonpath={.items[*].message}",
        ])?;
        Ok((!notes.is_empty()).then_some(notes))
    })
    .unwrap();
    assert!(events.contains("Classify"), "{events}");
    assert_eq!(
        condition(cluster, &ns.name, "health-monitor", "Drifted").0,
        "False"
    );

    // Changing the Report workflow's spec is a new declaration: it is applied.
    cluster
        .kubectl_ok(&[
            "patch",
            "workflow",
            "calendar-sync",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"spec":{"onDrift":"Correct"}}"#,
        ])
        .unwrap();
    eventually(
        WAIT,
        "the Report workflow corrected after the spec change",
        || {
            let (_, wf) = n8n_workflow(n8n, &report_id);
            Ok((node(&wf, "Classify")["parameters"]["jsCode"] == "return items;").then_some(()))
        },
    )
    .unwrap();
    wait_condition(
        cluster,
        &ns.name,
        "calendar-sync",
        "Drifted",
        "False",
        "InSync",
    );
    delete_all(cluster, &ns.name);
}

/// `kubectl apply` of a ConfigMap with `workflow.json`.
fn definition_config_map(cluster: &Cluster, ns: &str, name: &str, definition: &Value) {
    let yaml = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"workflow.json": definition.to_string()}
    });
    apply(cluster, ns, &yaml.to_string());
}

#[test]
fn a_changed_definition_config_map_or_key_secret_is_acted_on_at_once() {
    let cluster = Cluster::shared();
    let n8n = N8n::shared();
    let ns = TestNamespace::new(cluster, "wf-watch").unwrap();
    // Compared with n8n only hourly: whatever happens within the test comes from the watches.
    let _operator = Operator::start(
        BINARY,
        cluster,
        &ns.name,
        &ns.name,
        &["--workflow-resync", "3600"],
    )
    .unwrap();
    api_key_secret(cluster, &ns.name, "n8n-api", "not-the-key");
    let path = format!("watched-{}", suffix());
    definition_config_map(
        cluster,
        &ns.name,
        "router",
        &definition("Voice router", &path, "return items;"),
    );
    apply(
        cluster,
        &ns.name,
        &format!(
            "apiVersion: homeplane.dev/v1alpha1\nkind: Workflow\nmetadata: {{name: router}}\nspec:\n  n8n: {{url: \"{}\", apiKeySecret: {{name: n8n-api, key: apiKey}}}}\n  definitionFrom: {{name: router, key: workflow.json}}\n",
            n8n.url
        ),
    );
    wait_condition(
        cluster,
        &ns.name,
        "router",
        "Ready",
        "False",
        "N8nUnauthorized",
    );
    // The key is fixed in its Secret (watched, like the definition's ConfigMap).
    cluster
        .kubectl_ok(&["delete", "secret", "n8n-api", "-n", &ns.name])
        .unwrap();
    api_key_secret(cluster, &ns.name, "n8n-api", &n8n.api_key);
    wait_condition(cluster, &ns.name, "router", "Ready", "True", "Synced");
    let id = field(cluster, &ns.name, "router", ".status.n8nId");

    // The definition changes in its ConfigMap: n8n follows within seconds.
    definition_config_map(
        cluster,
        &ns.name,
        "router",
        &definition("Voice router", &path, "return items.slice(0, 1);"),
    );
    eventually(
        Duration::from_secs(30),
        "n8n running the new definition",
        || {
            let (_, wf) = n8n_workflow(n8n, &id);
            Ok(
                (node(&wf, "Classify")["parameters"]["jsCode"] == "return items.slice(0, 1);")
                    .then_some(()),
            )
        },
    )
    .unwrap();
    delete_all(cluster, &ns.name);
}

#[test]
fn deletion_policy_retains_or_deletes_the_n8n_workflow() {
    let cluster = Cluster::shared();
    let n8n = N8n::shared();
    let ns = TestNamespace::new(cluster, "wf-delete").unwrap();
    api_key_secret(cluster, &ns.name, "n8n-api", &n8n.api_key);
    let _operator = operator(cluster, &ns.name);
    let keep = definition("Kept", &format!("keep-{}", suffix()), "return items;");
    let drop = definition("Dropped", &format!("drop-{}", suffix()), "return items;");
    apply(
        cluster,
        &ns.name,
        &workflow_yaml("kept", &n8n.url, "n8n-api", "  active: true\n", &keep),
    );
    apply(
        cluster,
        &ns.name,
        &workflow_yaml(
            "dropped",
            &n8n.url,
            "n8n-api",
            "  active: true\n  deletionPolicy: Delete\n",
            &drop,
        ),
    );
    wait_condition(cluster, &ns.name, "kept", "Ready", "True", "Synced");
    wait_condition(cluster, &ns.name, "dropped", "Ready", "True", "Synced");
    let kept_id = field(cluster, &ns.name, "kept", ".status.n8nId");
    let dropped_id = field(cluster, &ns.name, "dropped", ".status.n8nId");
    delete_all(cluster, &ns.name);
    // Retain (the default): the workflow stays in n8n, still active as declared.
    let (code, wf) = n8n_workflow(n8n, &kept_id);
    assert_eq!(code, 200, "{wf}");
    assert_eq!(wf["active"], true);
    // Delete: it is gone.
    let (code, answer) = n8n_workflow(n8n, &dropped_id);
    assert_eq!(code, 404, "{answer}");
    // Tidy the shared n8n.
    n8n.api("DELETE", &format!("/workflows/{kept_id}"), None)
        .unwrap();
}

#[test]
fn errors_are_clear_conditions_with_n8ns_message() {
    let cluster = Cluster::shared();
    let n8n = N8n::shared();
    let ns = TestNamespace::new(cluster, "wf-errors").unwrap();
    api_key_secret(cluster, &ns.name, "n8n-api", &n8n.api_key);
    api_key_secret(cluster, &ns.name, "wrong-key", "not-a-key");
    let _operator = operator(cluster, &ns.name);
    let good = |name: &str| definition(name, &format!("err-{}", suffix()), "return items;");

    // Nothing listens at the URL.
    let closed = format!("http://127.0.0.1:{}", free_port().unwrap());
    apply(
        cluster,
        &ns.name,
        &workflow_yaml("unreachable", &closed, "n8n-api", "", &good("U")),
    );
    // n8n refuses the key.
    apply(
        cluster,
        &ns.name,
        &workflow_yaml("bad-key", &n8n.url, "wrong-key", "", &good("K")),
    );
    // The Secret does not exist.
    apply(
        cluster,
        &ns.name,
        &workflow_yaml("no-secret", &n8n.url, "missing", "", &good("S")),
    );
    // A node with a field n8n's schema does not allow.
    let mut rejected = good("R");
    rejected["nodes"][1]["colour"] = json!("red");
    apply(
        cluster,
        &ns.name,
        &workflow_yaml("rejected", &n8n.url, "n8n-api", "", &rejected),
    );
    // Active, but nothing can start it.
    let no_trigger = json!({"name": "No trigger", "nodes": [
        {"name": "Classify", "type": "n8n-nodes-base.code", "typeVersion": 2,
         "position": [0, 0], "parameters": {"jsCode": "return items;"}}], "connections": {}});
    apply(
        cluster,
        &ns.name,
        &workflow_yaml(
            "no-trigger",
            &n8n.url,
            "n8n-api",
            "  active: true\n",
            &no_trigger,
        ),
    );
    // Definition from a ConfigMap that is not JSON.
    cluster
        .kubectl_ok(&[
            "create",
            "configmap",
            "broken",
            "-n",
            &ns.name,
            "--from-literal=workflow.json={\"nodes\": [",
        ])
        .unwrap();
    apply(
        cluster,
        &ns.name,
        &format!(
            "apiVersion: homeplane.dev/v1alpha1\nkind: Workflow\nmetadata: {{name: invalid-json}}\nspec:\n  n8n: {{url: \"{}\", apiKeySecret: {{name: n8n-api, key: apiKey}}}}\n  definitionFrom: {{name: broken, key: workflow.json}}\n",
            n8n.url
        ),
    );

    let cases = [
        ("unreachable", "N8nUnreachable", "cannot reach n8n at"),
        (
            "bad-key",
            "N8nUnauthorized",
            "refused the API key (401): unauthorized",
        ),
        ("no-secret", "ApiKeySecretMissing", "Secret"),
        (
            "rejected",
            "N8nRejected",
            "request/body/nodes/1 must NOT have additional properties",
        ),
        (
            "no-trigger",
            "N8nRejected",
            "has no node to start the workflow",
        ),
        ("invalid-json", "InvalidDefinition", "is not valid JSON"),
    ];
    for (name, reason, text) in cases {
        let message = wait_condition(cluster, &ns.name, name, "Ready", "False", reason);
        assert!(message.contains(text), "{name}: {message}");
        assert!(
            !message.contains(&n8n.api_key),
            "{name}: the API key leaked into status"
        );
        let degraded = condition(cluster, &ns.name, name, "Degraded");
        assert_eq!((degraded.0.as_str(), degraded.1.as_str()), ("True", reason));
    }
    // Retried with backoff: fixing the key is picked up without touching the Workflow.
    cluster
        .kubectl_ok(&["delete", "secret", "wrong-key", "-n", &ns.name])
        .unwrap();
    api_key_secret(cluster, &ns.name, "wrong-key", &n8n.api_key);
    wait_condition(cluster, &ns.name, "bad-key", "Ready", "True", "Synced");
    assert_eq!(
        condition(cluster, &ns.name, "bad-key", "Degraded").0,
        "",
        "Degraded is removed once the workflow is synced"
    );
    let warnings = cluster
        .kubectl_ok(&[
            "get",
            "events",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .unwrap();
    assert!(
        !warnings.contains(&n8n.api_key),
        "the API key leaked into an event"
    );
    delete_all(cluster, &ns.name);
}
