//! `homeplane run`: serve health and metrics, wait for the CRDs, win the leader election, run
//! every controller, and shut down cleanly on SIGTERM.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use kube::Client;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::cli::RunArgs;
use crate::controllers::{self, Context};
use crate::leader::{self, Elector};
use crate::metrics::Metrics;
use crate::startup;
use crate::web::{self, Health};

/// Runs the operator until SIGTERM/SIGINT, or until leadership is lost (an error, so that the
/// process is restarted and stands by again).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("failed to find a cluster: set KUBECONFIG or run inside a pod")?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health {
        ready: false.into(),
        metrics: metrics.clone(),
    });
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
    let _ = server.await;
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
        let timing = leader::Timing {
            lease_duration: Duration::from_secs(args.lease_duration_seconds),
            renew_deadline: Duration::from_secs(args.lease_duration_seconds * 2 / 3),
            retry_period: Duration::from_secs((args.lease_duration_seconds / 7).max(1)),
        };
        Elector::new(
            client.clone(),
            &args.leader_election_namespace,
            &args.leader_election_id,
            identity,
            timing,
        )
    });
    if let Some(elector) = &elector {
        tokio::select! {
            acquired = elector.acquire() => acquired.context(
                "leader election failed: does the namespace exist and may homeplane read and write Leases in it?",
            )?,
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    metrics.set_leader(true);

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
    let history = pool.clone().map(|pool| controllers::registry::History {
        pool,
        retention: Duration::from_secs(args.drift_history_days.saturating_mul(86_400)),
    });
    let mut ctx = Context::new(
        client,
        metrics.clone(),
        identity,
        args.watch_namespace.clone(),
    )
    .with_history(pool);
    ctx.workflow_resync = args.workflow_resync;
    ctx.image = args.image.clone();
    ctx.trust = controllers::Trust {
        registry_namespaces: args.trusted_registry_namespaces.clone(),
        corrector_service_account: args.corrector_service_account.clone(),
        agent_role_prefix: args.agent_role_prefix.clone(),
        agent_policy: args.agent_policy.clone(),
    };
    let ctx = Arc::new(ctx);
    let mut controllers = JoinSet::new();
    let stop = shutdown.child_token();
    controllers.spawn(controllers::nodeclass::run(ctx.clone(), stop.clone()));
    controllers.spawn(controllers::database::run(ctx.clone(), stop.clone()));
    controllers.spawn(controllers::backuppolicy::run(ctx.clone(), stop.clone()));
    controllers.spawn(controllers::backup::run(ctx.clone(), stop.clone()));
    controllers.spawn(controllers::workflow::run(ctx.clone(), stop.clone()));
    controllers.spawn(controllers::agent::run(ctx.clone(), stop.clone()));
    controllers.spawn(controllers::agentrun::run(ctx.clone(), stop.clone()));
    controllers.spawn(controllers::voice::run(ctx.clone(), stop.clone()));
    controllers.spawn(controllers::memory::run(ctx.clone(), stop.clone()));
    controllers.spawn(controllers::registry::run(
        ctx.clone(),
        history,
        stop.clone(),
    ));
    info!(controllers = controllers.len(), "controllers started");

    let lost = async {
        match &elector {
            Some(elector) => elector.hold().await,
            None => std::future::pending::<leader::Error>().await,
        }
    };
    let result = tokio::select! {
        lost = lost => Err(anyhow::Error::new(lost)),
        () = shutdown.cancelled() => Ok(()),
    };
    stop.cancel();
    while controllers.join_next().await.is_some() {}
    metrics.set_leader(false);
    if let (Some(elector), Ok(())) = (&elector, &result) {
        elector.release().await;
    }
    result
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
