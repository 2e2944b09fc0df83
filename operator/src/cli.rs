//! The command line: `homeplane run`, `homeplane crd`, and the rest. The same binary answers
//! as a kubectl plugin when it is called `kubectl-homeplane` (`kubectl homeplane status`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// A secret given on the command line or in the environment (a database URL with its
/// password, an access key): `Debug` prints `<redacted>`, so no argument struct can leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Redacted {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

impl std::ops::Deref for Redacted {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// homeplane: a Kubernetes operator for a personal infrastructure.
#[derive(Debug, Parser)]
#[command(name = "homeplane", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator against the cluster of the in-cluster config or KUBECONFIG.
    Run(RunArgs),
    /// Apply (or roll back) a folder of migrations on a database, as the Database controller
    /// does: `NNNN_description.sql` files, optional `.down.sql` files, an advisory lock, one
    /// transaction per migration, SHA-256 checksums in the history table.
    Migrate(MigrateArgs),
    /// Read the state registry's records.
    Drift {
        /// What to read.
        #[command(subcommand)]
        command: DriftCommand,
    },
    /// Print the capacity plan of a folder of manifests, offline: per NodeClass, what each
    /// workload asks for (including what homeplane would create for MemoryServers and
    /// VoicePipelines), totals against allocatable, and what does not fit (exit status 1).
    Plan(crate::plan_cli::PlanArgs),
    /// Restore a backup: download, verify the SHA-256, decrypt with your age identity,
    /// decompress, then pg_restore into a PostgreSQL database (`--into`, one transaction:
    /// nothing changes on error) or unpack a volume's archive into a directory (`--into-dir`).
    Restore(RestoreArgs),
    /// Backup tools for the owner.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Serve the status dashboard from this computer, with its own watches through your
    /// kubeconfig: nothing needs to be installed in the cluster. Prints its URL.
    Dashboard(DashboardArgs),
    /// Print what needs you (the dashboard's first page) as text; exits with status 1 when
    /// something does, so it serves cron jobs and scripts.
    Status(StatusArgs),
    /// Print an object's dependency chain (e.g. MemoryServer -> Database -> role Secret) down
    /// to its first broken link; exits with status 1 when a link is broken.
    Trace(TraceArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) for `homeplane`,
    /// or for `kubectl-homeplane` when called as the kubectl plugin.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the homelab that runs today as a kustomize tree: containers of a Docker Engine API
    /// (or Podman's), compose services, a PostgreSQL database and n8n workflows become
    /// workloads, a Database, Workflows, a state registry and backup proposals; secrets stay
    /// out (the README lists the Secrets to create); then the plan says whether it fits.
    Import(crate::import::ImportArgs),
    /// Print every CustomResourceDefinition as YAML (or write one file per CRD with --out).
    Crd {
        /// Write `<plural>.homeplane.dev.yaml` files into this folder instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Options of `homeplane run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HOMEPLANE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Take part in leader election (turn off only when exactly one replica runs).
    #[arg(long, env = "HOMEPLANE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "HOMEPLANE_NAMESPACE", default_value = "homeplane-system")]
    pub leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "HOMEPLANE_LEADER_ELECTION_ID",
        default_value = "homeplane-operator"
    )]
    pub leader_election_id: String,
    /// This replica's identity in the election (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a lease is valid after its last renewal; a standby takes over after this.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Reconcile namespaced objects in this namespace only (all namespaces when unset).
    /// NodeClasses are cluster-scoped and always reconciled.
    #[arg(long, env = "HOMEPLANE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// How often each Workflow is compared with n8n when nothing changes (edits made in the
    /// n8n UI are noticed this often).
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    pub workflow_resync: Duration,
    /// How long to wait for homeplane's CRDs to be established before giving up.
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    pub crd_timeout: Duration,
    /// homeplane's own PostgreSQL database (drift history, backup catalogue):
    /// postgres://user:password@host:port/database. Without it, no history is recorded.
    #[arg(long, env = "HOMEPLANE_HISTORY_DATABASE_URL", hide_env_values = true)]
    pub history_database_url: Option<Redacted>,
    /// Days of drift history kept.
    #[arg(long, env = "HOMEPLANE_DRIFT_HISTORY_DAYS", default_value_t = 90)]
    pub drift_history_days: u64,
    /// The image of the Jobs homeplane starts to back up PersistentVolumeClaims (they run
    /// `homeplane backup pvc`): the operator's own image.
    #[arg(long, env = "HOMEPLANE_IMAGE", default_value = crate::controllers::DEFAULT_IMAGE)]
    pub image: String,
    /// MiB the database backups and restore drills the operator runs itself may hold together
    /// (parts in flight, compressors); a run that does not fit waits. Keep the operator's
    /// memory limit at its idle size plus this (the chart's 128 MiB holds the default 64).
    #[arg(long, env = "HOMEPLANE_BACKUP_MEMORY_MIB", default_value_t = crate::controllers::backup::budget::DEFAULT_MIB)]
    pub backup_memory_mib: u32,
    /// Namespaces whose StateRegistries may observe (and correct) other namespaces and
    /// cluster-scoped kinds; a registry anywhere else sees only its own namespace.
    #[arg(
        long = "trusted-registry-namespace",
        env = "HOMEPLANE_TRUSTED_REGISTRY_NAMESPACES",
        value_delimiter = ','
    )]
    pub trusted_registry_namespaces: Vec<String>,
    /// The ServiceAccount, in each StateRegistry's namespace, that its correctors act as.
    #[arg(
        long,
        env = "HOMEPLANE_CORRECTOR_SERVICE_ACCOUNT",
        default_value = "homeplane-corrector"
    )]
    pub corrector_service_account: String,
    /// Prefix of the fixed ClusterRoles Agents are bound to (the chart renders them).
    #[arg(
        long,
        env = "HOMEPLANE_AGENT_ROLE_PREFIX",
        default_value = "homeplane-agent"
    )]
    pub agent_role_prefix: String,
    /// The ValidatingAdmissionPolicyBinding that records who asked for each Agent (the chart
    /// installs it); Agents get no rights while it is missing.
    #[arg(
        long,
        env = "HOMEPLANE_AGENT_POLICY",
        default_value = "homeplane-agents"
    )]
    pub agent_policy: String,
    #[command(flatten)]
    pub dashboard: DashboardServeArgs,
}

