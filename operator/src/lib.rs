//! homeplane's operator as a library: the controllers and the reconcile frame they share,
//! placement, leader election, the web endpoints, metrics and the command-line tools. The
//! `homeplane` binary (`main.rs`) only parses the command line and dispatches here, so that a
//! controller can be driven from a test without the binary.

pub mod backup_cli;
pub mod cache;
pub mod cli;
pub mod conditions;
pub mod controllers;
pub mod crdgen;
pub mod dashboard;
pub mod drift_cli;
pub mod duration;
pub mod history;
pub mod import;
pub mod leader;
pub mod metrics;
pub mod migrate_cli;
pub mod plan_cli;
pub mod quantity;
pub mod reconcile;
pub mod run;
pub mod startup;
pub mod telemetry;
pub mod web;
pub mod workload;
