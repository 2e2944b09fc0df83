//! StateRegistry: the catalogue of state properties, desired versus observed.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ConfigMapKeyRef, DURATION_RULE, any_value, free_form_object};

/// A registry of state properties, each with a desired value and a way to observe it. homeplane
/// evaluates it on an interval and publishes a Drift object for every property that is out of
/// its desired state.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "homeplane.dev",
    version = "v1alpha1",
    kind = "StateRegistry",
    plural = "stateregistries",
    namespaced,
    shortname = "sr",
    category = "homeplane",
    status = "StateRegistryStatus",
    doc = "A catalogue of state properties (desired versus observed) evaluated for drift.",
    printcolumn(
        name = "Properties",
        type_ = "integer",
        json_path = ".status.properties"
    ),
    printcolumn(name = "In-Sync", type_ = "integer", json_path = ".status.inSync"),
    printcolumn(name = "Drifted", type_ = "integer", json_path = ".status.drifted"),
    printcolumn(name = "Unknown", type_ = "integer", json_path = ".status.unknown"),
    printcolumn(
        name = "Last-Eval",
        type_ = "date",
        json_path = ".status.lastEvaluationTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StateRegistrySpec {
    /// How often the registry is evaluated, between `1s` and `24h`, e.g. `60s`.
    #[serde(default = "default_interval")]
    #[x_kube(validation = Rule::new(INTERVAL_RULE).message("interval must be a duration between 1s and 24h, such as 60s or 5m"))]
    #[schemars(length(max = 32))]
    pub interval: String,
    /// `Report` (default) only reports drift; `Correct` runs each drifted property's corrector.
    #[serde(default)]
    pub mode: RegistryMode,
    /// Properties written inline.
    #[serde(default)]
    #[schemars(length(max = 1000), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub properties: Vec<Property>,
    /// ConfigMap keys holding catalogues (YAML lists of properties).
    #[serde(default)]
    pub catalogs: Vec<ConfigMapKeyRef>,
    /// Also watch the properties every homeplane kind contributes (declared versus observed).
    #[serde(default = "default_true")]
    pub derived: bool,
    /// Namespaces whose homeplane objects contribute derived properties and count in the
    /// template context: the registry's own when left empty, every namespace with `*`.
    /// Properties of another namespace's objects are named `<kind>.<namespace>.<name>.…`.
    /// Namespaces other than the registry's own count only for registries in namespaces the
    /// operator trusts (`--trusted-registry-namespace`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub derived_namespaces: Vec<String>,
    /// Most Drift objects kept at once; the rest are counted in status.
    #[serde(default = "default_max_drift")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_drift_objects: i32,
}

/// A duration of at most four parts with at most six digits each (so that CEL's `duration()`
/// cannot overflow), between 1s and 24h.
const INTERVAL_RULE: &str = "self.matches('^([0-9]{1,6}([.][0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) >= duration('1s') && duration(self) <= duration('24h')";

fn default_interval() -> String {
    "60s".to_string()
}

fn default_true() -> bool {
    true
}

fn default_max_drift() -> i32 {
    500
}

/// What the registry does about drift.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RegistryMode {
    /// Report only.
    #[default]
    Report,
    /// Run correctors.
    Correct,
}

/// One state property.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("[has(self.observe.kubernetes), has(self.observe.sql), has(self.observe.http), has(self.observe.docker)].filter(x, x).size() == 1").message("observe must set exactly one of kubernetes, sql, http or docker").field_path(".observe"))]
#[serde(rename_all = "camelCase")]
pub struct Property {
    /// Dotted id, e.g. `pi.containers.cpu-limits`.
    #[schemars(
        length(min = 1, max = 200),
        regex(pattern = r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9_]*[a-z0-9])?)*$")
    )]
    pub id: String,
    /// What the property means, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The desired value: a literal, or a template (`{{ count.Workflow - 6 }}`) evaluated in a
    /// sandbox against the registry context: expressions and a few filters (default, length,
    /// int, float, round, abs, lower, upper, trim, join, min, max, sum, first, last); no
    /// statements, no functions, bounded in size and steps.
    #[schemars(schema_with = "any_value")]
    pub desired: serde_json::Value,
    /// How the observed value is read.
    pub observe: Observer,
    /// How desired and observed are compared.
    #[serde(default)]
    pub comparison: Comparison,
    /// Tolerance for `withinPercent`, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub tolerance_percent: Option<f64>,
    /// How bad drift of this property is.
    #[serde(default)]
    pub severity: Severity,
    /// Drift counts only after it has lasted this long, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("gracePeriod must be a duration such as 10m"))]
    #[schemars(length(max = 32))]
    pub grace_period: Option<String>,
    /// What to do to put the property back (used in `Correct` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrector: Option<Corrector>,
}

/// How a property is observed. Exactly one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Observer {
    /// A field or an aggregate over Kubernetes objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesObserver>,
    /// A scalar SQL query on a Database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<SqlObserver>,
    /// An HTTP endpoint's status code or a JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpObserver>,
    /// A container field from a Docker Engine API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerObserver>,
}

