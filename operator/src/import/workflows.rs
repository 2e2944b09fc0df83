//! Reads every workflow of an n8n instance through its public API and writes each as a
//! `Workflow` whose definition lives in a ConfigMap, active as it is, annotated with its n8n
//! id so that homeplane adopts the workflow instead of creating a second one.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use homeplane_crds::common::{ConfigMapKeyRef, SecretKeyRef};
use homeplane_crds::workflow::{N8nTarget, Workflow, WorkflowSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::build::{IMPORTED_LABEL, document};
use super::names::{Unique, object_name};
use super::report::Report;
use super::secrets::{has_url_password, is_secret_name, looks_random};
use crate::controllers::workflow::ADOPT_ANNOTATION;
use crate::controllers::workflow::definition;
use crate::controllers::workflow::n8n::{Http, N8n};

/// The Secret (and key) holding the n8n API key.
pub const API_KEY_SECRET: &str = "n8n-api";
/// Its key.
pub const API_KEY_KEY: &str = "apiKey";
/// The ConfigMap key of a definition.
const DEFINITION_KEY: &str = "workflow.json";
/// ConfigMaps hold at most 1 MiB.
const CONFIGMAP_LIMIT: usize = 1 << 20;

/// Whether `workflow` carries one of `tags` (any workflow when `tags` is empty).
fn tagged(workflow: &Value, tags: &[String]) -> bool {
    tags.is_empty()
        || workflow
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("name").and_then(Value::as_str))
            .any(|name| tags.iter().any(|t| t == name))
}

/// Every workflow of the n8n at `url` (those with one of `tags`, when given), in full.
pub async fn read(url: &str, api_key: &str, tags: &[String]) -> Result<Vec<Value>> {
    let http = Http::new().map_err(|e| anyhow::anyhow!("failed to make an HTTP client: {e}"))?;
    let client = N8n::new(&http, url, api_key);
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (page, next) = client
            .list_workflows(cursor.as_deref(), 100)
            .await
            .context("failed to list the workflows of n8n")?;
        for summary in page.into_iter().filter(|w| tagged(w, tags)) {
            let Some(id) = summary.get("id").and_then(Value::as_str) else {
                continue;
            };
            let full = client
                .get_workflow(id)
                .await
                .with_context(|| format!("failed to read n8n workflow {id}"))?;
            if let Some(full) = full {
                out.push(full);
            }
        }
        match next {
            Some(n) if Some(&n) != cursor.as_ref() => cursor = Some(n),
            _ => break,
        }
    }
    Ok(out)
}

