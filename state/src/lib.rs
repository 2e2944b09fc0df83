//! homeplane's state registry without a Kubernetes client: how a desired and an observed value
//! of a property are compared, and what the outcome is. Observers and the history store build
//! on this.

pub mod compare;

pub use compare::{Comparison, Outcome, compare};
