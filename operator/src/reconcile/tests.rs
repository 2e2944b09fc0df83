//! The frame's decisions against a mocked API server: the requests a pass makes, the status it
//! writes, retry versus stall, and what it does with an object it cannot read.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeplane_crds::nodeclass::{NodeClass, NodeClassStatus};
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::driver::reconcile;
use super::mock::{self, api_error, delay_of};
use super::{Outcome, Reconciler};
use crate::controllers::{Context, Error};

const PATH: &str = "/apis/homeplane.dev/v1alpha1/nodeclasses/pi";

/// A controller whose passes return what the test scripted, in order.
struct Scripted(Mutex<VecDeque<Result<Outcome, Error>>>);

impl Scripted {
    fn new(script: Vec<Result<Outcome, Error>>) -> Arc<Self> {
        Arc::new(Self(Mutex::new(script.into())))
    }
}

impl Reconciler for Scripted {
    type Object = NodeClass;
    const NAME: &'static str = "scripted";

    async fn reconcile(
        &self,
        _obj: &NodeClass,
        status: &mut NodeClassStatus,
        _ctx: &Context,
    ) -> Result<Outcome, Error> {
        status.node_count = 2;
        self.0
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted outcome")
    }
}

fn class(status: Option<Value>) -> Value {
    let mut obj = json!({
        "apiVersion": "homeplane.dev/v1alpha1", "kind": "NodeClass",
        "metadata": {"name": "pi", "generation": 4, "resourceVersion": "10", "uid": "u-1"},
        "spec": {"nodeSelector": {"homeplane.dev/class": "pi"}},
    });
    if let Some(s) = status {
        obj["status"] = s;
    }
    obj
}

fn cached(obj: &Value) -> Arc<NodeClass> {
    Arc::new(serde_json::from_value(obj.clone()).unwrap())
}

fn api_failure() -> Error {
    Error::Kube {
        action: "list the nodes of the class",
        source: kube::Error::Api(
            kube::core::Status::failure("etcdserver: request timed out", "InternalError")
                .with_code(500)
                .boxed(),
        ),
    }
}

#[tokio::test]
async fn a_first_pass_marks_the_generation_reconciling_then_writes_the_outcome() {
    let (ctx, mut api) = mock::context();
    let obj = class(None);
    let script = Scripted::new(vec![Ok(Outcome::ready("Planned", "2 nodes"))]);
    let task = tokio::spawn(reconcile(script, cached(&obj), ctx));
    api.expect("GET", PATH, obj.clone()).await;
    let first = api.expect_status_patch(PATH, &obj).await;
    assert_eq!(first.body["status"]["observedGeneration"], 4);
    assert_eq!(first.condition("Ready").unwrap().0, "Unknown");
    assert_eq!(first.condition("Reconciling").unwrap().0, "True");
    let done = api.expect_status_patch(PATH, &obj).await;
    assert_eq!(done.condition("Ready").unwrap().0, "True");
    assert_eq!(done.condition("Reconciling"), None);
    assert_eq!(
        done.body["status"]["nodeCount"], 2,
        "the pass's own fields go out too"
    );
    let action = api.join(task).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    api.finish().await;
    assert!(api.events.is_empty(), "{:?}", api.events);
}

#[tokio::test]
async fn a_status_that_did_not_change_is_not_written() {
    let (ctx, mut api) = mock::context();
    // First pass, to get the status homeplane writes.
    let obj = class(None);
    let script = Scripted::new(vec![
        Ok(Outcome::ready("Planned", "2 nodes")),
        Ok(Outcome::ready("Planned", "2 nodes")),
    ]);
    let task = tokio::spawn(reconcile(script.clone(), cached(&obj), ctx.clone()));
    api.expect("GET", PATH, obj.clone()).await;
    api.expect_status_patch(PATH, &obj).await;
    let written = api.expect_status_patch(PATH, &obj).await;
    api.join(task).await.unwrap();
    let settled = class(Some(written.body["status"].clone()));
    let task = tokio::spawn(reconcile(script, cached(&settled), ctx));
    api.expect("GET", PATH, settled).await;
    api.join(task).await.unwrap();
    api.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_is_retried_with_growing_waits_and_never_stalls() {
    let (ctx, mut api) = mock::context();
    let mut obj = class(Some(json!({"observedGeneration": 4, "conditions": []})));
    let mut script = Vec::new();
    for _ in 0..6 {
        script.push(Err(api_failure()));
    }
    script.push(Ok(Outcome::ready("Planned", "2 nodes")));
    let script = Scripted::new(script);
    let mut waits = Vec::new();
    for round in 0..7 {
        let task = tokio::spawn(reconcile(script.clone(), cached(&obj), ctx.clone()));
        api.expect("GET", PATH, obj.clone()).await;
        // The status says since when it fails, so only the first failure and the recovery
        // change it.
        let wrote = round == 0 || round == 6;
        if wrote {
            let patch = api.expect_status_patch(PATH, &obj).await;
            obj["status"] = patch.body["status"].clone();
        }
        let action = api.join(task).await.unwrap();
        if round < 6 {
            let Some(delay) = delay_of(&action) else {
                panic!("a retry must come back by itself: {action:?}");
            };
            waits.push(delay.as_secs());
            tokio::time::advance(delay).await;
        }
    }
    assert_eq!(
        waits,
        [1, 1, 2, 4, 8, 16],
        "waits double with the time spent failing"
    );
    api.finish().await;
    let warnings: Vec<_> = api.events.iter().filter(|e| e.0 == "Warning").collect();
    assert_eq!(
        warnings.len(),
        1,
        "one event for the failure, not one per retry: {warnings:?}"
    );
    assert_eq!(warnings[0].1, "KubernetesApiError");
    assert!(
        obj["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["type"] != "Stalled")
    );
    let ready = obj["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap();
    assert_eq!(ready["status"], "True");
    assert!(
        ctx.retries.streak("NodeClass//pi").is_none(),
        "a success resets the streak"
    );
}

#[tokio::test]
async fn the_status_of_a_retried_failure_says_what_failed_and_when_it_is_tried_again() {
    let (ctx, mut api) = mock::context();
    let obj = class(Some(json!({"observedGeneration": 4, "conditions": []})));
    let script = Scripted::new(vec![Err(api_failure())]);
    let task = tokio::spawn(reconcile(script, cached(&obj), ctx.clone()));
    api.expect("GET", PATH, obj.clone()).await;
    let patch = api.expect_status_patch(PATH, &obj).await;
    let (status, reason, message) = patch.condition("Ready").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "KubernetesApiError")
    );
    assert!(
        message.contains("failed to list the nodes of the class"),
        "{message}"
    );
    let (status, reason, message) = patch.condition("Reconciling").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "RetryingAfterError")
    );
    assert!(message.contains("; failing since "), "{message}");
    assert_eq!(patch.condition("Degraded").unwrap().0, "True");
    assert_eq!(patch.condition("Stalled"), None);
    api.join(task).await.unwrap();
    api.finish().await;
    assert!(ctx.retries.streak("NodeClass//pi").is_some());
}

