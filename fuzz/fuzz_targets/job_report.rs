//! What the Job of a PVC backup reports as its termination message; the report it writes
//! always fits one.
#![no_main]
use homeplane_backups::archive::{JobReport, TERMINATION_MESSAGE_LIMIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = serde_json::from_slice::<JobReport>(data) {
        let message = report.to_termination_message();
        assert!(
            message.len() <= TERMINATION_MESSAGE_LIMIT,
            "{}",
            message.len()
        );
    }
});
