//! `homeplane import`: reads what runs today — the containers of a Docker Engine API (Docker,
//! or Podman's compatible service), what a compose file declares, a PostgreSQL database, the
//! workflows of an n8n — and writes it as a homelab: a kustomize tree with a namespace per
//! Docker network, workloads with the containers' own limits, Services, probes, claims and
//! NetworkPolicies, a `Database`, `Workflow`s, a `StateRegistry` catalogue of what was
//! imported and `BackupPolicy` proposals, plus a README of what was imported, left out and to
//! check, and the `kubectl create secret` commands of the Secrets it names (values left out:
//! no secret is ever written). Then `homeplane plan` says whether it fits the NodeClasses.

mod build;
mod compose;
mod docker;
mod model;
mod names;
mod output;
mod postgres;
mod registry;
mod report;
mod secrets;
mod workflows;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use homeplane_crds::backup::{
    AgeRecipient, BackupPolicy, BackupPolicySpec, BackupSource, Compression, DatabaseSource,
    PvcSource, Retention, S3Destination,
};
use homeplane_crds::nodeclass::{NodeClass, NodeClassSpec};
use kube::ResourceExt;

use build::{Classes, NamespaceOut, Options, document};
use report::Report;

/// The example homelab's NodeClasses (the Pi and the GPU node), used when `--nodeclasses` is
/// not given.
const EXAMPLE_NODECLASSES: &str = include_str!("../../../manifests/homelab/nodeclasses.yaml");

/// Options of `homeplane import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A Docker Engine API to read the containers of: `unix:///var/run/docker.sock`,
    /// `unix:///run/podman/podman.sock` or `tcp://host:2375`. Every container, stopped ones
    /// too, unless --filter narrows them.
    #[arg(long, value_name = "URL")]
    pub docker: Option<String>,
    /// Only containers matching this Docker filter (repeatable): `name=web`,
    /// `label=com.docker.compose.project=homelab`, `network=edge`, `status=running`.
    #[arg(long = "filter", value_name = "KEY=VALUE", requires = "docker")]
    pub filters: Vec<String>,
    /// A compose file (repeatable): its services that are not running (in --docker) are
    /// imported from their declaration.
    #[arg(long = "compose", value_name = "FILE")]
    pub compose: Vec<PathBuf>,
    /// A PostgreSQL database to import as a `Database`: its roles, schemas, grants,
    /// extensions and migration history (postgres://admin:password@host:port/database).
    #[arg(long, env = "HOMEPLANE_IMPORT_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// An n8n whose workflows become `Workflow`s (needs --n8n-api-key).
    #[arg(long, value_name = "URL", requires = "n8n_api_key")]
    pub n8n_url: Option<String>,
    /// Only the n8n workflows with this tag (repeatable: any of them).
    #[arg(long = "n8n-tag", value_name = "TAG", requires = "n8n_url")]
    pub n8n_tags: Vec<String>,
    /// n8n's API key (n8n: Settings > n8n API).
    #[arg(long, env = "N8N_API_KEY", hide_env_values = true)]
    pub n8n_api_key: Option<String>,
    /// The folder to write the homelab to (created; it must be empty).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
    /// NodeClasses to place the workloads in and to plan against (default: the example Pi and
    /// GPU node of manifests/homelab/nodeclasses.yaml).
    #[arg(long, value_name = "FILE")]
    pub nodeclasses: Option<PathBuf>,
    /// The NodeClass of containers without a GPU (default: the first class without a GPU).
    #[arg(long, value_name = "NAME")]
    pub class: Option<String>,
    /// The NodeClass of containers with a GPU (default: the first class with one).
    #[arg(long, value_name = "NAME")]
    pub gpu_class: Option<String>,
    /// The namespace of the engine's default network, the database, the workflows.
    #[arg(long, short = 'n', default_value = "homelab")]
    pub namespace: String,
    /// StorageClass of the claims (default: the cluster's default class).
    #[arg(long, value_name = "NAME")]
    pub storage_class: Option<String>,
    /// Where the state registry reads the old containers (default: --docker). The operator
    /// must reach it, which a local unix socket is not from inside a cluster.
    #[arg(long, value_name = "URL")]
    pub registry_docker_endpoint: Option<String>,
    /// The Database object's name (default: the database's name).
    #[arg(long, value_name = "NAME")]
    pub database_name: Option<String>,
    /// Where homeplane reaches n8n, when it differs from --n8n-url (e.g.
    /// http://n8n.automation:5678 once n8n runs in the cluster).
    #[arg(long, value_name = "URL")]
    pub n8n_cluster_url: Option<String>,
    /// S3 endpoint of the BackupPolicy proposals (Cloudflare R2: https://<account>.r2.cloudflarestorage.com).
    #[arg(long, value_name = "URL")]
    pub backup_endpoint: Option<String>,
    /// Bucket of the BackupPolicy proposals.
    #[arg(long, value_name = "NAME")]
    pub backup_bucket: Option<String>,
    /// age public key the backups are encrypted to (repeatable). With an endpoint and a
    /// bucket, the proposals are part of the tree; without, they are written beside it.
    #[arg(long = "age-recipient", value_name = "AGE1…")]
    pub age_recipients: Vec<String>,
    /// Secret with the bucket's `accessKeyId` and `secretAccessKey`.
    #[arg(long, default_value = "backup-s3")]
    pub backup_credentials_secret: String,
}