/// How the status dashboard is served by `homeplane run`.
#[derive(Debug, Args)]
pub struct DashboardServeArgs {
    /// Serve the status dashboard on this address, e.g. 127.0.0.1:8081 (reachable with
    /// `kubectl port-forward`) or 0.0.0.0:8081 behind a Service. Off when unset.
    #[arg(long, env = "HOMEPLANE_DASHBOARD_ADDR")]
    pub dashboard_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub access: DashboardAccessArgs,
}

/// Who may look at the dashboard and what they may do.
#[derive(Debug, Args, Clone)]
pub struct DashboardAccessArgs {
    /// Let the dashboard change things: reconcile now, evaluate drift now, back up now, run the
    /// restore drill now (each an ordinary change through the Kubernetes API, recorded as an
    /// Event naming who asked). Read-only without it.
    #[arg(long, env = "HOMEPLANE_DASHBOARD_ACTIONS")]
    pub dashboard_actions: bool,
    /// Address ranges of the reverse proxies whose forward-auth user header is believed (e.g.
    /// Caddy in front of Authelia): CIDRs, repeatable or comma-separated.
    #[arg(long = "dashboard-trusted-proxy", env = "HOMEPLANE_DASHBOARD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::dashboard::access::parse_cidr)]
    pub dashboard_trusted_proxies: Vec<crate::dashboard::access::Cidr>,
    /// The header a trusted proxy names the signed-in user in.
    #[arg(
        long,
        env = "HOMEPLANE_DASHBOARD_USER_HEADER",
        default_value = "Remote-User"
    )]
    pub dashboard_user_header: String,
    /// A Secret in the operator's namespace whose key `token` holds a bearer token that lets a
    /// browser or script in from any address (`Authorization: Bearer ...`, or the sign-in form).
    /// Without it, and without a trusted proxy, only 127.0.0.1 may look.
    #[arg(long, env = "HOMEPLANE_DASHBOARD_TOKEN_SECRET")]
    pub dashboard_token_secret: Option<String>,
}

/// Which cluster a command on a laptop talks to, as kubectl chooses it.
#[derive(Debug, Args, Clone)]
pub struct KubeArgs {
    /// Path of the kubeconfig (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
}

