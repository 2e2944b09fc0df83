//! Observation of a whole catalogue in a handful of calls: one list per Kubernetes
//! kind/namespace/selector, one connection per Database, one GET per URL, one inspection per
//! container. Every failure becomes an `Unknown` observation with the reason, never an error
//! of the evaluation.
//!
//! A registry sees only its own namespace ([`Scope`]): other namespaces, cluster-scoped kinds
//! and other namespaces' Databases only when the operator trusts the registry's namespace
//! (`--trusted-registry-namespace`), and Secrets never.

use std::collections::HashMap;

use futures::StreamExt;
use homeplane_crds::database::Database;
use homeplane_crds::registry::{KubernetesObserver, Observer};
use homeplane_state::observation::aggregate;
use homeplane_state::{Checked, Observation, Observe};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use serde_json::Value;

use crate::controllers::Context;

/// A Kubernetes API resource found by discovery.
#[derive(Clone, Debug)]
pub struct Found {
    /// What the API calls it.
    pub ar: ApiResource,
    /// Whether its objects live in namespaces.
    pub namespaced: bool,
}

/// Kubernetes API resources found by discovery, per `apiVersion/kind`.
pub type Resources = HashMap<(String, String), Result<Found, String>>;

/// Where a registry may look and act.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The registry's own namespace.
    pub namespace: String,
    /// Whether the operator trusts that namespace to see beyond it.
    pub trusted: bool,
}

impl Scope {
    /// The scope of a registry in `namespace`.
    pub fn new(ctx: &Context, namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            trusted: ctx.trust.registry_namespaces.iter().any(|n| n == namespace),
        }
    }

    fn beyond(&self, what: &str) -> String {
        format!(
            "a StateRegistry in namespace {} sees only its own namespace, not {what}; only registries in the namespaces the operator trusts (--trusted-registry-namespace, chart value stateRegistry.trustedNamespaces) see further",
            self.namespace
        )
    }

    /// The namespace a Kubernetes property lists (`None`: every namespace), or why it may not.
    pub fn kubernetes(
        &self,
        found: &Found,
        wanted: Option<&str>,
    ) -> Result<Option<String>, String> {
        if found.ar.group.is_empty() && found.ar.plural == "secrets" {
            return Err(
                "Secrets are never observed by a StateRegistry: their values would reach Drift objects, Events and the history database".to_string(),
            );
        }
        if !found.namespaced {
            return if self.trusted {
                Ok(None)
            } else {
                Err(self.beyond(&format!("the cluster-scoped kind {}", found.ar.kind)))
            };
        }
        match wanted {
            Some(ns) if ns == self.namespace => Ok(Some(ns.to_string())),
            Some(ns) if self.trusted => Ok(Some(ns.to_string())),
            Some(ns) => Err(self.beyond(&format!("namespace {ns}"))),
            None if self.trusted => Ok(None),
            None => Ok(Some(self.namespace.clone())),
        }
    }

    /// The namespace of a Database a `sql` property reads, or why it may not.
    pub fn database(&self, wanted: Option<&str>) -> Result<String, String> {
        match wanted {
            None => Ok(self.namespace.clone()),
            Some(ns) if ns == self.namespace || self.trusted => Ok(ns.to_string()),
            Some(ns) => Err(self.beyond(&format!("the Databases of namespace {ns}"))),
        }
    }
}

/// Observes every declared property of `properties` (derived ones are observed elsewhere).
pub async fn observe_all(
    ctx: &Context,
    scope: &Scope,
    properties: &[Checked],
    resources: &mut Resources,
) -> HashMap<String, Observation> {
    let mut kubernetes = Vec::new();
    let mut refused = HashMap::new();
    let mut sql: HashMap<(String, String), Vec<(&str, &str)>> = HashMap::new();
    let mut http = Vec::new();
    let mut docker = Vec::new();
    for p in properties {
        let Observe::Declared(observer) = &p.observe else {
            continue;
        };
        let Observer {
            kubernetes: k,
            sql: s,
            http: h,
            docker: d,
        } = observer.as_ref();
        if let Some(k) = k {
            kubernetes.push((p.id.as_str(), k));
        } else if let Some(s) = s {
            match scope.database(s.namespace.as_deref()) {
                Ok(db_ns) => sql
                    .entry((db_ns, s.database.clone()))
                    .or_default()
                    .push((p.id.as_str(), s.query.as_str())),
                Err(why) => {
                    refused.insert(p.id.clone(), Observation::failed(why));
                }
            }
        } else if let Some(h) = h {
            http.push((p.id.as_str(), h));
        } else if let Some(d) = d {
            docker.push((p.id.as_str(), d));
        }
    }
    // Each observer's own time, for the debug log: where an evaluation's time goes.
    async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, u128) {
        let start = std::time::Instant::now();
        let out = f.await;
        (out, start.elapsed().as_millis())
    }
    let ((k, k_ms), (s, s_ms), (h, h_ms), (d, d_ms)) = futures::join!(
        timed(observe_kubernetes(ctx, scope, &kubernetes, resources)),
        timed(observe_sql(ctx, &sql)),
        timed(homeplane_state::observe::http::observe(&http)),
        timed(homeplane_state::observe::docker::observe(&docker)),
    );
    tracing::debug!(
        kubernetes_ms = k_ms,
        sql_ms = s_ms,
        http_ms = h_ms,
        docker_ms = d_ms,
        "observed"
    );
    let mut all = k;
    all.extend(s);
    all.extend(h);
    all.extend(d);
    all.extend(refused);
    all
}

