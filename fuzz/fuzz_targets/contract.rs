//! The result contract an agent's container writes as its termination message.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(contract) = homeplane_fuzz::contract::parse(text) {
        let _ = homeplane_fuzz::contract::phase(contract.status);
    }
    let seconds = i64::try_from(text.len()).unwrap_or(0) * 1_000_003;
    let _ = homeplane_fuzz::contract::duration(seconds);
    let _ = homeplane_fuzz::contract::duration(-seconds);
});