/// Options of `homeplane dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Where to serve it.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,
    /// Only this namespace's objects (NodeClasses are cluster-wide and always shown).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The namespace of the operator's leader Lease (to show which replica leads).
    #[arg(long, default_value = "homeplane-system")]
    pub operator_namespace: String,
    /// homeplane's own database, for the drift history.
    #[arg(long, env = "HOMEPLANE_HISTORY_DATABASE_URL", hide_env_values = true)]
    pub history_database_url: Option<Redacted>,
    #[command(flatten)]
    pub access: DashboardAccessArgs,
}

/// Options of `homeplane status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Only this namespace's objects (all namespaces when left out; NodeClasses always).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

/// Options of `homeplane trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub kube: KubeArgs,
    /// The object: KIND/NAME, e.g. memoryserver/memory or db/homelab.
    pub object: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

/// `homeplane drift ...`.
#[derive(Debug, Subcommand)]
pub enum DriftCommand {
    /// Print the transitions of one property (InSync, Drifted, Unknown), oldest first.
    History(DriftHistoryArgs),
}

/// Options of `homeplane drift history`.
#[derive(Debug, Args)]
pub struct DriftHistoryArgs {
    /// The property id, e.g. `pi.containers.cpu-limits`.
    pub property: String,
    /// homeplane's own database: postgres://user:password@host:port/database.
    #[arg(long, env = "HOMEPLANE_HISTORY_DATABASE_URL", hide_env_values = true)]
    pub history_database_url: Redacted,
    /// Only the registries of this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Most transitions printed (the newest).
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_argument_struct_prints_a_secret() {
        let cli = Cli::try_parse_from([
            "homeplane",
            "migrate",
            "--database-url",
            "postgres://app:hunter2@db/app",
            "--dir",
            "/tmp",
        ])
        .unwrap();
        let debug = format!("{cli:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let cli = Cli::try_parse_from([
            "homeplane",
            "run",
            "--history-database-url",
            "postgres://hp:hunter2@db/hp",
        ])
        .unwrap();
        assert!(!format!("{cli:?}").contains("hunter2"));
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.trim_end_matches('s')
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{text:?} is not a number of seconds"))
}

/// Options of `homeplane migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// postgres://user:password@host:port/database
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Redacted,
    /// Folder of migration files.
    #[arg(long)]
    pub dir: PathBuf,
    /// Apply up to this version; lower than what is applied rolls back with the down files.
    #[arg(long)]
    pub target: Option<i64>,
    /// Print what would be applied or rolled back, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// History table.
    #[arg(long, default_value = "schema_migrations")]
    pub table: String,
    /// Apply every pending migration in one transaction.
    #[arg(long)]
    pub single_transaction: bool,
    /// Record migrations up to this version as applied without running them.
    #[arg(long)]
    pub baseline: Option<i64>,
    /// Take over another runner's history table (e.g. `_sqlx_migrations`).
    #[arg(long)]
    pub adopt: Option<String>,
    /// Accept the changed file of this applied migration (repeatable).
    #[arg(long = "accept-changed")]
    pub accept_changed: Vec<String>,
}

/// `homeplane backup ...`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write the plain dump of a backup (or of any age file) to a file or stdout, for your own
    /// tools (e.g. `pg_restore -l`).
    Decrypt(DecryptArgs),
    /// Back up a database (pg_dump) or a file/stdin straight to a bucket with the same pipeline
    /// the operator uses, without a cluster; prints the manifest. For scripts and benchmarks.
    Upload(UploadArgs),
    /// Archive a directory (a mounted PersistentVolumeClaim) with tar and stream it through the
    /// pipeline to the bucket; what the Job of a PVC backup runs. Writes its result as JSON to
    /// --result-file (the container's termination message).
    Pvc(PvcArgs),
    /// Encrypt (and compress) stdin to stdout with the pipeline's encryption stage, to age
    /// public keys: the file decrypts with `age -d`.
    Encrypt(EncryptArgs),
    /// Create the bucket named by --bucket unless it exists (for local S3 servers and the demo).
    EnsureBucket(BucketArgs),
}

/// Options of `homeplane backup ensure-bucket`.
#[derive(Debug, Args)]
pub struct BucketArgs {
    #[command(flatten)]
    pub location: BackupLocation,
}