/// The NodeClasses of `path`, or the example ones.
fn classes(args: &ImportArgs) -> Result<(Classes, Option<PathBuf>)> {
    let (text, source) = match &args.nodeclasses {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("failed to read --nodeclasses {}", p.display()))?,
            Some(p.clone()),
        ),
        None => (EXAMPLE_NODECLASSES.to_string(), None),
    };
    let mut specs: BTreeMap<String, NodeClassSpec> = BTreeMap::new();
    let mut order = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_yaml::Value =
            serde::Deserialize::deserialize(doc).context("--nodeclasses is not YAML")?;
        if value["kind"].as_str() != Some("NodeClass") {
            continue;
        }
        let nc: NodeClass =
            serde_yaml::from_value(value).context("--nodeclasses holds an invalid NodeClass")?;
        order.push(nc.name_any());
        specs.insert(nc.name_any(), nc.spec);
    }
    let pick = |wanted: &Option<String>, gpu: bool, flag: &str| -> Result<Option<String>> {
        match wanted {
            Some(name) if specs.contains_key(name) => Ok(Some(name.clone())),
            Some(name) => bail!(
                "{flag} {name}: no such NodeClass in the NodeClasses ({})",
                order.join(", ")
            ),
            None => Ok(order
                .iter()
                .find(|n| specs[*n].gpu_resource.is_some() == gpu)
                .cloned()),
        }
    };
    let default = pick(&args.class, false, "--class")?
        .or_else(|| order.first().cloned())
        .context("--nodeclasses holds no NodeClass")?;
    let gpu = pick(&args.gpu_class, true, "--gpu-class")?;
    Ok((
        Classes {
            specs,
            default,
            gpu,
        },
        source,
    ))
}

