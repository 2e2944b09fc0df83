//! BackupPolicy and Backup: age-encrypted offsite backups to any S3 API, with retention and
//! restore verification.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CRON_RULE, DURATION_RULE};

/// How, when and where a source is backed up: schedule, S3 destination, age recipients,
/// compression, retention and restore verification.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "homeplane.dev",
    version = "v1alpha1",
    kind = "BackupPolicy",
    plural = "backuppolicies",
    namespaced,
    shortname = "bp",
    category = "homeplane",
    status = "BackupPolicyStatus",
    doc = "A backup schedule: source, S3 destination, age recipients, compression, retention and restore verification.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Last-Success",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.verify) || has(self.source.pvc) || has(self.verify.scratchDatabase)").message("spec.verify.scratchDatabase is required for a database source: the restore drill restores into it"))]
#[x_kube(validation = Rule::new("!has(self.verify) || !has(self.source.pvc) || (!has(self.verify.scratchDatabase) && (!has(self.verify.queries) || size(self.verify.queries) == 0))").message("a PVC source's restore drill reads the whole archive back instead of restoring into a database: remove spec.verify.scratchDatabase and spec.verify.queries (use minFiles)"))]
#[x_kube(validation = Rule::new(DUMP_MEMORY_RULE).message("a database backup runs inside the operator, within its 64 MiB backup memory budget: partSizeMiB × concurrency + the zstd compressor of compression.level (levels 1-9 take 2-17 MiB, 10-11 29, 12-14 53, 15-18 69, 19 90) + 4 MiB must be at most 64 MiB; lower the level or the parts"))]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicySpec {
    /// When to back up: a five-field cron expression (`0 3 * * *`) or a macro (`@daily`).
    #[x_kube(validation = Rule::new(CRON_RULE).message("schedule must be a five-field cron expression such as '0 3 * * *' or a macro such as @daily"))]
    #[schemars(length(max = 128))]
    pub schedule: String,
    /// IANA time zone the schedule is read in, e.g. `Europe/Berlin`.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Stop creating scheduled backups while true.
    #[serde(default)]
    pub suspend: bool,
    /// What is backed up: a Database or a PersistentVolumeClaim. Exactly one.
    pub source: BackupSource,
    /// The S3 bucket (Cloudflare R2 or any S3 API) the backups go to.
    pub destination: S3Destination,
    /// age public keys (`age1…`) the backups are encrypted to. The operator never holds a
    /// private key: whoever holds one of these keys' identities can restore.
    #[x_kube(validation = Rule::new("size(self) > 0").message("recipients must list at least one age public key (age1...); without one nobody could restore"))]
    #[schemars(length(max = 16))]
    pub recipients: Vec<AgeRecipient>,
    /// Compression before encryption.
    #[serde(default)]
    pub compression: Compression,
    /// Which backups are kept.
    #[serde(default)]
    pub retention: Retention,
    /// When to prove that the newest backup restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verification>,
}

fn default_time_zone() -> String {
    "UTC".to_string()
}

/// An age X25519 public key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct AgeRecipient(
    /// The key in its text form, `age1` followed by 58 bech32 characters.
    #[schemars(regex(pattern = r"^age1[02-9ac-hj-np-z]{58}$"))]
    pub String,
);

/// What a policy backs up.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.database) != has(self.pvc)").message("source must set exactly one of database or pvc"))]
#[serde(rename_all = "camelCase")]
pub struct BackupSource {
    /// A homeplane Database in the same namespace, dumped with pg_dump (custom format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseSource>,
    /// A PersistentVolumeClaim in the same namespace, archived with tar by a Job that mounts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
}

/// A Database source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSource {
    /// Name of the Database object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Role the dump runs as; the admin role when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// A PersistentVolumeClaim source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Name of the claim.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
}

/// The parts in flight of one upload, at most 64 MiB (defaults: 16 MiB × 2).
const PARTS_RULE: &str = "(has(self.partSizeMiB) ? self.partSizeMiB : 16) * (has(self.concurrency) ? self.concurrency : 2) <= 64";

