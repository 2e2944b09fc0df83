//! A backup object as restore reads it: an age file of unknown origin, decrypted with the
//! owner's identity and decompressed when it is zstd, output bounded.
#![no_main]
use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A writer that refuses more than 1 MiB (a small input must not expand without bound).
struct Bounded(usize);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        if self.0 > 1 << 20 {
            return Err(std::io::Error::other("too much output"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn identities() -> &'static [homeplane_backups::crypto::Identity] {
    static IDS: OnceLock<Vec<homeplane_backups::crypto::Identity>> = OnceLock::new();
    IDS.get_or_init(|| {
        homeplane_backups::crypto::parse_identities(include_str!("../corpus/identity.txt"))
            .unwrap_or_default()
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = homeplane_backups::crypto::decrypt_detect(data, identities(), Bounded(0));
});
