//! The state-registry catalogue of what was imported: for each workload its limits, image and
//! availability in the cluster, for each old container (through the Docker API it was read
//! from) its state, limits, image, health and restarts, and for the database its version,
//! roles, tiers and the rows of its largest tables. Desired values are what was observed at
//! import, so `kubectl get drift` is empty on day one and shows what changes afterwards — the
//! old containers stopping first of all.

use homeplane_crds::registry::{
    Comparison, DockerObserver, KubernetesObserver, Observer, Property, Severity, SqlObserver,
    StateRegistry, StateRegistrySpec,
};
use serde_json::Value;

/// Name of the StateRegistry the import writes in each namespace.
pub const REGISTRY_NAME: &str = "imported";

/// A property with the usual defaults.
pub fn property(id: String, description: String, desired: Value, observe: Observer) -> Property {
    Property {
        id,
        description: Some(description),
        desired,
        observe,
        comparison: Comparison::Equals,
        tolerance_percent: None,
        severity: Severity::Warning,
        grace_period: None,
        corrector: None,
    }
}

/// Observes one field of one Kubernetes object.
pub fn kubernetes(
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    field: &str,
) -> Observer {
    Observer {
        kubernetes: Some(KubernetesObserver {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            label_selector: None,
            field_selector: None,
            field: Some(field.into()),
            aggregate: Default::default(),
        }),
        ..Observer::default()
    }
}

/// Observes one field of a container's inspection.
pub fn docker(endpoint: &str, container: &str, field: &str) -> Observer {
    Observer {
        docker: Some(DockerObserver {
            endpoint: endpoint.into(),
            container: container.into(),
            field: field.into(),
        }),
        ..Observer::default()
    }
}

/// Observes a query on a Database in the registry's namespace.
pub fn sql(database: &str, query: String) -> Observer {
    Observer {
        sql: Some(SqlObserver {
            database: database.into(),
            namespace: None,
            query,
        }),
        ..Observer::default()
    }
}

/// The registry of one namespace, or `None` when it has nothing to watch.
pub fn registry(namespace: &str, properties: Vec<Property>) -> Option<StateRegistry> {
    if properties.is_empty() {
        return None;
    }
    let mut registry = StateRegistry::new(
        REGISTRY_NAME,
        StateRegistrySpec {
            interval: "60s".into(),
            mode: Default::default(),
            properties,
            catalogs: Vec::new(),
            // Only what was imported: what homeplane's own objects contribute is watched by
            // the homelab's main registry (derived properties would count them twice).
            derived: false,
            derived_namespaces: Vec::new(),
            max_drift_objects: 500,
        },
    );
    registry.metadata.namespace = Some(namespace.to_string());
    Some(registry)
}

/// Refuses a catalogue the registry would refuse (a bug of the import, never of the input).
pub fn check(namespace: &str, properties: &[Property]) -> anyhow::Result<()> {
    let mut catalogue = homeplane_state::Catalogue::default();
    catalogue.add_inline(properties);
    catalogue.refuse_duplicates();
    if let Some(error) = catalogue.errors.first() {
        anyhow::bail!(
            "the state registry written for namespace {namespace} would refuse {} of its properties, the first: {error}",
            catalogue.errors.len()
        );
    }
    Ok(())
}

/// Sets the comparison.
pub fn compared(mut p: Property, comparison: Comparison) -> Property {
    p.comparison = comparison;
    p
}

/// Sets the severity.
pub fn severity(mut p: Property, severity: Severity) -> Property {
    p.severity = severity;
    p
}

/// Sets a grace period.
pub fn grace(mut p: Property, period: &str) -> Property {
    p.grace_period = Some(period.into());
    p
}
