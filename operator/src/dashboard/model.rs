//! The one model of "what needs me" and of dependency chains, shared by the dashboard's pages
//! and by `kubectl homeplane status` and `trace`: pure functions of a [`Snapshot`].

use std::collections::BTreeSet;

use homeplane_crds::registry::Severity;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use serde::Serialize;

use super::snapshot::{Kind, Obj, Snapshot, State};

/// How long an object may be in progress before it needs someone.
pub const STUCK_AFTER: SignedDuration = SignedDuration::from_mins(10);

/// One thing that needs a person, or is on its way.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    /// Order of badness: 0 is worst.
    pub rank: u8,
    /// `critical`, `error`, `warning`, `info` or `progress` (for styling and the text output).
    pub level: &'static str,
    /// The kind.
    pub kind: Kind,
    /// The namespace (empty for a NodeClass).
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// What to call it: `Database data/homelab`, or a drifted property's id.
    pub title: String,
    /// What is wrong, in one word or two: `Stalled`, `Failed`, `Drifted`, `Progressing`.
    pub what: String,
    /// The reason (CamelCase) of the condition, or the drift's severity.
    pub reason: String,
    /// homeplane's message.
    pub message: String,
    /// Since when.
    #[serde(skip)]
    pub since: Option<Timestamp>,
    /// The kubectl command that shows more.
    pub command: String,
}

/// Everything that needs a person, worst and oldest first, and what is still on its way.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Attention {
    /// What needs a person.
    pub items: Vec<Item>,
    /// Objects homeplane is still working on (for less than [`STUCK_AFTER`]).
    pub in_progress: Vec<Item>,
}

fn describe_command(kind: Kind, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("kubectl describe {} {name}", kind.resource())
    } else {
        format!("kubectl describe {} {name} -n {namespace}", kind.resource())
    }
}

/// The title of an object: `Database data/homelab` (`NodeClass pi`).
pub fn title(kind: Kind, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("{} {name}", kind.name())
    } else {
        format!("{} {namespace}/{name}", kind.name())
    }
}

/// Whether a failed Backup is followed by a newer successful one of the same policy (then it
/// is history, not something to act on).
fn superseded(snapshot: &Snapshot, o: &Obj) -> bool {
    if o.kind != Kind::Backup || o.state == State::Ready {
        return false;
    }
    let Some(backup) = snapshot
        .backups
        .iter()
        .find(|b| b.name_any() == o.name && b.namespace().unwrap_or_default() == o.namespace)
    else {
        return false;
    };
    let created = backup.metadata.creation_timestamp.as_ref().map(|t| t.0);
    snapshot.backups.iter().any(|b| {
        b.namespace() == backup.namespace()
            && b.spec.policy == backup.spec.policy
            && b.metadata.creation_timestamp.as_ref().map(|t| t.0) > created
            && b.status
                .as_ref()
                .is_some_and(|s| s.phase == homeplane_crds::backup::BackupPhase::Succeeded)
    })
}

