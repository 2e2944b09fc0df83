//! A volume archive read back by a restore drill: every header and every entry checked.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = homeplane_backups::archive::check(data);
});
