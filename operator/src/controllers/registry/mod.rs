//! The StateRegistry controller: on every interval, read the catalogue (inline and ConfigMaps)
//! and the derived properties of homeplane's own kinds, observe everything in batches, compare
//! (pure, in `homeplane_state`), then publish: one Drift object per drifted property, status
//! totals, Events on transitions, metrics per severity, history in PostgreSQL, and in `Correct`
//! mode the correctors of drifted properties.

mod flux;
mod observe;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use homeplane_crds::drift::{Drift, DriftSpec};
use homeplane_crds::registry::{RegistryMode, Severity, StateRegistry, UnknownProperty};
use homeplane_crds::{
    Agent, BackupPolicy, Database, MemoryServer, NodeClass, VoicePipeline, Workflow,
};
use homeplane_state::engine::{self, State, Verdict};
use homeplane_state::template::{self, Templates};
use homeplane_state::{Catalogue, Checked, Desired, Observe, PropertyError, derived};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use super::{Context, Error, FIELD_MANAGER, apply_status, error_policy, now};
use crate::conditions::{self, DEGRADED, Desired as Condition, READY};

const CONTROLLER: &str = "stateregistry";
/// Condition saying whether transitions reach the history database.
const HISTORY: &str = "HistoryRecorded";
/// Most transition Events published per evaluation; the rest are summed up in one.
const MAX_EVENTS: usize = 10;
/// Most unknown properties listed with their reason in status.
const MAX_UNKNOWN_LISTED: usize = 50;
/// Longest desired/observed/message text kept in a Drift object.
const MAX_TEXT: usize = 1024;
/// Annotation that asks for an evaluation now (any new value), e.g. after changing the world.
pub const EVALUATE_ANNOTATION: &str = "homeplane.dev/evaluate-requested";
/// Annotation that asks a homeplane object's controller to apply it again.
pub const REAPPLY_ANNOTATION: &str = "homeplane.dev/reapply-requested";

/// Where transitions are recorded.
pub struct History {
    /// homeplane's own database.
    pub pool: sqlx::PgPool,
    /// How long transitions are kept.
    pub retention: Duration,
}

/// What the controller remembers between evaluations of one registry (rebuilt from the Drift
/// objects after a restart).
#[derive(Default)]
struct Memory {
    since: HashMap<String, Timestamp>,
    states: HashMap<String, State>,
    drifted_by_severity: BTreeMap<Severity, usize>,
    unknown: usize,
    /// When the last evaluation ran, for which generation and evaluation request.
    evaluated: Option<(Instant, Option<i64>, Option<String>)>,
    corrections: i32,
}

/// The controller's context: the operator's, the history database, the memory of each
/// registry.
pub struct Shared {
    ctx: Arc<Context>,
    history: Option<History>,
    memory: Mutex<HashMap<String, Memory>>,
}

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, history: Option<History>, shutdown: CancellationToken) {
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        history,
        memory: Mutex::new(HashMap::new()),
    });
    // One registry that cannot be read (JSON nested too deep) must not stop the others: the
    // reconcile frame's watch lists them one by one and reports the unreadable one.
    let controller = Controller::new(
        ctx.watched::<StateRegistry>(),
        crate::reconcile::watch::config(),
    );
    let reporter = Arc::new(crate::reconcile::watch::Reporter::new(
        CONTROLLER,
        ctx.clone(),
        controller.store(),
    ));
    controller
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile,
            |registry, error, shared| error_policy(CONTROLLER, registry, error, shared.ctx.clone()),
            shared,
        )
        .for_each(move |item| {
            let reporter = reporter.clone();
            async move { reporter.report(item).await }
        })
        .await;
}

/// Shortest and longest interval between evaluations (the CRD refuses the rest).
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// How often the registry is evaluated, and why `spec.interval` was not used as written (an
/// object stored before the CRD bounded it): a text that is not a duration evaluates every
/// minute, a duration out of bounds is clamped.
fn interval(registry: &StateRegistry) -> (Duration, Option<String>) {
    let text = &registry.spec.interval;
    match homeplane_state::duration::parse(text) {
        Ok(d) if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) => (d, None),
        Ok(d) => {
            let clamped = d.clamp(MIN_INTERVAL, MAX_INTERVAL);
            let message = format!(
                "spec.interval {text:?} is outside 1s..24h; evaluating every {}s until it is fixed",
                clamped.as_secs()
            );
            (clamped, Some(message))
        }
        Err(e) => (
            Duration::from_secs(60),
            Some(format!(
                "spec.interval: {e}; evaluating every 60s until it is fixed"
            )),
        ),
    }
}

