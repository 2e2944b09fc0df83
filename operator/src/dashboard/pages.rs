//! The pages: each a function from a [`Snapshot`] (and, for two pages, a read of homeplane's
//! history database or of a Database's server) to the HTML of its live region. Every value from
//! the cluster goes through tera's HTML escaping; the only HTML built here is the SVG of
//! [`super::svg`], which escapes its own text.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use homeplane_crds::backup::BackupPhase;
use homeplane_crds::registry::Severity;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use super::Dashboard;
use super::model::{self, Item, Link, ago, href, url_part};
use super::snapshot::{Kind, Obj, Snapshot, State, event_time};

/// A rendered page: what goes around the live region, and the live region itself.
pub struct Page {
    /// The title (and the first heading).
    pub title: String,
    /// Which navigation entry is current.
    pub section: &'static str,
    /// Controls above the live region (filter forms), which live updates leave alone.
    pub controls: String,
    /// The live region: replaced as a whole by live updates.
    pub live: String,
    /// The HTTP status.
    pub status: StatusCode,
}

/// Why a page could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Nothing lives at the path.
    #[error("{0}")]
    NotFound(String),
    /// A template failed (a bug).
    #[error("failed to render {template}")]
    Render {
        template: &'static str,
        #[source]
        source: tera::Error,
    },
}

/// What a page needs to know about the request.
pub struct Request<'a> {
    /// The path, e.g. `/drift`.
    pub path: &'a str,
    /// The query, decoded.
    pub query: BTreeMap<String, String>,
    /// The anti-forgery token for the page's forms.
    pub csrf: &'a str,
}

impl Request<'_> {
    fn param(&self, name: &str) -> &str {
        self.query.get(name).map(String::as_str).unwrap_or_default()
    }

    /// The page's own address, to come back to after an action.
    fn back(&self) -> String {
        self.address(None)
    }

    /// The page's own address with the query parameter `name` set to `value` (appended last),
    /// or left out when `value` is `None`.
    pub(super) fn with_param(&self, name: &str, value: Option<&str>) -> String {
        self.address(Some((name, value)))
    }

    fn address(&self, change: Option<(&str, Option<&str>)>) -> String {
        let mut query: Vec<String> = self
            .query
            .iter()
            .filter(|(k, _)| change.is_none_or(|(name, _)| k.as_str() != name))
            .map(|(k, v)| format!("{}={}", url_part(k), url_part(v)))
            .collect();
        if let Some((name, Some(value))) = change {
            query.push(format!("{}={}", url_part(name), url_part(value)));
        }
        if query.is_empty() {
            self.path.to_string()
        } else {
            format!("{}?{}", self.path, query.join("&"))
        }
    }
}

/// A moment, as people read it and as machines do.
#[derive(Clone, Debug, Serialize)]
pub struct Moment {
    /// `3m`, `2d`.
    pub ago: String,
    /// RFC 3339.
    pub iso: String,
}

/// A moment relative to `now`.
pub(super) fn moment_of(now: Timestamp, t: Option<Timestamp>) -> Option<Moment> {
    t.map(|t| Moment {
        ago: ago(now, t),
        iso: t
            .round(k8s_openapi::jiff::Unit::Second)
            .unwrap_or(t)
            .to_string(),
    })
}

/// What every live region knows.
#[derive(Serialize)]
pub(super) struct Common {
    actions: bool,
    csrf: String,
    back: String,
}

pub(super) fn common(d: &Dashboard, req: &Request<'_>) -> Common {
    Common {
        actions: d.actions,
        csrf: req.csrf.to_string(),
        back: req.back(),
    }
}

pub(super) fn render<T: Serialize>(
    d: &Dashboard,
    template: &'static str,
    ctx: &T,
) -> Result<String, PageError> {
    let context = tera::Context::from_serialize(ctx)
        .map_err(|source| PageError::Render { template, source })?;
    d.templates
        .render(template, &context)
        .map_err(|source| PageError::Render { template, source })
}

pub(super) fn page(title: impl Into<String>, section: &'static str, live: String) -> Page {
    Page {
        title: title.into(),
        section,
        controls: String::new(),
        live,
        status: StatusCode::OK,
    }
}

