//! Observers that reach outside the cluster, each batched: one connection per database, one
//! request per URL, one inspection per container.

pub mod docker;
pub mod http;
pub mod sql;
