//! The streaming pipeline. Backup: source → zstd → age (to recipients) → SHA-256 of the
//! ciphertext → S3 multipart upload in fixed-size parts with a bounded number in flight, then
//! the truthful completion: complete the upload to a staging key, check its size, publish it
//! under the final key with the checksum in its metadata (a server-side copy, refused if the
//! key exists), check again, write the manifest. Any failure aborts the upload and removes
//! whatever was written. Restore ([`crate::restore`], re-exported here): download → verify
//! size and checksum while streaming → age decrypt with an identity → zstd decompress → sink.
//!
//! Memory: compression and encryption run on one blocking thread that fills part buffers; a
//! semaphore with `concurrency` permits is taken before a buffer is started and released when
//! its upload ends, so at most `part size × concurrency` bytes of parts exist at any time,
//! whatever the size of the source.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use age::x25519;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::io::SyncIoBridge;

use crate::crypto::{self, Compress};
use crate::manifest::{self, Manifest, SourceInfo};
use crate::parts::{MAX_PARTS, PartPlan};
use crate::store::{S3Error, S3FailureKind, Store, manifest_key, staging_key};

pub use crate::publish::{check_published, read_capped};
use crate::publish::{check_size, publish, refuse_existing};
pub use crate::restore::{RestoreError, RestoreReport, restore};

/// Version written to manifests and object metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What to back up where.
pub struct BackupRequest {
    /// Final object key.
    pub key: String,
    /// age recipients.
    pub recipients: Vec<x25519::Recipient>,
    /// Compression before encryption.
    pub compress: Compress,
    /// Part size and parts in flight.
    pub plan: PartPlan,
    /// What the source is, for the manifest.
    pub source: SourceInfo,
}

/// A completed, checked backup.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupReport {
    /// Its manifest (also written to `manifest_key`).
    pub manifest: Manifest,
    /// Key of the manifest object.
    pub manifest_key: String,
}

/// Why a backup failed. Whatever was uploaded has been removed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The source failed (e.g. pg_dump exited with an error).
    #[error("reading the source failed: {0}")]
    Source(String),
    /// Compression or encryption failed.
    #[error("compressing or encrypting failed: {0}")]
    Encrypt(String),
    /// An S3 call failed.
    #[error(transparent)]
    S3(#[from] S3Error),
    /// The object in the bucket does not have the size that was sent.
    #[error("the uploaded object {key} has {found} bytes but {sent} were sent")]
    SizeMismatch { key: String, found: u64, sent: u64 },
    /// The object's recorded checksum is not the one computed while uploading.
    #[error("the object {key} records SHA-256 {found:?} but {sent} was computed while uploading")]
    ChecksumMismatch {
        key: String,
        found: Option<String>,
        sent: String,
    },
    /// The backup needs more parts than S3 allows at this part size.
    #[error("the backup outgrew {max} parts of {part_size} bytes; raise the part size")]
    TooManyParts { max: u64, part_size: u64 },
    /// The object or its manifest is not in the bucket (checked after another process, e.g. a
    /// PVC backup Job, said it wrote them).
    #[error("{0}")]
    NotPublished(String),
    /// A pipeline task stopped unexpectedly.
    #[error("the backup pipeline stopped unexpectedly: {0}")]
    Internal(String),
}

/// Every reason a backup run can fail with, as [`BackupError::reason`] and the volume Job
/// (`homeplane backup pvc`, which adds `InvalidArguments`) report them: the one list an
/// operator matches a reason read from a Job against.
pub const REASONS: [&str; 13] = [
    "SourceFailed",
    "EncryptionFailed",
    "SizeMismatch",
    "ChecksumMismatch",
    "TooManyParts",
    "NotUploaded",
    "Internal",
    "InvalidArguments",
    "EndpointUnreachable",
    "CredentialsRefused",
    "NotFound",
    "AlreadyExists",
    "S3Error",
];

/// `text` as one of the known [`REASONS`], if it is one.
pub fn known_reason(text: &str) -> Option<&'static str> {
    REASONS.iter().find(|r| **r == text).copied()
}