/// Renders the page at `req.path`.
pub async fn render_page(
    d: &Dashboard,
    snapshot: &Snapshot,
    req: &Request<'_>,
) -> Result<Page, PageError> {
    let segments: Vec<String> = req
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    match parts.as_slice() {
        [] => landing(d, snapshot, req),
        ["drift"] => super::sections::drift(d, snapshot, req),
        ["drift", "history"] => super::sections::drift_history(d, snapshot, req).await,
        ["capacity"] => super::sections::capacity(d, snapshot, req),
        ["databases"] => super::sections::databases(d, snapshot, req),
        ["databases", ns, name] => super::sections::database(d, snapshot, req, ns, name).await,
        ["backups"] => super::sections::backups(d, snapshot, req),
        ["workflows"] => super::sections::workflows(d, snapshot, req),
        ["ai"] => super::sections::ai(d, snapshot, req),
        ["activity"] => activity(d, snapshot, req),
        ["kind", kind] => match Kind::parse(kind) {
            Some(kind) if kind != Kind::Drift => kind_list(d, snapshot, req, kind),
            Some(_) => super::sections::drift(d, snapshot, req),
            None => Err(PageError::NotFound(format!(
                "{kind} is not a homeplane kind"
            ))),
        },
        ["object", kind, name] => object(d, snapshot, req, kind, "", name).await,
        ["object", kind, ns, name] => object(d, snapshot, req, kind, ns, name).await,
        _ => Err(PageError::NotFound(format!(
            "there is no page at {}",
            req.path
        ))),
    }
}

/// An item of the "what needs me" list, ready to show.
#[derive(Serialize)]
struct ItemView {
    level: &'static str,
    what: String,
    title: String,
    href: String,
    reason: String,
    message: String,
    since: Option<Moment>,
    command: String,
    kind: &'static str,
    namespace: String,
    name: String,
    reconcilable: bool,
}

fn item_view(now: Timestamp, item: &Item) -> ItemView {
    ItemView {
        level: item.level,
        what: item.what.clone(),
        title: item.title.clone(),
        href: href(item.kind, &item.namespace, &item.name),
        reason: item.reason.clone(),
        message: item.message.clone(),
        since: moment_of(now, item.since),
        command: item.command.clone(),
        kind: item.kind.name(),
        namespace: item.namespace.clone(),
        name: item.name.clone(),
        reconcilable: item.kind != Kind::Drift,
    }
}

/// Most items listed before "and N more".
const LISTED: usize = 100;

#[derive(Serialize)]
struct Landing {
    #[serde(flatten)]
    common: Common,
    items: Vec<ItemView>,
    more: usize,
    progress: Vec<ItemView>,
    ready: usize,
    objects: usize,
    tiles: Vec<model::Tile>,
    operator: super::OperatorView,
}

fn landing(d: &Dashboard, snapshot: &Snapshot, req: &Request<'_>) -> Result<Page, PageError> {
    let attention = model::attention(snapshot);
    let all = req.param("all") == "1";
    let limit = if all { usize::MAX } else { LISTED };
    let now = snapshot.now;
    let ctx = Landing {
        common: common(d, req),
        more: attention.items.len().saturating_sub(limit),
        items: attention
            .items
            .iter()
            .take(limit)
            .map(|i| item_view(now, i))
            .collect(),
        progress: attention
            .in_progress
            .iter()
            .take(LISTED)
            .map(|i| item_view(now, i))
            .collect(),
        ready: snapshot
            .objects
            .iter()
            .filter(|o| o.state == State::Ready)
            .count(),
        objects: snapshot.objects.len(),
        tiles: model::tiles(snapshot),
        operator: d.operator_view(snapshot),
    };
    Ok(page(
        "What needs me",
        "home",
        render(d, "landing.html", &ctx)?,
    ))
}

/// One object in a list.
#[derive(Serialize)]
pub(super) struct ObjView {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub href: String,
    pub state: &'static str,
    pub reason: String,
    pub message: String,
    pub since: Option<Moment>,
}

