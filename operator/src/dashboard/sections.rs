//! The section pages: drift (with its history), capacity, databases, backups, workflows and AI.

use std::collections::BTreeMap;

use homeplane_crds::backup::BackupPhase;
use homeplane_crds::registry::Severity;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use serde::Serialize;

use super::Dashboard;
use super::model::{self, href, url_part};
use super::pages::{
    self, Common, EventView, Moment, ObjView, Page, PageError, Request, common, obj_view, page,
    render,
};
use super::snapshot::{Kind, Snapshot, State};
use super::svg;
use crate::controllers::backuppolicy::plan::Schedule;
use crate::quantity::Milli;

fn moment(now: Timestamp, t: Option<Timestamp>) -> Option<Moment> {
    pages::moment_of(now, t)
}

/// At most this many rows on one page of a long list (200 Drifts would weigh over 130 KB).
const PAGE_ROWS: usize = 100;

/// One page of a list of `matching` rows, worst first: which page (`?page=N`, from 1), the
/// range shown, and links to the pages before and after that keep the query's filters.
#[derive(Serialize, Debug, PartialEq)]
struct Pager {
    page: usize,
    pages: usize,
    first: usize,
    last: usize,
    previous: Option<String>,
    next: Option<String>,
}

impl Pager {
    fn new(req: &Request<'_>, matching: usize) -> Pager {
        let pages = matching.div_ceil(PAGE_ROWS).max(1);
        let page = param(req, "page")
            .parse::<usize>()
            .unwrap_or(1)
            .clamp(1, pages);
        let link = |n: usize| req.with_param("page", (n > 1).then(|| n.to_string()).as_deref());
        Pager {
            page,
            pages,
            first: ((page - 1) * PAGE_ROWS + 1).min(matching),
            last: (page * PAGE_ROWS).min(matching),
            previous: (page > 1).then(|| link(page - 1)),
            next: (page < pages).then(|| link(page + 1)),
        }
    }

    /// The rows of this page.
    fn rows<T>(&self, all: Vec<T>) -> Vec<T> {
        all.into_iter()
            .skip((self.page - 1) * PAGE_ROWS)
            .take(PAGE_ROWS)
            .collect()
    }
}