impl BackupError {
    /// A CamelCase reason for conditions, events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            BackupError::Source(_) => "SourceFailed",
            BackupError::Encrypt(_) => "EncryptionFailed",
            BackupError::S3(e) => e.kind.reason(),
            BackupError::SizeMismatch { .. } => "SizeMismatch",
            BackupError::ChecksumMismatch { .. } => "ChecksumMismatch",
            BackupError::TooManyParts { .. } => "TooManyParts",
            BackupError::NotPublished(_) => "NotUploaded",
            BackupError::Internal(_) => "Internal",
        }
    }
}

/// Threads sealing age's chunks in a pipeline (at most: the CPUs the process may use). Two
/// keep the sealing buffers inside `memory::RUN_OVERHEAD_MIB` while the upload, compression
/// and the dump's pipe take the other cores; `homeplane backup encrypt` alone uses them all.
pub const PIPELINE_SEALING_THREADS: usize = 2;

/// One filled part on its way to the uploader; holds its memory permit.
struct Part {
    number: i32,
    data: Bytes,
    _permit: OwnedSemaphorePermit,
}

/// The writer at the end of the encryption chain: hashes the ciphertext and cuts it into parts.
struct PartSink {
    part_size: usize,
    buf: Vec<u8>,
    permit: Option<OwnedSemaphorePermit>,
    next_part: i32,
    hasher: Sha256,
    total: u64,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Part>,
    rt: Handle,
    failure: Arc<Mutex<Option<BackupError>>>,
}

impl PartSink {
    fn send_part(&mut self) -> io::Result<()> {
        if self.next_part as u64 > MAX_PARTS {
            record(
                &self.failure,
                BackupError::TooManyParts {
                    max: MAX_PARTS,
                    part_size: self.part_size as u64,
                },
            );
            return Err(io::Error::other("too many parts"));
        }
        let data = Bytes::from(std::mem::take(&mut self.buf));
        let permit = self
            .permit
            .take()
            .ok_or_else(|| io::Error::other("part without a memory slot"))?;
        let part = Part {
            number: self.next_part,
            data,
            _permit: permit,
        };
        self.next_part += 1;
        self.tx
            .blocking_send(part)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    fn finish(mut self) -> io::Result<(u64, String, u64)> {
        if self.permit.is_some() || self.next_part == 1 {
            if self.permit.is_none() {
                self.take_slot()?;
            }
            self.send_part()?;
        }
        let parts = (self.next_part - 1) as u64;
        Ok((self.total, hex::encode(self.hasher.finalize_reset()), parts))
    }

    fn take_slot(&mut self) -> io::Result<()> {
        let permit = self
            .rt
            .block_on(self.slots.clone().acquire_owned())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))?;
        self.permit = Some(permit);
        self.buf = Vec::with_capacity(self.part_size);
        Ok(())
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.permit.is_none() {
            self.take_slot()?;
        }
        let n = data.len().min(self.part_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.hasher.update(&data[..n]);
        self.total += n as u64;
        if self.buf.len() == self.part_size {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the source and remembers its failure, so it is told apart from upload failures.
struct SourceReader<R> {
    inner: R,
    failure: Arc<Mutex<Option<BackupError>>>,
}

impl<R: Read> Read for SourceReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            record(&self.failure, BackupError::Source(e.to_string()));
        })
    }
}

fn record(slot: &Arc<Mutex<Option<BackupError>>>, error: BackupError) {
    if let Ok(mut slot) = slot.lock()
        && slot.is_none()
    {
        *slot = Some(error);
    }
}

fn take(slot: &Arc<Mutex<Option<BackupError>>>) -> Option<BackupError> {
    slot.lock().ok().and_then(|mut s| s.take())
}

struct Encoded {
    source_bytes: u64,
    encrypted_bytes: u64,
    sha256: String,
    parts: u64,
}