pub(super) fn obj_view(now: Timestamp, o: &Obj) -> ObjView {
    ObjView {
        kind: o.kind.name(),
        namespace: o.namespace.clone(),
        name: o.name.clone(),
        href: href(o.kind, &o.namespace, &o.name),
        state: o.state.word(),
        reason: o.reason.clone(),
        message: o.message.clone(),
        since: moment_of(now, o.since),
    }
}

#[derive(Serialize)]
struct KindList {
    #[serde(flatten)]
    common: Common,
    kind: &'static str,
    rows: Vec<ObjView>,
    total: usize,
}

#[derive(Serialize)]
struct KindControls {
    kind: &'static str,
    state: String,
    namespace: String,
    namespaces: Vec<String>,
    q: String,
}

fn matches_text(q: &str, fields: &[&str]) -> bool {
    let q = q.trim().to_lowercase();
    q.is_empty() || fields.iter().any(|f| f.to_lowercase().contains(&q))
}

fn kind_list(
    d: &Dashboard,
    snapshot: &Snapshot,
    req: &Request<'_>,
    kind: Kind,
) -> Result<Page, PageError> {
    let state = req.param("state");
    let namespace = req.param("namespace");
    let q = req.param("q");
    let mut objects: Vec<&Obj> = snapshot.of_kind(kind).collect();
    let total = objects.len();
    objects.retain(|o| {
        (state.is_empty() || o.state.word().eq_ignore_ascii_case(state))
            && (namespace.is_empty() || o.namespace == namespace)
            && matches_text(q, &[&o.name, &o.namespace, &o.reason, &o.message])
    });
    // Failures first, then the oldest.
    objects.sort_by_key(|o| (std::cmp::Reverse(o.state), o.since));
    let ctx = KindList {
        common: common(d, req),
        kind: kind.name(),
        rows: objects.iter().map(|o| obj_view(snapshot.now, o)).collect(),
        total,
    };
    let controls = KindControls {
        kind: kind.name(),
        state: state.to_string(),
        namespace: namespace.to_string(),
        namespaces: snapshot.namespaces(),
        q: q.to_string(),
    };
    Ok(Page {
        controls: render(d, "kind_controls.html", &controls)?,
        ..page(
            format!("{}s", kind.name()),
            "",
            render(d, "kind.html", &ctx)?,
        )
    })
}

#[derive(Serialize)]
struct ConditionView {
    type_: String,
    status: String,
    reason: String,
    message: String,
    since: Option<Moment>,
    observed_generation: Option<i64>,
}

#[derive(Serialize)]
pub(super) struct EventView {
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub count: i32,
    pub at: Option<Moment>,
    pub source: String,
}

pub(super) fn event_view(now: Timestamp, e: &k8s_openapi::api::core::v1::Event) -> EventView {
    EventView {
        type_: e.type_.clone().unwrap_or_default(),
        reason: e.reason.clone().unwrap_or_default(),
        message: e.message.clone().unwrap_or_default(),
        count: e.count.unwrap_or(1),
        at: moment_of(now, event_time(e)),
        source: e
            .reporting_component
            .clone()
            .filter(|c| !c.is_empty())
            .or_else(|| e.source.as_ref().and_then(|s| s.component.clone()))
            .unwrap_or_default(),
    }
}

#[derive(Serialize)]
struct Owned {
    kind: String,
    name: String,
    href: Option<String>,
    state: String,
    ok: bool,
}

#[derive(Serialize)]
struct ObjectPage {
    #[serde(flatten)]
    common: Common,
    kind: &'static str,
    namespace: String,
    name: String,
    summary: Option<ObjView>,
    generation: Option<i64>,
    observed_generation: Option<i64>,
    conditions: Vec<ConditionView>,
    chain: Option<Link>,
    first_broken: Option<String>,
    owned: Vec<Owned>,
    events: Vec<EventView>,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    spec: String,
    extra: Vec<(String, String)>,
    section_href: &'static str,
    is_registry: bool,
    is_policy: bool,
    can_drill: bool,
    drift_history: Option<String>,
}

