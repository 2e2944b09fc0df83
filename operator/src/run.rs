//! `homeplane run`: serve health and metrics, wait for the CRDs, win the leader election, run
//! every controller, and stop. Three ways to stop, each leaving the state recoverable:
//! - SIGTERM: the controllers finish what they are doing (while the lease is still renewed, for
//!   at most [`DRAIN`]), what is left is cancelled, and the lease is released at once;
//! - the lease is lost (not renewed within the renew deadline, or taken): every controller is
//!   cancelled at once — before any standby can see the lease expire — and the process exits
//!   non-zero to be restarted as a standby;
//! - a controller stops for any reason (it returned, or it panicked): `/healthz` turns 503, the
//!   others are cancelled, the lease is released and the process exits non-zero, so Kubernetes
//!   restarts it rather than leaving a leader that silently does part of its job.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use kube::Client;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::RunArgs;
use crate::controllers::{self, Context};
use crate::leader::{self, Elector};
use crate::metrics::Metrics;
use crate::startup;
use crate::web::{self, Health};

/// The longest a clean shutdown waits for running reconciles before it cancels them.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Runs the operator until SIGTERM/SIGINT, or until leadership is lost or a controller stops
/// (errors, so that the process is restarted).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("failed to find a cluster: set KUBECONFIG or run inside a pod")?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(metrics.clone()));
    let shutdown = CancellationToken::new();
    let (addr, server) = web::serve(args.http_addr, health.clone(), shutdown.clone())
        .await
        .with_context(|| format!("failed to listen on {}", args.http_addr))?;
    info!(%addr, %identity, version = env!("CARGO_PKG_VERSION"), "homeplane starting; serving /healthz /readyz /metrics");

    let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
    let outcome =
        lead_and_reconcile(&args, client, &identity, metrics, health, shutdown.clone()).await;
    shutdown.cancel();
    signals.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    match &outcome {
        Ok(()) => info!("homeplane stopped"),
        Err(e) => error!(error = format!("{e:#}"), "homeplane stopped"),
    }
    outcome
}

async fn lead_and_reconcile(
    args: &RunArgs,
    client: Client,
    identity: &str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tokio::select! {
        waited = startup::wait_for_crds(client.clone(), args.crd_timeout) => waited?,
        () = shutdown.cancelled() => return Ok(()),
    }
    health.ready.store(true, Ordering::Relaxed);
    // Every replica, the standby too, keeps the shared watch caches (read by the per-object
    // metrics); the tasks end with `shutdown` or when this function returns.
    let (caches, _cache_tasks) =
        crate::cache::Caches::start(&client, args.watch_namespace.as_deref(), &shutdown);
    metrics.watch_objects(caches.clone());
    let _dashboard = crate::dashboard::serve_in_operator(
        args,
        &client,
        caches,
        metrics.clone(),
        identity,
        &shutdown,
    )
    .await?;

    let elector = args.leader_elect.then(|| {
        Elector::new(
            client.clone(),
            &args.leader_election_namespace,
            &args.leader_election_id,
            identity,
            timing(args.lease_duration_seconds),
        )
    });
    let since = match &elector {
        Some(elector) => tokio::select! {
            acquired = elector.acquire() => acquired.context(
                "leader election failed: does the namespace exist and may homeplane read and write Leases in it?",
            )?,
            () = shutdown.cancelled() => return Ok(()),
        },
        None => Instant::now(),
    };
    metrics.set_leader(true);
    let ctx = Arc::new(context(args, client, metrics.clone(), identity).await?);
    let stop = shutdown.child_token();
    let mut controllers = start_controllers(&ctx, args, &stop);
    info!(controllers = controllers.len(), "controllers started");

    let held = async {
        match &elector {
            Some(elector) => elector.hold(since).await,
            None => std::future::pending::<leader::Error>().await,
        }
    };
    let (result, release) = tokio::select! {
        // Shutdown cancels the controllers too, and one that ends because of it is no failure:
        // shutdown is looked at first.
        biased;
        () = shutdown.cancelled() => {
            stop.cancel();
            drain(&mut controllers, elector.as_ref()).await;
            (Ok(()), true)
        }
        lost = held => {
            // Fenced: nothing may run once the lease can be taken over.
            controllers.abort_all();
            health.fail(lost.to_string());
            let error = anyhow::Error::new(lost).context("stopped all work");
            (Err(error), false)
        }
        ended = supervise(&mut controllers) => {
            health.fail(ended.clone());
            stop.cancel();
            controllers.abort_all();
            let error = anyhow::anyhow!("{ended}; exiting so that the operator is restarted");
            (Err(error), true)
        }
    };
    while controllers.join_next().await.is_some() {}
    metrics.set_leader(false);
    // A standby takes over at once; a lease that was lost is not ours to release.
    if let (Some(elector), true) = (&elector, release) {
        elector.release().await;
    }
    result
}