/// Streams `source` through the pipeline into `request.key`. On success the object, its
/// checksum metadata and its manifest are in the bucket and were checked; on failure nothing
/// that looks complete is left.
pub async fn backup<R>(
    store: &Store,
    source: R,
    request: BackupRequest,
) -> Result<BackupReport, BackupError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let started_at = jiff::Timestamp::now();
    let key = request.key.clone();
    let staging = staging_key(&key);
    // Never overwrite a backup (conditional writes refuse it too where the server supports
    // them on copies; this check also saves a pointless upload).
    refuse_existing(store, &key).await?;
    let upload_id = store
        .client()
        .create_multipart_upload()
        .bucket(store.bucket())
        .key(&staging)
        .content_type("application/octet-stream")
        .send()
        .await
        .map_err(|e| S3Error::from_sdk(format!("starting the upload of {staging}"), e))?
        .upload_id()
        .map(String::from)
        .ok_or_else(|| BackupError::Internal("the server returned no upload id".into()))?;

    let result = run(store, source, &request, &staging, &upload_id, started_at).await;
    match result {
        Ok(report) => Ok(report),
        Err((error, completed)) => {
            tracing::warn!(key = %key, reason = error.reason(), "backup failed; removing what was uploaded");
            if !completed && let Err(e) = store.abort(&staging, &upload_id).await {
                tracing::warn!(key = %key, error = %e, "aborting the multipart upload failed");
            }
            // The final key is only removed when this run could have written it (after the
            // staging upload completed), never an object a conditional write refused to replace.
            let written_by_us = completed
                && !matches!(&error, BackupError::S3(e) if e.kind == S3FailureKind::AlreadyExists);
            let mut leftovers = vec![staging.clone()];
            if written_by_us {
                leftovers.push(key.clone());
                leftovers.push(manifest_key(&key));
            }
            for k in leftovers {
                if let Err(e) = store.delete(&k).await {
                    tracing::warn!(key = %k, error = %e, "removing a failed backup's object failed");
                }
            }
            Err(error)
        }
    }
}

/// The upload and completion; the bool says whether the multipart upload was completed.
async fn run<R>(
    store: &Store,
    source: R,
    request: &BackupRequest,
    staging: &str,
    upload_id: &str,
    started_at: jiff::Timestamp,
) -> Result<BackupReport, (BackupError, bool)>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let plan = request.plan;
    let part_size = usize::try_from(plan.part_size()).map_err(|e| (internal(e), false))?;
    let concurrency = usize::try_from(plan.memory_bound() / plan.part_size()).unwrap_or(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let (tx, rx) = mpsc::channel::<Part>(concurrency);
    let failure = Arc::new(Mutex::new(None));
    let rt = Handle::current();
    let sink = PartSink {
        part_size,
        buf: Vec::new(),
        permit: None,
        next_part: 1,
        hasher: Sha256::new(),
        total: 0,
        slots,
        tx,
        rt: rt.clone(),
        failure: failure.clone(),
    };
    let recipients = request.recipients.clone();
    let compress = request.compress;
    let source_failure = failure.clone();
    let encoder = tokio::task::spawn_blocking(move || -> Result<Encoded, String> {
        let reader = SourceReader {
            inner: SyncIoBridge::new_with_handle(source, rt),
            failure: source_failure,
        };
        let (source_bytes, sink) = crypto::encrypt_on(
            reader,
            &recipients,
            compress,
            sink,
            PIPELINE_SEALING_THREADS,
        )
        .map_err(|e| e.to_string())?;
        let (encrypted_bytes, sha256, parts) = sink.finish().map_err(|e| e.to_string())?;
        Ok(Encoded {
            source_bytes,
            encrypted_bytes,
            sha256,
            parts,
        })
    });

    let uploaded = upload_parts(store, staging, upload_id, rx).await;
    let encoded = encoder.await;
    let mut parts = uploaded.map_err(|e| (BackupError::S3(e), false))?;
    let encoded = match encoded {
        Ok(Ok(encoded)) => encoded,
        Ok(Err(message)) => {
            let error = take(&failure).unwrap_or(BackupError::Encrypt(message));
            return Err((error, false));
        }
        Err(join) => return Err((internal(join), false)),
    };
    parts.sort_by_key(|p| p.part_number());
    if parts.len() as u64 != encoded.parts {
        return Err((
            BackupError::Internal(format!(
                "{} parts were cut but {} uploaded",
                encoded.parts,
                parts.len()
            )),
            false,
        ));
    }

    store
        .client()
        .complete_multipart_upload()
        .bucket(store.bucket())
        .key(staging)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            (
                S3Error::from_sdk(format!("completing the upload of {staging}"), e).into(),
                false,
            )
        })?;
    let done = |e: BackupError| (e, true);
    check_size(store, staging, encoded.encrypted_bytes)
        .await
        .map_err(done)?;

    let key = &request.key;
    let metadata = HashMap::from([
        ("sha256".to_string(), encoded.sha256.clone()),
        ("source-bytes".to_string(), encoded.source_bytes.to_string()),
        (
            "compression".to_string(),
            request.compress.name().to_string(),
        ),
        ("homeplane-version".to_string(), VERSION.to_string()),
    ]);
    refuse_existing(store, key).await.map_err(done)?;
    publish(
        store,
        staging,
        key,
        encoded.encrypted_bytes,
        plan.part_size(),
        metadata,
    )
    .await
    .map_err(done)?;
    let info = check_size(store, key, encoded.encrypted_bytes)
        .await
        .map_err(done)?;
    if info.get("sha256") != Some(&encoded.sha256) {
        return Err(done(BackupError::ChecksumMismatch {
            key: key.clone(),
            found: info.get("sha256").cloned(),
            sent: encoded.sha256,
        }));
    }
    store.delete(staging).await.map_err(|e| done(e.into()))?;

    let manifest = Manifest {
        format: manifest::FORMAT.to_string(),
        object_key: key.clone(),
        source: request.source.clone(),
        source_bytes: encoded.source_bytes,
        encrypted_bytes: encoded.encrypted_bytes,
        sha256: encoded.sha256,
        compression: request.compress.name().to_string(),
        compression_level: match request.compress {
            Compress::Zstd(level) => Some(level),
            Compress::None => None,
        },
        recipients: request.recipients.iter().map(crypto::fingerprint).collect(),
        part_size: plan.part_size(),
        parts: encoded.parts,
        homeplane_version: VERSION.to_string(),
        started_at: started_at.to_string(),
        completed_at: jiff::Timestamp::now().to_string(),
    };
    let manifest_key = manifest_key(key);
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| done(internal(e)))?;
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key(&manifest_key)
        .content_type("application/json")
        .if_none_match("*")
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| {
            done(S3Error::from_sdk(format!("writing the manifest {manifest_key}"), e).into())
        })?;
    Ok(BackupReport {
        manifest,
        manifest_key,
    })
}