/// The BackupPolicy proposals: one per claim that held state, and one for the database.
/// Complete (part of the tree) only with an endpoint, a bucket and a recipient.
fn backup_policies(
    args: &ImportArgs,
    namespaces: &mut BTreeMap<String, NamespaceOut>,
    database: Option<(&str, &str)>,
    report: &mut Report,
) -> bool {
    let complete = args.backup_endpoint.is_some()
        && args.backup_bucket.is_some()
        && !args.age_recipients.is_empty();
    let mut sources: Vec<(String, String, BackupSource)> = Vec::new();
    for (ns, out) in namespaces.iter() {
        for claim in &out.state_claims {
            sources.push((
                ns.clone(),
                claim.clone(),
                BackupSource {
                    database: None,
                    pvc: Some(PvcSource {
                        claim_name: claim.clone(),
                    }),
                },
            ));
        }
    }
    if let Some((ns, name)) = database {
        sources.push((
            ns.to_string(),
            name.to_string(),
            BackupSource {
                database: Some(DatabaseSource {
                    name: name.to_string(),
                    role: None,
                }),
                pvc: None,
            },
        ));
    }
    for (i, (ns, name, source)) in sources.into_iter().enumerate() {
        // Staggered ten minutes apart from 03:00, so the Pi does one at a time.
        let minutes = 180 + 10 * i;
        let spec = BackupPolicySpec {
            schedule: format!("{} {} * * *", minutes % 60, (minutes / 60) % 24),
            time_zone: "UTC".into(),
            suspend: false,
            source,
            destination: S3Destination {
                endpoint: args
                    .backup_endpoint
                    .clone()
                    .unwrap_or_else(|| "https://ACCOUNT.r2.cloudflarestorage.com".into()),
                bucket: args
                    .backup_bucket
                    .clone()
                    .unwrap_or_else(|| "BUCKET".into()),
                prefix: format!("{ns}/{name}/"),
                region: "auto".into(),
                path_style: true,
                credentials_secret: args.backup_credentials_secret.clone(),
                part_size_mib: 16,
                concurrency: 2,
            },
            recipients: if args.age_recipients.is_empty() {
                vec![AgeRecipient("age1REPLACE-WITH-YOUR-PUBLIC-KEY".into())]
            } else {
                args.age_recipients
                    .iter()
                    .map(|r| AgeRecipient(r.clone()))
                    .collect()
            },
            compression: Compression::default(),
            retention: Retention {
                daily: 7,
                weekly: 4,
                monthly: 6,
                ..Retention::default()
            },
            verify: None,
        };
        let mut policy = BackupPolicy::new(&name, spec);
        policy.metadata.namespace = Some(ns.clone());
        let out = namespaces.entry(ns.clone()).or_default();
        out.files
            .entry(output::BACKUP_FILE.into())
            .or_default()
            .push(document(&policy));
        report.imported.push(format!(
            "BackupPolicy {ns}/{name}: nightly at {:02}:{:02} UTC{}",
            (minutes / 60) % 24,
            minutes % 60,
            if complete {
                ""
            } else {
                " (a proposal: see below)"
            }
        ));
        if complete {
            report.secret(
                &ns,
                &args.backup_credentials_secret,
                "accessKeyId",
                "the backup bucket's credentials",
            );
            report.secret(&ns, &args.backup_credentials_secret, "secretAccessKey", "");
        }
    }
    if !complete
        && namespaces
            .values()
            .any(|n| n.files.contains_key(output::BACKUP_FILE))
    {
        report.check.push(format!(
            "backups: the BackupPolicy proposals ({} in each namespace) are not in the kustomizations yet; import again with --backup-endpoint, --backup-bucket and --age-recipient, or fill in the endpoint, bucket and age public key and add the file to its kustomization.yaml",
            output::BACKUP_FILE
        ));
    }
    complete
}