#[instrument(skip_all, fields(registry = %registry.name_any(), namespace = registry.namespace().unwrap_or_default()))]
async fn reconcile(registry: Arc<StateRegistry>, shared: Arc<Shared>) -> Result<Action, Error> {
    let ctx = shared.ctx.clone();
    let ns = registry.namespace().unwrap_or_default();
    let key = super::key(registry.as_ref());
    let api: Api<StateRegistry> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(registry) = api
        .get_opt(&registry.name_any())
        .await
        .map_err(Error::kube("read the StateRegistry"))?
    else {
        forget(&shared, &key);
        return Ok(Action::await_change());
    };
    let (every, _) = interval(&registry);
    // Our own status write wakes us too: evaluate only when the interval is up, the spec
    // changed or an evaluation was requested.
    let generation = registry.metadata.generation;
    let requested = registry.annotations().get(EVALUATE_ANNOTATION).cloned();
    if let Some((at, seen, asked)) = memory(&shared, &key, |m| m.evaluated.clone()).flatten()
        && seen == generation
        && asked == requested
        && registry.status.is_some()
        && at.elapsed() < every
    {
        return Ok(Action::requeue(every - at.elapsed()));
    }
    let started = Instant::now();
    evaluate(&shared, &registry, &key).await?;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    ctx.succeeded(&key);
    Ok(Action::requeue(every))
}

fn memory<T>(shared: &Shared, key: &str, read: impl FnOnce(&Memory) -> T) -> Option<T> {
    let memories = shared.memory.lock().ok()?;
    memories.get(key).map(read)
}

fn forget(shared: &Shared, key: &str) {
    if let Ok(mut memories) = shared.memory.lock() {
        memories.remove(key);
        publish_metrics(&shared.ctx, &memories);
    }
}

