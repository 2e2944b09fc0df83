//! age recipients (from a BackupPolicy) and identities (an owner's key file).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let keys: Vec<&str> = text.lines().collect();
    let _ = homeplane_backups::crypto::parse_recipients(&keys);
    let _ = homeplane_backups::crypto::parse_identities(text);
});