/// Runs the import.
pub async fn run(args: ImportArgs) -> Result<()> {
    if args.docker.is_none()
        && args.compose.is_empty()
        && args.database_url.is_none()
        && args.n8n_url.is_none()
    {
        bail!("nothing to import: give --docker, --compose, --database-url or --n8n-url");
    }
    output::prepare(&args.out)?;
    let (classes, classes_file) = classes(&args)?;
    let mut report = Report::default();
    let namespace = names::dns_label(&args.namespace, "homelab");
    if namespace != args.namespace {
        bail!(
            "--namespace {:?} is not a valid namespace name (try {namespace:?})",
            args.namespace
        );
    }

    // Sources.
    let mut containers = Vec::new();
    let mut networks = BTreeMap::new();
    if let Some(endpoint) = &args.docker {
        let engine = docker::read(endpoint, docker::filters(&args.filters)?).await?;
        eprintln!(
            "read {} container(s) from {endpoint}",
            engine.containers.len()
        );
        containers.extend(engine.containers);
        networks.extend(engine.networks);
    }
    for file in &args.compose {
        let mut hidden = Vec::new();
        let project = compose::read(file, &mut |v| hidden.push(v.to_string()))?;
        for v in hidden {
            report.hide(&v);
        }
        report.left_out.extend(project.left_out.iter().cloned());
        for c in project.containers {
            let service = project.services.get(&c.name).cloned().unwrap_or_default();
            let running = containers.iter().any(|r: &model::Container| {
                r.name == c.name
                    || (r.labels.get("com.docker.compose.project") == Some(&project.name)
                        && r.labels.get("com.docker.compose.service") == Some(&service))
            });
            if running {
                report.imported.push(format!(
                    "compose service {service} of {}: running, imported from the engine",
                    file.display()
                ));
                continue;
            }
            containers.push(c);
        }
        for (name, n) in project.networks {
            networks.entry(name).or_insert(n);
        }
        eprintln!("read {}", file.display());
    }

    // Containers.
    let options = Options {
        namespace: &namespace,
        storage_class: args.storage_class.as_deref(),
        registry_docker_endpoint: args
            .registry_docker_endpoint
            .as_deref()
            .or(args.docker.as_deref()),
    };
    let mut namespaces = build::containers(&containers, &networks, &classes, &options, &mut report);
    if args
        .docker
        .as_deref()
        .is_some_and(|d| d.starts_with("unix://"))
        && args.registry_docker_endpoint.is_none()
        && !containers.is_empty()
    {
        report.check.push(format!(
            "state registry: the old containers are observed through {} (a local socket); the operator must reach it — give --registry-docker-endpoint tcp://host:2375 when it runs elsewhere, or those properties stay Unknown",
            args.docker.as_deref().unwrap_or_default()
        ));
    }

    // The database.
    let mut database = None;
    if let Some(url) = &args.database_url {
        let (snapshot, password) = postgres::read(url).await?;
        if let Some(p) = password {
            report.hide(&p);
        }
        let name = args
            .database_name
            .clone()
            .unwrap_or_else(|| names::dns_label(&snapshot.database, "database"));
        let imported = postgres::infer(&snapshot, &name, &namespace, &mut report);
        let out = namespaces.entry(namespace.clone()).or_default();
        out.files
            .entry("database.yaml".into())
            .or_default()
            .push(document(&imported.database));
        out.properties.extend(imported.properties);
        if !imported.differences.is_empty() {
            eprintln!(
                "note: homeplane's first pass on database {} would change: {}",
                snapshot.database,
                imported.differences.join("; ")
            );
        }
        database = Some(name);
        eprintln!("read database {}", snapshot.database);
    }

    // The workflows.
    if let (Some(url), Some(key)) = (&args.n8n_url, &args.n8n_api_key) {
        report.hide(key);
        let found = workflows::read(url, key, &args.n8n_tags).await?;
        let target = args.n8n_cluster_url.as_deref().unwrap_or(url);
        let docs = workflows::build(&found, target, &namespace, &mut report);
        if !docs.is_empty() {
            namespaces
                .entry(namespace.clone())
                .or_default()
                .files
                .insert("workflows.yaml".into(), docs);
            report.secret(
                &namespace,
                workflows::API_KEY_SECRET,
                workflows::API_KEY_KEY,
                "n8n's API key",
            );
        }
        eprintln!("read {} workflow(s) from {url}", found.len());
    }

    // Backups, the state registry, and the files.
    let backups_complete = backup_policies(
        &args,
        &mut namespaces,
        database.as_deref().map(|d| (namespace.as_str(), d)),
        &mut report,
    );
    for (ns, out) in namespaces.iter_mut() {
        if !out.files.contains_key("namespace.yaml") {
            out.files
                .insert("namespace.yaml".into(), vec![build::namespace_only(ns)]);
        }
        let properties = std::mem::take(&mut out.properties);
        registry::check(ns, &properties)?;
        if let Some(r) = registry::registry(ns, properties) {
            out.files
                .insert("state-registry.yaml".into(), vec![document(&r)]);
        }
    }
    output::write(&args.out, &namespaces, backups_complete, &report)?;

    // The plan against the NodeClasses.
    let classes_path = match &classes_file {
        Some(p) => p.clone(),
        None => {
            let p = std::env::temp_dir().join(format!(
                "homeplane-import-nodeclasses-{}.yaml",
                std::process::id()
            ));
            std::fs::write(&p, EXAMPLE_NODECLASSES)?;
            p
        }
    };
    let planned = crate::plan_cli::plan(&[args.out.clone(), classes_path.clone()]);
    if classes_file.is_none() {
        let _ = std::fs::remove_file(&classes_path);
    }
    let (plan, fits) = planned?;
    let names: Vec<String> = namespaces.keys().cloned().collect();
    output::finish(&args.out, &names, &plan, fits, &report)?;
    println!("{plan}");
    println!(
        "wrote {} ({} imported, {} left out, {} to check, {} Secret(s) to create: see README.md)",
        args.out.display(),
        report.imported.len(),
        report.left_out.len(),
        report.check.len(),
        report.secrets.len()
    );
    if !fits {
        bail!(
            "the imported homelab does not fit the NodeClasses{} (see the plan above and {}/plan.txt)",
            classes_file
                .as_deref()
                .map(|p| format!(" of {}", p.display()))
                .unwrap_or_default(),
            args.out.display()
        );
    }
    Ok(())
}
