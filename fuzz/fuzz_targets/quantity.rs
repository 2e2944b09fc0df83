//! Kubernetes quantities (`500m`, `8Gi`, `1e3`): total, bounded, and CPU formatting reads back
//! as the same value.
#![no_main]
use homeplane_fuzz::quantity::Milli;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(m) = Milli::parse(text) {
        assert!(m.0.abs() <= Milli::MAX.0);
        assert_eq!(Milli::parse(&m.cpu()), Ok(m), "{text:?}");
        let _ = m.memory();
        let _ = m + m;
        let _ = m * 1000;
    }
});
