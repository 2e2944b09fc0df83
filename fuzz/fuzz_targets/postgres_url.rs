//! PostgreSQL URLs (`homeplane restore --into`, backup sources).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = homeplane_backups::postgres::PgConn::from_url(text);
});
