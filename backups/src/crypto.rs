//! age keys: parsing recipients (public keys) and identities (private keys), fingerprints of
//! recipients for manifests, and the synchronous encrypt/decrypt stages of the pipeline.

use std::io::{self, BufReader, Read, Write};
use std::str::FromStr;

use age::x25519;
use sha2::{Digest, Sha256};

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
/// `output`. Returns the bytes read from `input` and `output`, flushed.
pub fn encrypt<R: Read, W: Write>(
    mut input: R,
    recipients: &[x25519::Recipient],
    compress: Compress,
    output: W,
) -> Result<(u64, W), StreamError> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| StreamError::Age(e.to_string()))?;
    let sealed = encryptor.wrap_output(output)?;
    let (read, sealed) = match compress {
        Compress::Zstd(level) => {
            let mut z = zstd::stream::write::Encoder::new(sealed, level)?;
            let read = io::copy(&mut input, &mut z)?;
            (read, z.finish()?)
        }
        Compress::None => {
            let mut sealed = sealed;
            let read = io::copy(&mut input, &mut sealed)?;
            (read, sealed)
        }
    };
    let mut output = sealed.finish()?;
    output.flush()?;
    Ok((read, output))
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
