//! State-registry catalogues from ConfigMaps: any YAML is a list of checked properties and
//! precise refusals, never a panic.
#![no_main]
use homeplane_state::Catalogue;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mut catalogue = Catalogue::default();
    catalogue.add_yaml("fuzz", text);
    catalogue.refuse_duplicates();
    for error in &catalogue.errors {
        let _ = error.to_string();
    }
});
