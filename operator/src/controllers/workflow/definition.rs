//! Pure functions on workflow definitions: the body n8n's public API accepts (a whitelist of
//! what its GET returns), and a canonical hash that ignores what n8n rewrites by itself (ids,
//! positions, webhook ids, timestamps, key order), so that an edit made in the n8n UI shows as
//! drift and nothing else does.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Top-level fields the public API accepts on create and update (its GET returns more: `id`,
/// `active`, `createdAt`, `tags`, `shared`, `versionId`, `meta`, `pinData`…, which PUT rejects).
const ACCEPTED_FIELDS: [&str; 4] = ["name", "nodes", "connections", "settings"];

/// Settings keys the public API accepts (n8n 1.x `workflowSettings` schema).
pub const ACCEPTED_SETTINGS: [&str; 12] = [
    "saveExecutionProgress",
    "saveManualExecutions",
    "saveDataErrorExecution",
    "saveDataSuccessExecution",
    "executionTimeout",
    "errorWorkflow",
    "timezone",
    "executionOrder",
    "callerPolicy",
    "callerIds",
    "timeSavedPerExecution",
    "availableInMCP",
];

/// Node fields n8n assigns or moves by itself; they are not part of what a workflow means.
/// (`webhookId` is: it makes a webhook's production URL.)
const VOLATILE_NODE_FIELDS: [&str; 4] = ["id", "position", "createdAt", "updatedAt"];

/// Settings n8n fills in when a workflow is created without them; such a value means the same
/// as leaving the key out.
fn is_n8n_default_setting(key: &str, value: &Value) -> bool {
    match key {
        "callerPolicy" => value == "workflowsFromSameOwner",
        "availableInMCP" => value == &Value::Bool(false),
        _ => false,
    }
}

/// The body to send to n8n, and the declared fields that were left out because the API does
/// not accept them.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// `{name, nodes, connections, settings}`.
    pub body: Value,
    /// E.g. `active`, `settings.binaryMode` (for the status message, so nothing is dropped
    /// silently).
    pub ignored: Vec<String>,
}

/// Parses a definition written as JSON text (from a ConfigMap).
pub fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))
}

/// Builds the API body from a declared definition. `fallback_name` names a definition without
/// `name`. Errors say what is wrong, for a `Degraded` condition.
pub fn payload(definition: &Value, fallback_name: &str) -> Result<Payload, String> {
    let Some(fields) = definition.as_object() else {
        return Err("must be a JSON object with nodes and connections".into());
    };
    let mut ignored: Vec<String> = fields
        .keys()
        .filter(|k| !ACCEPTED_FIELDS.contains(&k.as_str()))
        .cloned()
        .collect();
    let name = match fields.get("name") {
        None | Some(Value::Null) => fallback_name.to_string(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => return Err("name must be a non-empty string".into()),
    };
    let nodes = match fields.get("nodes") {
        Some(Value::Array(nodes)) => nodes.clone(),
        None => return Err("has no nodes (a list of n8n nodes)".into()),
        Some(_) => return Err("nodes must be a list".into()),
    };
    let mut names = std::collections::BTreeSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let Some(node) = node.as_object() else {
            return Err(format!("nodes[{i}] must be an object"));
        };
        match node.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => {
                if !names.insert(n.to_string()) {
                    return Err(format!(
                        "two nodes are named {n:?}; n8n connects nodes by name, so names must be unique"
                    ));
                }
            }
            _ => return Err(format!("nodes[{i}] has no name")),
        }
    }
    let connections = match fields.get("connections") {
        Some(Value::Object(c)) => Value::Object(c.clone()),
        None => Value::Object(Map::new()),
        Some(_) => return Err("connections must be an object".into()),
    };
    let settings = match fields.get("settings") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(s)) => {
            let mut kept = Map::new();
            for (k, v) in s {
                if ACCEPTED_SETTINGS.contains(&k.as_str()) {
                    kept.insert(k.clone(), v.clone());
                } else {
                    ignored.push(format!("settings.{k}"));
                }
            }
            kept
        }
        Some(_) => return Err("settings must be an object".into()),
    };
    ignored.sort();
    let mut body = Map::new();
    body.insert("name".into(), Value::String(name));
    body.insert("nodes".into(), Value::Array(nodes));
    body.insert("connections".into(), connections);
    body.insert("settings".into(), Value::Object(settings));
    Ok(Payload {
        body: Value::Object(body),
        ignored,
    })
}

