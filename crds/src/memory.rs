//! MemoryServer: a pgvector-backed semantic memory service with a cache and an embedding model.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{DURATION_RULE, Placement};

/// A semantic memory server on pgvector: a Database (homeplane ensures the `vector` extension
/// and a `memory` schema), a Redis cache, an embedding model, and the layer policy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "homeplane.dev",
    version = "v1alpha1",
    kind = "MemoryServer",
    namespaced,
    shortname = "mem",
    category = "homeplane",
    status = "MemoryServerStatus",
    doc = "A pgvector-backed semantic memory server with a Redis cache and an embedding model.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MemoryServerSpec {
    /// Container image of the memory server.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Node class, CPU and memory of the server.
    pub placement: Placement,
    /// The Database (same namespace) the memories are stored in.
    pub database: MemoryDatabase,
    /// The Redis cache: managed by homeplane or external. Exactly one.
    pub cache: Cache,
    /// Where embeddings come from: an endpoint or a model workload. Exactly one.
    pub embedding: Embedding,
    /// How long memories live.
    #[serde(default)]
    pub layers: Layers,
}

/// The Database a MemoryServer uses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryDatabase {
    /// Name of the Database object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Schema the memories live in.
    #[serde(default = "default_memory")]
    pub schema: String,
    /// Role the server connects as.
    #[serde(default = "default_memory")]
    pub role: String,
}

impl Default for MemoryDatabase {
    fn default() -> Self {
        Self {
            name: String::new(),
            schema: default_memory(),
            role: default_memory(),
        }
    }
}

fn default_memory() -> String {
    "memory".to_string()
}

/// The cache in front of PostgreSQL.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("cache must set exactly one of managed or external"))]
#[serde(rename_all = "camelCase")]
pub struct Cache {
    /// A small Redis that homeplane runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedCache>,
    /// An existing Redis, by URL (`redis://host:6379/0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('redis://') || self.startsWith('rediss://')").message("external must be a redis:// or rediss:// URL"))]
    #[schemars(length(max = 512))]
    pub external: Option<String>,
}

/// A Redis homeplane runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedCache {
    /// Container image of Redis.
    #[serde(default = "default_redis_image")]
    pub image: String,
    /// Node class, CPU and memory of Redis.
    pub placement: Placement,
}

fn default_redis_image() -> String {
    "redis:7-alpine".to_string()
}

/// Where embeddings come from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.endpoint) != has(self.model)").message("embedding must set exactly one of endpoint or model"))]
#[serde(rename_all = "camelCase")]
pub struct Embedding {
    /// An existing embedding endpoint (OpenAI-compatible `/v1/embeddings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EmbeddingEndpoint>,
    /// A model workload homeplane runs, usually on the GPU class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<EmbeddingModel>,
}

/// An existing embedding endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingEndpoint {
    /// Base URL of the endpoint.
    #[schemars(length(min = 1))]
    pub url: String,
    /// Model name sent with each request, e.g. `qwen3-embedding`.
    #[schemars(length(min = 1))]
    pub model: String,
}

/// An embedding model workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingModel {
    /// Container image serving the model.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Model name.
    #[schemars(length(min = 1))]
    pub model: String,
    /// Port the model serves on.
    #[serde(default = "default_model_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Node class, CPU, memory and GPUs of the model.
    pub placement: Placement,
}

fn default_model_port() -> i32 {
    8080
}

/// How long memories live.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Layers {
    /// Episodic memories expire after this long, e.g. `168h` (7 days).
    #[serde(default = "default_episodic_ttl")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("episodicTtl must be a duration such as 168h"))]
    #[schemars(length(max = 32))]
    pub episodic_ttl: String,
    /// Keep a permanent knowledge layer that never expires.
    #[serde(default = "default_true")]
    pub permanent: bool,
}

impl Default for Layers {
    fn default() -> Self {
        Self {
            episodic_ttl: default_episodic_ttl(),
            permanent: true,
        }
    }
}

fn default_episodic_ttl() -> String {
    "168h".to_string()
}

fn default_true() -> bool {
    true
}

/// The observed state of a MemoryServer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryServerStatus {
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// State of each dependency (`database`, `cache`, `embedding`), one line each.
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
    /// Where the memory server is reached inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// State of one dependency.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    /// `database`, `cache` or `embedding`.
    pub name: String,
    /// Whether it is ready.
    pub ready: bool,
    /// What is wrong, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
