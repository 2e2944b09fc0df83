//! The NodeClass controller's decisions against a mocked API server: which requests a pass
//! makes and what status it writes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::NodeClasses;
use crate::reconcile::driver::reconcile;
use crate::reconcile::mock::{self, list};

const PATH: &str = "/apis/homeplane.dev/v1alpha1/nodeclasses/pi";

fn class() -> Value {
    json!({
        "apiVersion": "homeplane.dev/v1alpha1", "kind": "NodeClass",
        "metadata": {"name": "pi", "generation": 1, "resourceVersion": "5", "uid": "u-pi"},
        "spec": {"nodeSelector": {"homeplane.dev/class": "pi"}},
        "status": {"observedGeneration": 1, "conditions": []},
    })
}

fn node() -> Value {
    json!({"metadata": {"name": "pi-1", "labels": {"homeplane.dev/class": "pi"}},
           "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}})
}

fn pod(cpu: &str) -> Value {
    json!({"metadata": {"name": "caddy", "namespace": "edge"},
           "spec": {"nodeName": "pi-1", "containers": [{"name": "c", "resources": {
               "requests": {"cpu": cpu, "memory": "64Mi"}, "limits": {"cpu": cpu, "memory": "64Mi"}}}]},
           "status": {"phase": "Running"}})
}

#[tokio::test]
async fn a_pass_lists_the_class_nodes_and_their_pods_then_writes_the_plan() {
    let (ctx, mut api) = mock::context();
    let obj = class();
    let cached = Arc::new(serde_json::from_value(obj.clone()).unwrap());
    let task = tokio::spawn(reconcile(Arc::new(NodeClasses), cached, ctx));
    api.expect("GET", PATH, obj.clone()).await;
    let nodes = api
        .expect("GET", "/api/v1/nodes?", list("Node", vec![node()]))
        .await;
    assert!(
        nodes
            .uri
            .contains("labelSelector=homeplane.dev%2Fclass%3Dpi"),
        "{}",
        nodes.uri
    );
    let pods = api
        .expect("GET", "/api/v1/pods?", list("Pod", vec![pod("6")]))
        .await;
    assert!(
        pods.uri.contains("fieldSelector=spec.nodeName%3Dpi-1"),
        "{}",
        pods.uri
    );
    let patch = api.expect_status_patch(PATH, &obj).await;
    assert_eq!(patch.condition("Ready").unwrap().1, "NodesMatched");
    assert_eq!(patch.condition("Overcommitted").unwrap().0, "True");
    assert_eq!(
        patch.condition("Degraded"),
        None,
        "overcommit is reported on its own"
    );
    assert_eq!(patch.body["status"]["nodeCount"], 1);
    assert_eq!(patch.body["status"]["podCount"], 1);
    assert_eq!(
        api.join(task).await.unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    api.finish().await;
    assert_eq!(api.events.len(), 1);
    assert_eq!(
        (api.events[0].0.as_str(), api.events[0].1.as_str()),
        ("Warning", "Overcommitted")
    );
}

#[tokio::test]
async fn a_class_without_nodes_stalls_until_the_world_changes() {
    let (ctx, mut api) = mock::context();
    let obj = class();
    let cached = Arc::new(serde_json::from_value(obj.clone()).unwrap());
    let task = tokio::spawn(reconcile(Arc::new(NodeClasses), cached, ctx));
    api.expect("GET", PATH, obj.clone()).await;
    api.expect("GET", "/api/v1/nodes?", list("Node", vec![]))
        .await;
    let patch = api.expect_status_patch(PATH, &obj).await;
    let (status, reason, message) = patch.condition("Stalled").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "NoMatchingNodes")
    );
    assert!(
        message.contains("label a node or change spec.nodeSelector"),
        "{message}"
    );
    assert_eq!(patch.condition("Ready").unwrap().0, "False");
    // Nodes are watched, and the resync looks again.
    assert_eq!(
        api.join(task).await.unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    api.finish().await;
}
