//! age keys: parsing recipients (public keys) and identities (private keys), fingerprints of
//! recipients for manifests, and the synchronous encrypt/decrypt stages of the pipeline.
//!
//! Encryption writes the age format itself (the `age` crate writes the header, `stream` the
//! payload): the payload is age's STREAM of 64 KiB chunks, each sealed on its own with
//! ChaCha20-Poly1305 and a nonce made of its position, so chunks are sealed in parallel and
//! written in order. The AEAD is ring's (BoringSSL's assembly: AVX2 on x86-64, NEON on
//! aarch64), the fastest the crates offer without a C library. Decryption stays the `age`
//! crate's.

use std::io::{self, BufReader, Read, Write};
use std::str::FromStr;

use age::x25519;
use sha2::{Digest, Sha256};

mod stream;

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A recipient is not an age X25519 public key.
    #[error("recipient {index} is not an age X25519 public key (age1...): {reason}")]
    Recipient { index: usize, reason: String },
    /// No recipient was given.
    #[error("no age recipient was given; without one nobody could restore the backup")]
    NoRecipients,
    /// The identity text could not be parsed.
    #[error("the age identity could not be read: {0}")]
    Identity(String),
    /// The identity text holds no identity.
    #[error("the identity file holds no age identity (AGE-SECRET-KEY-1...)")]
    NoIdentity,
}

/// An age identity usable for decryption.
pub type Identity = Box<dyn age::Identity + Send + Sync>;

/// Parses age X25519 public keys.
pub fn parse_recipients<S: AsRef<str>>(keys: &[S]) -> Result<Vec<x25519::Recipient>, KeyError> {
    if keys.is_empty() {
        return Err(KeyError::NoRecipients);
    }
    keys.iter()
        .enumerate()
        .map(|(index, key)| {
            x25519::Recipient::from_str(key.as_ref().trim()).map_err(|reason| KeyError::Recipient {
                index,
                reason: reason.to_string(),
            })
        })
        .collect()
}

/// Parses an identity file's text (`AGE-SECRET-KEY-1...` lines; `#` comments allowed).
pub fn parse_identities(text: &str) -> Result<Vec<Identity>, KeyError> {
    let file = age::IdentityFile::from_buffer(text.as_bytes())
        .map_err(|e| KeyError::Identity(e.to_string()))?;
    let identities = file
        .into_identities()
        .map_err(|e| KeyError::Identity(e.to_string()))?;
    if identities.is_empty() {
        return Err(KeyError::NoIdentity);
    }
    Ok(identities)
}

/// A short, stable fingerprint of a public key: `sha256:` and the first 16 hex digits of the
/// SHA-256 of its text form. Written to manifests so a reader knows which key decrypts.
pub fn fingerprint(recipient: &x25519::Recipient) -> String {
    let digest = Sha256::digest(recipient.to_string().as_bytes());
    format!("sha256:{}", &hex::encode(digest)[..16])
}

/// Compression before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// zstd at this level.
    Zstd(i32),
    /// None.
    None,
}

impl Compress {
    /// `zstd` or `none`, as written to object metadata and manifests.
    pub fn name(self) -> &'static str {
        match self {
            Compress::Zstd(_) => "zstd",
            Compress::None => "none",
        }
    }
}

/// Failure of the encrypt or decrypt stage.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the input or writing the output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The age layer refused the input.
    #[error("{0}")]
    Age(String),
    /// None of the identities matches a recipient of the file.
    #[error(
        "none of the given age identities can decrypt this backup: it was encrypted to other keys"
    )]
    WrongIdentity,
}

/// Compresses (optionally) and encrypts `input` to `recipients`, writing the age file to
/// `output`. Returns the bytes read from `input` and `output`, flushed. The payload's chunks
/// are sealed on as many threads as the process may use (see [`sealing_threads`]).
pub fn encrypt<R: Read, W: Write>(
    input: R,
    recipients: &[x25519::Recipient],
    compress: Compress,
    output: W,
) -> Result<(u64, W), StreamError> {
    encrypt_on(input, recipients, compress, output, usize::MAX)
}

