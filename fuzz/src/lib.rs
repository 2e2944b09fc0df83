//! The operator's parsers of untrusted input, compiled from their own source files (the
//! operator is a binary crate, and these modules depend on nothing else of it), for the fuzz
//! targets in `fuzz_targets/`.
#![allow(dead_code, unused_imports)]

#[path = "../../operator/src/quantity.rs"]
pub mod quantity;

#[path = "../../operator/src/duration.rs"]
pub mod duration;

#[path = "../../operator/src/controllers/agentrun/contract.rs"]
pub mod contract;

#[path = "../../operator/src/controllers/workflow/definition.rs"]
pub mod definition;

#[path = "../../operator/src/controllers/backuppolicy/cron.rs"]
pub mod schedule;

pub mod database;

/// Splits fuzz input into `n` text parts at NUL bytes (missing parts are empty).
pub fn parts(data: &[u8], n: usize) -> Vec<String> {
    let mut out: Vec<String> = data
        .splitn(n, |b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    out.resize(n, String::new());
    out
}