/// Options of `homeplane backup upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    #[command(flatten)]
    pub location: BackupLocation,
    /// Dump this database with pg_dump (custom format).
    #[arg(long, conflicts_with = "file")]
    pub database_url: Option<Redacted>,
    /// Upload this file instead (`-` for stdin).
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// How the pipeline encrypts, compresses and uploads.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// age public key to encrypt to (repeatable).
    #[arg(long = "recipient", short = 'r', required = true)]
    pub recipients: Vec<String>,
    /// zstd level; 0 for no compression.
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    /// Part size in MiB.
    #[arg(long, default_value_t = 16)]
    pub part_size_mib: u64,
    /// Parts uploaded at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: u64,
}

/// Options of `homeplane backup pvc`.
#[derive(Debug, Args)]
pub struct PvcArgs {
    #[command(flatten)]
    pub location: BackupLocation,
    /// The directory to archive (where the claim is mounted).
    #[arg(long)]
    pub path: PathBuf,
    /// Name of the claim, for the manifest (the directory's path when left out).
    #[arg(long)]
    pub claim: Option<String>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Write the result (or the failure) as JSON to this file, e.g. /dev/termination-log.
    #[arg(long)]
    pub result_file: Option<PathBuf>,
}

/// Options of `homeplane backup encrypt`.
#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// age public key to encrypt to (repeatable).
    #[arg(long = "recipient", short = 'r', required = true)]
    pub recipients: Vec<String>,
    /// zstd level; 0 for no compression.
    #[arg(long, default_value_t = 0)]
    pub zstd_level: i32,
}

/// Which backup, and where its bucket is.
#[derive(Debug, Args)]
pub struct BackupLocation {
    /// The Backup object (bucket, credentials and checksum come from the cluster).
    #[arg(long, conflicts_with = "object")]
    pub backup: Option<String>,
    /// Namespace of the Backup (the kubeconfig's namespace when left out).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The object key in the bucket.
    #[arg(long)]
    pub object: Option<String>,
    /// S3 endpoint for --object.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,
    /// Bucket for --object.
    #[arg(long, env = "HOMEPLANE_BACKUP_BUCKET")]
    pub bucket: Option<String>,
    /// Region for --object (R2: auto).
    #[arg(long, env = "AWS_REGION", default_value = "auto")]
    pub region: String,
    /// Use virtual-hosted addressing (bucket.endpoint) instead of path-style.
    #[arg(long)]
    pub virtual_hosted: bool,
    /// Access key for --object.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key_id: Option<Redacted>,
    /// Secret key for --object.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_access_key: Option<Redacted>,
}

/// Options of `homeplane restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub location: BackupLocation,
    /// Your age identity file (AGE-SECRET-KEY-1...).
    #[arg(long)]
    pub identity: PathBuf,
    /// The database to restore a database backup into: postgres://user:password@host:port/db.
    #[arg(
        long,
        required_unless_present = "into_dir",
        conflicts_with = "into_dir"
    )]
    pub into: Option<Redacted>,
    /// Drop the dump's objects that already exist in the target first (with --into).
    #[arg(long, requires = "into")]
    pub clean: bool,
    /// The directory to unpack a volume (PVC) backup into; created when missing, and it must
    /// be empty unless --overwrite.
    #[arg(long)]
    pub into_dir: Option<PathBuf>,
    /// Restore files' owners (uid/gid) too; needs root (with --into-dir).
    #[arg(long, requires = "into_dir")]
    pub owners: bool,
    /// Unpack into a directory that is not empty, replacing files (with --into-dir).
    #[arg(long, requires = "into_dir")]
    pub overwrite: bool,
}

/// Options of `homeplane backup decrypt`.
#[derive(Debug, Args)]
pub struct DecryptArgs {
    #[command(flatten)]
    pub location: BackupLocation,
    /// A local age file instead of a backup in a bucket (zstd is undone when present).
    #[arg(long, conflicts_with_all = ["backup", "object"])]
    pub file: Option<PathBuf>,
    /// Your age identity file (AGE-SECRET-KEY-1...).
    #[arg(long)]
    pub identity: PathBuf,
    /// Where the plain dump goes; `-` for stdout.
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
}
