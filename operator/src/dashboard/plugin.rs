//! The binary as a kubectl plugin: named (or linked as) `kubectl-homeplane`, `kubectl homeplane
//! status`, `trace` and every other command work the way CloudNativePG's `kubectl cnpg` does;
//! named `kubectl_complete-homeplane`, it answers kubectl's completion of the plugin (kubectl
//! 1.26 and later), the subcommands, flags, kinds and object names. `status` and `trace` read
//! the same watch caches and the same model as the dashboard.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{CommandFactory, FromArgMatches};
use kube::api::{DynamicObject, ListParams};
use kube::discovery::ApiResource;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::snapshot::{Kind, Snapshot};
use super::{model, text};
use crate::cache::{Caches, Related};
use crate::cli::{Cli, KubeArgs, StatusArgs, TraceArgs};

/// The name the plugin is installed under.
pub const PLUGIN: &str = "kubectl-homeplane";
/// The name kubectl runs to complete the plugin's arguments.
pub const COMPLETER: &str = "kubectl_complete-homeplane";
/// How long `status` and `trace` wait for the caches' first lists.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

/// How the binary was called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invoked {
    /// As `homeplane`.
    Homeplane,
    /// As `kubectl-homeplane`.
    Plugin,
    /// As `kubectl_complete-homeplane`.
    Completer,
}

/// How the binary was called, from the file name it was started as.
pub fn invoked_as() -> Invoked {
    let first = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&first)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with(COMPLETER) {
        Invoked::Completer
    } else if name.starts_with(PLUGIN) {
        Invoked::Plugin
    } else {
        Invoked::Homeplane
    }
}

fn plugin_command() -> clap::Command {
    Cli::command()
        .name("kubectl homeplane")
        .bin_name("kubectl homeplane")
}

/// Parses the command line of the plugin (`kubectl homeplane ...`), exiting with clap's
/// message on a mistake, as `Cli::parse` does.
pub fn parse() -> Cli {
    let matches = plugin_command().get_matches_from(std::env::args_os());
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    }
}

/// Prints the completion script of `shell` for the binary as it was called.
pub fn completion(shell: clap_complete::Shell, invoked: Invoked) {
    let (mut cmd, name) = match invoked {
        Invoked::Plugin => (Cli::command(), PLUGIN),
        _ => (Cli::command(), "homeplane"),
    };
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
}

/// A client for the cluster and the namespace of the kubeconfig context, as kubectl picks
/// them.
pub async fn client(kube: &KubeArgs) -> anyhow::Result<(Client, String)> {
    let options = kube::config::KubeConfigOptions {
        context: kube.context.clone(),
        ..Default::default()
    };
    let config = match &kube.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("failed to read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options).await
        }
        None => kube::Config::from_kubeconfig(&options).await,
    };
    let config = match config {
        Ok(config) => config,
        // In a pod without a kubeconfig: the pod's own service account.
        Err(error) if kube.kubeconfig.is_none() && kube.context.is_none() => {
            kube::Config::incluster()
                .map_err(|_| error)
                .context("failed to read the kubeconfig: set KUBECONFIG or pass --kubeconfig")?
        }
        Err(error) => {
            return Err(error).context("failed to read the kubeconfig");
        }
    };
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).context("failed to make a Kubernetes client")?;
    Ok((client, namespace))
}

/// The caches of `namespace` (all when `None`), filled: what `status` and `trace` read.
async fn snapshot(client: &Client, namespace: Option<&str>) -> anyhow::Result<Snapshot> {
    let stop = CancellationToken::new();
    let (caches, _tasks) = Caches::start(client, namespace, &stop);
    let (related, _more) = Related::start(&caches, client, namespace, None, &stop);
    if !caches.wait_until_ready(SYNC_TIMEOUT).await {
        bail!(
            "could not list homeplane's objects within {}s: are the CRDs installed, and may you list them?",
            SYNC_TIMEOUT.as_secs()
        );
    }
    // Secrets, ConfigMaps and the rest only make the chains deeper: a user who may not list
    // Secrets still gets the status, with those links unknown.
    let related = related
        .wait_until_ready(Duration::from_secs(5))
        .await
        .then_some(related);
    let snapshot = Snapshot::take(
        &caches,
        related.as_ref(),
        k8s_openapi::jiff::Timestamp::now(),
    );
    stop.cancel();
    Ok(snapshot)
}