/// A database backup (run inside the operator) costs its parts, its zstd compressor (per level,
/// as `homeplane_backups::memory` counts it) and 4 MiB, within the operator's 64 MiB budget.
const DUMP_MEMORY_RULE: &str = "!has(self.source.database) || (has(self.destination.partSizeMiB) ? self.destination.partSizeMiB : 16) * (has(self.destination.concurrency) ? self.destination.concurrency : 2) + ((has(self.compression) && has(self.compression.algorithm) && self.compression.algorithm == 'none') ? 0 : (has(self.compression) && has(self.compression.level) ? [2, 2, 4, 5, 6, 6, 9, 9, 17, 29, 29, 53, 53, 53, 69, 69, 69, 69, 90][self.compression.level - 1] : 4)) + 4 <= 64";

/// An S3-compatible bucket. Defaults suit Cloudflare R2.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new(PARTS_RULE).message("partSizeMiB × concurrency must be at most 64 (MiB): the parts in flight are what a backup holds in memory; use fewer or smaller parts"))]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// Endpoint URL, e.g. `https://<account>.r2.cloudflarestorage.com`.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("endpoint must be an http:// or https:// URL"))]
    #[schemars(length(max = 512))]
    pub endpoint: String,
    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix under which this policy's objects are written, e.g. `homelab/postgres/`.
    #[serde(default)]
    pub prefix: String,
    /// Region; R2 uses `auto`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most self-hosted servers.
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// Secret with the keys `accessKeyId` and `secretAccessKey`.
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: String,
    /// Size of every multipart part but the last, in MiB (R2 needs equal parts; 5 to 64, with
    /// `partSizeMiB × concurrency` at most 64). Memory used by an upload is at most this times
    /// `concurrency`; 16 MiB parts carry a backup of up to 160 GiB (10,000 parts).
    #[serde(default = "default_part_size_mib", rename = "partSizeMiB")]
    #[schemars(range(min = 5, max = 64))]
    pub part_size_mib: i32,
    /// Parts uploaded at the same time (1 to 12, with `partSizeMiB × concurrency` at most 64).
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 12))]
    pub concurrency: i32,
}

fn default_part_size_mib() -> i32 {
    16
}

fn default_concurrency() -> i32 {
    2
}

fn default_region() -> String {
    "auto".to_string()
}

fn default_true() -> bool {
    true
}

/// Compression applied before encryption.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compression {
    /// Algorithm: `zstd` or `none`.
    #[serde(default)]
    pub algorithm: CompressionAlgorithm,
    /// zstd level, 1 (fast) to 19 (small).
    #[serde(default = "default_level")]
    #[schemars(range(min = 1, max = 19))]
    pub level: i32,
}

impl Default for Compression {
    fn default() -> Self {
        Self {
            algorithm: CompressionAlgorithm::Zstd,
            level: default_level(),
        }
    }
}

fn default_level() -> i32 {
    3
}

/// Compression algorithm.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    /// Zstandard.
    #[default]
    Zstd,
    /// No compression.
    None,
}

/// Which backups are kept. The newest verified backup is never deleted, whatever these say.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep this many most recent successful backups.
    #[serde(default = "default_keep_last")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep_last: i32,
    /// Keep the newest backup of each of this many days.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub daily: i32,
    /// Keep the newest backup of each of this many weeks.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub weekly: i32,
    /// Keep the newest backup of each of this many months.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub monthly: i32,
    /// Never delete a backup younger than this, e.g. `24h`.
    #[serde(default = "default_min_age")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("minAge must be a duration such as 24h or 90m"))]
    #[schemars(length(max = 32))]
    pub min_age: String,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep_last: default_keep_last(),
            daily: 0,
            weekly: 0,
            monthly: 0,
            min_age: default_min_age(),
        }
    }
}

fn default_keep_last() -> i32 {
    7
}

fn default_min_age() -> String {
    "24h".to_string()
}

/// Restore drills.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// When to restore the newest backup into a scratch target and check it (cron).
    #[x_kube(validation = Rule::new(CRON_RULE).message("schedule must be a five-field cron expression such as '0 3 * * *' or a macro such as @daily"))]
    #[schemars(length(max = 128))]
    pub schedule: String,
    /// Secret holding an age identity (`AGE-SECRET-KEY-1…`) under key `identity`: the one place
    /// a private key may live, by the owner's choice. It is read only for a drill, never logged
    /// and never copied.
    #[schemars(length(min = 1, max = 253))]
    pub identity_secret: String,
    /// A Database in the same namespace that the drill restores into (its contents are
    /// replaced). Never the source database. Required for a database source; a PVC source's
    /// drill downloads, decrypts and reads its whole archive instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub scratch_database: Option<String>,
    /// Queries that must each return one number at least `min`, e.g. row counts (database
    /// sources).
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub queries: Vec<VerificationQuery>,
    /// The fewest regular files the archive of a PVC source must hold (default 1: an empty
    /// archive fails its drill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_files: Option<i64>,
}

