//! Workflow: an n8n workflow kept as code.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ConfigMapKeyRef, DeletionPolicy, SecretKeyRef, free_form_object};

/// An n8n workflow as code: homeplane creates, updates and (de)activates it through n8n's
/// public API and reports edits made in the n8n UI as drift.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "homeplane.dev",
    version = "v1alpha1",
    kind = "Workflow",
    namespaced,
    shortname = "wf",
    category = "homeplane",
    status = "WorkflowStatus",
    doc = "An n8n workflow as code, pushed to n8n through its public REST API.",
    printcolumn(name = "Active", type_ = "boolean", json_path = ".spec.active"),
    printcolumn(name = "N8n-Id", type_ = "string", json_path = ".status.n8nId"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Drifted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Drifted\")].status"
    ),
    printcolumn(
        name = "Last-Run",
        type_ = "string",
        json_path = ".status.lastExecution.status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.definition) != has(self.definitionFrom)").message("set exactly one of definition or definitionFrom"))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// The n8n instance the workflow lives in.
    pub n8n: N8nTarget,
    /// The workflow definition as n8n exports it (`name`, `nodes`, `connections`, `settings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub definition: Option<serde_json::Value>,
    /// A ConfigMap key holding the workflow definition as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_from: Option<ConfigMapKeyRef>,
    /// Whether the workflow is active in n8n.
    #[serde(default)]
    pub active: bool,
    /// What to do when the workflow in n8n differs from the declaration: `Report` or `Correct`.
    #[serde(default)]
    pub on_drift: DriftAction,
    /// What happens to the workflow in n8n when this object is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Where an n8n instance is and how to authenticate to it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct N8nTarget {
    /// Base URL of n8n, e.g. `http://n8n.automation:5678`.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("url must be an http:// or https:// URL"))]
    #[schemars(length(max = 512))]
    pub url: String,
    /// Secret key holding an n8n API key.
    pub api_key_secret: SecretKeyRef,
}

/// What to do about drift.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DriftAction {
    /// Report it (condition and state-registry property) and change nothing. The default.
    #[default]
    Report,
    /// Put the declared state back.
    Correct,
}

/// The observed state of a Workflow.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Degraded` and `Drifted`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Id of the workflow in n8n.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n8n_id: Option<String>,
    /// Whether the workflow is active in n8n, as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Canonical hash of the declared definition last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_hash: Option<String>,
    /// The most recent execution n8n reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_execution: Option<Execution>,
}

/// One n8n execution.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// n8n's status of the execution, e.g. `success` or `error`.
    pub status: String,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}
