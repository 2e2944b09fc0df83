//! Waiting for homeplane's CustomResourceDefinitions before any controller starts, with an
//! error that names what is missing and how to install it.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};
use tracing::info;

/// How to install the CRDs, for error messages.
pub const INSTALL_HINT: &str = "install them with `homeplane crd | kubectl apply --server-side -f -`, `kubectl apply -k manifests/base` or the Helm chart";

/// Why the operator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CRD is not installed.
    #[error("CustomResourceDefinition {name} is not installed; {INSTALL_HINT}")]
    Missing { name: String },
    /// A CRD exists but is not Established (its schema may have been refused).
    #[error("CustomResourceDefinition {name} is installed but not Established: {why}")]
    NotEstablished { name: String, why: String },
    /// The API server could not be asked.
    #[error("failed to read CustomResourceDefinition {name}")]
    Read {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Whether `crd` has condition Established=True; otherwise the reason it gives.
fn established(crd: &CustomResourceDefinition) -> Result<(), String> {
    let conditions = crd.status.as_ref().and_then(|s| s.conditions.as_ref());
    let found = conditions
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Established");
    match found {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(c
            .message
            .clone()
            .unwrap_or_else(|| c.reason.clone().unwrap_or_default())),
        None => Err("no Established condition yet".to_string()),
    }
}

/// Checks every CRD once.
async fn check(api: &Api<CustomResourceDefinition>) -> Result<(), Error> {
    for crd in homeplane_crds::all_crds() {
        let name = crd.metadata.name.unwrap_or_default();
        let found = api.get_opt(&name).await.map_err(|source| Error::Read {
            name: name.clone(),
            source,
        })?;
        let Some(found) = found else {
            return Err(Error::Missing { name });
        };
        established(&found).map_err(|why| Error::NotEstablished { name, why })?;
    }
    Ok(())
}

/// Waits up to `timeout` for every homeplane CRD to be Established; the last error otherwise.
pub async fn wait_for_crds(client: Client, timeout: Duration) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut reported = String::new();
    loop {
        match check(&api).await {
            Ok(()) => {
                info!("homeplane's CRDs are established");
                return Ok(());
            }
            Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
            Err(error) => {
                let text = error.to_string();
                if text != reported {
                    info!(waiting_for = %text, "waiting for homeplane's CRDs");
                    reported = text;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
