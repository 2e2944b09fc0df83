//! Dereferencing what a backup run or a restore drill needs: the policy's bucket and its
//! credentials Secret, the age recipients, the part plan, and how to reach a Database (as the
//! role the policy names). A problem in the spec or a missing Secret becomes an [`Invalid`]
//! with a message that says what to fix; only API failures are errors.

use homeplane_backups::PartPlan;
use homeplane_backups::crypto::{self, Compress};
use homeplane_backups::postgres::PgConn;
use homeplane_backups::store::{S3Config, Store};
use homeplane_crds::backup::{BackupPolicy, CompressionAlgorithm};
use homeplane_crds::database::Database;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::controllers::database::{database_name, role_secret_name, secret_value};
use crate::controllers::{Context, Error};

/// Something the owner must fix before a run can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// CamelCase reason.
    pub reason: &'static str,
    /// A sentence a person can act on.
    pub message: String,
}

impl Invalid {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Where and how a policy's backups are written.
pub struct Destination {
    /// The S3 client for the bucket.
    pub store: Store,
    /// Key prefix, empty or ending with `/`.
    pub prefix: String,
    /// The age recipients.
    pub recipients: Vec<homeplane_backups::age::x25519::Recipient>,
    /// Compression.
    pub compress: Compress,
    /// Part size and concurrency.
    pub plan: PartPlan,
}

/// The pure part of [`destination`]: everything but the Secret.
pub fn validate(
    policy: &BackupPolicy,
) -> Result<
    (
        Vec<homeplane_backups::age::x25519::Recipient>,
        Compress,
        PartPlan,
    ),
    Invalid,
> {
    let spec = &policy.spec;
    let keys: Vec<&str> = spec.recipients.iter().map(|r| r.0.as_str()).collect();
    let recipients = crypto::parse_recipients(&keys)
        .map_err(|e| Invalid::new("InvalidRecipient", format!("spec.recipients: {e}")))?;
    let compress = match spec.compression.algorithm {
        CompressionAlgorithm::Zstd => Compress::Zstd(spec.compression.level),
        CompressionAlgorithm::None => Compress::None,
    };
    let part_size = u64::try_from(spec.destination.part_size_mib).unwrap_or(0) << 20;
    let concurrency = u64::try_from(spec.destination.concurrency).unwrap_or(0);
    let plan = PartPlan::new(part_size, concurrency)
        .map_err(|e| Invalid::new("InvalidPartPlan", format!("spec.destination: {e}")))?;
    Ok((recipients, compress, plan))
}

/// The bucket credentials of a policy from its Secret (keys `accessKeyId`, `secretAccessKey`);
/// the inner error says the Secret or a key is missing.
pub async fn credentials(
    ctx: &Context,
    policy: &BackupPolicy,
) -> Result<Result<(String, String), Invalid>, Error> {
    let ns = policy.namespace().unwrap_or_default();
    let dest = &policy.spec.destination;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&dest.credentials_secret)
        .await
        .map_err(Error::kube("read the S3 credentials Secret"))?;
    let Some((access_key_id, secret_access_key)) = secret.as_ref().and_then(|s| {
        Some((
            secret_value(s, "accessKeyId")?,
            secret_value(s, "secretAccessKey")?,
        ))
    }) else {
        return Ok(Err(Invalid::new(
            "CredentialsSecretMissing",
            format!(
                "Secret {ns}/{} with keys accessKeyId and secretAccessKey is missing; create it with the bucket's S3 credentials",
                dest.credentials_secret
            ),
        )));
    };
    Ok(Ok((access_key_id, secret_access_key)))
}

/// Resolves a policy's destination, reading its credentials Secret.
pub async fn destination(
    ctx: &Context,
    policy: &BackupPolicy,
) -> Result<Result<Destination, Invalid>, Error> {
    let (recipients, compress, plan) = match validate(policy) {
        Ok(v) => v,
        Err(invalid) => return Ok(Err(invalid)),
    };
    let (access_key_id, secret_access_key) = match credentials(ctx, policy).await? {
        Ok(c) => c,
        Err(invalid) => return Ok(Err(invalid)),
    };
    let dest = &policy.spec.destination;
    let store = Store::new(&S3Config {
        endpoint: dest.endpoint.clone(),
        bucket: dest.bucket.clone(),
        region: dest.region.clone(),
        path_style: dest.path_style,
        access_key_id,
        secret_access_key,
    });
    let mut prefix = dest.prefix.trim_start_matches('/').to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    Ok(Ok(Destination {
        store,
        prefix,
        recipients,
        compress,
        plan,
    }))
}

/// The label that marks a Database whose contents may be thrown away: the only kind a restore
/// drill restores into (`pg_restore --clean` replaces everything in it).
pub const SCRATCH_LABEL: &str = "homeplane.dev/scratch";

/// How to reach the scratch Database `name` of a restore drill, as its server's admin; refused
/// unless the Database is labelled [`SCRATCH_LABEL`]`=true`.
pub async fn scratch_database(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Result<PgConn, Invalid>, Error> {
    let db = Api::<Database>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::kube("read the scratch Database"))?;
    let marked = db
        .as_ref()
        .is_some_and(|d| d.labels().get(SCRATCH_LABEL).map(String::as_str) == Some("true"));
    if db.is_some() && !marked {
        return Ok(Err(Invalid::new(
            "ScratchNotMarked",
            format!(
                "Database {ns}/{name} is not marked as scratch: a restore drill replaces its whole contents, so it only restores into a Database labelled {SCRATCH_LABEL}=true (kubectl label database {name} -n {ns} {SCRATCH_LABEL}=true, if its contents may be thrown away)"
            ),
        )));
    }
    database(ctx, ns, name, None).await
}

/// How to reach the database of the Database object `name` in `ns`: as `role` (its Secret
/// `<database>-<role>`, written by the Database controller) or as the server's admin.
pub async fn database(
    ctx: &Context,
    ns: &str,
    name: &str,
    role: Option<&str>,
) -> Result<Result<PgConn, Invalid>, Error> {
    let Some(db) = Api::<Database>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::kube("read the Database"))?
    else {
        return Ok(Err(Invalid::new(
            "DatabaseNotFound",
            format!("Database {ns}/{name} does not exist"),
        )));
    };
    let Some(server) = crate::controllers::database::server(ctx, &db).await? else {
        return Ok(Err(Invalid::new(
            "DatabaseNotReady",
            format!(
                "Database {ns}/{name} has no running server (its managed server has no pod yet)"
            ),
        )));
    };
    let server = &server;
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), ns);
    let secret_name = match role {
        Some(role) => role_secret_name(&db, role),
        None => server.admin_secret.clone(),
    };
    let secret = secrets
        .get_opt(&secret_name)
        .await
        .map_err(Error::kube("read the database credentials Secret"))?;
    let Some((user, password)) = secret
        .as_ref()
        .and_then(|s| Some((secret_value(s, "username")?, secret_value(s, "password")?)))
    else {
        let whose = match role {
            Some(role) => {
                format!("role {role} (written by the Database controller once the role exists)")
            }
            None => "the server's admin".to_string(),
        };
        return Ok(Err(Invalid::new(
            "DatabaseCredentialsMissing",
            format!("Secret {ns}/{secret_name} with the credentials of {whose} is missing"),
        )));
    };
    let sslmode = serde_json::to_value(server.ssl_mode)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| "prefer".into());
    Ok(Ok(PgConn {
        host: server.host.clone(),
        port: u16::try_from(server.port).unwrap_or(5432),
        user,
        password,
        dbname: database_name(&db),
        sslmode,
    }))
}