/// A check of a restored database.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationQuery {
    /// A short name for status, e.g. `messages`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// SQL returning a single number, e.g. `SELECT count(*) FROM messages`.
    #[schemars(length(min = 1, max = 4096))]
    pub sql: String,
    /// The smallest acceptable value.
    #[serde(default)]
    pub min: i64,
}

/// The observed state of a BackupPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicyStatus {
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Name of the most recent Backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    /// When the most recent successful backup completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// When the next scheduled backup is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The schedule time of the most recent Backup the schedule created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When a restore drill last verified a backup of this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_time: Option<Time>,
    /// When the next restore drill is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_verify_time: Option<Time>,
    /// The schedule time of the most recent restore drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verify_schedule_time: Option<Time>,
}

/// One backup run. `kubectl create` of a Backup runs one now; the schedule of a BackupPolicy
/// creates them too.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "homeplane.dev",
    version = "v1alpha1",
    kind = "Backup",
    namespaced,
    shortname = "bk",
    category = "homeplane",
    status = "BackupStatus",
    doc = "One backup run of a BackupPolicy; create one to back up now.",
    selectable = ".spec.policy",
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policy"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.size"),
    printcolumn(name = "Verified", type_ = "boolean", json_path = ".status.verified"),
    printcolumn(
        name = "Duration",
        type_ = "number",
        json_path = ".status.durationSeconds"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "SHA-256",
        type_ = "string",
        json_path = ".status.sha256",
        priority = "1"
    ),
    printcolumn(
        name = "Object",
        type_ = "string",
        json_path = ".status.objectKey",
        priority = "1"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a Backup's spec cannot change; create a new Backup instead"))]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Name of the BackupPolicy in the same namespace whose settings this run uses.
    #[schemars(length(min = 1, max = 253))]
    pub policy: String,
    /// Why the run exists: `Scheduled` (made by the policy) or `Manual`.
    #[serde(default)]
    pub trigger: BackupTrigger,
}

/// What created a Backup.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BackupTrigger {
    /// Created by a person (or a script).
    #[default]
    Manual,
    /// Created by the policy's schedule.
    Scheduled,
}

/// Phase of a backup run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    /// Waiting to start.
    #[default]
    Pending,
    /// Streaming to the bucket.
    Running,
    /// Uploaded completely and checksum verified.
    Succeeded,
    /// Failed; nothing that looks complete was left in the bucket.
    Failed,
}

/// The observed state of a Backup.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the backup succeeded) and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Pending, Running, Succeeded or Failed.
    #[serde(default)]
    pub phase: BackupPhase,
    /// Key of the encrypted object in the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_key: Option<String>,
    /// The Job that archives a PersistentVolumeClaim source (PVC backups only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// What the archive of a PVC source holds: files, directories, symbolic links, bytes, and
    /// how many files changed while they were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSummary>,
    /// Bytes read from the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_bytes: Option<i64>,
    /// Bytes of ciphertext uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_bytes: Option<i64>,
    /// Human-readable size of the uploaded object, e.g. `1.2 GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// SHA-256 of the ciphertext, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Seconds from start to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Whether a restore drill has restored this backup successfully.
    #[serde(default)]
    pub verified: bool,
    /// When it was verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Time>,
    /// What the last restore drill of this backup checked, and what it found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<VerificationCheck>,
    /// SHA-256 fingerprints of the age recipients the backup is encrypted to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
}

/// What a PVC backup archived.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSummary {
    /// Regular files.
    pub files: i64,
    /// Directories.
    pub directories: i64,
    /// Symbolic links.
    pub symlinks: i64,
    /// Bytes of file contents.
    pub bytes: i64,
    /// Files that changed while they were read (their archived copy may be inconsistent).
    #[serde(default)]
    pub changed: i64,
    /// Sockets, FIFOs and devices, which are not archived.
    #[serde(default)]
    pub skipped: i64,
}

/// The result of one verification query.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationCheck {
    /// The query's name.
    pub name: String,
    /// The value it returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
    /// The smallest acceptable value.
    pub min: i64,
    /// Whether the value was acceptable.
    pub passed: bool,
}