fn internal(e: impl std::fmt::Display) -> BackupError {
    BackupError::Internal(e.to_string())
}

/// Uploads the parts as they come, at most as many at once as there are memory slots.
async fn upload_parts(
    store: &Store,
    key: &str,
    upload_id: &str,
    mut rx: mpsc::Receiver<Part>,
) -> Result<Vec<CompletedPart>, S3Error> {
    let mut inflight = FuturesUnordered::new();
    let mut done = Vec::new();
    let mut producing = true;
    loop {
        tokio::select! {
            part = rx.recv(), if producing => match part {
                Some(part) => inflight.push(upload_part(store, key, upload_id, part)),
                None => producing = false,
            },
            Some(result) = inflight.next(), if !inflight.is_empty() => done.push(result?),
            else => break,
        }
    }
    Ok(done)
}

async fn upload_part(
    store: &Store,
    key: &str,
    upload_id: &str,
    part: Part,
) -> Result<CompletedPart, S3Error> {
    let number = part.number;
    let out = store
        .client()
        .upload_part()
        .bucket(store.bucket())
        .key(key)
        .upload_id(upload_id)
        .part_number(number)
        .content_length(part.data.len() as i64)
        .body(ByteStream::from(part.data.clone()))
        .customize()
        // The body is sent over TLS and checked end to end by its SHA-256; signing the
        // payload would hash every byte a second time on a small CPU.
        .disable_payload_signing()
        .send()
        .await
        .map_err(|e| S3Error::from_sdk(format!("uploading part {number} of {key}"), e))?;
    drop(part);
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(out.e_tag().map(String::from))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_from_a_bucket_are_capped() {
        let small = ByteStream::from(vec![b'x'; 100]);
        assert_eq!(read_capped(small, 100).await.unwrap().len(), 100);
        let large = ByteStream::from(vec![b'x'; 101]);
        let error = read_capped(large, 100).await.unwrap_err();
        assert!(
            error.contains("larger than the 100 bytes expected"),
            "{error}"
        );
    }

    #[test]
    fn every_reason_a_run_reports_is_known() {
        let reasons = [
            BackupError::Source(String::new()).reason(),
            BackupError::Encrypt(String::new()).reason(),
            BackupError::NotPublished(String::new()).reason(),
            BackupError::Internal(String::new()).reason(),
            BackupError::TooManyParts {
                max: 1,
                part_size: 1,
            }
            .reason(),
        ];
        for reason in reasons {
            assert_eq!(known_reason(reason), Some(reason));
        }
        assert_eq!(known_reason("made up by a container"), None);
    }
}