/// `status`: prints what needs you; exit status 1 when anything does.
pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (client, _) = client(&args.kube).await?;
    let mut snapshot = snapshot(&client, args.namespace.as_deref()).await?;
    if args.namespace.is_some() {
        snapshot.keep_used_classes();
    }
    let attention = model::attention(&snapshot);
    let tiles = model::tiles(&snapshot);
    print!("{}", text::status(&snapshot, &attention, &tiles));
    Ok(if attention.items.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Splits `KIND/NAME` into a homeplane kind and a name.
pub fn parse_object(text: &str) -> anyhow::Result<(Kind, String)> {
    let Some((kind, name)) = text.split_once('/') else {
        bail!("{text:?} is not KIND/NAME, e.g. memoryserver/memory or db/homelab");
    };
    let Some(kind) = Kind::parse(kind) else {
        bail!(
            "{kind:?} is not a homeplane kind (nodeclass, database, backuppolicy, backup, workflow, agent, agentrun, voicepipeline, memoryserver, stateregistry)"
        );
    };
    if name.is_empty() {
        bail!("{text:?} names no object after the slash");
    }
    Ok((kind, name.to_string()))
}

/// `trace KIND/NAME`: prints the dependency chain; exit status 1 when a link is broken.
pub async fn trace(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let (kind, name) = parse_object(&args.object)?;
    let (client, default_namespace) = client(&args.kube).await?;
    let namespace = if kind.namespaced() {
        args.namespace.unwrap_or(default_namespace)
    } else {
        String::new()
    };
    // The whole cluster's caches: a chain may lead into another namespace's NodeClass.
    let scope = (!namespace.is_empty()).then_some(namespace.as_str());
    let snapshot = snapshot(&client, scope).await?;
    let Some(chain) = model::chain(&snapshot, kind, &namespace, &name) else {
        bail!("{} not found", model::title(kind, &namespace, &name));
    };
    print!("{}", text::trace(&chain));
    Ok(if chain.first_broken().is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Answers kubectl's completion request: the arguments after the plugin's name, the last one
/// the word being completed; prints one candidate per line and then cobra's directive
/// (`:4`, no file completion; `:6` also no space after a `KIND/`).
pub async fn complete_for_kubectl() -> ExitCode {
    let words: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a: OsString| a.to_string_lossy().into_owned())
        .collect();
    let (candidates, no_space) = candidates(&words).await;
    for c in candidates {
        println!("{c}");
    }
    println!(":{}", if no_space { 6 } else { 4 });
    ExitCode::SUCCESS
}

async fn candidates(words: &[String]) -> (Vec<String>, bool) {
    let partial = words.last().cloned().unwrap_or_default();
    let before = &words[..words.len().saturating_sub(1)];
    let root = plugin_command();
    let sub = before.iter().find(|w| !w.starts_with('-'));
    let Some(sub) = sub else {
        let names = root
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| c.get_name().to_string())
            .filter(|n| n.starts_with(&partial))
            .collect();
        return (names, false);
    };
    let Some(command) = root.find_subcommand(sub) else {
        return (Vec::new(), false);
    };
    if partial.starts_with('-') {
        let flags = command
            .get_arguments()
            .chain(root.get_arguments())
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .filter(|f| f.starts_with(&partial))
            .collect();
        return (flags, false);
    }
    if sub != "trace" {
        return (Vec::new(), false);
    }
    match partial.split_once('/') {
        None => (
            Kind::WITH_STATUS
                .iter()
                .map(|k| format!("{}/", k.resource()))
                .filter(|k| k.starts_with(&partial))
                .collect(),
            true,
        ),
        Some((kind, prefix)) => {
            let Some(kind) = Kind::parse(kind) else {
                return (Vec::new(), false);
            };
            let flag = |short: &str, long: &str| {
                before
                    .iter()
                    .position(|w| w == short || w == long)
                    .and_then(|i| before.get(i + 1))
                    .cloned()
            };
            let kube = KubeArgs {
                kubeconfig: flag("--kubeconfig", "--kubeconfig").map(Into::into),
                context: flag("--context", "--context"),
            };
            let names = names_of(&kube, kind, flag("-n", "--namespace")).await;
            let typed = partial.split_once('/').map(|(k, _)| k).unwrap_or_default();
            (
                names
                    .into_iter()
                    .filter(|n| n.starts_with(prefix))
                    .map(|n| format!("{typed}/{n}"))
                    .collect(),
                false,
            )
        }
    }
}

/// The names of the objects of `kind` in `namespace` (the context's when `None`); empty when
/// the cluster cannot be asked.
async fn names_of(kube: &KubeArgs, kind: Kind, namespace: Option<String>) -> Vec<String> {
    let Ok((client, default_namespace)) = client(kube).await else {
        return Vec::new();
    };
    let resource = ApiResource {
        group: homeplane_crds::GROUP.to_string(),
        version: homeplane_crds::VERSION.to_string(),
        api_version: format!("{}/{}", homeplane_crds::GROUP, homeplane_crds::VERSION),
        kind: kind.name().to_string(),
        plural: kind.plural().to_string(),
    };
    let api: Api<DynamicObject> = if kind.namespaced() {
        Api::namespaced_with(client, &namespace.unwrap_or(default_namespace), &resource)
    } else {
        Api::all_with(client, &resource)
    };
    match api.list_metadata(&ListParams::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_kind_slash_name() {
        let (kind, name) =
            parse_object("memoryserver/memory").unwrap_or((Kind::Drift, String::new()));
        assert_eq!((kind, name.as_str()), (Kind::MemoryServer, "memory"));
        assert!(parse_object("memory").is_err());
        assert!(parse_object("pod/x").is_err());
        assert!(parse_object("db/").is_err());
    }

    #[tokio::test]
    async fn completes_subcommands_flags_and_kinds() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (subs, _) = candidates(&words(&["tr"])).await;
        assert_eq!(subs, vec!["trace".to_string()]);
        let (subs, _) = candidates(&words(&["st"])).await;
        assert_eq!(subs, vec!["status".to_string()]);
        let (flags, _) = candidates(&words(&["status", "--name"])).await;
        assert_eq!(flags, vec!["--namespace".to_string()]);
        let (kinds, no_space) = candidates(&words(&["trace", "mem"])).await;
        assert_eq!(kinds, vec!["memoryserver/".to_string()]);
        assert!(no_space);
    }
}