/// What needs a person: every object that is Stalled, Failed, or in progress for longer than
/// [`STUCK_AFTER`], every overcommitted NodeClass, and every Drift; worst first (Stalled;
/// Failed, overcommitted and critical drift; warning drift; stuck; info drift), then oldest
/// first. A failed Backup followed by a successful one of its policy is left out.
pub fn attention(snapshot: &Snapshot) -> Attention {
    let mut out = Attention::default();
    for o in &snapshot.objects {
        let item = |rank: u8, level: &'static str, what: &str| Item {
            rank,
            level,
            kind: o.kind,
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            title: title(o.kind, &o.namespace, &o.name),
            what: what.to_string(),
            reason: o.reason.clone(),
            message: o.message.clone(),
            since: o.since,
            command: describe_command(o.kind, &o.namespace, &o.name),
        };
        match o.state {
            State::Stalled => out.items.push(item(0, "critical", "Stalled")),
            State::Failed if !superseded(snapshot, o) => out.items.push(item(1, "error", "Failed")),
            State::Progressing => {
                let stuck = o
                    .since
                    .is_some_and(|s| snapshot.now.duration_since(s) > STUCK_AFTER);
                if stuck {
                    out.items.push(item(3, "warning", "Not ready"));
                } else {
                    out.in_progress.push(item(5, "progress", "Progressing"));
                }
            }
            _ => {}
        }
        if o.kind == Kind::NodeClass
            && let Some(c) = o.conditions.iter().find(|c| {
                c.type_ == crate::controllers::nodeclass::OVERCOMMITTED && c.status == "True"
            })
        {
            out.items.push(Item {
                reason: c.reason.clone(),
                message: c.message.clone(),
                since: Some(c.last_transition_time.0),
                ..item(1, "error", "Overcommitted")
            });
        }
    }
    for d in &snapshot.drifts {
        let (rank, level) = match d.spec.severity {
            Severity::Critical => (1, "critical"),
            Severity::Warning => (2, "warning"),
            Severity::Info => (4, "info"),
        };
        let ns = d.namespace().unwrap_or_default();
        let mut message = format!("desired {}, observed {}", d.spec.desired, d.spec.observed);
        if let Some(m) = d.spec.message.as_deref().filter(|m| !m.is_empty()) {
            message.push_str(": ");
            message.push_str(m);
        }
        out.items.push(Item {
            rank,
            level,
            kind: Kind::Drift,
            namespace: ns.clone(),
            name: d.name_any(),
            title: d.spec.property.clone(),
            what: "Drifted".to_string(),
            reason: level.to_string(),
            message,
            since: Some(d.spec.since.0),
            command: format!("kubectl get drift {} -n {ns} -o yaml", d.name_any()),
        });
    }
    let order = |a: &Item, b: &Item| {
        (a.rank, a.since, &a.namespace, &a.title).cmp(&(b.rank, b.since, &b.namespace, &b.title))
    };
    out.items.sort_by(order);
    out.in_progress.sort_by(order);
    out
}

/// Ready / Progressing / Failed counts of one kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tile {
    /// The kind's name.
    pub kind: &'static str,
    /// Where its objects are listed.
    pub href: String,
    /// Objects Ready.
    pub ready: usize,
    /// Objects on their way.
    pub progressing: usize,
    /// Objects Failed or Stalled.
    pub failed: usize,
}

/// A tile per kind with a status, and one for Drift (warning and info as progressing, critical
/// as failed would mislead: drift counts go in `failed` whatever the severity).
pub fn tiles(snapshot: &Snapshot) -> Vec<Tile> {
    let mut tiles: Vec<Tile> = Kind::WITH_STATUS
        .iter()
        .map(|k| Tile {
            kind: k.name(),
            href: format!("/kind/{}", k.name()),
            ..Tile::default()
        })
        .collect();
    for o in &snapshot.objects {
        if let Some(t) = tiles.iter_mut().find(|t| t.kind == o.kind.name()) {
            match o.state {
                State::Ready => t.ready += 1,
                State::Progressing => t.progressing += 1,
                State::Failed | State::Stalled => t.failed += 1,
            }
        }
    }
    tiles.push(Tile {
        kind: "Drift",
        href: "/drift".to_string(),
        ready: 0,
        progressing: 0,
        failed: snapshot.drifts.len(),
    });
    tiles
}

/// How one link of a dependency chain is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Health {
    /// Fine.
    Ok,
    /// Not there yet, nothing says it failed.
    Waiting,
    /// Failed, refused or unreachable.
    Broken,
    /// Does not exist.
    Missing,
    /// Not known here (not watched, or not checked yet).
    Unknown,
}

impl Health {
    /// Whether the link stops what depends on it.
    pub fn is_broken(self) -> bool {
        matches!(self, Health::Broken | Health::Missing | Health::Waiting)
    }