/// The section page of a kind.
fn section_of(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::NodeClass => ("capacity", "/capacity"),
        Kind::Database => ("databases", "/databases"),
        Kind::BackupPolicy | Kind::Backup => ("backups", "/backups"),
        Kind::Workflow => ("workflows", "/workflows"),
        Kind::Agent | Kind::AgentRun | Kind::VoicePipeline | Kind::MemoryServer => ("ai", "/ai"),
        Kind::StateRegistry | Kind::Drift => ("drift", "/drift"),
    }
}

/// Metadata, spec and kind-specific lines of one object from the snapshot.
struct Raw {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    spec: String,
    extra: Vec<(String, String)>,
}

fn raw<K: kube::Resource + serde::Serialize>(obj: &K, spec: &impl Serialize) -> Raw {
    Raw {
        labels: obj.meta().labels.clone().unwrap_or_default(),
        annotations: obj.meta().annotations.clone().unwrap_or_default(),
        spec: serde_yaml::to_string(spec).unwrap_or_default(),
        extra: Vec::new(),
    }
}

fn find<'a, K: kube::Resource>(
    list: &'a [std::sync::Arc<K>],
    ns: &str,
    name: &str,
) -> Option<&'a K> {
    list.iter()
        .find(|o| {
            o.meta().name.as_deref() == Some(name)
                && o.meta().namespace.as_deref().unwrap_or_default() == ns
        })
        .map(|o| o.as_ref())
}

fn raw_of(snapshot: &Snapshot, kind: Kind, ns: &str, name: &str) -> Option<Raw> {
    Some(match kind {
        Kind::NodeClass => {
            let o = find(&snapshot.nodeclasses, "", name)?;
            raw(o, &o.spec)
        }
        Kind::Database => {
            let o = find(&snapshot.databases, ns, name)?;
            raw(o, &o.spec)
        }
        Kind::BackupPolicy => {
            let o = find(&snapshot.backup_policies, ns, name)?;
            raw(o, &o.spec)
        }
        Kind::Backup => {
            let o = find(&snapshot.backups, ns, name)?;
            let mut r = raw(o, &o.spec);
            if let Some(s) = &o.status {
                r.extra.push(("phase".into(), format!("{:?}", s.phase)));
                if let Some(size) = &s.size {
                    r.extra.push(("size".into(), size.clone()));
                }
                if let Some(key) = &s.object_key {
                    r.extra.push(("object".into(), key.clone()));
                }
                if let Some(sha) = &s.sha256 {
                    r.extra.push(("SHA-256".into(), sha.clone()));
                }
                r.extra.push(("verified".into(), s.verified.to_string()));
            }
            r
        }
        Kind::Workflow => {
            let o = find(&snapshot.workflows, ns, name)?;
            raw(o, &o.spec)
        }
        Kind::Agent => {
            let o = find(&snapshot.agents, ns, name)?;
            raw(o, &o.spec)
        }
        Kind::AgentRun => {
            let o = find(&snapshot.agent_runs, ns, name)?;
            let mut r = raw(o, &o.spec);
            if let Some(s) = &o.status {
                r.extra.push(("phase".into(), format!("{:?}", s.phase)));
                if let Some(result) = &s.result {
                    r.extra.push(("summary".into(), result.summary.clone()));
                }
            }
            r
        }
        Kind::VoicePipeline => {
            let o = find(&snapshot.voice_pipelines, ns, name)?;
            raw(o, &o.spec)
        }
        Kind::MemoryServer => {
            let o = find(&snapshot.memory_servers, ns, name)?;
            raw(o, &o.spec)
        }
        Kind::StateRegistry => {
            let o = find(&snapshot.registries, ns, name)?;
            let mut r = raw(o, &o.spec);
            // A catalogue can hold hundreds of properties: the drift page lists what matters.
            if o.spec.properties.len() > 20 {
                r.spec = format!(
                    "# {} inline properties (see the drift page)\n{}",
                    o.spec.properties.len(),
                    serde_yaml::to_string(&serde_json::json!({
                        "interval": o.spec.interval,
                        "mode": o.spec.mode,
                        "catalogs": o.spec.catalogs,
                        "derived": o.spec.derived,
                        "derivedNamespaces": o.spec.derived_namespaces,
                        "maxDriftObjects": o.spec.max_drift_objects,
                    }))
                    .unwrap_or_default()
                );
            }
            r
        }
        Kind::Drift => {
            let o = find(&snapshot.drifts, ns, name)?;
            let mut r = raw(o, &o.spec);
            r.extra.push(("property".into(), o.spec.property.clone()));
            r.extra.push(("desired".into(), o.spec.desired.clone()));
            r.extra.push(("observed".into(), o.spec.observed.clone()));
            r.extra.push((
                "severity".into(),
                format!("{:?}", o.spec.severity).to_lowercase(),
            ));
            r.extra.push(("since".into(), o.spec.since.0.to_string()));
            r
        }
    })
}

