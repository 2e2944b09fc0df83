//! Types shared by several kinds: secret references, placement, quantities and the status
//! conventions (conditions, observedGeneration).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The Kubernetes types the kinds' status and metadata are made of, for readers of the API
/// that have no other use for `k8s-openapi` (the state registry's derived properties).
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};

/// The API group of every homeplane kind.
pub const GROUP: &str = "homeplane.dev";
/// The API version of every homeplane kind.
pub const VERSION: &str = "v1alpha1";

/// CEL rule shared by every CPU/memory quantity field: a valid, strictly positive quantity.
pub(crate) const POSITIVE_QUANTITY: &str =
    "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))";

/// A key inside a Secret in the same namespace as the object that names it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret whose value is used.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A key inside a ConfigMap in the same namespace as the object that names it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the ConfigMap whose value is used.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// CPU and memory for a workload. Each value is a Kubernetes quantity (`500m`, `2`, `512Mi`);
/// where a value is left out, the NodeClass default applies.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU request and limit, e.g. `500m` or `2`. Must be greater than zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("cpu must be a positive quantity such as 500m or 2"))]
    #[schemars(length(max = 32))]
    pub cpu: Option<String>,
    /// Memory request and limit, e.g. `256Mi` or `2Gi`. Must be greater than zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("memory must be a positive quantity such as 256Mi or 2Gi"))]
    #[schemars(length(max = 32))]
    pub memory: Option<String>,
}

/// Where a workload runs and how much it may use. Every workload homeplane creates has CPU and
/// memory requests and limits: from here, or from the NodeClass defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Name of the NodeClass to run on, e.g. `pi` or `gpu`.
    #[schemars(length(min = 1, max = 63))]
    pub class: String,
    /// CPU request and limit, e.g. `500m`. Defaults to the NodeClass default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("cpu must be a positive quantity such as 500m or 2"))]
    #[schemars(length(max = 32))]
    pub cpu: Option<String>,
    /// Memory request and limit, e.g. `512Mi`. Defaults to the NodeClass default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("memory must be a positive quantity such as 256Mi or 2Gi"))]
    #[schemars(length(max = 32))]
    pub memory: Option<String>,
    /// Number of GPUs (of the NodeClass's GPU resource) the workload needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub gpu: Option<i32>,
}

/// What happens to external state (databases, n8n workflows) when the object is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the external state; only homeplane's management of it ends. The default.
    #[default]
    Retain,
    /// Delete the external state together with the object.
    Delete,
}

/// Schema for a free-form JSON object kept as the user wrote it (an n8n workflow definition,
/// a patch).
pub(crate) fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Schema for a value of any JSON type (a desired or observed property value).
pub(crate) fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// CEL rule for a Go-style duration such as `90s`, `5m` or `1h30m`.
pub(crate) const DURATION_RULE: &str = "self.matches('^([0-9]+([.][0-9]+)?(ms|s|m|h))+$')";

/// CEL rule for a five-field cron expression (`0 3 * * *`) or a macro (`@daily`).
pub(crate) const CRON_RULE: &str = "self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|([0-9*/,?LW#A-Za-z-]+[ ]+){4}[0-9*/,?LW#A-Za-z-]+)$')";
