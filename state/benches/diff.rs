//! Benchmark of the diff engine alone (no observer): 234, 10,000 and 100,000 properties with a
//! mix of comparisons, a tenth drifted and a twentieth unknown. Prints a table; `bench/state.sh`
//! writes it to bench/results/state-diff.txt.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use homeplane_crds::registry::Severity;
use homeplane_state::catalogue::{Checked, Desired, Observe};
use homeplane_state::{Comparison, Observation, evaluate};
use serde_json::{Value, json};

/// Properties, their rendered desired values and their observations.
type Catalogue = (
    Vec<Checked>,
    Vec<Result<Value, String>>,
    HashMap<String, Observation>,
);

fn catalogue(n: usize) -> Catalogue {
    let mut properties = Vec::with_capacity(n);
    let mut desired = Vec::with_capacity(n);
    let mut observed = HashMap::with_capacity(n);
    for i in 0..n {
        let id = format!("host{}.service{}.property{i}", i % 7, i % 36);
        let (comparison, want, seen) = match i % 6 {
            0 => (Comparison::Equals, json!(true), json!(i % 10 != 0)),
            1 => (
                Comparison::AtLeast,
                json!(70),
                json!(if i % 10 == 1 { 60 } else { 76 }),
            ),
            2 => (
                Comparison::SemverMajor,
                json!("16"),
                json!("PostgreSQL 16.4"),
            ),
            3 => (Comparison::WithinPercent(10.0), json!(2000), json!(1850)),
            4 => (
                Comparison::SetEquals,
                json!(["app", "reader", "backup"]),
                json!(["backup", "app", "reader"]),
            ),
            _ => (
                Comparison::MatchesRegex,
                json!("ok.*"),
                json!("ok: 3 checks"),
            ),
        };
        let observation = if i % 20 == 7 {
            Observation::failed("connection refused")
        } else {
            Observation::value(seen)
        };
        properties.push(Checked {
            id: id.clone(),
            description: None,
            desired: Desired::Literal(want.clone()),
            observe: Observe::Declared(Box::default()),
            comparison,
            severity: [Severity::Info, Severity::Warning, Severity::Critical][i % 3],
            grace: None,
            corrector: None,
        });
        desired.push(Ok(want));
        observed.insert(id, observation);
    }
    (properties, desired, observed)
}

fn main() {
    let now = jiff::Timestamp::now();
    println!("# diff engine alone (homeplane_state::evaluate), median of 5 runs");
    println!(
        "{:>10} {:>12} {:>14} {:>9} {:>8}",
        "properties", "median (ms)", "per prop (ns)", "drifted", "unknown"
    );
    for n in [234usize, 10_000, 100_000] {
        let (properties, desired, observed) = catalogue(n);
        let mut times: Vec<Duration> = Vec::new();
        let mut last = None;
        for _ in 0..5 {
            let started = Instant::now();
            let report = evaluate(&properties, &desired, &observed, &HashMap::new(), now);
            times.push(started.elapsed());
            last = Some(report);
        }
        times.sort();
        let median = times[2];
        let (drifted, unknown) = last.map_or((0, 0), |r| (r.drifted, r.unknown));
        #[allow(clippy::cast_precision_loss)]
        let per = median.as_nanos() as f64 / n as f64;
        println!(
            "{n:>10} {:>12.3} {per:>14.0} {drifted:>9} {unknown:>8}",
            median.as_secs_f64() * 1000.0
        );
    }
}
