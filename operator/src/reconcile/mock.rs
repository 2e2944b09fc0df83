//! A mocked API server for tests of reconcile decisions, in the style of kube-rs
//! controller-rs's `ApiServerVerifier`: a kube `Client` over a `tower_test` mock service, and a
//! handle that sees each request the client makes and answers it. Events are answered on their
//! own and collected, so that a test states the requests a reconcile makes and reads the events
//! it published.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use crate::controllers::Context;
use crate::metrics::Metrics;

/// One request the client made.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `PATCH`…
    pub method: String,
    /// Path and query, e.g. `/api/v1/nodes?labelSelector=...`.
    pub uri: String,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
}

impl Seen {
    /// Whether this is `method` on a path that starts with `path`.
    pub fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.uri.starts_with(path)
    }

    /// The condition of `type_` in a status patch: (status, reason, message).
    pub fn condition(&self, type_: &str) -> Option<(String, String, String)> {
        let list = self.body["status"]["conditions"].as_array()?;
        let c = list.iter().find(|c| c["type"] == type_)?;
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        Some((s("status"), s("reason"), s("message")))
    }
}

/// The server side of the mock.
pub struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
    /// The events published so far: (type, reason, note).
    pub events: Vec<(String, String, String)>,
}

/// A context whose client talks to the returned mocked API server, with a retry policy without
/// jitter (waits are exact).
pub fn context() -> (Arc<Context>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut ctx = Context::new(client, Arc::new(Metrics::default()), "test", None);
    ctx.retries = crate::reconcile::retry::Retries::new(crate::reconcile::retry::Policy {
        jitter: 0.0,
        ..Default::default()
    });
    (
        Arc::new(ctx),
        ApiServer {
            handle,
            events: Vec::new(),
        },
    )
}

async fn read(request: Request<Body>) -> Seen {
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let bytes = request.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Seen { method, uri, body }
}

fn respond(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// Where the answer to one request goes.
type Reply = mock::SendResponse<Response<Body>>;

impl ApiServer {
    /// Answers the next request that is not an event with `status` and `body`; returns it.
    pub async fn answer(&mut self, status: u16, body: Value) -> Seen {
        let (seen, send) = self.next("the reconcile to make another request").await;
        send.send_response(respond(status, &body));
        seen
    }

    /// Answers the next request with `body` (200) after checking it is `method` on `path`.
    pub async fn expect(&mut self, method: &str, path: &str, body: Value) -> Seen {
        let seen = self.answer(200, body).await;
        assert!(
            seen.is(method, path),
            "expected {method} {path}, the reconcile sent {} {}",
            seen.method,
            seen.uri
        );
        seen
    }

    /// Answers a status patch with what it carried (answering the events before it); returns
    /// it.
    pub async fn expect_status_patch(&mut self, path: &str, object: &Value) -> Seen {
        let (seen, send) = self.next("a status patch").await;
        assert!(
            seen.is("PATCH", path) && seen.uri.contains("/status"),
            "expected a status patch of {path}, the reconcile sent {} {}",
            seen.method,
            seen.uri
        );
        let mut answer = object.clone();
        answer["status"] = seen.body["status"].clone();
        send.send_response(respond(200, &answer));
        seen
    }

    /// Takes the next request and never answers it (an API server that hangs); returns what
    /// keeps it pending.
    pub async fn hang(&mut self) -> Seen {
        let (request, send) = self.handle.next_request().await.expect("a request");
        let seen = read(request).await;
        std::mem::forget(send);
        seen
    }

    /// Waits for `task` (a reconcile) to end while answering the events it publishes; fails on
    /// any other request.
    pub async fn join<T>(&mut self, mut task: tokio::task::JoinHandle<T>) -> T {
        loop {
            tokio::select! {
                biased;
                done = &mut task => return done.expect("the reconcile task"),
                next = self.handle.next_request() => {
                    // The client went away with the finished task.
                    let Some((request, send)) = next else {
                        return task.await.expect("the reconcile task");
                    };
                    self.only_events(request, send).await;
                }
            }
        }
    }

    /// Answers the events still in flight, and fails on any other request.
    pub async fn finish(&mut self) {
        while let Ok(Some((request, send))) =
            tokio::time::timeout(Duration::from_millis(200), self.handle.next_request()).await
        {
            self.only_events(request, send).await;
        }
    }

    /// The next request that is not an event (events are recorded and accepted), within 5 s.
    async fn next(&mut self, what: &'static str) -> (Seen, Reply) {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request());
            let (request, send) = next.await.expect(what).expect("the client to be alive");
            let seen = read(request).await;
            if let Some(send) = self.event(&seen, send) {
                return (seen, send);
            }
        }
    }

    /// Records and accepts `request`, which must be an event.
    async fn only_events(&mut self, request: Request<Body>, send: Reply) {
        let seen = read(request).await;
        if self.event(&seen, send).is_some() {
            panic!("unexpected request {} {}", seen.method, seen.uri);
        }
    }

    /// Records and accepts `seen` when it is an event; otherwise gives `send` back.
    fn event(&mut self, seen: &Seen, send: Reply) -> Option<Reply> {
        if !seen.uri.contains("/events") {
            return Some(send);
        }
        let b = &seen.body;
        let s = |k: &str| b[k].as_str().unwrap_or_default().to_string();
        self.events.push((s("type"), s("reason"), s("note")));
        send.send_response(respond(201, &seen.body));
        None
    }
}

/// A Kubernetes `Status` answer (an API error).
pub fn api_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message})
}

/// An empty list of `kind`.
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items})
}

/// The delay of a requeue `action` (`None` for `await_change`).
pub fn delay_of(action: &kube::runtime::controller::Action) -> Option<Duration> {
    // Action keeps its delay private; its Debug form is `Action { requeue_after: Some(1s) }`.
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1)?.split(')').next()?;
    if let Some(ms) = inner.strip_suffix("ms") {
        return ms
            .parse::<f64>()
            .ok()
            .map(|v| Duration::from_secs_f64(v / 1000.0));
    }
    inner
        .strip_suffix('s')?
        .parse::<f64>()
        .ok()
        .map(Duration::from_secs_f64)
}
