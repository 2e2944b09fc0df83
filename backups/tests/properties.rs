//! Round trips of the backup pipeline's pure stages, over random inputs: whatever homeplane
//! encrypts (compressed or not, to one or several recipients) decrypts to the same bytes with
//! any one of the matching identities, and with no other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use age::secrecy::ExposeSecret;
use homeplane_backups::crypto::{self, Compress};
use proptest::prelude::*;

fn keys(n: usize) -> (Vec<age::x25519::Recipient>, Vec<String>) {
    let identities: Vec<age::x25519::Identity> =
        (0..n).map(|_| age::x25519::Identity::generate()).collect();
    (
        identities.iter().map(|i| i.to_public()).collect(),
        identities
            .iter()
            .map(|i| i.to_string().expose_secret().to_string())
            .collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn encrypt_then_decrypt_gives_the_same_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..200_000),
        level in proptest::option::of(1i32..6),
        recipients in 1usize..4,
        which in 0usize..4,
    ) {
        let (public, secret) = keys(recipients);
        let compress = level.map(Compress::Zstd).unwrap_or(Compress::None);
        let (read, sealed) = crypto::encrypt(&data[..], &public, compress, Vec::new()).unwrap();
        prop_assert_eq!(read, data.len() as u64);
        let identity = crypto::parse_identities(&secret[which % recipients]).unwrap();
        let (written, plain) = crypto::decrypt(&sealed[..], &identity, compress, Vec::new()).unwrap();
        prop_assert_eq!(written, data.len() as u64);
        prop_assert_eq!(&plain, &data);
        // decrypt_detect finds the compression by itself.
        let (_, detected) = crypto::decrypt_detect(&sealed[..], &identity, Vec::new()).unwrap();
        prop_assert_eq!(&detected, &data);
        // Another key cannot.
        let (_, stranger) = keys(1);
        let other = crypto::parse_identities(&stranger[0]).unwrap();
        prop_assert!(crypto::decrypt(&sealed[..], &other, compress, Vec::new()).is_err());
    }
}
