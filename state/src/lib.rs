//! homeplane's state registry without a Kubernetes client: the catalogue of properties, desired
//! values and their templates, the observers that reach outside the cluster (SQL, HTTP,
//! Docker), the diff engine, and the drift history store. The operator adds the Kubernetes
//! observer and publishes the results.

pub mod catalogue;
pub mod compare;
pub mod derived;
pub mod duration;
pub mod engine;
pub mod observation;
pub mod observe;
pub mod template;

pub use catalogue::{Catalogue, Checked, Desired, Observe, PropertyError};
pub use compare::{Comparison, Outcome, compare};
pub use engine::{Report, State, Transition, Verdict, evaluate};
pub use observation::Observation;
