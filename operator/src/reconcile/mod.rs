//! The reconcile frame: one shape for every controller (docs/reconcile.md).
//!
//! A controller is a [`Reconciler`]: its kind, its name, its resync, and one pass that reads top
//! down as dereference → validate → build (pure) → apply → status fields, ending in an
//! [`Outcome`]. The frame does the rest the same way for every kind: it fetches the object as
//! stored, marks a new generation `Reconciling` before any work, turns the outcome into kstatus
//! conditions (`Ready`, `Reconciling`, `Stalled`, `Degraded`, all with `observedGeneration`),
//! writes the status only when it changed, publishes a Warning event when the news is bad,
//! retries transient failures with one backoff policy ([`retry`]) and reports watch failures and
//! objects it cannot read ([`watch`]).

pub mod driver;
pub mod list;
pub mod outcome;
pub mod retry;
pub mod status;
pub mod watch;

#[cfg(test)]
pub(crate) mod mock;
#[cfg(test)]
mod tests;

pub use driver::{Reconciler, key, run};
pub use outcome::{Cure, Outcome, State};
pub use status::Object;