fn publish_metrics(ctx: &Context, memories: &HashMap<String, Memory>) {
    let mut by_severity: BTreeMap<&'static str, i64> = BTreeMap::new();
    for s in [Severity::Info, Severity::Warning, Severity::Critical] {
        by_severity.insert(severity_word(s), 0);
    }
    let mut unknown = 0i64;
    for m in memories.values() {
        for (s, n) in &m.drifted_by_severity {
            *by_severity.entry(severity_word(*s)).or_default() +=
                i64::try_from(*n).unwrap_or(i64::MAX);
        }
        unknown += i64::try_from(m.unknown).unwrap_or(i64::MAX);
    }
    ctx.metrics.set_drift(&by_severity, unknown);
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
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
fn derived_scope(scope: &observe::Scope, registry: &StateRegistry) -> Option<String> {
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
fn template_context(ns: &str, registry: &str, objects: &[(&'static str, Vec<Value>)]) -> Value {
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

/// The name of the Drift object of a property: `REGISTRY.PROPERTY` (a hash replaces the tail
/// of names too long for Kubernetes).
pub fn drift_name(registry: &str, property: &str) -> String {
    let raw = format!("{registry}.{}", property.replace('_', "-"));
    if raw.len() <= 253 {
        return raw;
    }
    let hash = hex::encode(&Sha256::digest(raw.as_bytes())[..6]);
    let mut cut = 240;
    while !raw.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash}", raw[..cut].trim_end_matches(['.', '-']))
}

fn clip(text: String) -> String {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut cut = MAX_TEXT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

fn drift_spec(registry: &str, v: &Verdict, now: Timestamp) -> DriftSpec {
    DriftSpec {
        registry: registry.to_string(),
        property: v.id.clone(),
        desired: clip(v.desired.as_ref().map(engine::display).unwrap_or_default()),
        observed: clip(v.observed.as_ref().map(engine::display).unwrap_or_default()),
        severity: v.severity,
        since: Time(v.since.unwrap_or(now)),
        message: v.message.clone().map(clip),
    }
}

/// The drifted verdicts that get a Drift object: worst first, then by id, at most `max`.
fn materialised(verdicts: &[Verdict], max: usize) -> (Vec<&Verdict>, usize) {
    let mut drifted: Vec<&Verdict> = verdicts
        .iter()
        .filter(|v| v.state == State::Drifted)
        .collect();
    drifted.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.id.cmp(&b.id)));
    let rest = drifted.len().saturating_sub(max);
    drifted.truncate(max);
    (drifted, rest)
}

async fn evaluate(shared: &Shared, registry: &StateRegistry, key: &str) -> Result<(), Error> {
    let ctx = shared.ctx.as_ref();
    let started = Instant::now();
    let ns = registry.namespace().unwrap_or_default();
    let name = registry.name_any();
    let drifts: Api<Drift> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = drifts
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list Drift objects"))?
        .items;
    // Drift names of other registries (`a.b` + `c` and `a` + `b.c` give the same name): never
    // written over.
    let taken: std::collections::HashSet<String> = listed
        .iter()
        .filter(|d| d.spec.registry != name)
        .map(ResourceExt::name_any)
        .collect();
    let existing: Vec<Drift> = listed
        .into_iter()
        .filter(|d| d.spec.registry == name)
        .collect();

    // Dereference: catalogue, homeplane objects.
    let mut catalogue = catalogue(ctx, registry, &ns).await?;
    let objects = homeplane_objects(ctx, registry, &ns).await?;
    let now_ts = now();
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
    let context = template_context(&ns, &name, &objects);
    let desired = render_desired(&catalogue.properties, &context).await;

    // Observe, in batches.
    let mut resources = observe::Resources::new();
    let scope = observe::Scope::new(ctx, &ns);
    let mut observed =
        observe::observe_all(ctx, &scope, &catalogue.properties, &mut resources).await;
    observed.extend(derived_observations);

    // Compare (pure).
    let (since, previous) = {
        let remembered = memory(shared, key, |m| (m.since.clone(), m.states.clone()));
        match remembered {
            Some(r) => r,
            None => (
                existing
                    .iter()
                    .map(|d| (d.spec.property.clone(), d.spec.since.0))
                    .collect(),
                existing
                    .iter()
                    .map(|d| (d.spec.property.clone(), State::Drifted))
                    .collect(),
            ),
        }
    };
    let report = engine::evaluate(&catalogue.properties, &desired, &observed, &since, now_ts);
    let transitions = engine::transitions(&previous, &report);

    // Publish Drift objects.
    let max = usize::try_from(registry.spec.max_drift_objects.max(1)).unwrap_or(500);
    let (wanted, not_materialised) = materialised(&report.verdicts, max);
    let owner = registry.controller_owner_ref(&());
    let mut keep = std::collections::HashSet::new();
    let mut collisions = Vec::new();
    for v in &wanted {
        let drift_name = drift_name(&name, &v.id);
        if taken.contains(&drift_name) {
            collisions.push(format!(
                "{} (Drift {drift_name} belongs to another registry)",
                v.id
            ));
            continue;
        }
        keep.insert(drift_name.clone());
        let spec = drift_spec(&name, v, now_ts);
        if existing
            .iter()
            .any(|d| d.name_any() == drift_name && d.spec == spec)
        {
            continue;
        }
        let mut drift = Drift::new(&drift_name, spec);
        drift.metadata.namespace = Some(ns.clone());
        drift.metadata.owner_references = owner.clone().map(|o| vec![o]);
        let mut labels = BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_string(),
            "homeplane".to_string(),
        )]);
        if name.len() <= 63 {
            labels.insert("homeplane.dev/registry".to_string(), name.clone());
        }
        drift.metadata.labels = Some(labels);
        let mut patch = serde_json::to_value(&drift).map_err(|source| Error::Serialize {
            what: "a Drift",
            source,
        })?;
        if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("creationTimestamp");
        }
        drifts
            .patch(
                &drift_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(Error::kube("apply a Drift"))?;
    }
    for d in &existing {
        if !keep.contains(&d.name_any()) {
            match drifts.delete(&d.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(Error::kube("delete a resolved Drift")(e)),
            }
        }
    }

    // Events on transitions: one per property (related to its Drift object), from a recorder
    // of this evaluation, so that transitions of different properties are never folded into
    // one event series.
    let recorder = Recorder::new(
        ctx.client.clone(),
        Reporter {
            controller: "homeplane".into(),
            instance: None,
        },
    );
    let regarding = registry.object_ref(&());
    for t in transitions.iter().take(MAX_EVENTS) {
        let (kind, reason) = match (t.from, t.to) {
            (_, State::Drifted) => (EventType::Warning, "Drifted"),
            (_, State::Unknown) => (EventType::Warning, "Unknown"),
            (Some(State::Drifted), State::InSync) => (EventType::Normal, "Resolved"),
            (_, State::InSync) => (EventType::Normal, "InSync"),
        };
        let note = match t.to {
            State::Unknown => format!(
                "{}: cannot be observed: {}",
                t.id,
                t.message.as_deref().unwrap_or("no reason given")
            ),
            _ => format!(
                "{}: desired {}, observed {}",
                t.id,
                t.desired.as_ref().map(engine::display).unwrap_or_default(),
                t.observed.as_ref().map(engine::display).unwrap_or_default()
            ),
        };
        let related = drift_ref(&ns, &name, &t.id);
        announce(&recorder, &regarding, kind, reason, note, related).await;
    }
    if transitions.len() > MAX_EVENTS {
        let note = format!(
            "{} more properties changed state in this evaluation",
            transitions.len() - MAX_EVENTS
        );
        ctx.event(registry, EventType::Normal, "Transitions", note)
            .await;
    }

    // Correct.
    let mut corrections = 0i32;
    if registry.spec.mode == RegistryMode::Correct {
        let by_id: HashMap<&str, &Checked> = catalogue
            .properties
            .iter()
            .map(|p| (p.id.as_str(), p))
            .collect();
        for v in report.verdicts.iter().filter(|v| v.state == State::Drifted) {
            let Some(property) = by_id.get(v.id.as_str()) else {
                continue;
            };
            if property.corrector.is_none() {
                continue;
            }
            match correct(ctx, &scope, property, &mut resources).await {
                Ok(what) => {
                    corrections += 1;
                    ctx.metrics.corrected("applied");
                    ctx.event(
                        registry,
                        EventType::Normal,
                        "Corrected",
                        format!("{}: {what}", v.id),
                    )
                    .await;
                }
                Err(why) => {
                    ctx.metrics.corrected("failed");
                    let related = drift_ref(&ns, &name, &v.id);
                    let note = format!("{}: {why}", v.id);
                    announce(
                        &recorder,
                        &regarding,
                        EventType::Warning,
                        "CorrectionFailed",
                        note,
                        related,
                    )
                    .await;
                }
            }
        }
    }

    // History.
    let history = match &shared.history {
        None => Condition::no(
            HISTORY,
            "NoHistoryDatabase",
            "transitions are not recorded: run the operator with --history-database-url",
        ),
        Some(history) => {
            let recorded =
                crate::history::drift::record(&history.pool, &ns, &name, &transitions, now_ts)
                    .await;
            let pruned = crate::history::drift::prune(&history.pool, history.retention).await;
            match recorded.and(pruned) {
                Ok(()) => Condition::yes(
                    HISTORY,
                    "Recorded",
                    "every transition is recorded in homeplane's database",
                ),
                Err(e) => {
                    warn!(error = %e, "failed to record drift history");
                    Condition::no(
                        HISTORY,
                        "HistoryFailed",
                        format!("failed to record transitions: {e}"),
                    )
                }
            }
        }
    };

    // Status.
    let took = started.elapsed();
    let mut status = registry.status.clone().unwrap_or_default();
    let generation = registry.metadata.generation;
    status.observed_generation = generation;
    status.properties = count(report.verdicts.len());
    status.in_sync = count(report.in_sync);
    status.drifted = count(report.drifted);
    status.unknown = count(report.unknown);
    status.drifted_by_severity = report
        .drifted_by_severity
        .iter()
        .map(|(s, n)| (severity_word(*s).to_string(), count(*n)))
        .collect();
    status.not_materialized = count(not_materialised);
    let mut unknown: Vec<UnknownProperty> = report
        .verdicts
        .iter()
        .filter(|v| v.state == State::Unknown)
        .map(|v| UnknownProperty {
            property: v.id.clone(),
            reason: clip(v.message.clone().unwrap_or_default()),
        })
        .collect();
    unknown.sort_by(|a, b| a.property.cmp(&b.property));
    unknown.truncate(MAX_UNKNOWN_LISTED);
    status.unknown_properties = unknown;
    status.refused = count(catalogue.errors.len());
    status.corrections = memory(shared, key, |m| m.corrections).unwrap_or(0) + corrections;
    status.last_evaluation_time = Some(Time(now()));
    status.last_evaluation_millis = Some(i64::try_from(took.as_millis()).unwrap_or(i64::MAX));
    let summary = format!(
        "{} properties: {} in sync, {} drifted, {} unknown",
        report.verdicts.len(),
        report.in_sync,
        report.drifted,
        report.unknown
    );
    conditions::set(
        &mut status.conditions,
        Condition::yes(READY, "Evaluated", summary.clone()),
        generation,
        now_ts,
    );
    // Degraded: what the registry asks for that is not done as written.
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    if let (_, Some(message)) = interval(registry) {
        problems.push(("InvalidInterval", message));
    }
    if let Some(message) = derived_scope(&scope, registry) {
        problems.push(("NamespaceNotTrusted", message));
    }
    if !collisions.is_empty() {
        problems.push((
            "DriftNameTaken",
            format!(
                "no Drift object for {}: rename the registry or the property",
                collisions.join(", ")
            ),
        ));
    }
    if !catalogue.errors.is_empty() {
        let shown: Vec<String> = catalogue
            .errors
            .iter()
            .take(5)
            .map(ToString::to_string)
            .collect();
        let more = catalogue.errors.len().saturating_sub(5);
        let mut message = format!(
            "{} refused (the others are evaluated): {}",
            plural(catalogue.errors.len(), "property", "properties"),
            shown.join("; ")
        );
        if more > 0 {
            message.push_str(&format!("; and {more} more"));
        }
        problems.push(("InvalidProperties", message));
    }
    match problems.first() {
        None => conditions::remove(&mut status.conditions, DEGRADED),
        Some((reason, _)) => {
            let message = problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            conditions::set(
                &mut status.conditions,
                Condition::yes(DEGRADED, reason, clip(message)),
                generation,
                now_ts,
            );
        }
    }
    conditions::set(&mut status.conditions, history, generation, now_ts);
    let api: Api<StateRegistry> = Api::namespaced(ctx.client.clone(), &ns);
    apply_status(&api, registry, &status).await?;
    info!(%summary, took_ms = took.as_millis(), transitions = transitions.len(), "evaluated");

    if let Ok(mut memories) = shared.memory.lock() {
        let m = memories.entry(key.to_string()).or_default();
        m.since = engine::carried_since(&report);
        m.states = engine::states(&report);
        m.drifted_by_severity = report.drifted_by_severity.clone();
        m.unknown = report.unknown;
        m.evaluated = Some((
            Instant::now(),
            generation,
            registry.annotations().get(EVALUATE_ANNOTATION).cloned(),
        ));
        m.corrections = status.corrections;
        publish_metrics(ctx, &memories);
    }
    Ok(())
}

