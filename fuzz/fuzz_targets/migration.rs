//! Migration files: names (`NNNN_description.sql`, `.down.sql`) and their order.
#![no_main]
use homeplane_fuzz::database::migrate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = homeplane_fuzz::parts(data, 4);
    let parsed: Vec<migrate::Migration> = parts
        .chunks(2)
        .filter_map(|p| migrate::parse(&p[0], &p[1]).ok())
        .collect();
    let _ = migrate::order(parsed);
});
