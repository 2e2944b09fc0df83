//! VoicePipeline: wake word to spoken answer, stage by stage, within a latency budget.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{DURATION_RULE, Placement};

/// A voice pipeline: ordered stages, each in-cluster (a Deployment placed by NodeClass) or an
/// external endpoint, wired each to the next, with end-to-end latency measured against a
/// budget.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "homeplane.dev",
    version = "v1alpha1",
    kind = "VoicePipeline",
    namespaced,
    shortname = "vp",
    category = "homeplane",
    status = "VoicePipelineStatus",
    doc = "A voice pipeline: wake word, speech-to-text, router, LLM, text-to-speech and sink stages with a latency budget.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Stages", type_ = "string", json_path = ".status.readyStages"),
    printcolumn(name = "P95", type_ = "string", json_path = ".status.latencyP95"),
    printcolumn(name = "Budget", type_ = "string", json_path = ".spec.latencyBudget"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.stages.all(s, !has(s.servedBy) || self.stages.exists(t, t.name == s.servedBy && has(t.workload)))").message("servedBy must name another stage of this pipeline that has a workload").field_path(".stages"))]
#[serde(rename_all = "camelCase")]
pub struct VoicePipelineSpec {
    /// The stages in order; each stage's output goes to the next.
    #[schemars(length(min = 1, max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub stages: Vec<Stage>,
    /// End-to-end latency allowed from wake word to spoken answer, e.g. `2s`.
    #[serde(default = "default_budget")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("latencyBudget must be a duration such as 2s or 1500ms"))]
    #[schemars(length(max = 32))]
    pub latency_budget: String,
    /// How often the latency probe runs, e.g. `5m`.
    #[serde(default = "default_probe_interval")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("probeInterval must be a duration such as 5m"))]
    #[schemars(length(max = 32))]
    pub probe_interval: String,
    /// An end-to-end latency probe: an endpoint (usually on the gateway) that runs one request
    /// through the whole chain and answers when it is done. homeplane calls it every
    /// `probeInterval`, keeps p50/p95 over the last `window` calls, and reports
    /// `Degraded` (reason `LatencyBudgetExceeded`) while p95 is over `latencyBudget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<LatencyProbe>,
}

/// How the end-to-end latency of a pipeline is measured.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyProbe {
    /// URL called with GET; any 2xx answer counts as one end-to-end run.
    #[x_kube(validation = Rule::new("self.matches('^https?://.+')").message("probe.url must be an http:// or https:// URL"))]
    #[schemars(length(max = 512))]
    pub url: String,
    /// How long one call may take before it counts as failed, e.g. `10s`.
    #[serde(default = "default_probe_timeout")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("probe.timeout must be a duration such as 10s"))]
    #[schemars(length(max = 32))]
    pub timeout: String,
    /// Number of recent calls p50 and p95 are computed over.
    #[serde(default = "default_window")]
    #[schemars(range(min = 1, max = 1000))]
    pub window: i32,
}

fn default_probe_timeout() -> String {
    "10s".to_string()
}

fn default_window() -> i32 {
    20
}

fn default_budget() -> String {
    "2s".to_string()
}

fn default_probe_interval() -> String {
    "5m".to_string()
}

/// One stage of a voice pipeline.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("(has(self.external) ? 1 : 0) + (has(self.workload) ? 1 : 0) + (has(self.servedBy) ? 1 : 0) == 1").message("a stage must set exactly one of external, workload or servedBy"))]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// Name of the stage, unique in the pipeline.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// What the stage does.
    pub role: StageRole,
    /// A stage served outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalEndpoint>,
    /// A stage homeplane runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<StageWorkload>,
    /// A stage served by another stage's workload, named here: one GPU server hosting several
    /// models (speech-to-text, LLM and text-to-speech on the one GPU of the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub served_by: Option<String>,
    /// Path appended to the stage's endpoint, e.g. `/v1/audio/transcriptions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("path must start with /"))]
    #[schemars(length(max = 256))]
    pub path: Option<String>,
}

/// Role of a stage.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StageRole {
    /// Wake-word detection (usually on a satellite device).
    #[default]
    WakeWord,
    /// Speech-to-text (e.g. Whisper on the GPU).
    SpeechToText,
    /// Routes the request (e.g. an n8n webhook).
    Router,
    /// Language model (e.g. Ollama).
    Llm,
    /// Text-to-speech.
    TextToSpeech,
    /// Where the answer is played (e.g. a Sonos speaker).
    Sink,
}

/// An endpoint outside the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalEndpoint {
    /// URL of the endpoint.
    #[x_kube(validation = Rule::new("self.matches('^[a-z][a-z0-9+.-]*://.+')").message("url must be an absolute URL such as http://host:port/path"))]
    #[schemars(length(max = 512))]
    pub url: String,
}

/// A stage homeplane runs as a Deployment and Service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageWorkload {
    /// Container image.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Arguments of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables of the container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Port the stage serves on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP path that answers 2xx when the stage is ready (its readiness probe), e.g. `/health`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub health_path: Option<String>,
    /// Node class, CPU, memory and GPUs.
    pub placement: Placement,
}

/// The observed state of a VoicePipeline.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoicePipelineStatus {
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded` and `WithinBudget`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Readiness of each stage.
    #[serde(default)]
    pub stages: Vec<StageStatus>,
    /// Ready stages out of all, e.g. `5/6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_stages: Option<String>,
    /// Median end-to-end latency of recent probes, e.g. `1.4s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p50: Option<String>,
    /// 95th-percentile end-to-end latency of recent probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95: Option<String>,
}

/// Readiness of one stage.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Name of the stage.
    pub name: String,
    /// Whether the stage is ready.
    pub ready: bool,
    /// Where the stage is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Why the stage is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
