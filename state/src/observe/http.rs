//! The `http` observer: one GET per distinct URL, whatever number of properties read it; the
//! status code, or a value at a JSON pointer in the body.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use homeplane_crds::registry::HttpObserver;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::observation::{Observation, select};

/// Largest body read.
const MAX_BODY: usize = 4 << 20;
/// Requests in flight at once.
const CONCURRENCY: usize = 8;

/// What one URL answered.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    body: Result<Value, String>,
}

/// Observes every `(id, observer)`; returns one observation per id.
pub async fn observe(properties: &[(&str, &HttpObserver)]) -> HashMap<String, Observation> {
    let mut by_url: HashMap<&str, Duration> = HashMap::new();
    for (_, o) in properties {
        let timeout = Duration::from_secs(u64::try_from(o.timeout_seconds.max(1)).unwrap_or(5));
        let entry = by_url.entry(o.url.as_str()).or_insert(timeout);
        *entry = (*entry).max(timeout);
    }
    let client = match connector() {
        Ok(connector) => Client::builder(TokioExecutor::new()).build(connector),
        Err(reason) => {
            return properties
                .iter()
                .map(|(id, _)| (id.to_string(), Observation::failed(reason.clone())))
                .collect();
        }
    };
    let requests: Vec<(String, Duration)> = by_url
        .into_iter()
        .map(|(url, timeout)| (url.to_string(), timeout))
        .collect();
    let answers: HashMap<String, Result<Answer, String>> = futures::stream::iter(requests)
        .map(|(url, timeout)| {
            let client = client.clone();
            async move {
                let answer = get(&client, &url, timeout).await;
                (url, answer)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    properties
        .iter()
        .map(|(id, o)| {
            let observation = match answers.get(o.url.as_str()) {
                Some(Ok(answer)) => read(answer, o.json_pointer.as_deref()),
                Some(Err(reason)) => Observation::failed(reason.clone()),
                None => Observation::failed("the URL was not requested"),
            };
            (id.to_string(), observation)
        })
        .collect()
}

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

fn connector() -> Result<Connector, String> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("failed to set up TLS: {e}"))?;
    Ok(builder.https_or_http().enable_http1().build())
}

async fn get(
    client: &Client<Connector, Empty<Bytes>>,
    url: &str,
    timeout: Duration,
) -> Result<Answer, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url} is not a URL: {e}"))?;
    let request = hyper::Request::get(uri)
        .header("accept", "application/json")
        .header("user-agent", "homeplane-state-registry")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("failed to build the request: {e}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("GET {url} failed: {}", chain(&e)))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the body of {url} failed: {e}"))?
            .to_bytes();
        let body = serde_json::from_slice::<Value>(&body)
            .map_err(|e| format!("the body of {url} is not JSON: {e}"));
        Ok(Answer { status, body })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("GET {url} timed out after {}s", timeout.as_secs()))?
}

fn read(answer: &Answer, pointer: Option<&str>) -> Observation {
    let Some(pointer) = pointer else {
        return Observation::value(Value::from(answer.status));
    };
    match &answer.body {
        Ok(body) => {
            let mut values = select(body, pointer);
            let value = if pointer.contains('*') {
                Value::Array(values)
            } else {
                values.pop().unwrap_or(Value::Null)
            };
            Observation {
                value: Ok(value),
                message: (answer.status >= 400).then(|| format!("HTTP {}", answer.status)),
            }
        }
        Err(reason) => Observation::failed(format!("HTTP {}: {reason}", answer.status)),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