/// How many lists of one evaluation are in flight at once.
const LISTS_AT_ONCE: usize = 8;

/// The list call a Kubernetes property needs: kind, namespace and selectors.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ListKey {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    labels: Option<String>,
    fields: Option<String>,
}

async fn observe_kubernetes(
    ctx: &Context,
    scope: &Scope,
    properties: &[(&str, &KubernetesObserver)],
    resources: &mut Resources,
) -> HashMap<String, Observation> {
    // The list each property reads, or why it may not read one.
    let mut keys: Vec<Result<ListKey, String>> = Vec::with_capacity(properties.len());
    let mut wanted: HashMap<ListKey, ApiResource> = HashMap::new();
    for (_, k) in properties {
        let key = match resource(ctx, resources, &k.api_version, &k.kind).await {
            Ok(found) => scope
                .kubernetes(&found, k.namespace.as_deref())
                .map(|namespace| ListKey {
                    api_version: k.api_version.clone(),
                    kind: k.kind.clone(),
                    namespace,
                    labels: k.label_selector.clone(),
                    fields: k.field_selector.clone(),
                })
                .map(|key| (key, found)),
            Err(e) => Err(e),
        };
        match key {
            Ok((key, found)) => {
                wanted.entry(key.clone()).or_insert(found.ar);
                keys.push(Ok(key));
            }
            Err(why) => keys.push(Err(why)),
        }
    }
    // Each distinct list once, several at a time.
    let lists: HashMap<ListKey, Result<Vec<Value>, String>> = futures::stream::iter(wanted)
        .map(|(key, ar)| async move {
            let listed = list(ctx, &ar, &key).await;
            (key, listed)
        })
        .buffer_unordered(LISTS_AT_ONCE)
        .collect()
        .await;
    properties
        .iter()
        .zip(keys)
        .map(|((id, k), key)| {
            let observation = match key.map(|key| lists.get(&key)) {
                Ok(Some(Ok(objects))) => {
                    let selected: Vec<&Value> = objects
                        .iter()
                        .filter(|o| {
                            k.name
                                .as_deref()
                                .is_none_or(|n| o["metadata"]["name"].as_str() == Some(n))
                        })
                        .collect();
                    if k.name.is_some() && selected.is_empty() {
                        Observation {
                            value: Ok(Value::Null),
                            message: Some(format!(
                                "{} {} does not exist",
                                k.kind,
                                k.name.as_deref().unwrap_or_default()
                            )),
                        }
                    } else {
                        aggregate(&selected, k.field.as_deref(), k.aggregate)
                    }
                }
                Ok(Some(Err(reason))) => Observation::failed(reason.clone()),
                Ok(None) => Observation::failed("the objects were not listed"),
                Err(why) => Observation::failed(why),
            };
            (id.to_string(), observation)
        })
        .collect()
}

/// The API resource of `apiVersion`/`kind`, found once by discovery.
pub async fn resource(
    ctx: &Context,
    resources: &mut Resources,
    api_version: &str,
    kind: &str,
) -> Result<Found, String> {
    let key = (api_version.to_string(), kind.to_string());
    if let Some(found) = resources.get(&key) {
        return found.clone();
    }
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let found = kube::discovery::pinned_kind(&ctx.client, &gvk)
        .await
        .map(|(ar, caps)| Found {
            ar,
            namespaced: caps.scope == kube::discovery::Scope::Namespaced,
        })
        .map_err(|e| format!("the API server does not serve {kind} in {api_version}: {e}"));
    resources.insert(key, found.clone());
    found
}

async fn list(ctx: &Context, ar: &ApiResource, key: &ListKey) -> Result<Vec<Value>, String> {
    let api: Api<DynamicObject> = match &key.namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, ar),
        None => Api::all_with(ctx.client.clone(), ar),
    };
    let mut params = ListParams::default();
    if let Some(l) = &key.labels {
        params = params.labels(l);
    }
    if let Some(f) = &key.fields {
        params = params.fields(f);
    }
    let listed = api
        .list(&params)
        .await
        .map_err(|e| format!("failed to list {}: {e}", key.kind))?;
    listed
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).map_err(|e| format!("failed to read a {}: {e}", key.kind)))
        .collect()
}

async fn observe_sql(
    ctx: &Context,
    by_database: &HashMap<(String, String), Vec<(&str, &str)>>,
) -> HashMap<String, Observation> {
    let mut observed = HashMap::new();
    for ((namespace, name), queries) in by_database {
        let databases: Api<Database> = Api::namespaced(ctx.client.clone(), namespace);
        let options = match databases.get_opt(name).await {
            Ok(Some(db)) => crate::controllers::database::observer_pool(ctx, &db).await,
            Ok(None) => Err(format!("Database {namespace}/{name} does not exist")),
            Err(e) => Err(format!("failed to read Database {namespace}/{name}: {e}")),
        };
        match options {
            Ok(options) => {
                observed.extend(homeplane_state::observe::sql::observe(&options, queries).await);
            }
            Err(reason) => {
                for (id, _) in queries {
                    observed.insert(id.to_string(), Observation::failed(reason.clone()));
                }
            }
        }
    }
    observed
}
