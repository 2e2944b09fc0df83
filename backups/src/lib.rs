//! homeplane's backup pipeline without a Kubernetes client. Today: how an upload is cut into
//! multipart parts within the limits of Cloudflare R2 (and S3).

pub mod parts;

pub use parts::{PartPlan, PartPlanError};
