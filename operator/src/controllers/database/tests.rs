//! The Database controller's decisions against a mocked API server: what a pass does before it
//! reaches PostgreSQL, and how it reports what stops it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{Databases, FINALIZER};
use crate::reconcile::driver::reconcile;
use crate::reconcile::mock::{self, api_error, delay_of};

const PATH: &str = "/apis/homeplane.dev/v1alpha1/namespaces/data/databases/homelab";

fn database(server: Value) -> Value {
    json!({
        "apiVersion": "homeplane.dev/v1alpha1", "kind": "Database",
        "metadata": {"name": "homelab", "namespace": "data", "generation": 1,
                     "resourceVersion": "5", "uid": "u-db", "finalizers": [FINALIZER]},
        "spec": {"server": server},
        "status": {"observedGeneration": 1, "conditions": [], "failedAttempts": 5},
    })
}

fn external() -> Value {
    json!({"external": {"host": "10.0.0.9", "port": 5432, "adminSecret": "pg-admin"}})
}

/// The admin Secret is not there yet: the pass reads it, says which Secret and keys it waits
/// for, and is retried with backoff — never Stalled, never counted towards giving up.
#[tokio::test]
async fn an_admin_secret_that_is_not_there_yet_is_retried_not_stalled() {
    let (ctx, mut api) = mock::context();
    let obj = database(external());
    let cached = Arc::new(serde_json::from_value(obj.clone()).unwrap());
    let task = tokio::spawn(reconcile(Arc::new(Databases), cached, ctx));
    api.expect("GET", PATH, obj.clone()).await;
    let read = api
        .answer(
            404,
            api_error(404, "NotFound", "secrets \"pg-admin\" not found"),
        )
        .await;
    assert!(
        read.is("GET", "/api/v1/namespaces/data/secrets/pg-admin"),
        "{}",
        read.uri
    );
    let patch = api.expect_status_patch(PATH, &obj).await;
    let (status, reason, message) = patch.condition("Ready").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "AdminSecretMissing")
    );
    assert!(
        message.contains("Secret data/pg-admin with keys username and password is missing"),
        "{message}"
    );
    assert_eq!(patch.condition("Reconciling").unwrap().0, "True");
    assert_eq!(
        patch.condition("Stalled"),
        None,
        "a late Secret is not Stalled"
    );
    assert!(
        patch.body["status"]["failedAttempts"].is_null(),
        "the old count is gone: {}",
        patch.body["status"]
    );
    let after = delay_of(&api.join(task).await.unwrap()).unwrap();
    assert!(
        after <= Duration::from_secs(2),
        "the first retry is soon: {after:?}"
    );
    api.finish().await;
}

/// A spec that names no server cannot be cured by waiting: Stalled, until the spec changes.
#[tokio::test]
async fn a_database_without_a_server_stalls_until_its_spec_changes() {
    let (ctx, mut api) = mock::context();
    let obj = database(json!({}));
    let cached = Arc::new(serde_json::from_value(obj.clone()).unwrap());
    let task = tokio::spawn(reconcile(Arc::new(Databases), cached, ctx));
    api.expect("GET", PATH, obj.clone()).await;
    let patch = api.expect_status_patch(PATH, &obj).await;
    let (status, reason, message) = patch.condition("Stalled").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "InvalidServer")
    );
    assert!(
        message.contains("waits for a change of the spec"),
        "{message}"
    );
    assert_eq!(patch.condition("Ready").unwrap().0, "False");
    assert_eq!(api.join(task).await.unwrap(), Action::await_change());
    api.finish().await;
    assert!(
        api.events
            .iter()
            .any(|(kind, reason, _)| kind == "Warning" && reason == "InvalidServer"),
        "{:?}",
        api.events
    );
}
