//! `homeplane restore` and `homeplane backup decrypt`: the owner's side of backups, with the
//! owner's age identity (a file the operator never sees). A backup is found by its Backup object
//! (bucket and credentials from its policy, through the cluster) or by its object key (bucket
//! and credentials from flags or the usual AWS_* variables).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use homeplane_backups::crypto::{self, Identity};
use homeplane_backups::pipeline;
use homeplane_backups::postgres::{self, PgConn};
use homeplane_backups::store::{S3Config, Store};
use homeplane_crds::backup::{Backup, BackupPhase, BackupPolicy};
use kube::Api;
use tokio::io::AsyncWrite;

use crate::cli::{BackupLocation, BucketArgs, DecryptArgs, EncryptArgs, RestoreArgs, UploadArgs};
use crate::controllers::Context;
use crate::controllers::backup::resolve;
use crate::metrics::Metrics;

/// Where a backup is: its bucket, key and recorded checksum.
struct Located {
    store: Store,
    key: String,
    sha256: Option<String>,
}

async fn locate(loc: &BackupLocation) -> anyhow::Result<Located> {
    if let Some(name) = &loc.backup {
        let client = kube::Client::try_default()
            .await
            .context("--backup needs the cluster: set KUBECONFIG (or use --object)")?;
        let ns = loc
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let backup = Api::<Backup>::namespaced(client.clone(), &ns)
            .get(name)
            .await
            .with_context(|| format!("failed to read Backup {ns}/{name}"))?;
        let status = backup.status.clone().unwrap_or_default();
        if status.phase != BackupPhase::Succeeded {
            bail!(
                "Backup {ns}/{name} is {:?}, not Succeeded: there is no complete backup to restore",
                status.phase
            );
        }
        let key = status
            .object_key
            .clone()
            .context("the Backup records no object key")?;
        let policy = Api::<BackupPolicy>::namespaced(client.clone(), &ns)
            .get(&backup.spec.policy)
            .await
            .with_context(|| format!("failed to read BackupPolicy {ns}/{}", backup.spec.policy))?;
        let ctx = Context::new(client, Arc::new(Metrics::default()), "homeplane-cli", None);
        let dest = resolve::destination(&ctx, &policy)
            .await?
            .map_err(|invalid| anyhow::anyhow!(invalid.message))?;
        return Ok(Located {
            store: dest.store,
            key,
            sha256: status.sha256,
        });
    }
    let Some(key) = &loc.object else {
        bail!("name the backup with --backup NAME or --object KEY");
    };
    let (Some(endpoint), Some(bucket), Some(access_key_id), Some(secret_access_key)) = (
        &loc.endpoint,
        &loc.bucket,
        &loc.access_key_id,
        &loc.secret_access_key,
    ) else {
        bail!(
            "--object needs the bucket: --endpoint (AWS_ENDPOINT_URL), --bucket (HOMEPLANE_BACKUP_BUCKET), and AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        );
    };
    Ok(Located {
        store: Store::new(&S3Config {
            endpoint: endpoint.clone(),
            bucket: bucket.clone(),
            region: loc.region.clone(),
            path_style: !loc.virtual_hosted,
            access_key_id: access_key_id.clone(),
            secret_access_key: secret_access_key.clone(),
        }),
        key: key.clone(),
        sha256: None,
    })
}

fn identities(path: &Path) -> anyhow::Result<Vec<Identity>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the identity file {}", path.display()))?;
    Ok(crypto::parse_identities(&text)?)
}

/// `homeplane restore`: download, verify, decrypt, decompress and pg_restore into `--into`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let ids = identities(&args.identity)?;
    let conn = PgConn::from_url(&args.into).map_err(|e| anyhow::anyhow!("--into: {e}"))?;
    let located = locate(&args.location).await?;
    let (stdin, process) =
        postgres::pg_restore(&conn, args.clean).context("failed to start pg_restore")?;
    match pipeline::restore(
        &located.store,
        &located.key,
        ids,
        located.sha256.as_deref(),
        stdin,
    )
    .await
    {
        Ok((report, stdin)) => {
            drop(stdin);
            process.wait().await.map_err(|e| anyhow::anyhow!(e))?;
            eprintln!(
                "restored {} ({} bytes, SHA-256 {} verified) into database {} on {}:{}",
                located.key, report.plain_bytes, report.sha256, conn.dbname, conn.host, conn.port
            );
            Ok(())
        }
        Err(e) => {
            // pg_restore never saw the end of the dump: its transaction rolls back.
            process.kill();
            Err(e).context("restore failed; the database was left unchanged")
        }
    }
}

