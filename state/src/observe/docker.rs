//! The `docker` observer: a Docker Engine API endpoint (Docker on the GPU host, or Podman's
//! compatible service) read through bollard; one connection per endpoint and one inspection
//! per distinct container, whatever number of properties read it.

use std::collections::HashMap;

use bollard::Docker;
use homeplane_crds::registry::DockerObserver;
use serde_json::Value;

use crate::observation::{Observation, select};

/// Seconds before a call to the endpoint gives up.
const TIMEOUT_SECONDS: u64 = 10;

/// Observes every `(id, observer)`; returns one observation per id.
pub async fn observe(properties: &[(&str, &DockerObserver)]) -> HashMap<String, Observation> {
    let mut by_endpoint: HashMap<&str, Vec<(&str, &DockerObserver)>> = HashMap::new();
    for (id, o) in properties {
        by_endpoint
            .entry(o.endpoint.as_str())
            .or_default()
            .push((id, o));
    }
    let mut observed = HashMap::with_capacity(properties.len());
    for (endpoint, group) in by_endpoint {
        let docker = match connect(endpoint) {
            Ok(d) => d,
            Err(reason) => {
                for (id, _) in group {
                    observed.insert(id.to_string(), Observation::failed(reason.clone()));
                }
                continue;
            }
        };
        let mut inspected: HashMap<&str, Result<Option<Value>, String>> = HashMap::new();
        for (_, o) in &group {
            if !inspected.contains_key(o.container.as_str()) {
                let answer = inspect(&docker, &o.container).await;
                inspected.insert(o.container.as_str(), answer);
            }
        }
        for (id, o) in group {
            let observation = match inspected.get(o.container.as_str()) {
                Some(Ok(Some(document))) => {
                    let mut values = select(document, &o.field);
                    Observation::value(if o.field.contains('*') {
                        Value::Array(values)
                    } else {
                        values.pop().unwrap_or(Value::Null)
                    })
                }
                Some(Ok(None)) => Observation {
                    value: Ok(Value::Null),
                    message: Some(format!("container {} does not exist", o.container)),
                },
                Some(Err(reason)) => Observation::failed(reason.clone()),
                None => Observation::failed("the container was not inspected"),
            };
            observed.insert(id.to_string(), observation);
        }
    }
    observed
}

/// A client of the Docker Engine API at `unix:///path` or `tcp://host:port`.
pub fn connect(endpoint: &str) -> Result<Docker, String> {
    let connected = if let Some(path) = endpoint.strip_prefix("unix://") {
        Docker::connect_with_unix(path, TIMEOUT_SECONDS, bollard::API_DEFAULT_VERSION)
    } else {
        let address = endpoint.replacen("tcp://", "http://", 1);
        Docker::connect_with_http(&address, TIMEOUT_SECONDS, bollard::API_DEFAULT_VERSION)
    };
    connected.map_err(|e| format!("failed to reach the Docker endpoint {endpoint}: {e}"))
}

/// The inspect document of a container; `None` when no such container exists.
async fn inspect(docker: &Docker, container: &str) -> Result<Option<Value>, String> {
    match docker.inspect_container(container, None).await {
        Ok(response) => serde_json::to_value(response)
            .map(Some)
            .map_err(|e| format!("failed to read the inspection of {container}: {e}")),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(format!("failed to inspect container {container}: {e}")),
    }
}
