//! The manifest of a backup object, read back from the bucket.
#![no_main]
use homeplane_backups::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = serde_json::from_slice::<Manifest>(data) {
        let again = serde_json::to_vec(&manifest).unwrap_or_default();
        assert_eq!(
            serde_json::from_slice::<Manifest>(&again).ok(),
            Some(manifest)
        );
    }
});
