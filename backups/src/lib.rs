//! homeplane's backup pipeline without a Kubernetes client: part sizing for R2, the S3 client,
//! tar archives of volumes, age keys, the streaming backup and restore, manifests, PostgreSQL sources and sinks, and
//! retention.

pub mod archive;
pub mod crypto;
pub mod manifest;
pub mod memory;
pub mod parts;
pub mod pipeline;
pub mod postgres;
pub mod publish;
pub mod restore;
pub mod retention;
pub mod source;
pub mod store;

pub use age;
pub use parts::{PartPlan, PartPlanError};
