//! The S3 client, built once and configured for Cloudflare R2 (and any S3 API): region `auto`
//! accepted, path-style addressing, checksums only when an operation requires them, bounded
//! retries and time-outs; plus the few object operations the pipeline needs, with errors that
//! say what to fix.

use std::fmt;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

pub use aws_sdk_s3::Client;

/// Where objects go and how to sign in. `Debug` never prints the secret.
#[derive(Clone)]
pub struct S3Config {
    /// Endpoint URL, e.g. `https://<account>.r2.cloudflarestorage.com`.
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Region; R2 uses `auto`.
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`).
    pub path_style: bool,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What kind of failure an S3 call met: bounded, for metrics and for the advice in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3FailureKind {
    /// The endpoint could not be reached (DNS, connection refused, TLS, time-out).
    Unreachable,
    /// The server refused the credentials or their permissions.
    Credentials,
    /// The bucket or object does not exist.
    NotFound,
    /// A conditional write found the object already there.
    AlreadyExists,
    /// Anything else the server answered.
    Other,
}

impl S3FailureKind {
    /// A CamelCase name for conditions and metric labels.
    pub fn reason(self) -> &'static str {
        match self {
            S3FailureKind::Unreachable => "EndpointUnreachable",
            S3FailureKind::Credentials => "CredentialsRefused",
            S3FailureKind::NotFound => "NotFound",
            S3FailureKind::AlreadyExists => "AlreadyExists",
            S3FailureKind::Other => "S3Error",
        }
    }
}

/// A failed S3 call.
#[derive(Debug, thiserror::Error)]
#[error("{action} failed: {detail}")]
pub struct S3Error {
    /// What was being done, e.g. "uploading part 3 of homelab/db.age".
    pub action: String,
    /// What happened and, where known, what to do.
    pub detail: String,
    /// The kind of failure.
    pub kind: S3FailureKind,
}

impl S3Error {
    pub(crate) fn from_sdk<E>(action: impl Into<String>, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let action = action.into();
        let (kind, detail) = match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => (
                S3FailureKind::Unreachable,
                format!(
                    "the S3 endpoint could not be reached; check the endpoint URL and the network ({})",
                    DisplayErrorContext(&err)
                ),
            ),
            SdkError::ServiceError(service) => {
                let e = service.err();
                let code = e.code().unwrap_or("unknown");
                let message = e.message().unwrap_or("");
                match code {
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "AccessDenied"
                    | "ExpiredToken"
                    | "InvalidToken"
                    | "TokenRefreshRequired"
                    | "XAdminUserNotFound" => (
                        S3FailureKind::Credentials,
                        format!(
                            "the S3 server refused the credentials ({code}: {message}); check the access key and secret in the credentials Secret and their permissions on the bucket"
                        ),
                    ),
                    "NoSuchBucket" => (
                        S3FailureKind::NotFound,
                        format!("the bucket does not exist ({code}: {message})"),
                    ),
                    "NoSuchKey" | "NotFound" | "NoSuchUpload" => (
                        S3FailureKind::NotFound,
                        format!("not found ({code}: {message})"),
                    ),
                    "PreconditionFailed" => (
                        S3FailureKind::AlreadyExists,
                        format!(
                            "an object with this key already exists and is never overwritten ({code})"
                        ),
                    ),
                    _ => (S3FailureKind::Other, format!("{code}: {message}")),
                }
            }
            _ => (S3FailureKind::Other, DisplayErrorContext(&err).to_string()),
        };
        // A HEAD has no body, so its error code is lost: read the status.
        let (kind, detail) = match (&err, kind) {
            (SdkError::ServiceError(s), S3FailureKind::Other) => match s.raw().status().as_u16() {
                404 => (S3FailureKind::NotFound, "not found (HTTP 404)".to_string()),
                401 | 403 => (
                    S3FailureKind::Credentials,
                    "the S3 server refused the credentials (HTTP 403); check the access key and secret in the credentials Secret and their permissions on the bucket".to_string(),
                ),
                _ => (S3FailureKind::Other, detail),
            },
            (_, kind) => (kind, detail),
        };
        S3Error {
            action,
            detail,
            kind,
        }
    }
}

/// The S3 client configured for R2, with its bucket.
#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    bucket: String,
    /// Objects up to this size are copied with one CopyObject, larger ones part by part.
    pub(crate) copy_in_one_limit: u64,
}

impl Store {
    /// Builds the client. This is the only place an S3 client is made, in production and in
    /// tests alike.
    pub fn new(config: &S3Config) -> Self {
        let credentials = aws_credential_types::Credentials::new(
            config.access_key_id.clone(),
            config.secret_access_key.clone(),
            None,
            None,
            "homeplane",
        );
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let s3 = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(https)
            .region(Region::new(config.region.clone()))
            .endpoint_url(config.endpoint.trim_end_matches('/'))
            .force_path_style(config.path_style)
            .credentials_provider(credentials)
            // R2 rejects the integrity checksums the SDK adds by default since 1.69.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            )
            .build();
        Store {
            client: Client::from_conf(s3),
            bucket: config.bucket.clone(),
            copy_in_one_limit: 5 << 30,
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The SDK client, for operations this module does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Copies objects larger than `bytes` part by part (tests use a small limit to exercise
    /// the path R2 needs above 5 GiB).
    pub fn with_copy_in_one_limit(mut self, bytes: u64) -> Self {
        self.copy_in_one_limit = bytes;
        self
    }

    /// Creates the bucket unless it exists (for the demo and tests; production buckets are
    /// made by their owner).
    pub async fn ensure_bucket(&self) -> Result<(), S3Error> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = S3Error::from_sdk(format!("checking bucket {}", self.bucket), e);
                if e.kind != S3FailureKind::NotFound {
                    return Err(e);
                }
                self.client
                    .create_bucket()
                    .bucket(&self.bucket)
                    .send()
                    .await
                    .map_err(|e| {
                        S3Error::from_sdk(format!("creating bucket {}", self.bucket), e)
                    })?;
                Ok(())
            }
        }
    }

    /// Size and user metadata of an object; `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectInfo {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                metadata: out.metadata().cloned().unwrap_or_default(),
            })),
            Err(e) => {
                let e = S3Error::from_sdk(format!("reading the size of {key}"), e);
                if e.kind == S3FailureKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Deletes an object (absent objects are fine).
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(format!("deleting {key}"), e))?;
        Ok(())
    }

    /// Keys of all objects under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| S3Error::from_sdk(format!("listing {prefix}"), e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(keys)
    }

    /// Multipart uploads still open under `prefix`: (key, upload id).
    pub async fn open_uploads(&self, prefix: &str) -> Result<Vec<(String, String)>, S3Error> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(format!("listing open uploads under {prefix}"), e))?;
        Ok(out
            .uploads()
            .iter()
            .filter_map(|u| Some((u.key()?.to_string(), u.upload_id()?.to_string())))
            .collect())
    }

    /// Aborts a multipart upload.
    pub async fn abort(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(format!("aborting the upload of {key}"), e))?;
        Ok(())
    }

    /// Removes everything a backup at `key` may have left: open multipart uploads, the
    /// staging object, the object and its manifest. Used when a run failed or was interrupted,
    /// and by retention.
    pub async fn discard(&self, key: &str) -> Result<(), S3Error> {
        for (k, id) in self.open_uploads(key).await? {
            if k == key || k == staging_key(key) {
                self.abort(&k, &id).await?;
            }
        }
        for k in [staging_key(key), manifest_key(key), key.to_string()] {
            self.delete(&k).await?;
        }
        Ok(())
    }
}

/// Size and user metadata of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Bytes.
    pub size: u64,
    /// User metadata (`x-amz-meta-*`).
    pub metadata: std::collections::HashMap<String, String>,
}

/// Where an upload is staged until it is complete and checked: never mistaken for a backup.
pub fn staging_key(key: &str) -> String {
    format!("{key}.partial")
}

/// The manifest written beside a backup object.
pub fn manifest_key(key: &str) -> String {
    format!("{key}.manifest.json")
}