    /// A word for it.
    pub fn word(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Waiting => "waiting",
            Health::Broken => "broken",
            Health::Missing => "missing",
            Health::Unknown => "unknown",
        }
    }
}

/// One link of a dependency chain and what it depends on in turn.
#[derive(Clone, Debug, Serialize)]
pub struct Link {
    /// What it is: a homeplane kind, `Secret`, `ConfigMap`, `Deployment`, `PostgreSQL`, `n8n`…
    pub kind: String,
    /// Its namespace, when it has one.
    pub namespace: String,
    /// Its name (or address, for a system outside the cluster).
    pub name: String,
    /// Its dashboard page, for homeplane objects.
    pub href: Option<String>,
    /// How it is doing.
    pub health: Health,
    /// Why, in homeplane's words.
    pub note: String,
    /// What it depends on.
    pub children: Vec<Link>,
    /// Whether this is the first broken link: the deepest broken one on the first broken path
    /// from the top.
    pub first_broken: bool,
}

impl Link {
    fn new(
        kind: &str,
        namespace: &str,
        name: &str,
        health: Health,
        note: impl Into<String>,
    ) -> Self {
        Link {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            href: None,
            health,
            note: note.into(),
            children: Vec::new(),
            first_broken: false,
        }
    }

    /// `Kind namespace/name`, or `Kind name`.
    pub fn label(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }

    /// The first broken link below and including this one, if any.
    pub fn first_broken(&self) -> Option<&Link> {
        if self.first_broken {
            return Some(self);
        }
        self.children.iter().find_map(Link::first_broken)
    }

    /// Marks the first broken link: descending into the first child with a broken link below
    /// it; the deepest broken link on that path is the cause.
    fn mark(&mut self) -> bool {
        for child in &mut self.children {
            if child.mark() {
                return true;
            }
        }
        if self.health.is_broken() {
            self.first_broken = true;
            return true;
        }
        false
    }
}

/// The page of an object.
pub fn href(kind: Kind, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("/object/{}/{}", kind.name(), url_part(name))
    } else {
        format!(
            "/object/{}/{}/{}",
            kind.name(),
            url_part(namespace),
            url_part(name)
        )
    }
}

/// Percent-encodes what may not stand in a path segment or query value (names of Kubernetes
/// objects rarely need it; property ids and free text may).
pub fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Reasons that put the blame on a system outside the cluster.
fn blames_outside(reason: &str) -> bool {
    [
        "Unreachable",
        "Refused",
        "Rejected",
        "AuthenticationFailed",
        "Unavailable",
    ]
    .iter()
    .any(|w| reason.contains(w))
}

/// The dependency chain of one object down to its first broken link; `None` when the object
/// is not in the snapshot.
pub fn chain(snapshot: &Snapshot, kind: Kind, namespace: &str, name: &str) -> Option<Link> {
    snapshot.object(kind, namespace, name)?;
    let mut seen = BTreeSet::new();
    let mut top = object_link(snapshot, kind, namespace, name, None, &mut seen, 0);
    top.mark();
    Some(top)
}

const MAX_DEPTH: usize = 6;

fn object_link(
    snapshot: &Snapshot,
    kind: Kind,
    namespace: &str,
    name: &str,
    role: Option<&str>,
    seen: &mut BTreeSet<(Kind, String, String)>,
    depth: usize,
) -> Link {
    let ns = if kind.namespaced() { namespace } else { "" };
    let Some(o) = snapshot.object(kind, ns, name) else {
        return Link::new(kind.name(), ns, name, Health::Missing, "does not exist");
    };
    let health = match o.state {
        State::Ready => Health::Ok,
        State::Progressing => Health::Waiting,
        State::Failed | State::Stalled => Health::Broken,
    };
    let note = if o.state == State::Ready || o.message.is_empty() {
        o.reason.clone()
    } else {
        format!("{}: {}", o.reason, o.message)
    };
    let mut link = Link::new(kind.name(), ns, name, health, note);
    link.href = Some(href(kind, ns, name));
    if depth >= MAX_DEPTH || !seen.insert((kind, ns.to_string(), name.to_string())) {
        return link;
    }
    link.children = children(snapshot, o, role, seen, depth + 1);
    link
}

