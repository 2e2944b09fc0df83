//! What an evaluation starts from: the catalogue (inline and ConfigMaps), homeplane's own
//! objects with their derived properties (and Flux's), the desired values rendered from their
//! templates, and everything observed.

use std::collections::HashMap;
use std::time::Duration;

use homeplane_crds::registry::StateRegistry;
use homeplane_crds::{
    Agent, BackupPolicy, Database, MemoryServer, NodeClass, VoicePipeline, Workflow,
};

use homeplane_state::template::{self, Templates};
use homeplane_state::{Catalogue, Checked, Desired, Observation, PropertyError, derived};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

use super::{flux, observe};
use crate::controllers::{Context, Error};

/// The catalogue with its derived properties, their desired values and what was observed.
pub(super) struct Inputs {
    pub catalogue: Catalogue,
    pub desired: Vec<Result<Value, String>>,
    pub observed: HashMap<String, Observation>,
}

/// Reads the catalogue, lists homeplane's objects for the derived properties and the template
/// context, renders the desired values and observes every property in batches.
pub(super) async fn gather(
    ctx: &Context,
    registry: &StateRegistry,
    scope: &observe::Scope,
    resources: &mut observe::Resources,
    now_ts: Timestamp,
) -> Result<Inputs, Error> {
    let ns = registry.namespace().unwrap_or_default();
    let mut catalogue = catalogue(ctx, registry, &ns).await?;
    let objects = homeplane_objects(ctx, registry, &ns).await?;
    let mut derived_observations = HashMap::new();
    if registry.spec.derived {
        for (kind, items) in &objects {
            for (property, observation) in derived::properties(kind, items, &ns, now_ts) {
                derived_observations.insert(property.id.clone(), observation);
                catalogue.properties.push(property);
            }
        }
        // Flux's Kustomizations and GitRepositories, and whether Flux's objects match Git.
        let flux = flux::list(ctx, &derived_namespaces(ctx, registry, &ns)).await?;
        for (property, observation) in flux::properties(&flux, &objects, &ns) {
            derived_observations.insert(property.id.clone(), observation);
            catalogue.properties.push(property);
        }
    }
    catalogue.refuse_duplicates();
    let context = template_context(&ns, &registry.name_any(), &objects);
    let desired = render_desired(&catalogue.properties, &context).await;
    let mut observed = observe::observe_all(ctx, scope, &catalogue.properties, resources).await;
    observed.extend(derived_observations);
    Ok(Inputs {
        catalogue,
        desired,
        observed,
    })
}

/// Reads the catalogue: inline properties, then each ConfigMap catalogue.
async fn catalogue(ctx: &Context, registry: &StateRegistry, ns: &str) -> Result<Catalogue, Error> {
    let mut catalogue = Catalogue::default();
    catalogue.add_inline(&registry.spec.properties);
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(ctx.client.clone(), ns);
    for (i, source) in registry.spec.catalogs.iter().enumerate() {
        let name = format!("ConfigMap {} key {}", source.name, source.key);
        let cm = config_maps
            .get_opt(&source.name)
            .await
            .map_err(Error::kube("read a catalogue ConfigMap"))?;
        let text = cm
            .as_ref()
            .and_then(|cm| cm.data.as_ref())
            .and_then(|d| d.get(&source.key));
        match (cm.is_some(), text) {
            (_, Some(text)) => catalogue.add_yaml(&name, text),
            (exists, None) => catalogue.errors.push(PropertyError {
                source: name,
                property: "*".to_string(),
                field: format!("catalogs[{i}]"),
                message: if exists {
                    format!("ConfigMap {ns}/{} has no key {}", source.name, source.key)
                } else {
                    format!("ConfigMap {ns}/{} does not exist", source.name)
                },
            }),
        }
    }
    Ok(catalogue)
}

/// Lists homeplane's kinds in the registry's derived namespaces: derived properties and the
/// template context.
async fn homeplane_objects(
    ctx: &Context,
    registry: &StateRegistry,
    ns: &str,
) -> Result<Vec<(&'static str, Vec<Value>)>, Error> {
    async fn list<K>(api: Api<K>, at: impl Fn(Option<&str>) -> Api<K>) -> Result<Vec<Value>, Error>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    {
        // Capped, and one object too deep to read (reported by its own controller) does not
        // fail the list.
        let action = "list homeplane objects";
        let items =
            crate::reconcile::list::readable(&api, ListParams::default(), action, at).await?;
        items
            .into_iter()
            .map(|o| {
                serde_json::to_value(o).map_err(|source| Error::Serialize {
                    what: "a homeplane object",
                    source,
                })
            })
            .collect()
    }
    async fn kind<K>(client: &kube::Client, scope: &[Option<String>]) -> Result<Vec<Value>, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let mut all = Vec::new();
        for ns in scope {
            let api = match ns {
                Some(ns) => Api::<K>::namespaced(client.clone(), ns),
                None => Api::<K>::all(client.clone()),
            };
            let at = |ns: Option<&str>| match ns {
                Some(ns) => Api::<K>::namespaced(client.clone(), ns),
                None => Api::<K>::all(client.clone()),
            };
            all.extend(list(api, at).await?);
        }
        Ok(all)
    }
    let trusted = observe::Scope::new(ctx, ns).trusted;
    let scope = derived_namespaces(ctx, registry, ns);
    let c = &ctx.client;
    Ok(vec![
        ("Database", kind::<Database>(c, &scope).await?),
        ("Workflow", kind::<Workflow>(c, &scope).await?),
        ("BackupPolicy", kind::<BackupPolicy>(c, &scope).await?),
        ("VoicePipeline", kind::<VoicePipeline>(c, &scope).await?),
        ("MemoryServer", kind::<MemoryServer>(c, &scope).await?),
        ("Agent", kind::<Agent>(c, &scope).await?),
        // Cluster-scoped: only for registries trusted to see beyond their namespace.
        (
            "NodeClass",
            if trusted {
                list(Api::<NodeClass>::all(c.clone()), |_| Api::all(c.clone())).await?
            } else {
                Vec::new()
            },
        ),
    ])
}