/// Observes Kubernetes objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesObserver {
    /// API version of the objects, e.g. `v1` or `apps/v1`.
    #[schemars(length(min = 1))]
    pub api_version: String,
    /// Kind of the objects, e.g. `Pod`.
    #[schemars(length(min = 1))]
    pub kind: String,
    /// Namespace: the registry's own when left out. Another namespace (or every namespace when
    /// left out, and cluster-scoped kinds) only for registries in namespaces the operator
    /// trusts. Secrets are never observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// One object by name; all matching objects when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Label selector, e.g. `app.kubernetes.io/managed-by=homeplane`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Field selector, e.g. `spec.nodeName=pi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_selector: Option<String>,
    /// JSON pointer of the field in each object; a `*` segment stands for every element of a
    /// list, e.g. `/spec/containers/*/resources/limits/cpu`, e.g. `/spec/replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// How the selected values become one: `value` (a single object), `count`, `all`, `any`,
    /// `sum` or `max`.
    #[serde(default)]
    pub aggregate: Aggregate,
}

/// How values of several objects become one.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Aggregate {
    /// The field of the single selected object.
    #[default]
    Value,
    /// How many objects match.
    Count,
    /// Whether the field is truthy on every object.
    All,
    /// Whether the field is truthy on some object.
    Any,
    /// Sum of the field.
    Sum,
    /// Largest value of the field.
    Max,
}

/// Observes a Database with a query.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqlObserver {
    /// Name of the Database object.
    #[schemars(length(min = 1))]
    pub database: String,
    /// Namespace of the Database object; the registry's when left out. Another namespace only
    /// for registries in namespaces the operator trusts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A query returning one row with one column, run read-only.
    #[schemars(length(min = 1))]
    pub query: String,
}

/// Observes an HTTP endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpObserver {
    /// URL to GET. Link-local, cloud metadata, unspecified, multicast and reserved addresses
    /// are refused (also when a name resolves to them); redirects are not followed.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("url must be an http:// or https:// URL"))]
    #[schemars(length(max = 512))]
    pub url: String,
    /// JSON pointer into the response body; the status code when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_pointer: Option<String>,
    /// Timeout in seconds.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: i32,
}

fn default_timeout() -> i32 {
    5
}

/// Observes a container on a Docker Engine API (hosts outside the cluster).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DockerObserver {
    /// Docker Engine API endpoint, e.g. `tcp://gpu-host:2375` or `unix:///run/docker.sock`.
    #[schemars(length(min = 1))]
    pub endpoint: String,
    /// Container name or id.
    #[schemars(length(min = 1))]
    pub container: String,
    /// JSON pointer into the container's inspect document, e.g. `/State/Status`.
    #[schemars(length(min = 1))]
    pub field: String,
}

/// How desired and observed values are compared.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Comparison {
    /// Equal values.
    #[default]
    Equals,
    /// Same semantic-version major.
    SemverMajor,
    /// Observed at least desired.
    AtLeast,
    /// Observed at most desired.
    AtMost,
    /// Observed within `tolerancePercent` of desired.
    WithinPercent,
    /// Observed matches the regular expression in desired.
    MatchesRegex,
    /// Same elements, in any order.
    SetEquals,
}

/// How bad drift of a property is.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Should be fixed.
    #[default]
    Warning,
    /// Must be fixed now.
    Critical,
}

/// How a drifted property is put back. Correctors act as the ServiceAccount
/// `homeplane-corrector` of the registry's namespace: grant it what the correctors change.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Corrector {
    /// Re-apply the homeplane object that owns the property.
    #[serde(default)]
    pub reapply_owner: bool,
    /// A merge patch applied to the observed object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub patch: Option<serde_json::Value>,
}

/// The observed state of a StateRegistry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateRegistryStatus {
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Properties in the catalogue.
    #[serde(default)]
    pub properties: i32,
    /// Properties in their desired state.
    #[serde(default)]
    pub in_sync: i32,
    /// Properties out of their desired state.
    #[serde(default)]
    pub drifted: i32,
    /// Properties that could not be observed.
    #[serde(default)]
    pub unknown: i32,
    /// Drifted properties per severity.
    #[serde(default)]
    pub drifted_by_severity: BTreeMap<String, i32>,
    /// Drifted properties without a Drift object because of `maxDriftObjects`.
    #[serde(default)]
    pub not_materialized: i32,
    /// Properties refused because of an error in the catalogue (see the `Degraded` condition).
    #[serde(default)]
    pub refused: i32,
    /// Corrections run in `Correct` mode since the operator started.
    #[serde(default)]
    pub corrections: i32,
    /// Properties that could not be observed, with the reason (the first 50 by id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_properties: Vec<UnknownProperty>,
    /// When the last evaluation ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluation_time: Option<Time>,
    /// How long the last evaluation took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluation_millis: Option<i64>,
}

/// A property that could not be observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnknownProperty {
    /// Property id.
    pub property: String,
    /// Why it could not be observed or compared.
    pub reason: String,
}