/// The election's timing from the lease duration: renew deadline two thirds of it, a renew
/// attempt every seventh (client-go's 15 s / 10 s / 2 s).
fn timing(lease_seconds: u64) -> leader::Timing {
    leader::Timing {
        lease_duration: Duration::from_secs(lease_seconds),
        renew_deadline: Duration::from_secs(lease_seconds * 2 / 3),
        retry_period: Duration::from_secs((lease_seconds / 7).max(1)),
    }
}

/// The context every controller shares.
async fn context(
    args: &RunArgs,
    client: Client,
    metrics: Arc<Metrics>,
    identity: &str,
) -> anyhow::Result<Context> {
    let pool = match &args.history_database_url {
        Some(url) => Some(
            crate::history::connect(url)
                .await
                .context("--history-database-url: homeplane's database")?,
        ),
        None => {
            info!("no --history-database-url: drift and backup history are not recorded");
            None
        }
    };
    let mut ctx =
        Context::new(client, metrics, identity, args.watch_namespace.clone()).with_history(pool);
    ctx.workflow_resync = args.workflow_resync;
    ctx.image = args.image.clone();
    ctx.backup_budget = controllers::backup::budget::Budget::new(args.backup_memory_mib);
    ctx.trust = controllers::Trust {
        registry_namespaces: args.trusted_registry_namespaces.clone(),
        corrector_service_account: args.corrector_service_account.clone(),
        agent_role_prefix: args.agent_role_prefix.clone(),
        agent_policy: args.agent_policy.clone(),
    };
    Ok(ctx)
}

/// Starts every controller, each task ending with its name.
fn start_controllers(
    ctx: &Arc<Context>,
    args: &RunArgs,
    stop: &CancellationToken,
) -> JoinSet<&'static str> {
    let mut set = JoinSet::new();
    let mut spawn = |name: &'static str,
                     task: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| {
        set.spawn(async move {
            task.await;
            name
        });
    };
    let c = || ctx.clone();
    let s = || stop.clone();
    spawn("nodeclass", Box::pin(controllers::nodeclass::run(c(), s())));
    spawn("database", Box::pin(controllers::database::run(c(), s())));
    spawn(
        "backuppolicy",
        Box::pin(controllers::backuppolicy::run(c(), s())),
    );
    spawn("backup", Box::pin(controllers::backup::run(c(), s())));
    spawn("workflow", Box::pin(controllers::workflow::run(c(), s())));
    spawn("agent", Box::pin(controllers::agent::run(c(), s())));
    spawn("agentrun", Box::pin(controllers::agentrun::run(c(), s())));
    spawn("voicepipeline", Box::pin(controllers::voice::run(c(), s())));
    spawn("memoryserver", Box::pin(controllers::memory::run(c(), s())));
    let history = ctx
        .history
        .clone()
        .map(|pool| controllers::registry::History {
            pool,
            retention: Duration::from_secs(args.drift_history_days.saturating_mul(86_400)),
        });
    let registry = controllers::registry::run(c(), history, s());
    spawn("stateregistry", Box::pin(registry));
    set
}

/// Waits until a controller task ends — none should while the operator leads — and says which
/// and how.
pub async fn supervise(controllers: &mut JoinSet<&'static str>) -> String {
    match controllers.join_next().await {
        Some(Ok(name)) => format!("the {name} controller stopped"),
        Some(Err(e)) if e.is_panic() => format!("a controller panicked: {e}"),
        Some(Err(e)) => format!("a controller was cancelled: {e}"),
        None => std::future::pending().await,
    }
}

/// Lets running reconciles finish, for at most [`DRAIN`] and only while the lease is still
/// renewed; then cancels what is left.
async fn drain(controllers: &mut JoinSet<&'static str>, elector: Option<&Elector>) {
    let all_done = async { while controllers.join_next().await.is_some() {} };
    let held = async {
        match elector {
            // Keep renewing while draining, counted from the last renew that succeeded.
            Some(e) => e.hold(e.renewed_at()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = all_done => return,
        () = tokio::time::sleep(DRAIN) => warn!("reconciles still running after {}s; cancelling them", DRAIN.as_secs()),
        lost = held => warn!(%lost, "cancelling the running reconciles"),
    }
    controllers.abort_all();
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted; shutting down"),
        () = terminate => info!("SIGTERM; shutting down"),
    }
    shutdown.cancel();
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

#[cfg(test)]
mod tests;
