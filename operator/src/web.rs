//! The operator's HTTP endpoints: `/healthz`, `/readyz` and Prometheus `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the endpoints report.
pub struct Health {
    /// Set once the CRDs are established and the operator can do its job (as leader or standby).
    pub ready: AtomicBool,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Why the process is broken (a controller stopped, the lease was lost): `/healthz` then
    /// answers 503 until the process exits and Kubernetes restarts it.
    broken: Mutex<Option<String>>,
}

impl Health {
    /// Healthy, not ready yet.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            ready: false.into(),
            metrics,
            broken: Mutex::new(None),
        }
    }

    /// Marks the process broken: `/healthz` answers 503 with `why` from now on.
    pub fn fail(&self, why: impl Into<String>) {
        if let Ok(mut broken) = self.broken.lock() {
            broken.get_or_insert(why.into());
        }
    }

    /// Why the process is broken, if it is.
    pub fn broken(&self) -> Option<String> {
        self.broken.lock().ok().and_then(|b| b.clone())
    }
}

/// Binds `addr` and serves until `shutdown` is cancelled. Returns the bound address (useful
/// with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok((bound, task))
}

async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.broken() {
        None => (StatusCode::OK, "ok".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for homeplane's CRDs to be established",
        )
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.render(),
    )
}