/// The longest annotation value shown whole.
const ANNOTATION_SHOWN: usize = 300;

/// What an object owns, with its readiness.
fn owned(snapshot: &Snapshot, kind: Kind, ns: &str, name: &str) -> Vec<Owned> {
    let mut out = Vec::new();
    let owner = crate::workload::Owner {
        api_version: String::new(),
        kind: kind.name().to_string(),
        name: name.to_string(),
        namespace: ns.to_string(),
        uid: String::new(),
    };
    for w in snapshot.owned_workloads(ns, &owner.label()) {
        out.push(Owned {
            kind: w.kind.to_string(),
            name: w.name.clone(),
            href: None,
            state: format!("{}/{} ready", w.ready, w.replicas),
            ok: w.is_ready(),
        });
    }
    let child = |o: &Obj| Owned {
        kind: o.kind.name().to_string(),
        name: o.name.clone(),
        href: Some(href(o.kind, &o.namespace, &o.name)),
        state: o.state.word().to_string(),
        ok: o.state == State::Ready,
    };
    match kind {
        Kind::Database => {
            if let Some(db) = snapshot.database(ns, name) {
                for secret in db.status.iter().flat_map(|s| s.role_secrets.values()) {
                    let exists = snapshot.secret_exists(ns, secret);
                    out.push(Owned {
                        kind: "Secret".into(),
                        name: secret.clone(),
                        href: None,
                        state: match exists {
                            Some(true) => "exists",
                            Some(false) => "missing",
                            None => "not watched",
                        }
                        .into(),
                        ok: exists != Some(false),
                    });
                }
            }
        }
        Kind::BackupPolicy => {
            for b in snapshot
                .backups
                .iter()
                .filter(|b| b.spec.policy == name && b.namespace().unwrap_or_default() == ns)
            {
                if let Some(o) = snapshot.object(Kind::Backup, ns, &b.name_any()) {
                    out.push(child(o));
                }
            }
        }
        Kind::Agent => {
            for r in snapshot
                .agent_runs
                .iter()
                .filter(|r| r.spec.agent == name && r.namespace().unwrap_or_default() == ns)
            {
                if let Some(o) = snapshot.object(Kind::AgentRun, ns, &r.name_any()) {
                    out.push(child(o));
                }
            }
        }
        Kind::StateRegistry => {
            for drift in snapshot
                .drifts
                .iter()
                .filter(|x| x.spec.registry == name && x.namespace().unwrap_or_default() == ns)
            {
                out.push(Owned {
                    kind: "Drift".into(),
                    name: drift.spec.property.clone(),
                    href: Some(href(Kind::Drift, ns, &drift.name_any())),
                    state: format!("{:?}", drift.spec.severity).to_lowercase(),
                    ok: false,
                });
            }
        }
        Kind::AgentRun | Kind::Backup => {
            let job = match kind {
                Kind::AgentRun => find(&snapshot.agent_runs, ns, name)
                    .and_then(|r| r.status.as_ref()?.job_name.clone()),
                _ => find(&snapshot.backups, ns, name).and_then(|b| b.status.as_ref()?.job.clone()),
            };
            if let Some(job) = job {
                let state = snapshot
                    .job(ns, &job)
                    .and_then(|j| j.status.clone())
                    .map(|s| {
                        if s.succeeded.unwrap_or(0) > 0 {
                            "succeeded"
                        } else if s.failed.unwrap_or(0) > 0 {
                            "failed"
                        } else {
                            "running"
                        }
                    })
                    .unwrap_or("not found");
                out.push(Owned {
                    kind: "Job".into(),
                    name: job,
                    href: None,
                    state: state.into(),
                    ok: state != "failed",
                });
            }
        }
        _ => {}
    }
    out
}