/// Literal values in node parameters that look like credentials (they should live in n8n's
/// credentials, not in the workflow): `node "X" parameter y.z`.
fn literal_secrets(workflow: &Value) -> Vec<String> {
    fn walk(v: &Value, path: &str, key: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(child, &p, k, out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{path}[{i}]"), key, out);
                }
            }
            Value::String(s) => {
                let expression = s.starts_with('=') || s.contains("{{");
                if !expression
                    && !s.is_empty()
                    && (is_secret_name(key)
                        || has_url_password(s)
                        || s.split_whitespace().any(looks_random))
                {
                    out.push(path.to_string());
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for node in workflow
        .get("nodes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = node.get("name").and_then(Value::as_str).unwrap_or("?");
        let mut paths = Vec::new();
        if let Some(params) = node.get("parameters") {
            walk(params, "", "", &mut paths);
        }
        out.extend(
            paths
                .into_iter()
                .map(|p| format!("node {name:?} parameter {p}")),
        );
    }
    out
}

/// The Workflows and their ConfigMaps (pure). `url` is where homeplane reaches n8n.
pub fn build(workflows: &[Value], url: &str, ns: &str, report: &mut Report) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut names = Unique::default();
    let mut sorted: Vec<&Value> = workflows.iter().collect();
    sorted.sort_by_key(|w| {
        (
            w.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            w.get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        )
    });
    for wf in sorted {
        let id = wf.get("id").and_then(Value::as_str).unwrap_or_default();
        let title = wf.get("name").and_then(Value::as_str).unwrap_or(id);
        let name = names.take(&object_name(title));
        let payload = match definition::payload(wf, title) {
            Ok(p) => p,
            Err(e) => {
                report
                    .left_out
                    .push(format!("n8n workflow {title:?} ({id}): its definition {e}"));
                continue;
            }
        };
        let text = serde_json::to_string_pretty(&payload.body).unwrap_or_default();
        if text.len() > CONFIGMAP_LIMIT - 4096 {
            report.left_out.push(format!(
                "n8n workflow {title:?} ({id}): its definition ({} KiB) does not fit in a ConfigMap (1 MiB)",
                text.len() / 1024
            ));
            continue;
        }
        let active = wf.get("active").and_then(Value::as_bool).unwrap_or(false);
        let config_map = format!("workflow-{name}");
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(config_map.clone()),
                namespace: Some(ns.to_string()),
                labels: Some(BTreeMap::from([(
                    IMPORTED_LABEL.to_string(),
                    "n8n".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(DEFINITION_KEY.to_string(), text)])),
            ..ConfigMap::default()
        };
        let mut workflow = Workflow::new(
            &name,
            WorkflowSpec {
                n8n: N8nTarget {
                    url: url.to_string(),
                    api_key_secret: SecretKeyRef {
                        name: API_KEY_SECRET.into(),
                        key: API_KEY_KEY.into(),
                    },
                },
                definition: None,
                definition_from: Some(ConfigMapKeyRef {
                    name: config_map,
                    key: DEFINITION_KEY.into(),
                }),
                active,
                on_drift: Default::default(),
                deletion_policy: Default::default(),
            },
        );
        workflow.metadata.namespace = Some(ns.to_string());
        workflow.metadata.labels = Some(BTreeMap::from([(
            IMPORTED_LABEL.to_string(),
            "n8n".to_string(),
        )]));
        workflow.metadata.annotations = Some(BTreeMap::from([(
            ADOPT_ANNOTATION.to_string(),
            id.to_string(),
        )]));
        docs.push(document(&workflow));
        docs.push(document(&cm));
        report.imported.push(format!(
            "n8n workflow {title:?} ({id}, {}) → {ns}/{name}",
            if active { "active" } else { "inactive" }
        ));
        if !payload.ignored.is_empty() {
            report.check.push(format!(
                "{ns}/{name}: n8n's API does not accept {} on update; they were left out of the definition",
                payload.ignored.join(", ")
            ));
        }
        for place in literal_secrets(wf) {
            report.check.push(format!(
                "{ns}/{name}: {place} holds what looks like a credential written into the workflow; move it into an n8n credential (the definition is now in Git)"
            ));
        }
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tags_select_workflows() {
        let w = json!({"tags": [{"id": "1", "name": "homelab"}]});
        assert!(tagged(&w, &[]));
        assert!(tagged(&w, &["homelab".into()]));
        assert!(!tagged(&w, &["other".into()]));
        assert!(!tagged(&json!({}), &["homelab".into()]));
    }

    #[test]
    fn workflows_become_adopting_workflows_with_configmaps() {
        let n8n = vec![
            json!({"id": "k2", "name": "Email classifier", "active": true, "nodes": [{"name": "Start", "type": "n8n-nodes-base.manualTrigger", "parameters": {}}], "connections": {}, "settings": {"executionOrder": "v1", "binaryMode": "x"}, "tags": []}),
            json!({"id": "k1", "name": "Email classifier", "active": false, "nodes": [{"name": "Call", "type": "n8n-nodes-base.httpRequest", "parameters": {"headerParameters": {"parameters": [{"name": "Authorization", "value": "Bearer q8Jf2LkPz0XwV7bNc4RtYs9Ab"}]}}}], "connections": {}}),
        ];
        let mut report = Report::default();
        let docs = build(
            &n8n,
            "http://n8n.automation:5678",
            "automation",
            &mut report,
        );
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[0]["kind"], "Workflow");
        assert_eq!(docs[0]["metadata"]["name"], "email-classifier");
        assert_eq!(docs[0]["metadata"]["annotations"][ADOPT_ANNOTATION], "k1");
        assert_eq!(docs[0]["spec"]["active"], false);
        assert_eq!(docs[2]["metadata"]["name"], "email-classifier-2");
        assert_eq!(docs[2]["spec"]["active"], true);
        let cm: Value =
            serde_json::from_str(docs[3]["data"][DEFINITION_KEY].as_str().unwrap()).unwrap();
        assert_eq!(cm["settings"], json!({"executionOrder": "v1"}));
        assert!(
            report
                .check
                .iter()
                .any(|l| l.contains("settings.binaryMode"))
        );
        assert!(
            report.check.iter().any(|l| l.contains("node \"Call\" parameter headerParameters.parameters[0].value")),
            "{:?}",
            report.check
        );
    }
}
