//! Restore: download the object, verify its size and SHA-256 while streaming, age decrypt
//! with an identity, zstd decompress, and write the plain stream to a sink. A damaged object is
//! refused before its last plain bytes are released, so it never restores silently.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

use crate::crypto::{self, Compress, Identity, StreamError};
use crate::store::{S3Error, Store};

/// A finished restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Bytes of the encrypted object read.
    pub encrypted_bytes: u64,
    /// Plain bytes written to the sink.
    pub plain_bytes: u64,
    /// SHA-256 of the encrypted object, verified.
    pub sha256: String,
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// No object with that key.
    #[error("there is no object {key} in bucket {bucket}")]
    NotFound { key: String, bucket: String },
    /// The object has no recorded checksum: it is not a complete homeplane backup.
    #[error(
        "the object {0} has no sha256 metadata: it is not a complete homeplane backup (an interrupted upload, or another tool's object)"
    )]
    NoChecksum(String),
    /// The object's bytes do not match its recorded checksum or size.
    #[error("the backup object {key} is damaged: {detail}")]
    Damaged { key: String, detail: String },
    /// The identity does not match any recipient.
    #[error("{0}")]
    WrongIdentity(String),
    /// Writing the plain stream failed.
    #[error("writing the restored data failed: {0}")]
    Sink(String),
    /// An S3 call failed.
    #[error(transparent)]
    S3(#[from] S3Error),
    /// A pipeline task stopped unexpectedly.
    #[error("the restore pipeline stopped unexpectedly: {0}")]
    Internal(String),
}

impl RestoreError {
    /// A CamelCase reason for conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            RestoreError::NotFound { .. } => "NotFound",
            RestoreError::NoChecksum(_) => "NoChecksum",
            RestoreError::Damaged { .. } => "Damaged",
            RestoreError::WrongIdentity(_) => "WrongIdentity",
            RestoreError::Sink(_) => "SinkFailed",
            RestoreError::S3(e) => e.kind.reason(),
            RestoreError::Internal(_) => "Internal",
        }
    }
}

/// Reads the ciphertext, hashing and counting it; at the end refuses a wrong size or checksum
/// before the last plain bytes are released, so a damaged object never restores silently.
struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    size: u64,
    sha256: String,
    verdict: Arc<Mutex<Option<String>>>,
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.read += n as u64;
            if self.read > self.size {
                return Err(self.fail(format!(
                    "it holds more than the {} bytes recorded",
                    self.size
                )));
            }
            return Ok(n);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.read != self.size {
            return Err(self.fail(format!(
                "it is truncated: {} of {} bytes",
                self.read, self.size
            )));
        }
        let found = hex::encode(self.hasher.finalize_reset());
        if found != self.sha256 {
            return Err(self.fail(format!(
                "its SHA-256 is {found} but {} was recorded",
                self.sha256
            )));
        }
        Ok(0)
    }
}

impl<R> VerifyingReader<R> {
    fn fail(&self, message: String) -> io::Error {
        if let Ok(mut v) = self.verdict.lock()
            && v.is_none()
        {
            *v = Some(message.clone());
        }
        io::Error::new(io::ErrorKind::InvalidData, message)
    }
}

/// Downloads `key`, verifies it against its recorded size and checksum (and `expected_sha256`
/// when given, e.g. from a Backup's status), decrypts it with `identities`, decompresses it and
/// writes the plain stream to `sink`, which is shut down at the end and returned.
pub async fn restore<W>(
    store: &Store,
    key: &str,
    identities: Vec<Identity>,
    expected_sha256: Option<&str>,
    sink: W,
) -> Result<(RestoreReport, W), RestoreError>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let info = store
        .head(key)
        .await?
        .ok_or_else(|| RestoreError::NotFound {
            key: key.to_string(),
            bucket: store.bucket().to_string(),
        })?;
    let recorded = info
        .metadata
        .get("sha256")
        .cloned()
        .ok_or_else(|| RestoreError::NoChecksum(key.to_string()))?;
    if let Some(expected) = expected_sha256
        && expected != recorded
    {
        return Err(RestoreError::Damaged {
            key: key.to_string(),
            detail: format!(
                "its recorded SHA-256 is {recorded} but the backup record says {expected}"
            ),
        });
    }
    let compress = match info.metadata.get("compression").map(String::as_str) {
        Some("none") => Compress::None,
        _ => Compress::Zstd(0),
    };
    let body = store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key(key)
        .send()
        .await
        .map_err(|e| S3Error::from_sdk(format!("downloading {key}"), e))?
        .body
        .into_async_read();
    let verdict = Arc::new(Mutex::new(None));
    let rt = Handle::current();
    let size = info.size;
    let reader_verdict = verdict.clone();
    let sha = recorded.clone();
    let decoded = tokio::task::spawn_blocking(move || {
        let reader = VerifyingReader {
            inner: SyncIoBridge::new_with_handle(body, rt.clone()),
            hasher: Sha256::new(),
            read: 0,
            size,
            sha256: sha,
            verdict: reader_verdict,
        };
        crypto::decrypt(
            reader,
            &identities,
            compress,
            SyncIoBridge::new_with_handle(sink, rt),
        )
    })
    .await
    .map_err(|e| RestoreError::Internal(e.to_string()))?;
    let damaged = |detail: String| RestoreError::Damaged {
        key: key.to_string(),
        detail,
    };
    match decoded {
        Ok((plain_bytes, sink)) => {
            let mut sink = sink.into_inner();
            sink.shutdown()
                .await
                .map_err(|e| RestoreError::Sink(e.to_string()))?;
            Ok((
                RestoreReport {
                    encrypted_bytes: size,
                    plain_bytes,
                    sha256: recorded,
                },
                sink,
            ))
        }
        Err(e) => {
            if let Some(v) = verdict.lock().ok().and_then(|mut v| v.take()) {
                return Err(damaged(v));
            }
            Err(match e {
                StreamError::WrongIdentity => RestoreError::WrongIdentity(e.to_string()),
                StreamError::Age(detail) => damaged(detail),
                StreamError::Io(io) if io.kind() == io::ErrorKind::InvalidData => {
                    damaged(format!("decryption failed ({io})"))
                }
                StreamError::Io(io) => RestoreError::Sink(io.to_string()),
            })
        }
    }
}