async fn object(
    d: &Dashboard,
    snapshot: &Snapshot,
    req: &Request<'_>,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<Page, PageError> {
    let Some(kind) = Kind::parse(kind) else {
        return Err(PageError::NotFound(format!(
            "{kind} is not a homeplane kind"
        )));
    };
    let ns = if kind.namespaced() { ns } else { "" };
    let Some(raw) = raw_of(snapshot, kind, ns, name) else {
        return Err(PageError::NotFound(format!(
            "{} does not exist (or is not watched here)",
            model::title(kind, ns, name)
        )));
    };
    let summary = snapshot.object(kind, ns, name);
    let now = snapshot.now;
    let chain = model::chain(snapshot, kind, ns, name);
    let (section, section_href) = section_of(kind);
    let policy = (kind == Kind::BackupPolicy)
        .then(|| snapshot.backup_policy(ns, name))
        .flatten();
    let ctx = ObjectPage {
        common: common(d, req),
        kind: kind.name(),
        namespace: ns.to_string(),
        name: name.to_string(),
        summary: summary.map(|o| obj_view(now, o)),
        generation: summary.and_then(|o| o.generation),
        observed_generation: summary.and_then(|o| o.observed_generation),
        conditions: summary
            .map(|o| {
                o.conditions
                    .iter()
                    .map(|c| ConditionView {
                        type_: c.type_.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                        since: moment_of(now, Some(c.last_transition_time.0)),
                        observed_generation: c.observed_generation,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        first_broken: chain
            .as_ref()
            .and_then(|c| c.first_broken())
            .map(Link::label),
        chain,
        owned: owned(snapshot, kind, ns, name),
        events: snapshot
            .events_of(kind, ns, name)
            .iter()
            .take(50)
            .map(|e| event_view(now, e))
            .collect(),
        labels: raw.labels.into_iter().collect(),
        // kubectl's last-applied-configuration repeats the spec: shown shortened.
        annotations: raw
            .annotations
            .into_iter()
            .map(|(k, v)| {
                if v.chars().count() > ANNOTATION_SHOWN {
                    let cut: String = v.chars().take(ANNOTATION_SHOWN).collect();
                    (k, format!("{cut}… ({} characters)", v.chars().count()))
                } else {
                    (k, v)
                }
            })
            .collect(),
        spec: raw.spec,
        extra: raw.extra,
        section_href,
        is_registry: kind == Kind::StateRegistry,
        is_policy: kind == Kind::BackupPolicy,
        can_drill: policy.is_some_and(|p| p.spec.verify.is_some()),
        drift_history: (kind == Kind::Drift)
            .then(|| find(&snapshot.drifts, ns, name))
            .flatten()
            .map(|x| {
                format!(
                    "/drift/history?property={}&namespace={}",
                    url_part(&x.spec.property),
                    url_part(ns)
                )
            }),
    };
    Ok(page(
        model::title(kind, ns, name),
        section,
        render(d, "object.html", &ctx)?,
    ))
}

/// One line of the activity feed.
#[derive(Serialize)]
struct Entry {
    #[serde(skip)]
    at_ts: Timestamp,
    at: Option<Moment>,
    what: &'static str,
    level: &'static str,
    title: String,
    href: Option<String>,
    text: String,
}

#[derive(Serialize)]
struct Activity {
    entries: Vec<Entry>,
    total: usize,
}

#[derive(Serialize)]
struct ActivityControls {
    what: String,
    namespace: String,
    namespaces: Vec<String>,
}

/// Most entries of the feed.
const FEED: usize = 200;

fn activity(d: &Dashboard, snapshot: &Snapshot, req: &Request<'_>) -> Result<Page, PageError> {
    let now = snapshot.now;
    let what = req.param("what");
    let namespace = req.param("namespace");
    let mut entries: Vec<Entry> = Vec::new();
    for o in &snapshot.objects {
        for c in &o.conditions {
            let level = match (c.type_.as_str(), c.status.as_str()) {
                ("Ready", "True") => "ok",
                ("Ready", _) | ("Degraded", "True") | ("Stalled", "True") => "error",
                _ => "info",
            };
            entries.push(Entry {
                at_ts: c.last_transition_time.0,
                at: None,
                what: "condition",
                level,
                title: model::title(o.kind, &o.namespace, &o.name),
                href: Some(href(o.kind, &o.namespace, &o.name)),
                text: format!(
                    "{}={} ({}){}",
                    c.type_,
                    c.status,
                    c.reason,
                    if c.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", c.message)
                    }
                ),
            });
        }
    }
    for e in snapshot
        .events()
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
    {
        let o = &e.involved_object;
        let kind = o.kind.as_deref().and_then(Kind::parse);
        let ns = o.namespace.clone().unwrap_or_default();
        let name = o.name.clone().unwrap_or_default();
        entries.push(Entry {
            at_ts: event_time(e).unwrap_or(Timestamp::UNIX_EPOCH),
            at: None,
            what: "event",
            level: "warning",
            title: match kind {
                Some(k) => model::title(k, &ns, &name),
                None => format!("{} {ns}/{name}", o.kind.clone().unwrap_or_default()),
            },
            href: kind.map(|k| href(k, if k.namespaced() { &ns } else { "" }, &name)),
            text: format!(
                "{}: {}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            ),
        });
    }
    for x in &snapshot.drifts {
        let ns = x.namespace().unwrap_or_default();
        entries.push(Entry {
            at_ts: x.spec.since.0,
            at: None,
            what: "drift",
            level: match x.spec.severity {
                Severity::Critical => "error",
                Severity::Warning => "warning",
                Severity::Info => "info",
            },
            title: x.spec.property.clone(),
            href: Some(href(Kind::Drift, &ns, &x.name_any())),
            text: format!(
                "drifted: desired {}, observed {}",
                x.spec.desired, x.spec.observed
            ),
        });
    }
    for c in snapshot.cleared_drift() {
        entries.push(Entry {
            at_ts: c.at,
            at: None,
            what: "drift",
            level: "ok",
            title: c.property.clone(),
            href: Some(format!(
                "/drift/history?property={}&namespace={}",
                url_part(&c.property),
                url_part(&c.namespace)
            )),
            text: format!(
                "back in its desired state (registry {}/{})",
                c.namespace, c.registry
            ),
        });
    }
    entries.retain(|e| {
        (what.is_empty() || e.what == what)
            && (namespace.is_empty()
                || e.title.contains(&format!(" {namespace}/"))
                || e.href.as_deref().is_some_and(|h| {
                    h.contains(&format!("namespace={namespace}"))
                        || h.contains(&format!("/{namespace}/"))
                }))
    });
    let total = entries.len();
    entries.sort_by_key(|e| std::cmp::Reverse(e.at_ts));
    entries.truncate(FEED);
    for e in &mut entries {
        e.at = moment_of(now, Some(e.at_ts));
    }
    let controls = ActivityControls {
        what: what.to_string(),
        namespace: namespace.to_string(),
        namespaces: snapshot.namespaces(),
    };
    Ok(Page {
        controls: render(d, "activity_controls.html", &controls)?,
        ..page(
            "Activity",
            "activity",
            render(d, "activity.html", &Activity { entries, total })?,
        )
    })
}

/// Parses a query string into its pairs (the last of a repeated name wins).
pub fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// The phase of a Backup as a word.
pub(super) fn backup_phase(phase: BackupPhase) -> &'static str {
    match phase {
        BackupPhase::Pending => "Pending",
        BackupPhase::Running => "Running",
        BackupPhase::Succeeded => "Succeeded",
        BackupPhase::Failed => "Failed",
    }
}