/// Like [`encrypt`], sealing on at most `threads` threads besides the caller's, and no more
/// than [`sealing_threads`] (0 or 1: on the caller's thread alone).
pub fn encrypt_on<R: Read, W: Write>(
    mut input: R,
    recipients: &[x25519::Recipient],
    compress: Compress,
    mut output: W,
    threads: usize,
) -> Result<(u64, W), StreamError> {
    let payload = stream::Payload::begin(recipients)?;
    output.write_all(payload.header())?;
    let workers = workers(threads.min(sealing_threads()));
    let (read, mut output) = std::thread::scope(|scope| -> io::Result<(u64, W)> {
        let mut sealer = stream::Sealer::new(payload.key(), output, workers, scope);
        let read = match compress {
            Compress::Zstd(level) => {
                let mut z = zstd::stream::write::Encoder::new(&mut sealer, level)?;
                // Whole pipe buffers at a time into zstd, not io::copy's 8 KiB.
                let mut input = io::BufReader::with_capacity(stream::CHUNK * 4, &mut input);
                let read = io::copy(&mut input, &mut z)?;
                z.finish()?;
                read
            }
            Compress::None => sealer.read_from(&mut input)?,
        };
        Ok((read, sealer.finish()?))
    })?;
    output.flush()?;
    Ok((read, output))
}

/// Threads that seal chunks: the CPUs this process may use (its affinity and cgroup quota),
/// at most 8.
pub fn sealing_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// The most the sealing of one stream holds in buffers on `threads` threads, in bytes.
pub fn sealing_buffer_bytes(threads: usize) -> u64 {
    stream::buffer_bytes(workers(threads))
}

/// Sealing threads for `threads`: none (the caller's thread seals) unless more than one.
fn workers(threads: usize) -> usize {
    if threads > 1 { threads } else { 0 }
}

/// Decrypts the age file read from `input` with `identities`, decompresses it if it was
/// compressed, and writes the plain bytes to `output`. Returns the plain bytes written.
pub fn decrypt<R: Read, W: Write>(
    input: R,
    identities: &[Identity],
    compress: Compress,
    mut output: W,
) -> Result<(u64, W), StreamError> {
    let decryptor = age::Decryptor::new_buffered(BufReader::with_capacity(64 << 10, input))
        .map_err(age_error)?;
    let plain = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(age_error)?;
    let written = match compress {
        Compress::Zstd(_) => {
            let mut z = zstd::stream::read::Decoder::new(plain)?;
            io::copy(&mut z, &mut output)?
        }
        Compress::None => {
            let mut plain = plain;
            io::copy(&mut plain, &mut output)?
        }
    };
    output.flush()?;
    Ok((written, output))
}

/// Like [`decrypt`], for an age file of unknown origin (e.g. a downloaded object or one made by
/// the `age` CLI): the plain stream is decompressed when it starts with zstd's magic number.
pub fn decrypt_detect<R: Read, W: Write>(
    input: R,
    identities: &[Identity],
    mut output: W,
) -> Result<(u64, W), StreamError> {
    use std::io::BufRead;
    let decryptor = age::Decryptor::new_buffered(BufReader::with_capacity(64 << 10, input))
        .map_err(age_error)?;
    let plain = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(age_error)?;
    let mut plain = BufReader::with_capacity(64 << 10, plain);
    let zstd = plain.fill_buf()?.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    let written = if zstd {
        let mut z = zstd::stream::read::Decoder::with_buffer(plain)?;
        io::copy(&mut z, &mut output)?
    } else {
        io::copy(&mut plain, &mut output)?
    };
    output.flush()?;
    Ok((written, output))
}

