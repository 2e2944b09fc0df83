//! Agent and AgentRun: AI worker agents with a tier, a scope, a budget and a result contract.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{POSITIVE_QUANTITY, Placement};

/// An AI worker agent: its tier and scope become a ServiceAccount bound to the least RBAC that
/// allows them; its budget bounds every run. An Agent never gets a right the person who asked
/// for it does not hold (docs/security.md).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "homeplane.dev",
    version = "v1alpha1",
    kind = "Agent",
    namespaced,
    shortname = "ag",
    category = "homeplane",
    status = "AgentStatus",
    doc = "An AI worker agent with a tier, a scope and a budget.",
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Running", type_ = "integer", json_path = ".status.runningRuns"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!self.scope.clusterWide || self.tier == 'director'").message("scope.clusterWide is allowed only for tier director").field_path(".scope.clusterWide"))]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// `observer` (read-only), `builder` (may change things inside its scope) or `director`
    /// (dispatches other agents; cluster-wide only with `scope.clusterWide`).
    pub tier: AgentTier,
    /// What the agent may see or change.
    pub scope: AgentScope,
    /// Container image that runs the agent.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Command of the container; the image's entrypoint when left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Limits of every run.
    pub budget: Budget,
    /// Node class of the runs; the budget's CPU and memory are the limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// Tier of an agent.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentTier {
    /// Read-only: get, list and watch inside the scope.
    #[default]
    Observer,
    /// Observer plus create, update, patch and delete inside the scope.
    Builder,
    /// Builder rights, cluster-wide when `scope.clusterWide` is set.
    Director,
}

/// What an agent may touch. The person who asks for the Agent must hold every right it
/// gets; a namespace other than the Agent's own needs an admin's consent there (the verb
/// `grant` on `agents/delegate` of group `homeplane.dev` in that namespace), and restricted
/// resources (Secrets, `pods/exec`, `pods/attach`, `pods/portforward`,
/// `serviceaccounts/token`, RBAC, admission, certificates, nodes, Agents and AgentRuns) the
/// verb `grant` on `agents/delegate-restricted`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentScope {
    /// Namespaces the agent works in; the agent's own namespace when empty.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub namespaces: Vec<String>,
    /// Kinds of resource the agent may touch; each must be grantable (the chart value
    /// `agents.grantable`).
    #[schemars(length(min = 1, max = 32))]
    pub resources: Vec<ScopedResource>,
    /// Apply the rights in every namespace (director only; needs `grant` on `agents/delegate`
    /// cluster-wide).
    #[serde(default)]
    pub cluster_wide: bool,
}

/// A kind of resource, as RBAC names it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScopedResource {
    /// API group, empty for the core group (`""`, `apps`, `homeplane.dev`). Wildcards are
    /// refused.
    #[serde(default)]
    #[x_kube(validation = Rule::new("!self.contains('*')").message("apiGroup must name one API group; wildcards are refused"))]
    #[schemars(length(max = 253))]
    pub api_group: String,
    /// Plural resource name, e.g. `configmaps`, or with a subresource, e.g. `pods/log`.
    /// Wildcards are refused.
    #[x_kube(validation = Rule::new("self != '*' && !self.contains('*')").message("resource must name one resource; wildcards are refused"))]
    #[schemars(length(min = 1, max = 63))]
    pub resource: String,
}

/// Limits of every run of an agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// CPU limit, e.g. `1`.
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("cpu must be a positive quantity such as 500m or 2"))]
    #[schemars(length(max = 32))]
    pub cpu: String,
    /// Memory limit, e.g. `1Gi`.
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("memory must be a positive quantity such as 256Mi or 2Gi"))]
    #[schemars(length(max = 32))]
    pub memory: String,
    /// Longest a run may take, in seconds; the Job's deadline.
    #[schemars(range(min = 1, max = 604800))]
    pub max_run_seconds: i64,
    /// Runs allowed at once; further runs wait as `Queued`.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 100))]
    pub max_concurrent_runs: i32,
}

fn default_one() -> i32 {
    1
}

/// The observed state of an Agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// ServiceAccount the agent's runs use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Runs now running.
    #[serde(default)]
    pub running_runs: i32,
}

/// One unit of work dispatched to an Agent; runs as a Job and ends with a result contract.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "homeplane.dev",
    version = "v1alpha1",
    kind = "AgentRun",
    namespaced,
    shortname = "ar",
    category = "homeplane",
    status = "AgentRunStatus",
    doc = "One dispatched unit of work of an Agent, run as a Job that must return a result contract.",
    printcolumn(name = "Agent", type_ = "string", json_path = ".spec.agent"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Duration", type_ = "string", json_path = ".status.duration"),
    printcolumn(
        name = "Files",
        type_ = "integer",
        json_path = ".status.filesChangedCount"
    ),
    printcolumn(name = "Tests", type_ = "integer", json_path = ".status.testsRunCount"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("an AgentRun's spec cannot change; create a new AgentRun instead"))]
#[serde(rename_all = "camelCase")]
pub struct AgentRunSpec {
    /// Name of the Agent in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub agent: String,
    /// The task, given to the container as `HOMEPLANE_TASK`.
    #[schemars(length(min = 1, max = 32768))]
    pub task: String,
}

/// Phase of an agent run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AgentRunPhase {
    /// Waiting for a free slot under the Agent's `maxConcurrentRuns`.
    #[default]
    Queued,
    /// The Job is running.
    Running,
    /// Contract status DONE.
    Done,
    /// Contract status PARTIAL.
    Partial,
    /// Contract status BLOCKED.
    Blocked,
    /// Contract status FAILED, or the Job failed.
    Failed,
    /// The run ended without a valid result contract.
    NoContract,
}

/// The result contract a run returns as JSON in its container's termination message.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultContract {
    /// `DONE`, `PARTIAL`, `BLOCKED` or `FAILED`.
    pub status: ContractStatus,
    /// One-paragraph summary of what was done.
    #[serde(default)]
    pub summary: String,
    /// Paths of files the run changed.
    #[serde(default)]
    pub files_changed: Vec<String>,
    /// Commits the run made.
    #[serde(default)]
    pub commits: Vec<String>,
    /// Tests the run executed.
    #[serde(default)]
    pub tests_run: Vec<String>,
    /// Where the run departed from its task, and why.
    #[serde(default)]
    pub deviations: Vec<String>,
    /// Work the run leaves for later.
    #[serde(default)]
    pub follow_ups: Vec<String>,
}

/// Status word of a result contract.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ContractStatus {
    /// The task is done.
    #[default]
    Done,
    /// Part of the task is done.
    Partial,
    /// The run could not proceed.
    Blocked,
    /// The run failed.
    Failed,
}

/// The observed state of an AgentRun.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRunStatus {
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the run ended with a contract) and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Queued, Running, Done, Partial, Blocked, Failed or NoContract.
    #[serde(default)]
    pub phase: AgentRunPhase,
    /// The Job running the work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// When the Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the Job ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// How long the run took, e.g. `3m12s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// The result contract the run returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultContract>,
    /// Number of files the contract lists as changed.
    #[serde(default)]
    pub files_changed_count: i32,
    /// Number of tests the contract lists as run.
    #[serde(default)]
    pub tests_run_count: i32,
}