/// `homeplane backup decrypt`: the plain dump to a file or stdout.
pub async fn decrypt(args: DecryptArgs) -> anyhow::Result<()> {
    let ids = identities(&args.identity)?;
    let to_stdout = args.out.as_os_str() == "-";
    let out: Box<dyn AsyncWrite + Unpin + Send> = if to_stdout {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(
            tokio::fs::File::create(&args.out)
                .await
                .with_context(|| format!("failed to create {}", args.out.display()))?,
        )
    };
    let result = match &args.file {
        Some(file) => decrypt_file(file, ids, out).await,
        None => {
            let located = locate(&args.location).await?;
            pipeline::restore(
                &located.store,
                &located.key,
                ids,
                located.sha256.as_deref(),
                out,
            )
            .await
            .map(|(report, _)| report.plain_bytes)
            .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(bytes) => {
            if !to_stdout {
                eprintln!("wrote {bytes} bytes to {}", args.out.display());
            }
            Ok(())
        }
        Err(e) => {
            if !to_stdout {
                let _ = std::fs::remove_file(&args.out);
            }
            Err(e)
        }
    }
}

async fn decrypt_file(
    file: &Path,
    ids: Vec<Identity>,
    out: Box<dyn AsyncWrite + Unpin + Send>,
) -> anyhow::Result<u64> {
    let input =
        std::fs::File::open(file).with_context(|| format!("failed to open {}", file.display()))?;
    let rt = tokio::runtime::Handle::current();
    let written = tokio::task::spawn_blocking(move || {
        let sink = tokio_util::io::SyncIoBridge::new_with_handle(out, rt.clone());
        let (written, sink) = crypto::decrypt_detect(input, &ids, sink)?;
        let mut out = sink.into_inner();
        rt.block_on(tokio::io::AsyncWriteExt::shutdown(&mut out))?;
        Ok::<u64, crypto::StreamError>(written)
    })
    .await??;
    Ok(written)
}

fn compression(level: i32) -> crypto::Compress {
    if level > 0 {
        crypto::Compress::Zstd(level)
    } else {
        crypto::Compress::None
    }
}

/// `homeplane backup upload`: the operator's pipeline from the command line.
pub async fn upload(args: UploadArgs) -> anyhow::Result<()> {
    use homeplane_backups::manifest::SourceInfo;
    use homeplane_backups::pipeline::BackupRequest;
    let recipients = crypto::parse_recipients(&args.recipients)?;
    let plan = homeplane_backups::PartPlan::new(args.part_size_mib << 20, args.concurrency)?;
    let Some(key) = args.location.object.clone() else {
        bail!("name the object to write with --object KEY");
    };
    let located = locate(&args.location).await?;
    let (source, info): (Box<dyn tokio::io::AsyncRead + Unpin + Send>, SourceInfo) =
        match (&args.database_url, &args.file) {
            (Some(url), _) => {
                let conn =
                    PgConn::from_url(url).map_err(|e| anyhow::anyhow!("--database-url: {e}"))?;
                let info = SourceInfo {
                    kind: "database".into(),
                    name: conn.dbname.clone(),
                    namespace: None,
                    format: "pg_dump-custom".into(),
                };
                (Box::new(postgres::pg_dump(&conn)?), info)
            }
            (None, Some(file)) => {
                let info = SourceInfo {
                    kind: "stream".into(),
                    name: file.display().to_string(),
                    namespace: None,
                    format: "bytes".into(),
                };
                if file.as_os_str() == "-" {
                    (Box::new(tokio::io::stdin()), info)
                } else {
                    let f = tokio::fs::File::open(file)
                        .await
                        .with_context(|| format!("failed to open {}", file.display()))?;
                    (Box::new(f), info)
                }
            }
            (None, None) => bail!("name the source with --database-url or --file"),
        };
    let report = pipeline::backup(
        &located.store,
        source,
        BackupRequest {
            key,
            recipients,
            compress: compression(args.zstd_level),
            plan,
            source: info,
        },
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&report.manifest)?);
    Ok(())
}

/// `homeplane backup encrypt`: stdin to stdout through the pipeline's encryption stage.
pub async fn encrypt(args: EncryptArgs) -> anyhow::Result<()> {
    let recipients = crypto::parse_recipients(&args.recipients)?;
    let compress = compression(args.zstd_level);
    tokio::task::spawn_blocking(move || {
        let input = std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock());
        let output = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        crypto::encrypt(input, &recipients, compress, output).map(|_| ())
    })
    .await??;
    Ok(())
}

/// `homeplane backup ensure-bucket`.
pub async fn ensure_bucket(mut args: BucketArgs) -> anyhow::Result<()> {
    // The bucket is named, not an object: any key satisfies the location check.
    args.location.object.get_or_insert_with(String::new);
    let located = locate(&args.location).await?;
    located.store.ensure_bucket().await?;
    eprintln!("bucket {} is there", located.store.bucket());
    Ok(())
}