fn secret(snapshot: &Snapshot, namespace: &str, name: &str, what: &str) -> Link {
    match snapshot.secret_exists(namespace, name) {
        Some(true) => Link::new("Secret", namespace, name, Health::Ok, what),
        Some(false) => Link::new(
            "Secret",
            namespace,
            name,
            Health::Missing,
            format!("{what}: the Secret does not exist"),
        ),
        None => Link::new(
            "Secret",
            namespace,
            name,
            Health::Unknown,
            format!("{what} (Secrets are not watched here)"),
        ),
    }
}

fn config_map(snapshot: &Snapshot, namespace: &str, name: &str, what: &str) -> Link {
    match snapshot.config_map_exists(namespace, name) {
        Some(true) => Link::new("ConfigMap", namespace, name, Health::Ok, what),
        Some(false) => Link::new(
            "ConfigMap",
            namespace,
            name,
            Health::Missing,
            format!("{what}: the ConfigMap does not exist"),
        ),
        None => Link::new("ConfigMap", namespace, name, Health::Unknown, what),
    }
}

/// A system outside the cluster, judged by what its owner reports.
fn outside(kind: &str, address: &str, owner: &Obj) -> Link {
    let (health, note) = if owner.state == State::Ready {
        (Health::Ok, "answers".to_string())
    } else if blames_outside(&owner.reason) {
        (
            Health::Broken,
            format!("{}: {}", owner.reason, owner.message),
        )
    } else {
        (Health::Unknown, "not reached yet".to_string())
    };
    Link::new(kind, "", address, health, note)
}

fn workload(snapshot: &Snapshot, namespace: &str, kind: &str, name: &str) -> Link {
    let found = match kind {
        "StatefulSet" => snapshot.stateful_set(namespace, name).map(|s| {
            let want = s.spec.replicas.unwrap_or(1);
            let ready = s
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            (want, ready)
        }),
        _ => snapshot.deployment(namespace, name).map(|d| {
            let want = d.spec.replicas.unwrap_or(1);
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            (want, ready)
        }),
    };
    match found {
        Some((want, ready)) if ready >= want => Link::new(
            kind,
            namespace,
            name,
            Health::Ok,
            format!("{ready}/{want} ready"),
        ),
        Some((want, ready)) => Link::new(
            kind,
            namespace,
            name,
            Health::Waiting,
            format!("{ready}/{want} ready"),
        ),
        None if snapshot.knows_related() => {
            Link::new(kind, namespace, name, Health::Missing, "not created")
        }
        None => Link::new(kind, namespace, name, Health::Unknown, "not watched here"),
    }
}

fn class(
    snapshot: &Snapshot,
    name: &str,
    seen: &mut BTreeSet<(Kind, String, String)>,
    depth: usize,
) -> Link {
    object_link(snapshot, Kind::NodeClass, "", name, None, seen, depth)
}