fn param<'a>(req: &'a Request<'_>, name: &str) -> &'a str {
    req.query.get(name).map(String::as_str).unwrap_or_default()
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

// ---------------------------------------------------------------------------------------------
// Drift

#[derive(Serialize)]
struct DriftRow {
    property: String,
    href: String,
    history: String,
    severity: &'static str,
    desired: String,
    observed: String,
    message: String,
    since: Option<Moment>,
    namespace: String,
    registry: String,
    registry_href: String,
}

#[derive(Serialize)]
struct RegistryView {
    namespace: String,
    name: String,
    href: String,
    state: &'static str,
    message: String,
    properties: i32,
    in_sync: i32,
    drifted: i32,
    unknown: i32,
    not_materialized: i32,
    refused: i32,
    last_evaluation: Option<Moment>,
    took_ms: Option<i64>,
    unknown_properties: Vec<(String, String)>,
}

#[derive(Serialize)]
struct DriftPage {
    #[serde(flatten)]
    common: Common,
    rows: Vec<DriftRow>,
    shown: usize,
    total: usize,
    /// The rows of this page, and the other pages.
    pager: Pager,
    counts: BTreeMap<&'static str, usize>,
    registries: Vec<RegistryView>,
    filtered: bool,
}

#[derive(Serialize)]
struct DriftControls {
    severity: String,
    namespace: String,
    namespaces: Vec<String>,
    q: String,
}

/// The drift page: every Drift (filter by severity, namespace and text), worst and oldest
/// first, and each registry's totals and unknown properties.
pub fn drift(d: &Dashboard, snapshot: &Snapshot, req: &Request<'_>) -> Result<Page, PageError> {
    let severity = param(req, "severity");
    let namespace = param(req, "namespace");
    let q = param(req, "q");
    let now = snapshot.now;
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for s in ["critical", "warning", "info"] {
        counts.insert(s, 0);
    }
    for x in &snapshot.drifts {
        *counts.entry(severity_word(x.spec.severity)).or_default() += 1;
    }
    let mut drifts: Vec<_> = snapshot
        .drifts
        .iter()
        .filter(|x| {
            let ns = x.namespace().unwrap_or_default();
            (severity.is_empty() || severity_word(x.spec.severity) == severity)
                && (namespace.is_empty() || ns == namespace)
                && {
                    let q = q.trim().to_lowercase();
                    q.is_empty()
                        || [
                            x.spec.property.as_str(),
                            x.spec.desired.as_str(),
                            x.spec.observed.as_str(),
                            x.spec.registry.as_str(),
                            x.spec.message.as_deref().unwrap_or_default(),
                        ]
                        .iter()
                        .any(|f| f.to_lowercase().contains(&q))
                }
        })
        .collect();
    drifts.sort_by(|a, b| {
        (
            std::cmp::Reverse(a.spec.severity),
            a.spec.since.0,
            &a.spec.property,
        )
            .cmp(&(
                std::cmp::Reverse(b.spec.severity),
                b.spec.since.0,
                &b.spec.property,
            ))
    });
    let matching = drifts.len();
    let pager = Pager::new(req, matching);
    let rows: Vec<DriftRow> = pager
        .rows(drifts)
        .iter()
        .map(|x| {
            let ns = x.namespace().unwrap_or_default();
            DriftRow {
                property: x.spec.property.clone(),
                href: href(Kind::Drift, &ns, &x.name_any()),
                history: format!(
                    "/drift/history?property={}&namespace={}",
                    url_part(&x.spec.property),
                    url_part(&ns)
                ),
                severity: severity_word(x.spec.severity),
                desired: x.spec.desired.clone(),
                observed: x.spec.observed.clone(),
                message: x.spec.message.clone().unwrap_or_default(),
                since: moment(now, Some(x.spec.since.0)),
                registry_href: href(Kind::StateRegistry, &ns, &x.spec.registry),
                namespace: ns,
                registry: x.spec.registry.clone(),
            }
        })
        .collect();
    let registries = snapshot
        .registries
        .iter()
        .filter(|r| namespace.is_empty() || r.namespace().unwrap_or_default() == namespace)
        .map(|r| {
            let ns = r.namespace().unwrap_or_default();
            let s = r.status.clone().unwrap_or_default();
            let o = snapshot.object(Kind::StateRegistry, &ns, &r.name_any());
            RegistryView {
                href: href(Kind::StateRegistry, &ns, &r.name_any()),
                name: r.name_any(),
                namespace: ns,
                state: o.map(|o| o.state.word()).unwrap_or("Progressing"),
                message: o.map(|o| o.message.clone()).unwrap_or_default(),
                properties: s.properties,
                in_sync: s.in_sync,
                drifted: s.drifted,
                unknown: s.unknown,
                not_materialized: s.not_materialized,
                refused: s.refused,
                last_evaluation: moment(now, s.last_evaluation_time.map(|t| t.0)),
                took_ms: s.last_evaluation_millis,
                unknown_properties: s
                    .unknown_properties
                    .into_iter()
                    .map(|u| (u.property, u.reason))
                    .collect(),
            }
        })
        .collect();
    let ctx = DriftPage {
        common: common(d, req),
        shown: matching,
        total: snapshot.drifts.len(),
        rows,
        pager,
        counts,
        registries,
        filtered: !(severity.is_empty() && namespace.is_empty() && q.is_empty()),
    };
    let controls = DriftControls {
        severity: severity.to_string(),
        namespace: namespace.to_string(),
        namespaces: snapshot.namespaces(),
        q: q.to_string(),
    };
    Ok(Page {
        controls: render(d, "drift_controls.html", &controls)?,
        ..page("Drift", "drift", render(d, "drift.html", &ctx)?)
    })
}

#[derive(Serialize)]
struct HistoryRow {
    at: String,
    registry: String,
    from: String,
    to: String,
    desired: String,
    observed: String,
    message: String,
}

#[derive(Serialize)]
struct HistoryPage {
    property: String,
    namespace: String,
    current: Vec<DriftRowBrief>,
    available: bool,
    error: Option<String>,
    rows: Vec<HistoryRow>,
    timeline: String,
}

#[derive(Serialize)]
struct DriftRowBrief {
    href: String,
    severity: &'static str,
    desired: String,
    observed: String,
    since: Option<Moment>,
}

/// One property's history from homeplane's database, as a timeline and a table.
pub async fn drift_history(
    d: &Dashboard,
    snapshot: &Snapshot,
    req: &Request<'_>,
) -> Result<Page, PageError> {
    let property = param(req, "property").to_string();
    let namespace = param(req, "namespace").to_string();
    if property.is_empty() {
        return Err(PageError::NotFound(
            "name a property: /drift/history?property=ID".into(),
        ));
    }
    let now = snapshot.now;
    let current = snapshot
        .drifts
        .iter()
        .filter(|x| {
            x.spec.property == property
                && (namespace.is_empty() || x.namespace().unwrap_or_default() == namespace)
        })
        .map(|x| DriftRowBrief {
            href: href(
                Kind::Drift,
                &x.namespace().unwrap_or_default(),
                &x.name_any(),
            ),
            severity: severity_word(x.spec.severity),
            desired: x.spec.desired.clone(),
            observed: x.spec.observed.clone(),
            since: moment(now, Some(x.spec.since.0)),
        })
        .collect();
    let mut ctx = HistoryPage {
        property: property.clone(),
        namespace: namespace.clone(),
        current,
        available: d.history.is_some(),
        error: None,
        rows: Vec::new(),
        timeline: String::new(),
    };
    if let Some(pool) = &d.history {
        let ns = (!namespace.is_empty()).then_some(namespace.as_str());
        match crate::history::drift::list(pool, &property, ns, 200).await {
            Ok(rows) => {
                let segments: Vec<svg::Segment> = rows
                    .iter()
                    .filter_map(|r| {
                        Some(svg::Segment {
                            start: r.at.parse().ok()?,
                            state: r.to_state.clone(),
                        })
                    })
                    .collect();
                ctx.timeline = svg::timeline(&segments, now);
                let text = |v: &Option<String>| v.clone().unwrap_or_default();
                ctx.rows = rows
                    .iter()
                    .rev()
                    .map(|r| HistoryRow {
                        at: r.at.clone(),
                        registry: r.registry.clone(),
                        from: text(&r.from_state),
                        to: r.to_state.clone(),
                        desired: text(&r.desired),
                        observed: text(&r.observed),
                        message: text(&r.message),
                    })
                    .collect();
            }
            Err(error) => ctx.error = Some(format!("reading homeplane's database failed: {error}")),
        }
    }
    Ok(page(
        format!("History of {property}"),
        "drift",
        render(d, "drift_history.html", &ctx)?,
    ))
}

// ---------------------------------------------------------------------------------------------
// Capacity

#[derive(Serialize)]
struct ResourceView {
    name: String,
    allocatable: String,
    reserved: String,
    requested: String,
    limits: String,
    free: String,
    short: bool,
    bar: String,
}

#[derive(Serialize)]
struct PodView {
    namespace: String,
    name: String,
    node: String,
    cpu_request: String,
    cpu_limit: String,
    memory_request: String,
    memory_limit: String,
    gpu: i64,
    managed: bool,
}

#[derive(Serialize)]
struct Refusal {
    title: String,
    href: String,
    reason: String,
    message: String,
}

#[derive(Serialize)]
struct ClassView {
    name: String,
    href: String,
    state: &'static str,
    message: String,
    nodes: String,
    node_count: i32,
    overcommitted: Option<String>,
    resources: Vec<ResourceView>,
    pods: Vec<PodView>,
    pod_count: i32,
    refusals: Vec<Refusal>,
    gpu_resource: Option<String>,
}

#[derive(Serialize)]
struct CapacityPage {
    #[serde(flatten)]
    common: Common,
    classes: Vec<ClassView>,
}

/// The NodeClasses an object's workloads are placed on.
fn classes_of(snapshot: &Snapshot, kind: Kind, ns: &str, name: &str) -> Vec<String> {
    match kind {
        Kind::MemoryServer => snapshot
            .memory_servers
            .iter()
            .filter(|m| m.name_any() == name && m.namespace().unwrap_or_default() == ns)
            .flat_map(|m| {
                let mut c = vec![m.spec.placement.class.clone()];
                c.extend(
                    m.spec
                        .cache
                        .managed
                        .as_ref()
                        .map(|x| x.placement.class.clone()),
                );
                c.extend(
                    m.spec
                        .embedding
                        .model
                        .as_ref()
                        .map(|x| x.placement.class.clone()),
                );
                c
            })
            .collect(),
        Kind::VoicePipeline => snapshot
            .voice_pipelines
            .iter()
            .filter(|v| v.name_any() == name && v.namespace().unwrap_or_default() == ns)
            .flat_map(|v| {
                v.spec
                    .stages
                    .iter()
                    .filter_map(|s| s.workload.as_ref().map(|w| w.placement.class.clone()))
                    .collect::<Vec<_>>()
            })
            .collect(),
        Kind::Database => snapshot
            .database(ns, name)
            .and_then(|db| {
                db.spec
                    .server
                    .managed
                    .as_ref()
                    .map(|m| vec![m.placement.class.clone()])
            })
            .unwrap_or_default(),
        Kind::Agent => snapshot
            .agent(ns, name)
            .and_then(|a| a.spec.placement.as_ref().map(|p| vec![p.class.clone()]))
            .unwrap_or_default(),
        Kind::AgentRun => snapshot
            .agent_runs
            .iter()
            .find(|r| r.name_any() == name && r.namespace().unwrap_or_default() == ns)
            .and_then(|r| snapshot.agent(ns, &r.spec.agent))
            .and_then(|a| a.spec.placement.as_ref().map(|p| vec![p.class.clone()]))
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Per NodeClass: bars for CPU, memory and GPU from its status (the capacity plan the
/// controller and `homeplane plan` compute with the same code), what is refused, the pods.
pub fn capacity(d: &Dashboard, snapshot: &Snapshot, req: &Request<'_>) -> Result<Page, PageError> {
    let refused: Vec<(&super::snapshot::Obj, Vec<String>)> = snapshot
        .objects
        .iter()
        .filter(|o| {
            matches!(o.reason.as_str(), "Unschedulable" | "InvalidPlacement")
                && o.state != State::Ready
        })
        .map(|o| (o, classes_of(snapshot, o.kind, &o.namespace, &o.name)))
        .collect();
    let classes = snapshot
        .nodeclasses
        .iter()
        .map(|c| {
            let name = c.name_any();
            let o = snapshot.object(Kind::NodeClass, "", &name);
            let status = c.status.clone().unwrap_or_default();
            let over = status
                .conditions
                .iter()
                .find(|x| {
                    x.type_ == crate::controllers::nodeclass::OVERCOMMITTED && x.status == "True"
                })
                .map(|x| x.message.clone());
            let mut resources = Vec::new();
            if let Some(cap) = &status.capacity {
                let mut add = |label: &str, plan: &homeplane_crds::nodeclass::ResourcePlan| {
                    let q = |s: &str| Milli::parse(s).map(|m| m.0).unwrap_or(0);
                    let (a, r, req_, l) = (
                        q(&plan.allocatable),
                        q(&plan.reserved),
                        q(&plan.requested),
                        q(&plan.limits),
                    );
                    resources.push(ResourceView {
                        name: label.to_string(),
                        allocatable: plan.allocatable.clone(),
                        reserved: plan.reserved.clone(),
                        requested: plan.requested.clone(),
                        limits: plan.limits.clone(),
                        free: plan.free.clone(),
                        short: r + req_ > a || r + l > a,
                        bar: svg::capacity_bar(
                            a,
                            r,
                            req_,
                            l,
                            [
                                &plan.reserved,
                                &plan.requested,
                                &plan.free,
                                &plan.limits,
                                &plan.allocatable,
                            ],
                        ),
                    });
                };
                add("CPU", &cap.cpu);
                add("memory", &cap.memory);
                if let Some(g) = &cap.gpu {
                    add(c.spec.gpu_resource.as_deref().unwrap_or("GPU"), g);
                }
            }
            ClassView {
                href: href(Kind::NodeClass, "", &name),
                state: o.map(|o| o.state.word()).unwrap_or("Progressing"),
                message: o.map(|o| o.message.clone()).unwrap_or_default(),
                nodes: status.nodes.join(", "),
                node_count: status.node_count,
                overcommitted: over,
                resources,
                pods: status
                    .pods
                    .iter()
                    .map(|p| PodView {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                        node: p.node.clone(),
                        cpu_request: p.cpu_request.clone(),
                        cpu_limit: p.cpu_limit.clone(),
                        memory_request: p.memory_request.clone(),
                        memory_limit: p.memory_limit.clone(),
                        gpu: p.gpu,
                        managed: p.managed,
                    })
                    .collect(),
                pod_count: status.pod_count,
                refusals: refused
                    .iter()
                    .filter(|(_, classes)| classes.contains(&name))
                    .map(|(o, _)| Refusal {
                        title: model::title(o.kind, &o.namespace, &o.name),
                        href: href(o.kind, &o.namespace, &o.name),
                        reason: o.reason.clone(),
                        message: o.message.clone(),
                    })
                    .collect(),
                gpu_resource: c.spec.gpu_resource.clone(),
                name,
            }
        })
        .collect();
    let ctx = CapacityPage {
        common: common(d, req),
        classes,
    };
    Ok(page(
        "Capacity",
        "capacity",
        render(d, "capacity.html", &ctx)?,
    ))
}

// ---------------------------------------------------------------------------------------------
// Databases

#[derive(Serialize)]
struct DatabaseRow {
    #[serde(flatten)]
    obj: ObjView,
    server: String,
    version: String,
    applied: i32,
    pending: i32,
    roles: usize,
    tiers: usize,
}

#[derive(Serialize)]
struct DatabasesPage {
    rows: Vec<DatabaseRow>,
}

fn server_text(db: &homeplane_crds::Database) -> String {
    match (&db.spec.server.external, &db.spec.server.managed) {
        (Some(e), _) => format!("external {}:{}", e.host, e.port),
        (None, Some(m)) => format!("managed ({}, on {})", m.image, m.placement.class),
        _ => "none".to_string(),
    }
}

/// Every Database with its server and readiness.
pub fn databases(
    d: &Dashboard,
    snapshot: &Snapshot,
    _req: &Request<'_>,
) -> Result<Page, PageError> {
    let rows = snapshot
        .databases
        .iter()
        .filter_map(|db| {
            let ns = db.namespace().unwrap_or_default();
            let o = snapshot.object(Kind::Database, &ns, &db.name_any())?;
            let status = db.status.clone().unwrap_or_default();
            let mut obj = obj_view(snapshot.now, o);
            obj.href = format!("/databases/{}/{}", url_part(&ns), url_part(&db.name_any()));
            Some(DatabaseRow {
                obj,
                server: server_text(db),
                version: status.server_version.unwrap_or_default(),
                applied: status.migrations_applied,
                pending: status.migrations_pending,
                roles: db.spec.roles.len(),
                tiers: db.spec.tiers.len(),
            })
        })
        .collect();
    Ok(page(
        "Databases",
        "databases",
        render(d, "databases.html", &DatabasesPage { rows })?,
    ))
}

#[derive(Serialize)]
struct TierView {
    name: String,
    description: String,
    schemas: String,
}

#[derive(Serialize)]
struct SecretView {
    role: String,
    name: String,
    exists: Option<bool>,
}

#[derive(Serialize)]
struct MatrixCell {
    declared: &'static str,
    enforced: &'static str,
    differs: bool,
    extra: bool,
    revoked: bool,
}

#[derive(Serialize)]
struct MatrixRowView {
    role: String,
    cells: Vec<MatrixCell>,
}

#[derive(Serialize)]
struct DatabasePage {
    #[serde(flatten)]
    common: Common,
    obj: ObjView,
    object_href: String,
    server: String,
    version: String,
    tiers: Vec<TierView>,
    tier_names: Vec<String>,
    matrix: Vec<MatrixRowView>,
    stray: Vec<String>,
    revoked: Vec<String>,
    reading_error: Option<String>,
    read_at: String,
    extensions: Vec<(String, String, String)>,
    applied: Vec<super::postgres::AppliedMigration>,
    pending: Vec<String>,
    pending_count: i32,
    last_migration: String,
    last_plan: Vec<String>,
    secrets: Vec<SecretView>,
    events: Vec<EventView>,
}

/// One Database: server and readiness, the role × tier matrix as PostgreSQL enforces it
/// (read now, or at most [`super::postgres::FRESH_FOR`] ago), revoked grants, migrations,
/// extensions, the last plan's SQL and the names of the role Secrets.
pub async fn database(
    d: &Dashboard,
    snapshot: &Snapshot,
    req: &Request<'_>,
    ns: &str,
    name: &str,
) -> Result<Page, PageError> {
    let (Some(db), Some(o)) = (
        snapshot.database(ns, name),
        snapshot.object(Kind::Database, ns, name),
    ) else {
        return Err(PageError::NotFound(format!(
            "Database {ns}/{name} does not exist"
        )));
    };
    let reading = d.databases.of(&d.ctx, db).await;
    let status = db.status.clone().unwrap_or_default();
    // The REVOKEs of the last change: grants made by hand that homeplane took back.
    let revoked: Vec<String> = status
        .last_plan
        .iter()
        .filter(|l| l.starts_with("REVOKE ") && !l.contains(" ON DATABASE "))
        .cloned()
        .chain(
            snapshot
                .events_of(Kind::Database, ns, name)
                .iter()
                .filter(|e| e.reason.as_deref() == Some("UndeclaredPrivilegesRevoked"))
                .filter_map(|e| e.message.clone()),
        )
        .collect();
    let matrix = reading
        .rows
        .iter()
        .map(|row| MatrixRowView {
            role: row.role.clone(),
            cells: row
                .cells
                .iter()
                .map(|c| {
                    let schemas: Vec<&String> = db
                        .spec
                        .tiers
                        .iter()
                        .filter(|t| t.name == c.tier)
                        .flat_map(|t| &t.schemas)
                        .collect();
                    // The plan quotes identifiers: `REVOKE SELECT ON TABLE "s"."t" FROM "role"`.
                    let revoked = revoked.iter().map(|r| r.replace('"', "")).any(|r| {
                        r.contains(&format!("FROM {}", row.role))
                            && schemas.iter().any(|s| {
                                r.contains(&format!(" {s}.")) || r.contains(&format!("SCHEMA {s} "))
                            })
                    });
                    MatrixCell {
                        declared: c.declared,
                        enforced: c.enforced,
                        differs: c.differs,
                        extra: c.extra,
                        revoked,
                    }
                })
                .collect(),
        })
        .collect();
    let declared_ext: Vec<(String, String)> = db
        .spec
        .extensions
        .iter()
        .map(|e| (e.name.clone(), e.version.clone().unwrap_or_default()))
        .collect();
    let mut extensions: Vec<(String, String, String)> = declared_ext
        .iter()
        .map(|(n, v)| {
            let installed = reading
                .extensions
                .iter()
                .find(|(i, _)| i == n)
                .map(|(_, v)| v.clone());
            (
                n.clone(),
                if v.is_empty() {
                    "any".to_string()
                } else {
                    v.clone()
                },
                installed.unwrap_or_else(|| "not installed".into()),
            )
        })
        .collect();
    for (n, v) in &reading.extensions {
        if !declared_ext.iter().any(|(d, _)| d == n) && n != "plpgsql" {
            extensions.push((n.clone(), "not declared".into(), v.clone()));
        }
    }
    let mut obj = obj_view(snapshot.now, o);
    obj.href = href(Kind::Database, ns, name);
    let ctx = DatabasePage {
        common: common(d, req),
        object_href: href(Kind::Database, ns, name),
        obj,
        server: server_text(db),
        version: status.server_version.clone().unwrap_or_default(),
        tiers: db
            .spec
            .tiers
            .iter()
            .map(|t| TierView {
                name: t.name.clone(),
                description: t.description.clone().unwrap_or_default(),
                schemas: t.schemas.join(", "),
            })
            .collect(),
        tier_names: reading.tiers.clone(),
        matrix,
        stray: reading.stray.clone(),
        revoked,
        reading_error: reading.error.clone(),
        read_at: reading.read_at.clone(),
        extensions,
        applied: reading.applied.clone(),
        pending: reading.pending.clone(),
        pending_count: status.migrations_pending,
        last_migration: status.last_migration.clone().unwrap_or_default(),
        last_plan: status.last_plan.clone(),
        secrets: db
            .spec
            .roles
            .iter()
            .filter(|r| r.login)
            .map(|r| {
                let name = status
                    .role_secrets
                    .get(&r.name)
                    .cloned()
                    .unwrap_or_else(|| crate::controllers::database::role_secret_name(db, &r.name));
                SecretView {
                    role: r.name.clone(),
                    exists: snapshot.secret_exists(ns, &name),
                    name,
                }
            })
            .collect(),
        events: snapshot
            .events_of(Kind::Database, ns, name)
            .iter()
            .take(20)
            .map(|e| pages::event_view(snapshot.now, e))
            .collect(),
    };
    Ok(page(
        format!("Database {ns}/{name}"),
        "databases",
        render(d, "database.html", &ctx)?,
    ))
}

// ---------------------------------------------------------------------------------------------
// Backups

#[derive(Serialize)]
struct RunView {
    name: String,
    href: String,
    phase: &'static str,
    trigger: String,
    started: Option<Moment>,
    duration: String,
    size: String,
    verified: bool,
    message: String,
}

#[derive(Serialize)]
struct PolicyView {
    obj: ObjView,
    source: String,
    schedule: String,
    suspended: bool,
    destination: String,
    retention: String,
    next_run: Option<Moment>,
    last_success: Option<Moment>,
    last_drill: Option<Moment>,
    next_drill: Option<Moment>,
    drill_result: Option<String>,
    proven_age: Option<String>,
    proven_stale: bool,
    verify: bool,
    warnings: Vec<String>,
    strip: String,
    runs: Vec<RunView>,
    run_count: usize,
}

#[derive(Serialize)]
struct BackupsPage {
    #[serde(flatten)]
    common: Common,
    policies: Vec<PolicyView>,
    orphans: Vec<ObjView>,
}

/// The period of a schedule: the time between its next two runs after `now`.
fn period(schedule: &Schedule, now: Timestamp) -> Option<SignedDuration> {
    let next = schedule.next_after(now)?;
    let after = schedule.next_after(next)?;
    Some(after.duration_since(next))
}

fn human(d: SignedDuration) -> String {
    let secs = d.as_secs().max(0);
    match secs {
        0..=5399 => format!("{} min", secs / 60),
        5400..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

fn bytes(n: i64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", n / 1024.0 / 1024.0 / 1024.0)
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// Per BackupPolicy: its runs along time, last success, next run, the last restore drill and
/// how old the last proven restore is, what retention keeps, and warnings in words.
pub fn backups(d: &Dashboard, snapshot: &Snapshot, req: &Request<'_>) -> Result<Page, PageError> {
    let now = snapshot.now;
    let policies = snapshot
        .backup_policies
        .iter()
        .filter_map(|p| {
            let ns = p.namespace().unwrap_or_default();
            let name = p.name_any();
            let o = snapshot.object(Kind::BackupPolicy, &ns, &name)?;
            let status = p.status.clone().unwrap_or_default();
            let schedule = Schedule::parse(&p.spec.schedule, &p.spec.time_zone).ok();
            let mut runs: Vec<&std::sync::Arc<homeplane_crds::Backup>> = snapshot
                .backups
                .iter()
                .filter(|b| b.spec.policy == name && b.namespace().unwrap_or_default() == ns)
                .collect();
            runs.sort_by_key(|b| std::cmp::Reverse(b.metadata.creation_timestamp.as_ref().map(|t| t.0)));
            let mut warnings = Vec::new();
            if p.spec.suspend {
                warnings.push("suspended: the schedule makes no backups".to_string());
            }
            let last_success = status.last_successful_time.as_ref().map(|t| t.0);
            match (last_success, schedule.as_ref().and_then(|s| period(s, now))) {
                (None, _) => warnings.push("no restorable point: no backup has succeeded yet".to_string()),
                (Some(at), Some(every)) => {
                    let late = SignedDuration::from_secs(every.as_secs() * 3 / 2);
                    if now.duration_since(at) > late {
                        warnings.push(format!(
                            "behind schedule: the last successful backup is {} old, the schedule runs every {}",
                            human(now.duration_since(at)),
                            human(every)
                        ));
                    }
                }
                _ => {}
            }
            if let Some(newest) = runs.first()
                && newest.status.as_ref().is_some_and(|s| s.phase == BackupPhase::Failed)
            {
                let why = snapshot
                    .object(Kind::Backup, &ns, &newest.name_any())
                    .map(|o| format!("{}: {}", o.reason, o.message))
                    .unwrap_or_default();
                warnings.push(format!("the last run failed ({}): {why}", newest.name_any()));
            }
            if snapshot.secret_exists(&ns, &p.spec.destination.credentials_secret) == Some(false) {
                warnings.push(format!(
                    "credentials Secret missing: {ns}/{} does not exist",
                    p.spec.destination.credentials_secret
                ));
            }
            let last_verified = status.last_verified_time.as_ref().map(|t| t.0);
            let verify_period = p
                .spec
                .verify
                .as_ref()
                .and_then(|v| Schedule::parse(&v.schedule, &p.spec.time_zone).ok())
                .and_then(|s| period(&s, now));
            let mut proven_stale = false;
            match (&p.spec.verify, last_verified) {
                (None, _) => {
                    warnings.push("never verified: no restore drill is configured (spec.verify), so no backup is proven to restore".to_string());
                    proven_stale = true;
                }
                (Some(_), None) => {
                    warnings.push("never verified: no restore drill has succeeded yet".to_string());
                    proven_stale = true;
                }
                (Some(_), Some(at)) => {
                    if let Some(every) = verify_period
                        && now.duration_since(at) > SignedDuration::from_secs(every.as_secs() * 3 / 2)
                    {
                        warnings.push(format!(
                            "restore drills are behind: the last proven restore is {} old",
                            human(now.duration_since(at))
                        ));
                        proven_stale = true;
                    }
                }
            }
            let verified = status.conditions.iter().find(|c| c.type_ == "Verified");
            if let Some(v) = verified.filter(|v| v.status == "False") {
                warnings.push(format!("the last restore drill failed: {}", v.message));
            }
            let r = &p.spec.retention;
            let mut keeps = vec![format!("the last {}", r.keep_last)];
            if r.daily > 0 {
                keeps.push(format!("one a day for {} days", r.daily));
            }
            if r.weekly > 0 {
                keeps.push(format!("one a week for {} weeks", r.weekly));
            }
            if r.monthly > 0 {
                keeps.push(format!("one a month for {} months", r.monthly));
            }
            let retention = format!(
                "keeps {}; never one younger than {}, never the newest verified",
                keeps.join(", "),
                r.min_age
            );
            let strip_runs: Vec<svg::Run> = runs
                .iter()
                .take(60)
                .map(|b| {
                    let s = b.status.as_ref();
                    svg::Run {
                        at: s
                            .and_then(|s| s.started_at.as_ref().map(|t| t.0))
                            .or_else(|| b.metadata.creation_timestamp.as_ref().map(|t| t.0))
                            .unwrap_or(now),
                        phase: s.map(|s| pages::backup_phase(s.phase)).unwrap_or("Pending").to_string(),
                        bytes: s.and_then(|s| s.encrypted_bytes),
                        name: b.name_any(),
                    }
                })
                .collect();
            let source = match (&p.spec.source.database, &p.spec.source.pvc) {
                (Some(db), _) => format!("Database {}", db.name),
                (None, Some(pvc)) => format!("volume {}", pvc.claim_name),
                _ => "nothing".to_string(),
            };
            Some(PolicyView {
                obj: obj_view(now, o),
                source,
                schedule: format!("{} ({})", p.spec.schedule, p.spec.time_zone),
                suspended: p.spec.suspend,
                destination: format!(
                    "{}/{}/{}",
                    p.spec.destination.endpoint.trim_end_matches('/'),
                    p.spec.destination.bucket,
                    p.spec.destination.prefix
                ),
                retention,
                next_run: moment(now, status.next_schedule_time.as_ref().map(|t| t.0)),
                last_success: moment(now, last_success),
                last_drill: moment(now, last_verified),
                next_drill: moment(now, status.next_verify_time.as_ref().map(|t| t.0)),
                drill_result: verified.map(|v| format!("{}: {}", v.reason, v.message)),
                proven_age: last_verified.map(|at| model::ago(now, at)),
                proven_stale,
                verify: p.spec.verify.is_some(),
                warnings,
                strip: svg::runs(&strip_runs, now),
                run_count: runs.len(),
                runs: runs
                    .iter()
                    .take(10)
                    .map(|b| {
                        let s = b.status.clone().unwrap_or_default();
                        let bo = snapshot.object(Kind::Backup, &ns, &b.name_any());
                        RunView {
                            href: href(Kind::Backup, &ns, &b.name_any()),
                            name: b.name_any(),
                            phase: pages::backup_phase(s.phase),
                            trigger: format!("{:?}", b.spec.trigger),
                            started: moment(now, s.started_at.as_ref().map(|t| t.0).or_else(|| b.metadata.creation_timestamp.as_ref().map(|t| t.0))),
                            duration: s.duration_seconds.map(|d| format!("{d:.1} s")).unwrap_or_default(),
                            size: s.size.clone().or_else(|| s.encrypted_bytes.map(bytes)).unwrap_or_default(),
                            verified: s.verified,
                            message: bo.filter(|o| o.state != State::Ready).map(|o| o.message.clone()).unwrap_or_default(),
                        }
                    })
                    .collect(),
            })
        })
        .collect();
    let orphans = snapshot
        .backups
        .iter()
        .filter(|b| {
            snapshot
                .backup_policy(&b.namespace().unwrap_or_default(), &b.spec.policy)
                .is_none()
        })
        .filter_map(|b| {
            snapshot.object(
                Kind::Backup,
                &b.namespace().unwrap_or_default(),
                &b.name_any(),
            )
        })
        .map(|o| obj_view(now, o))
        .collect();
    let ctx = BackupsPage {
        common: common(d, req),
        policies,
        orphans,
    };
    Ok(page("Backups", "backups", render(d, "backups.html", &ctx)?))
}

// ---------------------------------------------------------------------------------------------
// Workflows

#[derive(Serialize)]
struct WorkflowView {
    obj: ObjView,
    n8n_id: String,
    n8n_link: Option<String>,
    declared_active: bool,
    active: Option<bool>,
    sync: String,
    edited: bool,
    last_execution: String,
    last_execution_at: Option<Moment>,
    on_drift: String,
}

#[derive(Serialize)]
struct WorkflowsPage {
    #[serde(flatten)]
    common: Common,
    rows: Vec<WorkflowView>,
}

/// Every Workflow: its n8n id, active, in sync or edited in n8n's UI, last execution, a link.
pub fn workflows(d: &Dashboard, snapshot: &Snapshot, req: &Request<'_>) -> Result<Page, PageError> {
    let now = snapshot.now;
    let rows = snapshot
        .workflows
        .iter()
        .filter_map(|w| {
            let ns = w.namespace().unwrap_or_default();
            let o = snapshot.object(Kind::Workflow, &ns, &w.name_any())?;
            let status = w.status.clone().unwrap_or_default();
            let drifted = status.conditions.iter().find(|c| c.type_ == "Drifted");
            let edited = drifted.is_some_and(|c| c.status == "True");
            let base = w.spec.n8n.url.trim_end_matches('/');
            Some(WorkflowView {
                obj: obj_view(now, o),
                n8n_link: status
                    .n8n_id
                    .as_ref()
                    .filter(|_| base.starts_with("http://") || base.starts_with("https://"))
                    .map(|id| format!("{base}/workflow/{}", url_part(id))),
                n8n_id: status.n8n_id.clone().unwrap_or_default(),
                declared_active: w.spec.active,
                active: status.active,
                sync: match drifted {
                    Some(c) if c.status == "True" => format!("edited in the n8n UI: {}", c.message),
                    Some(_) => "in sync".to_string(),
                    None => "not compared yet".to_string(),
                },
                edited,
                last_execution: status
                    .last_execution
                    .as_ref()
                    .map(|e| e.status.clone())
                    .unwrap_or_default(),
                last_execution_at: moment(
                    now,
                    status
                        .last_execution
                        .as_ref()
                        .and_then(|e| e.finished_at.as_ref().map(|t| t.0)),
                ),
                on_drift: format!("{:?}", w.spec.on_drift),
            })
        })
        .collect();
    Ok(page(
        "Workflows",
        "workflows",
        render(
            d,
            "workflows.html",
            &WorkflowsPage {
                common: common(d, req),
                rows,
            },
        )?,
    ))
}

// ---------------------------------------------------------------------------------------------
// AI

#[derive(Serialize)]
struct AgentView {
    obj: ObjView,
    tier: String,
    allows: String,
    running: i32,
    budget: String,
}

#[derive(Serialize)]
struct RunContract {
    obj: ObjView,
    agent: String,
    phase: String,
    duration: String,
    status: String,
    summary: String,
    files_changed: Vec<String>,
    commits: Vec<String>,
    tests_run: Vec<String>,
    deviations: Vec<String>,
    follow_ups: Vec<String>,
}

#[derive(Serialize)]
struct StageView {
    name: String,
    role: String,
    place: String,
    ready: Option<bool>,
    message: String,
}

#[derive(Serialize)]
struct PipelineView {
    obj: ObjView,
    stages: Vec<StageView>,
    p50: String,
    p95: String,
    budget: String,
    within: Option<bool>,
    gauge: String,
}

#[derive(Serialize)]
struct MemoryView {
    obj: ObjView,
    dependencies: Vec<(String, bool, String)>,
    endpoint: String,
    chain: Option<model::Link>,
}

#[derive(Serialize)]
struct AiPage {
    #[serde(flatten)]
    common: Common,
    agents: Vec<AgentView>,
    runs: Vec<RunContract>,
    pipelines: Vec<PipelineView>,
    memories: Vec<MemoryView>,
}

fn millis(text: &str) -> Option<f64> {
    homeplane_state::duration::parse(text)
        .ok()
        .map(|d| d.as_secs_f64() * 1000.0)
}

/// Agents (tier, scope, what their RBAC allows), AgentRuns with their result contracts, the
/// voice pipeline as its chain of stages with latency against the budget, and the memory
/// servers with their dependencies.
pub fn ai(d: &Dashboard, snapshot: &Snapshot, req: &Request<'_>) -> Result<Page, PageError> {
    use crate::controllers::agent::rbac;
    let now = snapshot.now;
    let agents = snapshot
        .agents
        .iter()
        .filter_map(|a| {
            let ns = a.namespace().unwrap_or_default();
            let o = snapshot.object(Kind::Agent, &ns, &a.name_any())?;
            let verbs = rbac::verbs(a.spec.tier).join("/");
            let allows = match (rbac::grants(a), rbac::namespaces(a)) {
                (Ok(grants), Ok(namespaces)) => {
                    let place = if rbac::is_cluster_wide(a) {
                        "in every namespace".to_string()
                    } else {
                        format!("in {}", namespaces.join(", "))
                    };
                    format!("{verbs} {} {place}", rbac::describe(&grants))
                }
                (Err(e), _) | (_, Err(e)) => format!("nothing: {e}"),
            };
            Some(AgentView {
                obj: obj_view(now, o),
                tier: format!("{:?}", a.spec.tier).to_lowercase(),
                allows,
                running: a.status.as_ref().map(|s| s.running_runs).unwrap_or(0),
                budget: format!(
                    "{} CPU, {} memory, {} s per run, {} at once",
                    a.spec.budget.cpu,
                    a.spec.budget.memory,
                    a.spec.budget.max_run_seconds,
                    a.spec.budget.max_concurrent_runs
                ),
            })
        })
        .collect();
    let mut runs: Vec<RunContract> = snapshot
        .agent_runs
        .iter()
        .filter_map(|r| {
            let ns = r.namespace().unwrap_or_default();
            let o = snapshot.object(Kind::AgentRun, &ns, &r.name_any())?;
            let s = r.status.clone().unwrap_or_default();
            let c = s.result.clone().unwrap_or_default();
            Some(RunContract {
                obj: obj_view(now, o),
                agent: r.spec.agent.clone(),
                phase: format!("{:?}", s.phase),
                duration: s.duration.clone().unwrap_or_default(),
                status: s
                    .result
                    .as_ref()
                    .map(|c| format!("{:?}", c.status).to_uppercase())
                    .unwrap_or_default(),
                summary: c.summary,
                files_changed: c.files_changed,
                commits: c.commits,
                tests_run: c.tests_run,
                deviations: c.deviations,
                follow_ups: c.follow_ups,
            })
        })
        .collect();
    runs.sort_by(|a, b| {
        b.obj
            .since
            .as_ref()
            .map(|m| m.iso.clone())
            .cmp(&a.obj.since.as_ref().map(|m| m.iso.clone()))
    });
    runs.truncate(50);
    let pipelines = snapshot
        .voice_pipelines
        .iter()
        .filter_map(|v| {
            let ns = v.namespace().unwrap_or_default();
            let o = snapshot.object(Kind::VoicePipeline, &ns, &v.name_any())?;
            let s = v.status.clone().unwrap_or_default();
            let budget = millis(&v.spec.latency_budget);
            let p50 = s.latency_p50.as_deref().and_then(millis);
            let p95 = s.latency_p95.as_deref().and_then(millis);
            Some(PipelineView {
                obj: obj_view(now, o),
                stages: v
                    .spec
                    .stages
                    .iter()
                    .map(|st| {
                        let ss = s.stages.iter().find(|x| x.name == st.name);
                        StageView {
                            name: st.name.clone(),
                            role: crate::controllers::voice::plan::role_name(st.role),
                            place: match (&st.workload, &st.external, &st.served_by) {
                                (Some(w), _, _) => format!("on {}", w.placement.class),
                                (_, Some(_), _) => "outside the cluster".to_string(),
                                (_, _, Some(by)) => format!("served by {by}"),
                                _ => String::new(),
                            },
                            ready: ss.map(|x| x.ready),
                            message: ss.and_then(|x| x.message.clone()).unwrap_or_default(),
                        }
                    })
                    .collect(),
                p50: s.latency_p50.clone().unwrap_or_default(),
                p95: s.latency_p95.clone().unwrap_or_default(),
                budget: v.spec.latency_budget.clone(),
                within: s
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "WithinBudget")
                    .map(|c| c.status == "True"),
                gauge: budget
                    .map(|b| svg::latency(p50, p95, b))
                    .unwrap_or_default(),
            })
        })
        .collect();
    let memories = snapshot
        .memory_servers
        .iter()
        .filter_map(|m| {
            let ns = m.namespace().unwrap_or_default();
            let o = snapshot.object(Kind::MemoryServer, &ns, &m.name_any())?;
            let s = m.status.clone().unwrap_or_default();
            Some(MemoryView {
                obj: obj_view(now, o),
                dependencies: s
                    .dependencies
                    .iter()
                    .map(|x| {
                        (
                            x.name.clone(),
                            x.ready,
                            x.message.clone().unwrap_or_default(),
                        )
                    })
                    .collect(),
                endpoint: s.endpoint.unwrap_or_default(),
                chain: model::chain(snapshot, Kind::MemoryServer, &ns, &m.name_any()),
            })
        })
        .collect();
    let ctx = AiPage {
        common: common(d, req),
        agents,
        runs,
        pipelines,
        memories,
    };
    Ok(page("AI", "ai", render(d, "ai.html", &ctx)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(path: &'a str, query: &[(&str, &str)]) -> Request<'a> {
        Request {
            path,
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            csrf: "",
        }
    }

    #[test]
    fn a_long_list_is_paged_and_the_links_keep_the_filters() {
        let req = request("/drift", &[("severity", "warning"), ("q", "a b")]);
        let first = Pager::new(&req, 250);
        assert_eq!(
            (first.page, first.pages, first.first, first.last),
            (1, 3, 1, 100)
        );
        assert_eq!(first.previous, None);
        assert_eq!(
            first.next.as_deref(),
            Some("/drift?q=a%20b&severity=warning&page=2")
        );
        assert_eq!(first.rows((0..250).collect()), (0..100).collect::<Vec<_>>());

        let req = request("/drift", &[("page", "3")]);
        let last = Pager::new(&req, 250);
        assert_eq!((last.page, last.first, last.last), (3, 201, 250));
        assert_eq!(last.previous.as_deref(), Some("/drift?page=2"));
        assert_eq!(last.next, None);
        assert_eq!(
            last.rows((0..250).collect()),
            (200..250).collect::<Vec<_>>()
        );

        let back = Pager::new(&request("/drift", &[("page", "2")]), 250);
        assert_eq!(
            back.previous.as_deref(),
            Some("/drift"),
            "page 1 has no page="
        );
    }

    #[test]
    fn a_page_out_of_range_or_not_a_number_shows_the_nearest_page() {
        for (asked, expected) in [("0", 1), ("99", 2), ("-1", 1), ("two", 1), ("", 1)] {
            let pager = Pager::new(&request("/drift", &[("page", asked)]), 150);
            assert_eq!(pager.page, expected, "page={asked}");
        }
        let empty = Pager::new(&request("/drift", &[]), 0);
        assert_eq!(
            (empty.page, empty.pages, empty.first, empty.last),
            (1, 1, 0, 0)
        );
        assert!(empty.rows(Vec::<u8>::new()).is_empty());
    }
}
