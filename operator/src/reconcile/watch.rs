//! Watching without losing objects or errors. The main kind of every controller is listed as a
//! stream of single objects (`sendInitialEvents`, Kubernetes 1.34+), so one object that cannot
//! be read (JSON nested deeper than the parser's limit, a value of the wrong type stored before
//! a schema change) is one failed event instead of a failed list that stops the whole kind.
//! Every watch error is logged and counted; an object that cannot be read is named — a Warning
//! event and `Ready=False`/`Stalled=True` with what is wrong — while the rest of its kind keeps
//! reconciling.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::time::Instant;
use tracing::{error, warn};

use super::status::Object;
use crate::conditions::{READY, STALLED};
use crate::controllers::{Context, Error};

/// The reason on an object homeplane cannot read.
pub const UNREADABLE: &str = "Unreadable";
/// How often, at most, a controller looks for the objects behind failed watch events.
const NAMING_INTERVAL: Duration = Duration::from_secs(20);

/// The watch of a controller's own kind: objects arrive one by one.
pub fn config() -> watcher::Config {
    watcher::Config::default().streaming_lists()
}

/// Reports what a controller's stream yields besides reconcile results.
pub struct Reporter<K: Object> {
    controller: &'static str,
    ctx: Arc<Context>,
    store: Store<K>,
    last_naming: Mutex<Option<Instant>>,
}

type StreamItem<K> = Result<(ObjectRef<K>, Action), controller::Error<Error, watcher::Error>>;

impl<K: Object> Reporter<K> {
    /// A reporter for `controller`, which caches its objects in `store`.
    pub fn new(controller: &'static str, ctx: Arc<Context>, store: Store<K>) -> Self {
        Self {
            controller,
            ctx,
            store,
            last_naming: Mutex::new(None),
        }
    }

    /// Logs and counts one item of the stream; a watch event that could not be read makes the
    /// reporter look for the objects behind it (at most every 20 s).
    pub async fn report(&self, item: StreamItem<K>) {
        let error = match item {
            Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => return,
            Err(controller::Error::ObjectNotFound(_)) => return,
            Err(controller::Error::QueueError(error)) => error,
            Err(controller::Error::RunnerError(error)) => {
                error!(controller = self.controller, %error, "the controller's runner failed");
                self.ctx.metrics.watch_failed(self.controller, "runner");
                return;
            }
        };
        let unreadable = is_unreadable(&error);
        let category = if unreadable { "unreadable" } else { "watch" };
        self.ctx.metrics.watch_failed(self.controller, category);
        warn!(controller = self.controller, %error, "a watch failed; it resumes with backoff");
        if unreadable && self.naming_due() {
            self.name_unreadable().await;
        }
    }

    fn naming_due(&self) -> bool {
        let Ok(mut last) = self.last_naming.lock() else {
            return false;
        };
        let due = last.is_none_or(|at| at.elapsed() >= NAMING_INTERVAL);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Finds the objects of the kind whose current version is not in the controller's cache
    /// and that cannot be read, and reports each.
    async fn name_unreadable(&self) {
        let url = K::url_path(&(), self.ctx.watch_namespace.as_deref());
        let action = "list the kind's names";
        let all = ListParams::default();
        let listed = match super::list::names(&self.ctx.client, &url, all, action).await {
            Ok(listed) => listed,
            Err(error) => {
                warn!(controller = self.controller, %error, "listing the kind's names failed");
                return;
            }
        };
        for meta in listed {
            let mut reference = ObjectRef::<K>::new(&meta.name);
            if let Some(ns) = &meta.namespace {
                reference = reference.within(ns);
            }
            let cached = self.store.get(&reference);
            if cached.is_some_and(|c| c.resource_version() == meta.resource_version) {
                continue;
            }
            let api = K::api(self.ctx.client.clone(), meta.namespace.as_deref());
            if let Err(kube::Error::SerdeError(error)) = api.get_opt(&meta.name).await {
                let typed = Typed::<K> {
                    name: meta.name,
                    namespace: meta.namespace,
                    uid: meta.uid,
                    generation: meta.generation,
                    kind: std::marker::PhantomData,
                };
                unreadable_object(&self.ctx, &typed, &error.to_string()).await;
            }
        }
    }
}

/// Whether a watch failed on an object it could not read. kube-client tries a line it cannot
/// parse as an event as a `Status` too, and a line whose object is nested too deep parses as an
/// empty one: an API error without a code, which no API server sends.
fn is_unreadable(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchFailed(kube::Error::SerdeError(_)) => true,
        watcher::Error::WatchFailed(kube::Error::Api(status)) => {
            status.code == 0 && status.reason.is_empty() && status.message.is_empty()
        }
        _ => false,
    }
}