fn children(
    snapshot: &Snapshot,
    o: &Obj,
    role: Option<&str>,
    seen: &mut BTreeSet<(Kind, String, String)>,
    depth: usize,
) -> Vec<Link> {
    let ns = o.namespace.as_str();
    let mut out = Vec::new();
    match o.kind {
        Kind::NodeClass => {
            if let Some(c) = snapshot.nodeclass(&o.name) {
                let status = c.status.as_ref();
                let count = status.map(|s| s.node_count).unwrap_or_default();
                let nodes = status.map(|s| s.nodes.join(", ")).unwrap_or_default();
                out.push(if count > 0 {
                    Link::new(
                        "Nodes",
                        "",
                        &nodes,
                        Health::Ok,
                        format!("{count} node(s) match"),
                    )
                } else {
                    Link::new(
                        "Nodes",
                        "",
                        "none",
                        Health::Broken,
                        "no node has the class's labels",
                    )
                });
                if let Some(over) = o.conditions.iter().find(|c| {
                    c.type_ == crate::controllers::nodeclass::OVERCOMMITTED && c.status == "True"
                }) {
                    out.push(Link::new(
                        "Capacity",
                        "",
                        &o.name,
                        Health::Broken,
                        over.message.clone(),
                    ));
                }
            }
        }
        Kind::Database => {
            if let Some(db) = snapshot.database(ns, &o.name) {
                if let Some(ext) = &db.spec.server.external {
                    out.push(secret(snapshot, ns, &ext.admin_secret, "admin credentials"));
                    out.push(outside(
                        "PostgreSQL",
                        &format!("{}:{}", ext.host, ext.port),
                        o,
                    ));
                }
                if let Some(managed) = &db.spec.server.managed {
                    out.push(class(snapshot, &managed.placement.class, seen, depth));
                    let server = crate::controllers::database::managed::name(db);
                    out.push(workload(snapshot, ns, "StatefulSet", &server));
                    let admin = crate::controllers::database::managed::admin_secret_name(db);
                    out.push(secret(
                        snapshot,
                        ns,
                        &admin,
                        "admin credentials (homeplane makes them)",
                    ));
                }
                for cm in db.spec.migrations.iter().flat_map(|m| &m.config_maps) {
                    out.push(config_map(snapshot, ns, cm, "migrations"));
                }
                if let Some(role) = role {
                    let name = crate::controllers::database::role_secret_name(db, role);
                    let declared = db.spec.roles.iter().any(|r| r.name == role);
                    let mut link =
                        secret(snapshot, ns, &name, &format!("credentials of role {role}"));
                    if !declared {
                        link.health = Health::Broken;
                        link.note = format!("the Database declares no role {role}");
                    }
                    out.push(link);
                }
            }
        }
        Kind::MemoryServer => {
            if let Some(ms) = snapshot
                .memory_servers
                .iter()
                .find(|m| m.name_any() == o.name && m.namespace().unwrap_or_default() == ns)
            {
                out.push(object_link(
                    snapshot,
                    Kind::Database,
                    ns,
                    &ms.spec.database.name,
                    Some(&ms.spec.database.role),
                    seen,
                    depth,
                ));
                out.push(class(snapshot, &ms.spec.placement.class, seen, depth));
                let deps = ms
                    .status
                    .as_ref()
                    .map(|s| s.dependencies.as_slice())
                    .unwrap_or_default();
                for dep in deps.iter().filter(|d| d.name != "database") {
                    let health = if dep.ready {
                        Health::Ok
                    } else {
                        Health::Waiting
                    };
                    let note = dep.message.clone().unwrap_or_else(|| "ready".into());
                    let mut link = Link::new("Dependency", ns, &dep.name, health, note);
                    let placement = match dep.name.as_str() {
                        "cache" => ms.spec.cache.managed.as_ref().map(|c| &c.placement),
                        "embedding" => ms.spec.embedding.model.as_ref().map(|m| &m.placement),
                        _ => None,
                    };
                    if let Some(p) = placement {
                        link.children
                            .push(class(snapshot, &p.class, seen, depth + 1));
                    }
                    out.push(link);
                }
            }
        }
        Kind::BackupPolicy => {
            if let Some(p) = snapshot.backup_policy(ns, &o.name) {
                if let Some(db) = &p.spec.source.database {
                    out.push(object_link(
                        snapshot,
                        Kind::Database,
                        ns,
                        &db.name,
                        None,
                        seen,
                        depth,
                    ));
                }
                if let Some(pvc) = &p.spec.source.pvc {
                    out.push(match snapshot.claim_exists(ns, &pvc.claim_name) {
                        Some(true) => Link::new(
                            "PersistentVolumeClaim",
                            ns,
                            &pvc.claim_name,
                            Health::Ok,
                            "the volume backed up",
                        ),
                        Some(false) => Link::new(
                            "PersistentVolumeClaim",
                            ns,
                            &pvc.claim_name,
                            Health::Missing,
                            "the volume backed up does not exist",
                        ),
                        None => Link::new(
                            "PersistentVolumeClaim",
                            ns,
                            &pvc.claim_name,
                            Health::Unknown,
                            "not watched here",
                        ),
                    });
                }
                out.push(secret(
                    snapshot,
                    ns,
                    &p.spec.destination.credentials_secret,
                    "bucket credentials",
                ));
                out.push(outside(
                    "Bucket",
                    &format!(
                        "{}/{}",
                        p.spec.destination.endpoint.trim_end_matches('/'),
                        p.spec.destination.bucket
                    ),
                    o,
                ));
                if let Some(v) = &p.spec.verify {
                    out.push(secret(
                        snapshot,
                        ns,
                        &v.identity_secret,
                        "restore drill identity",
                    ));
                    if let Some(scratch) = &v.scratch_database {
                        out.push(object_link(
                            snapshot,
                            Kind::Database,
                            ns,
                            scratch,
                            None,
                            seen,
                            depth,
                        ));
                    }
                }
            }
        }
        Kind::Backup => {
            if let Some(b) = snapshot
                .backups
                .iter()
                .find(|b| b.name_any() == o.name && b.namespace().unwrap_or_default() == ns)
            {
                out.push(object_link(
                    snapshot,
                    Kind::BackupPolicy,
                    ns,
                    &b.spec.policy,
                    None,
                    seen,
                    depth,
                ));
                if let Some(job) = b.status.as_ref().and_then(|s| s.job.as_deref()) {
                    out.push(job_link(snapshot, ns, job));
                }
            }
        }
        Kind::Workflow => {
            if let Some(wf) = snapshot
                .workflows
                .iter()
                .find(|w| w.name_any() == o.name && w.namespace().unwrap_or_default() == ns)
            {
                out.push(secret(
                    snapshot,
                    ns,
                    &wf.spec.n8n.api_key_secret.name,
                    "n8n API key",
                ));
                if let Some(from) = &wf.spec.definition_from {
                    out.push(config_map(snapshot, ns, &from.name, "workflow definition"));
                }
                out.push(outside("n8n", &wf.spec.n8n.url, o));
            }
        }
        Kind::Agent => {
            if let Some(a) = snapshot.agent(ns, &o.name)
                && let Some(p) = &a.spec.placement
            {
                out.push(class(snapshot, &p.class, seen, depth));
            }
        }
        Kind::AgentRun => {
            if let Some(r) = snapshot
                .agent_runs
                .iter()
                .find(|r| r.name_any() == o.name && r.namespace().unwrap_or_default() == ns)
            {
                out.push(object_link(
                    snapshot,
                    Kind::Agent,
                    ns,
                    &r.spec.agent,
                    None,
                    seen,
                    depth,
                ));
                if let Some(job) = r.status.as_ref().and_then(|s| s.job_name.as_deref()) {
                    out.push(job_link(snapshot, ns, job));
                }
            }
        }
        Kind::VoicePipeline => {
            if let Some(vp) = snapshot
                .voice_pipelines
                .iter()
                .find(|v| v.name_any() == o.name && v.namespace().unwrap_or_default() == ns)
            {
                let statuses = vp
                    .status
                    .as_ref()
                    .map(|s| s.stages.as_slice())
                    .unwrap_or_default();
                for stage in &vp.spec.stages {
                    let status = statuses.iter().find(|s| s.name == stage.name);
                    let (health, note) = match status {
                        Some(s) if s.ready => (
                            Health::Ok,
                            s.endpoint.clone().unwrap_or_else(|| "ready".into()),
                        ),
                        Some(s) => (
                            Health::Waiting,
                            s.message.clone().unwrap_or_else(|| "not ready".into()),
                        ),
                        None => (Health::Unknown, "not reported yet".to_string()),
                    };
                    let mut link = Link::new("Stage", ns, &stage.name, health, note);
                    if let Some(w) = &stage.workload {
                        link.children
                            .push(class(snapshot, &w.placement.class, seen, depth + 1));
                    }
                    if let Some(ext) = &stage.external {
                        link.children.push(Link::new(
                            "Endpoint",
                            "",
                            &ext.url,
                            if health == Health::Ok {
                                Health::Ok
                            } else {
                                Health::Unknown
                            },
                            "outside the cluster",
                        ));
                    }
                    out.push(link);
                }
            }
        }
        Kind::StateRegistry => {
            if let Some(r) = snapshot
                .registries
                .iter()
                .find(|r| r.name_any() == o.name && r.namespace().unwrap_or_default() == ns)
            {
                for c in &r.spec.catalogs {
                    out.push(config_map(snapshot, ns, &c.name, "catalogue"));
                }
            }
        }
        Kind::Drift => {}
    }
    out
}

