//! A controller that stops makes the process unhealthy and exit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::supervise;
use crate::metrics::Metrics;
use crate::web::{self, Health};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn a_controller_that_returns_is_reported_and_turns_healthz_503() {
    let health = Arc::new(Health::new(Arc::new(Metrics::default())));
    let shutdown = CancellationToken::new();
    let addr = "127.0.0.1:0".parse().unwrap();
    let (addr, server) = web::serve(addr, health.clone(), shutdown.clone())
        .await
        .unwrap();
    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));

    let mut controllers: JoinSet<&'static str> = JoinSet::new();
    controllers.spawn(async {
        std::future::pending::<()>().await;
        "nodeclass"
    });
    controllers.spawn(async { "workflow" });
    let ended = tokio::time::timeout(Duration::from_secs(5), supervise(&mut controllers))
        .await
        .expect("a stopped controller is noticed at once");
    assert_eq!(ended, "the workflow controller stopped");
    health.fail(ended);
    let answer = get(addr, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.ends_with("the workflow controller stopped"),
        "{answer}"
    );
    controllers.abort_all();
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_controller_that_panics_is_reported() {
    let mut controllers: JoinSet<&'static str> = JoinSet::new();
    controllers.spawn(async {
        std::future::pending::<()>().await;
        "backup"
    });
    controllers.spawn(async {
        let broken: Vec<&'static str> = Vec::new();
        broken[0]
    });
    let ended = tokio::time::timeout(Duration::from_secs(5), supervise(&mut controllers))
        .await
        .unwrap();
    assert!(ended.starts_with("a controller panicked"), "{ended}");
    controllers.abort_all();
}

#[test]
fn the_election_follows_client_go_proportions() {
    let t = super::timing(15);
    assert_eq!(
        (
            t.lease_duration.as_secs(),
            t.renew_deadline.as_secs(),
            t.retry_period.as_secs()
        ),
        (15, 10, 2)
    );
    assert!(
        t.renew_deadline < t.lease_duration,
        "a leader stops before its lease can expire"
    );
}
