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

use crate::cli::{
    BackupLocation, BucketArgs, DecryptArgs, EncryptArgs, PipelineArgs, PvcArgs, RestoreArgs,
    UploadArgs,
};
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
            access_key_id: access_key_id.0.clone(),
            secret_access_key: secret_access_key.0.clone(),
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

/// `homeplane restore`: download, verify, decrypt, decompress, then pg_restore into `--into`
/// or unpack into `--into-dir`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let ids = identities(&args.identity)?;
    if let Some(dir) = &args.into_dir {
        return restore_dir(&args, dir, ids).await;
    }
    let Some(into) = &args.into else {
        bail!("name where to restore: --into DATABASE_URL or --into-dir DIR");
    };
    let conn = PgConn::from_url(into).map_err(|e| anyhow::anyhow!("--into: {e}"))?;
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

/// `homeplane restore --into-dir`: a volume's archive unpacked into a directory.
async fn restore_dir(args: &RestoreArgs, dir: &Path, ids: Vec<Identity>) -> anyhow::Result<()> {
    use homeplane_backups::archive::{self, UnpackOptions};
    let options = UnpackOptions {
        owners: args.owners,
        overwrite: args.overwrite,
    };
    let located = locate(&args.location).await?;
    let target = dir.to_path_buf();
    let (sink, unpacked) =
        archive::spawn_reader(move |input| archive::unpack(input, &target, options));
    let restored = pipeline::restore(
        &located.store,
        &located.key,
        ids,
        located.sha256.as_deref(),
        sink,
    )
    .await;
    let unpacked = unpacked.await.context("the unpacking thread stopped")?;
    let incomplete = |e: anyhow::Error| {
        e.context(format!(
            "restore failed; {} may hold part of the backup: empty it before trying again",
            dir.display()
        ))
    };
    let report = restored.map_err(|e| incomplete(e.into()))?.0;
    let stats = unpacked.map_err(|e| incomplete(e.into()))?;
    eprintln!(
        "restored {} ({} files, {} directories, {} symlinks, {} bytes; SHA-256 {} verified) into {}",
        located.key,
        stats.files,
        stats.directories,
        stats.symlinks,
        stats.bytes,
        report.sha256,
        dir.display()
    );
    Ok(())
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

/// The recipients, compression and part plan of pipeline flags.
fn pipeline_settings(
    args: &PipelineArgs,
) -> anyhow::Result<(
    Vec<homeplane_backups::age::x25519::Recipient>,
    crypto::Compress,
    homeplane_backups::PartPlan,
)> {
    let recipients = crypto::parse_recipients(&args.recipients)?;
    let plan = homeplane_backups::PartPlan::new(args.part_size_mib << 20, args.concurrency)?;
    Ok((recipients, compression(args.zstd_level), plan))
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
    let (recipients, compress, plan) = pipeline_settings(&args.pipeline)?;
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
            compress,
            plan,
            source: info,
        },
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&report.manifest)?);
    Ok(())
}

/// `homeplane backup pvc`: the directory as a tar archive through the pipeline; the result (or
/// the failure) as JSON on stdout and in `--result-file`.
pub async fn pvc(args: PvcArgs) -> anyhow::Result<()> {
    use homeplane_backups::archive::JobReport;
    let key = args.location.object.clone().unwrap_or_default();
    let report = match pvc_backup(&args, &key).await {
        Ok(report) => report,
        Err((reason, message)) => JobReport {
            object_key: key,
            reason: Some(reason.to_string()),
            message: Some(message),
            ..JobReport::default()
        },
    };
    let text = report.to_termination_message();
    println!("{text}");
    if let Some(path) = &args.result_file {
        std::fs::write(path, &text)
            .with_context(|| format!("failed to write the result to {}", path.display()))?;
    }
    match report.message {
        Some(message) if report.reason.is_some() => bail!(message),
        _ => Ok(()),
    }
}

async fn pvc_backup(
    args: &PvcArgs,
    key: &str,
) -> Result<homeplane_backups::archive::JobReport, (&'static str, String)> {
    use homeplane_backups::archive::{JobReport, archive_source};
    use homeplane_backups::manifest::SourceInfo;
    use homeplane_backups::pipeline::BackupRequest;
    let invalid = |e: anyhow::Error| ("InvalidArguments", format!("{e:#}"));
    let (recipients, compress, plan) = pipeline_settings(&args.pipeline).map_err(invalid)?;
    if key.is_empty() {
        return Err(invalid(anyhow::anyhow!(
            "name the object to write with --object KEY"
        )));
    }
    match std::fs::metadata(&args.path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err((
                "SourceFailed",
                format!("{} is not a directory", args.path.display()),
            ));
        }
        Err(e) => {
            return Err((
                "SourceFailed",
                format!("{} cannot be read: {e}", args.path.display()),
            ));
        }
    }
    let located = locate(&args.location).await.map_err(invalid)?;
    let (source, stats) = archive_source(args.path.clone());
    let name = args
        .claim
        .clone()
        .unwrap_or_else(|| args.path.display().to_string());
    let report = pipeline::backup(
        &located.store,
        source,
        BackupRequest {
            key: key.to_string(),
            recipients,
            compress,
            plan,
            source: SourceInfo {
                kind: "pvc".into(),
                name,
                namespace: args.location.namespace.clone(),
                format: "tar".into(),
            },
        },
    )
    .await
    .map_err(|e| (e.reason(), e.to_string()))?;
    let archive = stats.lock().ok().and_then(|s| s.clone());
    Ok(JobReport {
        object_key: key.to_string(),
        sha256: Some(report.manifest.sha256),
        encrypted_bytes: Some(report.manifest.encrypted_bytes),
        archive,
        ..JobReport::default()
    })
}

/// `homeplane backup encrypt`: stdin to stdout through the pipeline's encryption stage.
pub async fn encrypt(args: EncryptArgs) -> anyhow::Result<()> {
    let recipients = crypto::parse_recipients(&args.recipients)?;
    let compress = compression(args.zstd_level);
    tokio::task::spawn_blocking(move || {
        // The stage reads and writes in batches of 512 KiB itself: unbuffered handles on the
        // same descriptors spare a copy of every byte (stdout's own handle is line-buffered).
        use std::os::fd::AsFd;
        let input = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        let output = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
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
