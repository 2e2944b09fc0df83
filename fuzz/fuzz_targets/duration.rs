//! Durations of every CRD (`interval`, `gracePeriod`, latency budgets): any text gives a
//! duration no longer than the maximum, or an error; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(d) = homeplane_state::duration::parse(text) {
        assert!(d <= homeplane_state::duration::MAX);
        assert_eq!(homeplane_fuzz::duration::parse(text).ok(), Some(d));
    }
    let _ = homeplane_fuzz::duration::parse(text);
});