/// A reference to the Drift object of a property (it may not exist: in sync, unknown).
fn drift_ref(ns: &str, registry: &str, property: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(Drift::api_version(&()).to_string()),
        kind: Some("Drift".to_string()),
        name: Some(drift_name(registry, property)),
        namespace: Some(ns.to_string()),
        ..Default::default()
    }
}

/// Publishes an event about the registry, related to one property's Drift object.
async fn announce(
    recorder: &Recorder,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
    related: ObjectReference,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(clip(note)),
        action: "Evaluate".to_string(),
        secondary: Some(related),
    };
    if let Err(error) = recorder.publish(&event, regarding).await {
        warn!(error = %error, "failed to publish an event");
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// A client that acts as the corrector ServiceAccount of the registry's namespace
/// (impersonation): what a corrector may change is decided by Kubernetes RBAC on that
/// ServiceAccount, never by the operator's own rights.
async fn corrector_client(ctx: &Context, scope: &observe::Scope) -> Result<kube::Client, String> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| format!("failed to read the operator's cluster configuration: {e}"))?;
    config.auth_info.impersonate = Some(format!(
        "system:serviceaccount:{}:{}",
        scope.namespace, ctx.trust.corrector_service_account
    ));
    config.auth_info.impersonate_groups = None;
    kube::Client::try_from(config)
        .map_err(|e| format!("failed to build the corrector's client: {e}"))
}