/// The namespaces whose objects contribute derived properties (`None`: every namespace):
/// beyond its own namespace only when the registry's namespace is trusted (`derived_scope`
/// says in status why not).
fn derived_namespaces(ctx: &Context, registry: &StateRegistry, ns: &str) -> Vec<Option<String>> {
    let wanted = &registry.spec.derived_namespaces;
    if !observe::Scope::new(ctx, ns).trusted || wanted.is_empty() {
        vec![Some(ns.to_string())]
    } else if wanted.iter().any(|n| n == "*") {
        vec![None]
    } else {
        wanted.iter().map(|n| Some(n.clone())).collect()
    }
}

/// Why `spec.derivedNamespaces` is not honoured, when the registry is not trusted to see
/// beyond its namespace.
pub(super) fn derived_scope(scope: &observe::Scope, registry: &StateRegistry) -> Option<String> {
    let beyond: Vec<&str> = registry
        .spec
        .derived_namespaces
        .iter()
        .map(String::as_str)
        .filter(|n| *n != scope.namespace)
        .collect();
    (!scope.trusted && !beyond.is_empty()).then(|| {
        format!(
            "spec.derivedNamespaces names {} but namespace {} is not trusted to see other namespaces (--trusted-registry-namespace); only its own objects are counted",
            beyond.join(", "),
            scope.namespace
        )
    })
}

/// The template context: the namespace, the registry, and per kind how many objects there are
/// (`count.Workflow`) and how many are declared active (`active.Workflow`).
pub(super) fn template_context(
    ns: &str,
    registry: &str,
    objects: &[(&'static str, Vec<Value>)],
) -> Value {
    let mut count = serde_json::Map::new();
    let mut active = serde_json::Map::new();
    for (kind, items) in objects {
        count.insert((*kind).to_string(), Value::from(items.len()));
        let n = items
            .iter()
            .filter(|o| o["spec"]["active"].as_bool() == Some(true))
            .count();
        active.insert((*kind).to_string(), Value::from(n));
    }
    json!({"namespace": ns, "registry": registry, "count": count, "active": active})
}

/// Longest a registry's templates may take to render, all together.
const RENDER_TIMEOUT: Duration = Duration::from_secs(2);

/// Renders every desired value (templates against the context) on a blocking thread, off the
/// async runtime, within [`RENDER_TIMEOUT`]. Templates are bounded in size, steps and output
/// (`homeplane_state::template`); one that breaks a bound makes its property Unknown.
async fn render_desired(properties: &[Checked], context: &Value) -> Vec<Result<Value, String>> {
    let templates: Vec<(usize, String, String)> = properties
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match &p.desired {
            Desired::Template(text) => Some((i, p.id.clone(), text.clone())),
            Desired::Literal(_) => None,
        })
        .collect();
    let mut out: Vec<Result<Value, String>> = properties
        .iter()
        .map(|p| match &p.desired {
            Desired::Literal(v) => Ok(v.clone()),
            Desired::Template(_) => Err("the template was not rendered".to_string()),
        })
        .collect();
    if templates.is_empty() {
        return out;
    }
    let indexes: Vec<usize> = templates.iter().map(|(i, _, _)| *i).collect();
    let context = template::context(context);
    let work = tokio::task::spawn_blocking(move || {
        let (compiled, _) = Templates::compile(
            templates
                .iter()
                .map(|(_, id, text)| (id.as_str(), text.as_str())),
        );
        templates
            .iter()
            .map(|(i, id, _)| (*i, compiled.render(id, &context)))
            .collect::<Vec<_>>()
    });
    match tokio::time::timeout(RENDER_TIMEOUT, work).await {
        Ok(Ok(rendered)) => {
            for (i, result) in rendered {
                if let Some(slot) = out.get_mut(i) {
                    *slot = result;
                }
            }
        }
        Ok(Err(failed)) => {
            for i in indexes {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Err(format!("rendering the desired templates failed: {failed}"));
                }
            }
        }
        Err(_) => {
            for i in indexes {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Err(format!(
                        "rendering the desired templates took longer than {}s",
                        RENDER_TIMEOUT.as_secs()
                    ));
                }
            }
        }
    }
    out
}