/// What is known of an object that cannot be read: its metadata.
struct Typed<K> {
    name: String,
    namespace: Option<String>,
    uid: Option<String>,
    generation: Option<i64>,
    kind: std::marker::PhantomData<K>,
}

/// Reports `obj`, which the API server holds but homeplane cannot read, as unreadable.
pub async fn unreadable<K: Object>(ctx: &Context, obj: &K, error: &str) {
    let typed = Typed::<K> {
        name: obj.name_any(),
        namespace: obj.namespace(),
        uid: obj.uid(),
        generation: obj.meta().generation,
        kind: std::marker::PhantomData,
    };
    unreadable_object(ctx, &typed, error).await;
}

/// Why an object cannot be read, as a sentence to act on.
pub fn unreadable_message(error: &str) -> String {
    if error.contains("recursion limit") {
        format!(
            "homeplane cannot read this object: a value is nested deeper than the 128 levels it reads ({error}); flatten it and apply again"
        )
    } else {
        format!(
            "homeplane cannot read this object: it does not match the kind's schema ({error}); fix it and apply again"
        )
    }
}

async fn unreadable_object<K: Object>(ctx: &Context, obj: &Typed<K>, error: &str) {
    let message = unreadable_message(error);
    warn!(kind = %K::kind(&()), name = %obj.name, namespace = obj.namespace.as_deref().unwrap_or(""), %message, "an object cannot be read");
    let reference = ObjectReference {
        api_version: Some(K::api_version(&()).to_string()),
        kind: Some(K::kind(&()).to_string()),
        name: Some(obj.name.clone()),
        namespace: obj.namespace.clone(),
        uid: obj.uid.clone(),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: UNREADABLE.into(),
        note: Some(message.clone()),
        action: "Read".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &reference).await {
        warn!(%error, "failed to publish an event");
    }
    // A merge patch whose answer is not parsed: the object itself cannot be.
    let now = crate::controllers::now().to_string();
    let condition = |type_: &str, status: &str| {
        serde_json::json!({
            "type": type_, "status": status, "reason": UNREADABLE, "message": message,
            "observedGeneration": obj.generation, "lastTransitionTime": now,
        })
    };
    let body = serde_json::json!({"status": {
        "observedGeneration": obj.generation,
        "conditions": [condition(READY, "False"), condition(STALLED, "True")],
    }});
    let url = K::url_path(&(), obj.namespace.as_deref());
    let request = kube::core::Request::new(url).patch_subresource(
        "status",
        &obj.name,
        &PatchParams::default(),
        &Patch::Merge(&body),
    );
    match request {
        Ok(request) => {
            if let Err(error) = ctx.client.request_text(request).await {
                warn!(%error, "failed to mark an unreadable object");
            }
        }
        Err(error) => warn!(%error, "failed to build the status patch of an unreadable object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-client reads a watch line it cannot parse as a `Status` when it can: a line whose
    /// object is nested too deep parses as an empty one (the ignored fields are skipped
    /// without the depth limit), so the error is an API error with no code.
    #[test]
    fn a_watch_line_nested_too_deep_is_unreadable_not_a_watch_failure() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let line = format!("{{\"type\":\"ADDED\",\"object\":{{\"x\":{deep}}}}}");
        let status: kube::core::Status = serde_json::from_str(&line).unwrap();
        let as_kube_reads_it = watcher::Error::WatchFailed(kube::Error::Api(Box::new(status)));
        assert!(is_unreadable(&as_kube_reads_it));
        let parse = serde_json::from_str::<serde_json::Value>(&line).unwrap_err();
        assert!(is_unreadable(&watcher::Error::WatchFailed(
            kube::Error::SerdeError(parse)
        )));
        let gone = kube::core::Status::failure("too old", "Expired").with_code(410);
        assert!(!is_unreadable(&watcher::Error::WatchFailed(
            kube::Error::Api(Box::new(gone))
        )));
    }

    #[test]
    fn says_what_is_wrong_with_an_unreadable_object() {
        let deep = unreadable_message("recursion limit exceeded at line 1 column 2045");
        assert!(deep.contains("nested deeper than the 128 levels"), "{deep}");
        let other = unreadable_message("invalid type: string \"x\", expected i32");
        assert!(
            other.contains("does not match the kind's schema"),
            "{other}"
        );
    }
}