#[tokio::test]
async fn an_invalid_spec_stalls_says_so_and_waits_for_a_change() {
    let (ctx, mut api) = mock::context();
    let obj = class(Some(json!({"observedGeneration": 4, "conditions": []})));
    let script = Scripted::new(vec![Ok(Outcome::invalid(
        "InvalidSpec",
        "spec.reserved.cpu: \"lots\" is not a quantity",
    ))]);
    let task = tokio::spawn(reconcile(script, cached(&obj), ctx.clone()));
    api.expect("GET", PATH, obj.clone()).await;
    let patch = api.expect_status_patch(PATH, &obj).await;
    let (status, reason, message) = patch.condition("Stalled").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert!(
        message.ends_with("homeplane waits for a change of the spec"),
        "{message}"
    );
    assert_eq!(patch.condition("Reconciling"), None);
    let action = api.join(task).await.unwrap();
    assert_eq!(action, Action::await_change());
    api.finish().await;
    assert_eq!(api.events.len(), 1);
    assert_eq!(api.events[0].1, "InvalidSpec");
    assert!(
        ctx.retries.streak("NodeClass//pi").is_none(),
        "a stall is not retried"
    );
}

#[tokio::test]
async fn a_failure_to_write_status_goes_to_the_error_policy() {
    let (ctx, mut api) = mock::context();
    let obj = class(None);
    let script = Scripted::new(vec![]);
    let task = tokio::spawn(reconcile(script, cached(&obj), ctx.clone()));
    api.expect("GET", PATH, obj.clone()).await;
    api.answer(
        503,
        api_error(503, "ServiceUnavailable", "the server is shutting down"),
    )
    .await;
    let error = api.join(task).await.unwrap_err();
    assert_eq!(error.reason(), "KubernetesApiError");
    let action = super::driver::error_policy::<Scripted>(cached(&obj), &error, ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    api.finish().await;
}

/// A controller of Workflows that is never asked for a pass (its objects cannot be read).
struct Unreached;

impl Reconciler for Unreached {
    type Object = homeplane_crds::Workflow;
    const NAME: &'static str = "unreached";

    async fn reconcile(
        &self,
        _obj: &homeplane_crds::Workflow,
        _status: &mut homeplane_crds::workflow::WorkflowStatus,
        _ctx: &Context,
    ) -> Result<Outcome, Error> {
        panic!("an unreadable object must not get a pass")
    }
}

#[tokio::test]
async fn an_object_that_cannot_be_read_is_named_and_marked_not_retried() {
    let (ctx, mut api) = mock::context();
    let path = "/apis/homeplane.dev/v1alpha1/namespaces/automation/workflows/deep";
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!({"a": deep});
    }
    let workflow = json!({
        "apiVersion": "homeplane.dev/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "deep", "namespace": "automation", "generation": 1, "uid": "u-2"},
        "spec": {"n8n": {"url": "http://n8n:5678", "apiKeySecret": {"name": "n8n", "key": "k"}},
                 "definition": {"nodes": []}},
    });
    let cached: Arc<homeplane_crds::Workflow> =
        Arc::new(serde_json::from_value(workflow.clone()).unwrap());
    let mut stored = workflow.clone();
    stored["spec"]["definition"]["nodes"] = json!([deep]);
    let task = tokio::spawn(reconcile(Arc::new(Unreached), cached, ctx.clone()));
    // serde_json writes any depth; it reads 128 levels of a value it keeps.
    api.expect("GET", path, stored).await;
    let patch = api.answer(200, workflow).await;
    assert!(
        patch.is("PATCH", path) && patch.uri.contains("/status"),
        "{patch:?}"
    );
    let (status, reason, message) = patch.condition("Stalled").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Unreadable"));
    assert!(
        message.contains("nested deeper than the 128 levels"),
        "{message}"
    );
    assert_eq!(api.join(task).await.unwrap(), Action::await_change());
    api.finish().await;
    assert_eq!(api.events[0].1, "Unreadable");
}
