//! homeplane's API, group `homeplane.dev`, version `v1alpha1`: the custom resource types, their
//! OpenAPI schema, CEL validation rules and printer columns. Nothing else lives here.

pub mod agent;
pub mod backup;
pub mod common;
pub mod database;
pub mod drift;
pub mod memory;
pub mod nodeclass;
pub mod registry;
pub mod voice;
pub mod workflow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::CustomResourceExt;

pub use agent::{Agent, AgentRun};
pub use backup::{Backup, BackupPolicy};
pub use common::{GROUP, VERSION};
pub use database::Database;
pub use drift::Drift;
pub use memory::MemoryServer;
pub use nodeclass::NodeClass;
pub use registry::StateRegistry;
pub use voice::VoicePipeline;
pub use workflow::Workflow;

/// Every CustomResourceDefinition of the API, in a stable order (the order `homeplane crd`
/// prints them and the order they are installed).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        NodeClass::crd(),
        Database::crd(),
        BackupPolicy::crd(),
        Backup::crd(),
        Workflow::crd(),
        Agent::crd(),
        AgentRun::crd(),
        VoicePipeline::crd(),
        MemoryServer::crd(),
        StateRegistry::crd(),
        Drift::crd(),
    ]
}
