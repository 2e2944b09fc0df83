//! The election's decisions against a mocked API server: expiry on the local clock, and a
//! leader that stops by its renew deadline when the API server does not answer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Attempt, Elector, Error, Timing};
use crate::reconcile::mock;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/hp/leases/homeplane-operator";

fn timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    }
}

fn lease(holder: &str, renew: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "homeplane-operator", "namespace": "hp", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": renew, "acquireTime": renew, "leaseTransitions": 0},
    })
}

/// Replica `b`'s elector of lease `hp/homeplane-operator`.
fn standby_b(ctx: &crate::controllers::Context) -> std::sync::Arc<Elector> {
    std::sync::Arc::new(Elector::new(
        ctx.client.clone(),
        "hp",
        "homeplane-operator",
        "b",
        timing(),
    ))
}

#[tokio::test(start_paused = true)]
async fn a_standby_judges_expiry_on_its_own_clock_not_the_holders() {
    let (ctx, mut api) = mock::context();
    let elector = standby_b(&ctx);
    // The holder's clock is years behind: its renewTime says nothing about expiry.
    let held = lease("a", "2001-01-01T00:00:00.000000Z", "7");
    let e = elector.clone();
    let attempt = tokio::spawn(async move { e.try_acquire_or_renew().await });
    api.expect("GET", PATH, held.clone()).await;
    assert!(matches!(attempt.await.unwrap().unwrap(), Attempt::HeldBy(h) if h == "a"));

    // Unchanged for 14 s of this replica's clock: still held.
    tokio::time::advance(Duration::from_secs(14)).await;
    let e = elector.clone();
    let attempt = tokio::spawn(async move { e.try_acquire_or_renew().await });
    api.expect("GET", PATH, held.clone()).await;
    assert!(matches!(
        attempt.await.unwrap().unwrap(),
        Attempt::HeldBy(_)
    ));

    // Unchanged for 16 s: expired; the standby takes it with the version it read.
    tokio::time::advance(Duration::from_secs(2)).await;
    let e = elector.clone();
    let attempt = tokio::spawn(async move { e.try_acquire_or_renew().await });
    api.expect("GET", PATH, held.clone()).await;
    let put = api
        .expect("PUT", PATH, lease("b", "2026-01-01T00:00:00.000000Z", "8"))
        .await;
    assert_eq!(put.body["spec"]["holderIdentity"], "b");
    assert_eq!(put.body["metadata"]["resourceVersion"], "7");
    assert!(matches!(attempt.await.unwrap().unwrap(), Attempt::Leading));
    api.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_renew_restarts_the_standbys_wait() {
    let (ctx, mut api) = mock::context();
    let elector = standby_b(&ctx);
    for (rv, wait) in [("1", 10), ("2", 10), ("3", 0)] {
        let e = elector.clone();
        let attempt = tokio::spawn(async move { e.try_acquire_or_renew().await });
        api.expect(
            "GET",
            PATH,
            lease("a", &format!("2001-01-01T00:00:0{rv}.000000Z"), rv),
        )
        .await;
        assert!(
            matches!(attempt.await.unwrap().unwrap(), Attempt::HeldBy(_)),
            "renewed at {rv}"
        );
        tokio::time::advance(Duration::from_secs(wait)).await;
    }
    api.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_stops_by_its_renew_deadline() {
    let (ctx, mut api) = mock::context();
    let elector = Elector::new(
        ctx.client.clone(),
        "hp",
        "homeplane-operator",
        "a",
        timing(),
    );
    let since = Instant::now();
    let holding = tokio::spawn(async move { elector.hold(since).await });
    // The API server takes the renew and never answers.
    let pending = tokio::spawn(async move {
        let _held = api.hang().await;
        std::future::pending::<()>().await;
    });
    let lost = holding.await.unwrap();
    let took = since.elapsed();
    assert!(matches!(lost, Error::Lost { .. }), "{lost}");
    assert!(lost.to_string().contains("renew deadline"), "{lost}");
    assert!(
        took <= Duration::from_secs(10),
        "stopped after {took:?}, past the renew deadline"
    );
    assert!(took >= Duration::from_secs(9), "gave up early: {took:?}");
    pending.abort();
}
