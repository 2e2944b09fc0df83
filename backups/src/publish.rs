//! The end of a backup: the checked staging object published under its final key with its
//! checksum in the metadata (a server-side copy, refused when the key exists), and the checks
//! that tell a backup that is complete from one that only looks it: its size, its checksum, its
//! manifest (also for a backup another process wrote, such as a volume's Job). Every read of
//! the bucket here is capped.

use std::collections::HashMap;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};

use crate::manifest::{self, Manifest};
use crate::pipeline::BackupError;
use crate::store::{S3Error, S3FailureKind, Store, manifest_key};

/// Checks, from the bucket alone, a backup that another process wrote (the Job of a PVC
/// backup): its manifest is there and names it, the object has the manifest's size and carries
/// the manifest's SHA-256 in its metadata. Returns the manifest.
pub async fn check_published(store: &Store, key: &str) -> Result<Manifest, BackupError> {
    let manifest_key = manifest_key(key);
    let body = match store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key(&manifest_key)
        .send()
        .await
    {
        Ok(out) => read_capped(out.body, MAX_MANIFEST)
            .await
            .map_err(|detail| {
                BackupError::S3(S3Error {
                    action: format!("reading the manifest {manifest_key}"),
                    detail,
                    kind: S3FailureKind::Other,
                })
            })?,
        Err(e) => {
            let e = S3Error::from_sdk(format!("reading the manifest {manifest_key}"), e);
            if e.kind == S3FailureKind::NotFound {
                return Err(BackupError::NotPublished(format!(
                    "the run reported success but there is no manifest {manifest_key} in bucket {}",
                    store.bucket()
                )));
            }
            return Err(e.into());
        }
    };
    let manifest: Manifest = serde_json::from_slice(&body).map_err(|e| {
        BackupError::NotPublished(format!("the manifest {manifest_key} cannot be read: {e}"))
    })?;
    if manifest.object_key != key || manifest.format != manifest::FORMAT {
        return Err(BackupError::NotPublished(format!(
            "the manifest {manifest_key} describes {} ({}), not {key}",
            manifest.object_key, manifest.format
        )));
    }
    let info = check_size(store, key, manifest.encrypted_bytes).await?;
    if info.get("sha256") != Some(&manifest.sha256) {
        return Err(BackupError::ChecksumMismatch {
            key: key.to_string(),
            found: info.get("sha256").cloned(),
            sent: manifest.sha256,
        });
    }
    Ok(manifest)
}

/// The largest manifest read back (a real one is under 2 KiB).
const MAX_MANIFEST: usize = 64 * 1024;

/// Reads `body` to its end, or fails once it passes `max` bytes: whatever a bucket answers,
/// homeplane never holds more of it than it expects.
pub async fn read_capped(mut body: ByteStream, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() + chunk.len() > max {
            return Err(format!(
                "the object is larger than the {max} bytes expected"
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub(crate) async fn refuse_existing(store: &Store, key: &str) -> Result<(), BackupError> {
    if store.head(key).await?.is_some() {
        return Err(BackupError::S3(S3Error {
            action: format!("publishing {key}"),
            detail: "an object with this key already exists and is never overwritten".into(),
            kind: S3FailureKind::AlreadyExists,
        }));
    }
    Ok(())
}

pub(crate) async fn check_size(
    store: &Store,
    key: &str,
    sent: u64,
) -> Result<HashMap<String, String>, BackupError> {
    match store.head(key).await? {
        Some(info) if info.size == sent => Ok(info.metadata),
        Some(info) => Err(BackupError::SizeMismatch {
            key: key.to_string(),
            found: info.size,
            sent,
        }),
        None => Err(BackupError::SizeMismatch {
            key: key.to_string(),
            found: 0,
            sent,
        }),
    }
}

/// Server-side copy of the checked staging object to its final key with its metadata, refused
/// when the key exists; part by part above the single-copy limit.
pub(crate) async fn publish(
    store: &Store,
    staging: &str,
    key: &str,
    size: u64,
    part_size: u64,
    metadata: HashMap<String, String>,
) -> Result<(), BackupError> {
    let source = format!("{}/{}", store.bucket(), staging);
    let client = store.client();
    if size <= store.copy_in_one_limit {
        client
            .copy_object()
            .bucket(store.bucket())
            .key(key)
            .copy_source(&source)
            .metadata_directive(MetadataDirective::Replace)
            .set_metadata(Some(metadata))
            .content_type("application/octet-stream")
            .if_none_match("*")
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(format!("publishing {key}"), e))?;
        return Ok(());
    }
    let upload_id = client
        .create_multipart_upload()
        .bucket(store.bucket())
        .key(key)
        .set_metadata(Some(metadata))
        .content_type("application/octet-stream")
        .send()
        .await
        .map_err(|e| S3Error::from_sdk(format!("starting to publish {key}"), e))?
        .upload_id()
        .map(String::from)
        .ok_or_else(|| BackupError::Internal("the server returned no upload id".into()))?;
    let copied = async {
        let mut parts = Vec::new();
        let mut start = 0u64;
        let mut number = 1;
        while start < size {
            let end = (start + part_size).min(size) - 1;
            let out = client
                .upload_part_copy()
                .bucket(store.bucket())
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .copy_source(&source)
                .copy_source_range(format!("bytes={start}-{end}"))
                .send()
                .await
                .map_err(|e| S3Error::from_sdk(format!("publishing part {number} of {key}"), e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(
                        out.copy_part_result()
                            .and_then(|r| r.e_tag())
                            .map(String::from),
                    )
                    .build(),
            );
            start = end + 1;
            number += 1;
        }
        client
            .complete_multipart_upload()
            .bucket(store.bucket())
            .key(key)
            .upload_id(&upload_id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(format!("completing the publication of {key}"), e))?;
        Ok::<(), S3Error>(())
    }
    .await;
    if let Err(e) = copied {
        let _ = store.abort(key, &upload_id).await;
        return Err(e.into());
    }
    Ok(())
}
