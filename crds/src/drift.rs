//! Drift: one property that is out of its desired state.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::registry::Severity;

/// One property out of its desired state, owned by its StateRegistry. Written by homeplane;
/// `kubectl get drift` lists everything that is wrong. Removed when the property is back in
/// its desired state.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "homeplane.dev",
    version = "v1alpha1",
    kind = "Drift",
    namespaced,
    shortname = "dr",
    category = "homeplane",
    doc = "One state property that is out of its desired state; kubectl get drift lists them all.",
    printcolumn(name = "Property", type_ = "string", json_path = ".spec.property"),
    printcolumn(name = "Desired", type_ = "string", json_path = ".spec.desired"),
    printcolumn(name = "Observed", type_ = "string", json_path = ".spec.observed"),
    printcolumn(name = "Severity", type_ = "string", json_path = ".spec.severity"),
    printcolumn(name = "Since", type_ = "date", json_path = ".spec.since"),
    printcolumn(
        name = "Message",
        type_ = "string",
        priority = 1,
        json_path = ".spec.message"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.severity",
    selectable = ".spec.registry"
)]
#[serde(rename_all = "camelCase")]
pub struct DriftSpec {
    /// Name of the StateRegistry that found the drift.
    pub registry: String,
    /// Id of the property, e.g. `pi.containers.cpu-limits`.
    pub property: String,
    /// The desired value, rendered as text.
    pub desired: String,
    /// The observed value, rendered as text.
    pub observed: String,
    /// How bad it is: `info`, `warning` or `critical`.
    pub severity: Severity,
    /// When the property was first seen out of its desired state.
    pub since: Time,
    /// What the observer said, e.g. which containers lack a CPU limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
