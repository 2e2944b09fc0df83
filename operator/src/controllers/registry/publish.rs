//! What an evaluation publishes besides status: one Drift object per drifted property (worst
//! first, at most `spec.maxDriftObjects`, never over another registry's), and an Event per
//! property that changed state.

use std::collections::{BTreeMap, HashSet};

use homeplane_crds::drift::{Drift, DriftSpec};
use homeplane_crds::registry::StateRegistry;
use homeplane_state::engine::{self, Report, State, Transition, Verdict};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::controllers::{Context, Error, FIELD_MANAGER};

/// Most transition Events published per evaluation; the rest are summed up in one.
const MAX_EVENTS: usize = 10;
/// Longest desired/observed/message text kept in a Drift object.
const MAX_TEXT: usize = 1024;

/// The registry's Drift objects, and the names of other registries' Drifts in its namespace
/// (`a.b` + `c` and `a` + `b.c` give the same name: those are never written over).
pub(super) async fn existing(
    ctx: &Context,
    registry: &StateRegistry,
) -> Result<(Vec<Drift>, HashSet<String>), Error> {
    let name = registry.name_any();
    let drifts: Api<Drift> = Api::namespaced(
        ctx.client.clone(),
        &registry.namespace().unwrap_or_default(),
    );
    let listed = drifts
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list Drift objects"))?
        .items;
    let taken = listed
        .iter()
        .filter(|d| d.spec.registry != name)
        .map(ResourceExt::name_any)
        .collect();
    let existing = listed
        .into_iter()
        .filter(|d| d.spec.registry == name)
        .collect();
    Ok((existing, taken))
}

/// What publishing left out.
pub(super) struct Published {
    /// Drifted properties beyond `spec.maxDriftObjects`.
    pub not_materialised: usize,
    /// Properties whose Drift name another registry's Drift holds.
    pub collisions: Vec<String>,
}

/// Applies a Drift object per materialised drifted property and deletes the registry's Drifts
/// that are resolved.
pub(super) async fn drifts(
    ctx: &Context,
    registry: &StateRegistry,
    report: &Report,
    (existing, taken): &(Vec<Drift>, HashSet<String>),
    now_ts: Timestamp,
) -> Result<Published, Error> {
    let ns = registry.namespace().unwrap_or_default();
    let name = registry.name_any();
    let drifts: Api<Drift> = Api::namespaced(ctx.client.clone(), &ns);
    let max = usize::try_from(registry.spec.max_drift_objects.max(1)).unwrap_or(500);
    let (wanted, not_materialised) = materialised(&report.verdicts, max);
    let owner = registry.controller_owner_ref(&());
    let mut keep = HashSet::new();
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
    for d in existing {
        if !keep.contains(&d.name_any()) {
            match drifts.delete(&d.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(Error::kube("delete a resolved Drift")(e)),
            }
        }
    }

    Ok(Published {
        not_materialised,
        collisions,
    })
}

/// An Event per property that changed state (related to its Drift object), from a recorder of
/// this evaluation so that transitions of different properties are never folded into one event
/// series; beyond [`MAX_EVENTS`], one that counts the rest.
pub(super) async fn transitions(
    ctx: &Context,
    registry: &StateRegistry,
    transitions: &[Transition],
) {
    let ns = registry.namespace().unwrap_or_default();
    let name = registry.name_any();
    let recorder = recorder(ctx);
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
}

/// Publishes an Event about `registry` on `property`, related to its Drift object.
pub(super) async fn about_property(
    ctx: &Context,
    registry: &StateRegistry,
    property: &str,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let recorder = recorder(ctx);
    let related = drift_ref(
        &registry.namespace().unwrap_or_default(),
        &registry.name_any(),
        property,
    );
    announce(
        &recorder,
        &registry.object_ref(&()),
        type_,
        reason,
        note,
        related,
    )
    .await;
}

fn recorder(ctx: &Context) -> Recorder {
    Recorder::new(
        ctx.client.clone(),
        Reporter {
            controller: "homeplane".into(),
            instance: None,
        },
    )
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

pub(super) fn clip(text: String) -> String {
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
pub(super) fn materialised(verdicts: &[Verdict], max: usize) -> (Vec<&Verdict>, usize) {
    let mut drifted: Vec<&Verdict> = verdicts
        .iter()
        .filter(|v| v.state == State::Drifted)
        .collect();
    drifted.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.id.cmp(&b.id)));
    let rest = drifted.len().saturating_sub(max);
    drifted.truncate(max);
    (drifted, rest)
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