fn age_error(e: age::DecryptError) -> StreamError {
    match e {
        age::DecryptError::NoMatchingKeys => StreamError::WrongIdentity,
        age::DecryptError::Io(e) => StreamError::Io(e),
        other => StreamError::Age(format!("the file is not a valid age file: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (x25519::Identity, x25519::Recipient) {
        let id = x25519::Identity::generate();
        let r = id.to_public();
        (id, r)
    }

    #[test]
    fn round_trips_with_and_without_compression() {
        let (id, r) = keypair();
        let ids: Vec<Identity> = vec![Box::new(id)];
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for compress in [Compress::Zstd(3), Compress::None] {
            let (read, sealed) =
                encrypt(&data[..], std::slice::from_ref(&r), compress, Vec::new()).unwrap();
            assert_eq!(read, data.len() as u64);
            let (written, plain) = decrypt(&sealed[..], &ids, compress, Vec::new()).unwrap();
            assert_eq!(written, data.len() as u64);
            assert_eq!(plain, data);
            let (_, detected) = decrypt_detect(&sealed[..], &ids, Vec::new()).unwrap();
            assert_eq!(detected, data);
        }
    }

    use homeplane_testkit::pattern;

    /// Plaintext sizes around every boundary of the sealing: chunks, batches, and the
    /// batches a worker has in flight.
    const EDGES: &[usize] = &[
        0,
        1,
        stream::CHUNK - 1,
        stream::CHUNK,
        stream::CHUNK + 1,
        8 * stream::CHUNK - 1,
        8 * stream::CHUNK,
        8 * stream::CHUNK + 1,
        40 * stream::CHUNK,
        41 * stream::CHUNK + 77,
    ];

    /// The size of an age file of `plain` bytes after a header of `header` bytes: 16 bytes of
    /// tag per 64 KiB chunk, and one chunk for an empty payload.
    fn age_size(header: usize, plain: usize) -> usize {
        header + plain + 16 * plain.div_ceil(stream::CHUNK).max(1)
    }

    fn header_len(sealed: &[u8]) -> usize {
        let end = sealed.windows(4).position(|w| w == b"\n---").unwrap();
        end + sealed[end + 1..].iter().position(|b| *b == b'\n').unwrap() + 2 + 16
    }

    #[test]
    fn every_chunk_boundary_decrypts_with_the_age_crate_on_any_number_of_threads() {
        let (id, r) = keypair();
        let ids: Vec<Identity> = vec![Box::new(id)];
        for &len in EDGES {
            let data = pattern(len, len as u64);
            for threads in [0, 1, 2, 3] {
                let (read, sealed) = encrypt_on(
                    &data[..],
                    std::slice::from_ref(&r),
                    Compress::None,
                    Vec::new(),
                    threads,
                )
                .unwrap();
                assert_eq!(read, len as u64);
                assert_eq!(
                    sealed.len(),
                    age_size(header_len(&sealed), len),
                    "{len} bytes"
                );
                let (_, plain) = decrypt(&sealed[..], &ids, Compress::None, Vec::new()).unwrap();
                assert!(plain == data, "{len} bytes on {threads} threads");
            }
        }
    }

    #[test]
    fn a_file_to_several_recipients_opens_with_each_key() {
        let (a, ra) = keypair();
        let (b, rb) = keypair();
        let data = pattern(3 * stream::CHUNK + 5, 7);
        let (_, sealed) =
            encrypt_on(&data[..], &[ra, rb], Compress::Zstd(1), Vec::new(), 2).unwrap();
        for id in [a, b] {
            let ids: Vec<Identity> = vec![Box::new(id)];
            let (_, plain) = decrypt(&sealed[..], &ids, Compress::Zstd(0), Vec::new()).unwrap();
            assert!(plain == data);
        }
    }

    /// Hands out its bytes in reads of the given sizes, in turn.
    struct Dribble<'a> {
        data: &'a [u8],
        sizes: Vec<usize>,
        turn: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let size = self.sizes[self.turn % self.sizes.len()];
            self.turn += 1;
            let n = size.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever the size, the way the input arrives, the compression and the number of
        /// threads, the age crate gives the plaintext back and the file has age's size.
        #[test]
        fn any_stream_round_trips(
            len in 0usize..(20 * stream::CHUNK),
            seed: u64,
            sizes in proptest::collection::vec(1usize..(3 * stream::CHUNK), 1..6),
            threads in 0usize..4,
            zstd: bool,
        ) {
            let (id, r) = keypair();
            let ids: Vec<Identity> = vec![Box::new(id)];
            let data = pattern(len, seed);
            let input = Dribble { data: &data, sizes, turn: 0 };
            let compress = if zstd { Compress::Zstd(1) } else { Compress::None };
            let (read, sealed) =
                encrypt_on(input, std::slice::from_ref(&r), compress, Vec::new(), threads).unwrap();
            proptest::prop_assert_eq!(read, len as u64);
            if !zstd {
                proptest::prop_assert_eq!(sealed.len(), age_size(header_len(&sealed), len));
            }
            let (_, plain) = decrypt(&sealed[..], &ids, compress, Vec::new()).unwrap();
            proptest::prop_assert!(plain == data);
        }
    }

    /// A writer that fails once it has taken `room` bytes.
    #[derive(Debug)]
    struct Full {
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            let n = data.len().min(self.room);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A reader that fails after `good` bytes.
    struct Broken {
        good: usize,
    }

    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.good == 0 {
                return Err(io::Error::other("pg_dump exited with status 1"));
            }
            let n = buf.len().min(self.good);
            buf[..n].fill(7);
            self.good -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_failing_output_or_input_ends_the_stream_with_its_error() {
        let (_, r) = keypair();
        let data = pattern(30 * stream::CHUNK, 3);
        for threads in [0, 2] {
            let err = encrypt_on(
                &data[..],
                std::slice::from_ref(&r),
                Compress::None,
                Full {
                    room: 5 * stream::CHUNK,
                },
                threads,
            )
            .unwrap_err();
            assert!(err.to_string().contains("disk full"), "{err}");
            let err = encrypt_on(
                Broken {
                    good: 20 * stream::CHUNK + 3,
                },
                std::slice::from_ref(&r),
                Compress::None,
                Vec::new(),
                threads,
            )
            .unwrap_err();
            assert!(err.to_string().contains("pg_dump exited"), "{err}");
        }
    }

    #[test]
    fn wrong_identity_and_tampering_fail_clearly() {
        let (_, r) = keypair();
        let (other, _) = keypair();
        let (sealed_read, sealed) = encrypt(
            &b"secret rows"[..],
            std::slice::from_ref(&r),
            Compress::None,
            Vec::new(),
        )
        .unwrap();
        assert_eq!(sealed_read, 11);
        let other: Vec<Identity> = vec![Box::new(other)];
        let err = decrypt(&sealed[..], &other, Compress::None, Vec::new()).unwrap_err();
        assert!(matches!(err, StreamError::WrongIdentity), "{err}");

        let (id, r2) = keypair();
        let (_, mut sealed2) =
            encrypt(&b"secret rows"[..], &[r2], Compress::None, Vec::new()).unwrap();
        let last = sealed2.len() - 1;
        sealed2[last] ^= 1;
        let ids: Vec<Identity> = vec![Box::new(id)];
        assert!(decrypt(&sealed2[..], &ids, Compress::None, Vec::new()).is_err());
    }

    #[test]
    fn parses_keys_and_says_what_is_wrong() {
        let (id, r) = keypair();
        let parsed = parse_recipients(&[r.to_string()]).unwrap();
        assert_eq!(parsed[0].to_string(), r.to_string());
        assert!(fingerprint(&r).starts_with("sha256:"));
        assert_eq!(fingerprint(&r).len(), 23);
        let err = parse_recipients(&["age1nope"]).unwrap_err();
        assert!(err.to_string().starts_with("recipient 0 is not"), "{err}");
        assert!(matches!(
            parse_recipients::<String>(&[]),
            Err(KeyError::NoRecipients)
        ));
        use age::secrecy::ExposeSecret;
        let text = format!(
            "# created: now\n# public key: {r}\n{}\n",
            id.to_string().expose_secret()
        );
        assert_eq!(parse_identities(&text).unwrap().len(), 1);
        assert!(matches!(
            parse_identities("# only a comment\n"),
            Err(KeyError::NoIdentity)
        ));
    }
}