/// What to say when the API server refused a corrector.
fn corrector_refused(ctx: &Context, scope: &observe::Scope, what: &str, e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "failed to {what}: the corrector acts as ServiceAccount {}/{} and may not: {}; grant that ServiceAccount the rights its correctors need",
            scope.namespace, ctx.trust.corrector_service_account, status.message
        ),
        other => format!("failed to {what}: {other}"),
    }
}

/// Runs the corrector of a drifted property, as the registry namespace's corrector
/// ServiceAccount; says what it did, or why it could not.
async fn correct(
    ctx: &Context,
    scope: &observe::Scope,
    property: &Checked,
    resources: &mut observe::Resources,
) -> Result<String, String> {
    let (Observe::Declared(observer), Some(corrector)) = (&property.observe, &property.corrector)
    else {
        return Err("the property has no corrector".to_string());
    };
    let Some(k) = observer.kubernetes.as_ref() else {
        return Err("correctors act on Kubernetes objects".to_string());
    };
    let Some(name) = k.name.as_deref() else {
        return Err("correctors act on one object named by observe.kubernetes.name".to_string());
    };
    let found = observe::resource(ctx, resources, &k.api_version, &k.kind).await?;
    let namespace = scope
        .kubernetes(&found, k.namespace.as_deref())?
        .unwrap_or_else(|| scope.namespace.clone());
    let client = corrector_client(ctx, scope).await?;
    let api: Api<kube::api::DynamicObject> = if found.namespaced {
        Api::namespaced_with(client.clone(), &namespace, &found.ar)
    } else {
        Api::all_with(client.clone(), &found.ar)
    };
    let mut done = Vec::new();
    if let Some(patch) = &corrector.patch {
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| {
                corrector_refused(
                    ctx,
                    scope,
                    &format!("patch {} {namespace}/{name}", k.kind),
                    &e,
                )
            })?;
        done.push(format!("patched {} {namespace}/{name}", k.kind));
    }
    if corrector.reapply_owner {
        let object = api.get(name).await.map_err(|e| {
            corrector_refused(
                ctx,
                scope,
                &format!("read {} {namespace}/{name}", k.kind),
                &e,
            )
        })?;
        let owner = object
            .owner_references()
            .iter()
            .find(|o| o.api_version.starts_with("homeplane.dev/"))
            .cloned()
            .ok_or_else(|| format!("{} {namespace}/{name} has no homeplane owner", k.kind))?;
        let owner_found =
            observe::resource(ctx, resources, &owner.api_version, &owner.kind).await?;
        let owners: Api<kube::api::DynamicObject> = if owner_found.namespaced {
            Api::namespaced_with(client.clone(), &namespace, &owner_found.ar)
        } else {
            Api::all_with(client.clone(), &owner_found.ar)
        };
        let mark = json!({"metadata": {"annotations": {REAPPLY_ANNOTATION: now().to_string()}}});
        owners
            .patch(&owner.name, &PatchParams::default(), &Patch::Merge(&mark))
            .await
            .map_err(|e| {
                corrector_refused(
                    ctx,
                    scope,
                    &format!("ask {} {} to re-apply", owner.kind, owner.name),
                    &e,
                )
            })?;
        done.push(format!("asked {} {} to re-apply", owner.kind, owner.name));
    }
    Ok(done.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(id: &str, severity: Severity, state: State) -> Verdict {
        Verdict {
            id: id.to_string(),
            state,
            desired: Some(json!(1)),
            observed: Some(json!(2)),
            since: None,
            message: None,
            severity,
            in_grace: false,
        }
    }

    #[test]
    fn worst_drift_is_materialised_first_and_the_rest_counted() {
        let verdicts = vec![
            verdict("a", Severity::Info, State::Drifted),
            verdict("b", Severity::Critical, State::Drifted),
            verdict("c", Severity::Warning, State::InSync),
            verdict("d", Severity::Warning, State::Drifted),
            verdict("e", Severity::Critical, State::Drifted),
        ];
        let (kept, rest) = materialised(&verdicts, 3);
        let ids: Vec<_> = kept.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["b", "e", "d"]);
        assert_eq!(rest, 1);
    }

    #[test]
    fn drift_names_are_valid_object_names() {
        assert_eq!(
            drift_name("homelab", "pi.containers.cpu-limits"),
            "homelab.pi.containers.cpu-limits"
        );
        assert_eq!(drift_name("r", "db.tier_sacred"), "r.db.tier-sacred");
        let long = drift_name("r", &"x".repeat(400));
        assert!(long.len() <= 253, "{}", long.len());
        assert_ne!(long, drift_name("r", &"x".repeat(401)));
    }

    #[test]
    fn template_context_counts_kinds_and_active_workflows() {
        let objects = vec![(
            "Workflow",
            vec![
                json!({"spec": {"active": true}}),
                json!({"spec": {"active": false}}),
            ],
        )];
        let ctx = template_context("homelab", "seed", &objects);
        assert_eq!(ctx["count"]["Workflow"], 2);
        assert_eq!(ctx["active"]["Workflow"], 1);
        assert_eq!(ctx["namespace"], "homelab");
    }
}