fn job_link(snapshot: &Snapshot, namespace: &str, name: &str) -> Link {
    match snapshot.job(namespace, name) {
        Some(job) => {
            let status = job.status.as_ref();
            let failed = status.and_then(|s| s.failed).unwrap_or(0);
            let succeeded = status.and_then(|s| s.succeeded).unwrap_or(0);
            if succeeded > 0 {
                Link::new("Job", namespace, name, Health::Ok, "succeeded")
            } else if failed > 0 {
                Link::new("Job", namespace, name, Health::Broken, "failed")
            } else {
                Link::new("Job", namespace, name, Health::Waiting, "running")
            }
        }
        // Finished Jobs may be cleaned up; their owner's status says how they ended.
        None => Link::new(
            "Job",
            namespace,
            name,
            Health::Unknown,
            "not found (it may have been cleaned up)",
        ),
    }
}

/// How long ago `then` was, in one unit: `45s`, `12m`, `3h`, `2d`.
pub fn ago(now: Timestamp, then: Timestamp) -> String {
    let secs = now.duration_since(then).as_secs().max(0);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_short() {
        let now: Timestamp = "2026-01-02T00:00:00Z"
            .parse()
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let at = |s: &str| s.parse::<Timestamp>().unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(ago(now, at("2026-01-01T23:59:30Z")), "30s");
        assert_eq!(ago(now, at("2026-01-01T23:30:00Z")), "30m");
        assert_eq!(ago(now, at("2026-01-01T12:00:00Z")), "12h");
        assert_eq!(ago(now, at("2025-12-29T00:00:00Z")), "4d");
    }

    #[test]
    fn url_parts_are_encoded() {
        assert_eq!(url_part("db.server.version"), "db.server.version");
        assert_eq!(url_part("a b/<c>"), "a%20b%2F%3Cc%3E");
    }

    #[test]
    fn the_first_broken_link_is_the_deepest_on_the_first_broken_path() {
        let mut top = Link::new("MemoryServer", "data", "memory", Health::Waiting, "");
        let mut db = Link::new("Database", "data", "homelab", Health::Broken, "");
        db.children
            .push(Link::new("Secret", "data", "pg-admin", Health::Missing, ""));
        db.children
            .push(Link::new("PostgreSQL", "", "x:5432", Health::Unknown, ""));
        top.children
            .push(Link::new("NodeClass", "", "pi", Health::Ok, ""));
        top.children.push(db);
        assert!(top.mark());
        let first = top.first_broken().map(Link::label);
        assert_eq!(first.as_deref(), Some("Secret data/pg-admin"));

        let mut healthy = Link::new("Agent", "ai", "a", Health::Ok, "");
        healthy
            .children
            .push(Link::new("NodeClass", "", "pi", Health::Ok, ""));
        assert!(!healthy.mark());
        assert!(healthy.first_broken().is_none());
    }
}
