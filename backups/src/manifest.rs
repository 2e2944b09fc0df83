//! The manifest written beside each backup object: what it holds and how to check it.

use serde::{Deserialize, Serialize};

/// Format tag of a manifest.
pub const FORMAT: &str = "homeplane-backup/v1";

/// What a backup object holds, as JSON beside it (`<key>.manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Key of the encrypted object.
    pub object_key: String,
    /// What was backed up.
    pub source: SourceInfo,
    /// Plain bytes read from the source.
    pub source_bytes: u64,
    /// Bytes of the encrypted object.
    pub encrypted_bytes: u64,
    /// SHA-256 of the encrypted object, hex.
    pub sha256: String,
    /// `zstd` or `none`.
    pub compression: String,
    /// zstd level, when compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// Fingerprints of the age recipients (see `crypto::fingerprint`).
    pub recipients: Vec<String>,
    /// Size of every multipart part but the last.
    pub part_size: u64,
    /// Number of parts.
    pub parts: u64,
    /// Version of homeplane that wrote it.
    pub homeplane_version: String,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 completion time.
    pub completed_at: String,
}

/// What was backed up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceInfo {
    /// `database`, `pvc` or `stream`.
    pub kind: String,
    /// The source's name (e.g. the Database).
    pub name: String,
    /// Its namespace, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Format of the plain stream, e.g. `pg_dump-custom` or `tar`.
    pub format: String,
}