/// The canonical form of a workflow (declared body or n8n's GET): name, nodes keyed by name
/// without volatile fields, connections without empty outputs, accepted settings other than
/// n8n's defaults.
pub fn canonical(workflow: &Value) -> Value {
    let mut out = Map::new();
    out.insert(
        "name".into(),
        workflow.get("name").cloned().unwrap_or(Value::Null),
    );
    let mut nodes = BTreeMap::new();
    for node in workflow
        .get("nodes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(fields) = node.as_object() else {
            continue;
        };
        let name = fields
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kept: Map<String, Value> = fields
            .iter()
            .filter(|(k, v)| !VOLATILE_NODE_FIELDS.contains(&k.as_str()) && !is_empty(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        nodes.insert(name, Value::Object(kept));
    }
    out.insert("nodes".into(), Value::Object(nodes.into_iter().collect()));
    out.insert(
        "connections".into(),
        workflow
            .get("connections")
            .map(prune_empty)
            .unwrap_or(Value::Object(Map::new())),
    );
    let settings: Map<String, Value> = workflow
        .get("settings")
        .and_then(Value::as_object)
        .map(|s| {
            s.iter()
                .filter(|(k, v)| {
                    ACCEPTED_SETTINGS.contains(&k.as_str()) && !is_n8n_default_setting(k, v)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    out.insert("settings".into(), Value::Object(settings));
    Value::Object(out)
}

/// SHA-256 (hex) of the canonical JSON text (keys sorted at every level).
pub fn hash(canonical: &Value) -> String {
    let mut text = String::new();
    write_sorted(canonical, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The canonical hash of a workflow: equal for a declared body and n8n's copy of it.
pub fn canonical_hash(workflow: &Value) -> String {
    hash(&canonical(workflow))
}

/// What differs between the declared body and n8n's copy, in words (for the `Drifted`
/// condition): `name`, `node "Classify" changed`, `node "X" added in n8n`, …
pub fn differences(declared: &Value, observed: &Value) -> Vec<String> {
    let a = canonical(declared);
    let b = canonical(observed);
    let mut out = Vec::new();
    if a.get("name") != b.get("name") {
        out.push(format!(
            "name is {} in n8n",
            b.get("name").cloned().unwrap_or(Value::Null)
        ));
    }
    let empty = Map::new();
    let an = a.get("nodes").and_then(Value::as_object).unwrap_or(&empty);
    let bn = b.get("nodes").and_then(Value::as_object).unwrap_or(&empty);
    for (name, node) in an {
        match bn.get(name) {
            None => out.push(format!("node {name:?} was removed in n8n")),
            Some(other) if hash(other) != hash(node) => {
                out.push(format!("node {name:?} was changed in n8n"))
            }
            Some(_) => {}
        }
    }
    for name in bn.keys().filter(|n| !an.contains_key(*n)) {
        out.push(format!("node {name:?} was added in n8n"));
    }
    if hash(a.get("connections").unwrap_or(&Value::Null))
        != hash(b.get("connections").unwrap_or(&Value::Null))
    {
        out.push("connections were changed in n8n".into());
    }
    if hash(a.get("settings").unwrap_or(&Value::Null))
        != hash(b.get("settings").unwrap_or(&Value::Null))
    {
        out.push("settings were changed in n8n".into());
    }
    out
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Connections without empty output lists and without nodes that have no outputs left (n8n
/// and its UI add and drop those freely).
fn prune_empty(connections: &Value) -> Value {
    let Some(by_node) = connections.as_object() else {
        return Value::Object(Map::new());
    };
    let mut out = Map::new();
    for (node, kinds) in by_node {
        let Some(kinds) = kinds.as_object() else {
            continue;
        };
        let mut kept = Map::new();
        for (kind, outputs) in kinds {
            let Some(outputs) = outputs.as_array() else {
                continue;
            };
            // Keep output positions (index matters) but treat null and [] alike.
            let mut outputs: Vec<Value> = outputs
                .iter()
                .map(|o| match o {
                    Value::Array(a) if !a.is_empty() => o.clone(),
                    _ => Value::Array(vec![]),
                })
                .collect();
            while outputs.last().is_some_and(is_empty) {
                outputs.pop();
            }
            if !outputs.is_empty() {
                kept.insert(kind.clone(), Value::Array(outputs));
            }
        }
        if !kept.is_empty() {
            out.insert(node.clone(), Value::Object(kept));
        }
    }
    Value::Object(out)
}

/// JSON text with object keys sorted at every level, whatever map type serde_json uses.
fn write_sorted(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", Value::String(k.clone()));
                if let Some(value) = m.get(k) {
                    write_sorted(value, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        // Numbers: 1 and 1.0 are the same number to n8n.
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                let _ = write!(out, "{}", f as i64);
            }
            _ => {
                let _ = write!(out, "{n}");
            }
        },
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn classifier() -> Value {
        json!({
            "name": "Email classification",
            "nodes": [
                {"name": "Every 5 minutes", "type": "n8n-nodes-base.scheduleTrigger", "typeVersion": 1.2,
                 "position": [0, 0], "parameters": {"rule": {"interval": [{"field": "minutes", "minutesInterval": 5}]}}},
                {"name": "Classify", "type": "n8n-nodes-base.code", "typeVersion": 2,
                 "position": [220, 0], "parameters": {"jsCode": "return items;"}}
            ],
            "connections": {"Every 5 minutes": {"main": [[{"node": "Classify", "type": "main", "index": 0}]]}},
            "settings": {"executionOrder": "v1"}
        })
    }

    #[test]
    fn payload_keeps_only_what_the_api_accepts() {
        let mut exported = classifier();
        exported["id"] = json!("abc");
        exported["active"] = json!(true);
        exported["versionId"] = json!("v1");
        exported["pinData"] = json!({});
        exported["settings"]["binaryMode"] = json!("separate");
        let p = payload(&exported, "fallback").unwrap();
        let keys: Vec<&String> = p.body.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert_eq!(p.body["settings"], json!({"executionOrder": "v1"}));
        assert_eq!(
            p.ignored,
            vec![
                "active",
                "id",
                "pinData",
                "settings.binaryMode",
                "versionId"
            ]
        );
    }

    #[test]
    fn payload_names_an_unnamed_workflow_and_adds_empty_parts() {
        let p = payload(&json!({"nodes": []}), "email-classifier").unwrap();
        assert_eq!(p.body["name"], "email-classifier");
        assert_eq!(p.body["connections"], json!({}));
        assert_eq!(p.body["settings"], json!({}));
    }

    #[test]
    fn payload_refuses_what_cannot_be_a_workflow() {
        assert!(payload(&json!([1]), "x").unwrap_err().contains("object"));
        assert!(payload(&json!({}), "x").unwrap_err().contains("no nodes"));
        assert!(
            payload(&json!({"nodes": {}}), "x")
                .unwrap_err()
                .contains("list")
        );
        assert!(
            payload(&json!({"nodes": [{"type": "a"}]}), "x")
                .unwrap_err()
                .contains("nodes[0] has no name")
        );
        let twice = json!({"nodes": [{"name": "A"}, {"name": "A"}]});
        assert!(payload(&twice, "x").unwrap_err().contains("unique"));
        assert!(parse("{nodes: [").unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn hash_ignores_what_n8n_rewrites() {
        let body = payload(&classifier(), "x").unwrap().body;
        // What n8n's GET returns: ids, new positions, other key and node order, timestamps,
        // default settings it filled in, empty outputs, 2 written as 2.0.
        let observed = json!({
            "id": "w1", "active": false, "createdAt": "2026-01-01T00:00:00.000Z",
            "settings": {"executionOrder": "v1", "callerPolicy": "workflowsFromSameOwner"},
            "connections": {"Every 5 minutes": {"main": [[{"index": 0, "type": "main", "node": "Classify"}]]},
                            "Classify": {"main": [[]]}},
            "nodes": [
                {"id": "n2", "name": "Classify", "type": "n8n-nodes-base.code", "typeVersion": 2.0,
                 "position": [500, 120], "parameters": {"jsCode": "return items;"}},
                {"id": "n1", "name": "Every 5 minutes", "type": "n8n-nodes-base.scheduleTrigger",
                 "typeVersion": 1.2, "position": [10, 10],
                 "parameters": {"rule": {"interval": [{"minutesInterval": 5, "field": "minutes"}]}}}
            ],
            "name": "Email classification", "staticData": null, "tags": []
        });
        assert_eq!(canonical_hash(&body), canonical_hash(&observed));
        assert!(differences(&body, &observed).is_empty());
    }

    #[test]
    fn hash_sees_edits_made_in_the_ui() {
        let body = payload(&classifier(), "x").unwrap().body;
        let mut edited = body.clone();
        edited["nodes"][1]["parameters"]["jsCode"] = json!("return [];");
        assert_ne!(canonical_hash(&body), canonical_hash(&edited));
        assert_eq!(
            differences(&body, &edited),
            vec![r#"node "Classify" was changed in n8n"#]
        );

        let mut renamed = body.clone();
        renamed["name"] = json!("Mail");
        assert_eq!(
            differences(&body, &renamed),
            vec![r#"name is "Mail" in n8n"#]
        );

        let mut added = body.clone();
        added["nodes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "Log", "type": "n8n-nodes-base.noOp", "typeVersion": 1}));
        added["connections"]["Classify"] =
            json!({"main": [[{"node": "Log", "type": "main", "index": 0}]]});
        assert_eq!(
            differences(&body, &added),
            vec![
                r#"node "Log" was added in n8n"#.to_string(),
                "connections were changed in n8n".to_string()
            ]
        );

        let mut settings = body.clone();
        settings["settings"]["executionOrder"] = json!("v0");
        assert_eq!(
            differences(&body, &settings),
            vec!["settings were changed in n8n"]
        );
        let mut timezone = body.clone();
        timezone["settings"]["timezone"] = json!("Europe/Berlin");
        assert_eq!(
            differences(&body, &timezone),
            vec!["settings were changed in n8n"]
        );
        let mut caller = body.clone();
        caller["settings"]["callerPolicy"] = json!("any");
        assert_eq!(
            differences(&body, &caller),
            vec!["settings were changed in n8n"]
        );
    }

    #[test]
    fn hash_is_independent_of_key_order() {
        let a = json!({"b": 1, "a": {"d": [1, 2], "c": null}});
        let b = json!({"a": {"c": null, "d": [1, 2]}, "b": 1.0});
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&json!([1, 2])), hash(&json!([2, 1])));
    }
}
