//! What the dashboard may change, only with `--dashboard-actions`: reconcile now (any homeplane
//! object), evaluate drift now (a StateRegistry), back up now (creates a Backup) and run the
//! restore drill now (a BackupPolicy). Each is an ordinary change through the Kubernetes API —
//! an annotation the controllers already wake on, or a new Backup — recorded as an Event
//! naming who asked, and each form must carry the page's anti-forgery token.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use homeplane_crds::backup::{Backup, BackupSpec, BackupTrigger};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::access::{self, Who};
use super::snapshot::Kind;
use super::{Dashboard, message};
use crate::controllers::backuppolicy::{POLICY_LABEL, VERIFY_ANNOTATION};
use crate::controllers::registry::{EVALUATE_ANNOTATION, REAPPLY_ANNOTATION};

/// Annotation on a Backup made from the dashboard: who asked for it.
pub const REQUESTED_BY: &str = "homeplane.dev/requested-by";

#[derive(serde::Deserialize)]
pub(super) struct Form {
    csrf: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    namespace: String,
    name: String,
    #[serde(default)]
    back: String,
}

/// `POST /actions/{reconcile|evaluate|backup|drill}`.
pub(super) async fn run(
    State(d): State<Arc<Dashboard>>,
    who: Option<Extension<Who>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Form>,
) -> Response {
    if !d.actions {
        return message(
            &d,
            StatusCode::FORBIDDEN,
            "Actions are off",
            "This dashboard is read-only: start the operator with --dashboard-actions (chart value dashboard.actions=true) to let it reconcile, evaluate drift, back up and run restore drills.",
        );
    }
    if let Err(why) = access::check_form(&headers, &form.csrf) {
        return message(&d, StatusCode::FORBIDDEN, "Refused", &why);
    }
    let who = who.map(|w| w.0).unwrap_or(Who::Local).describe();
    let done = match action.as_str() {
        "reconcile" => reconcile(&d, &form, &who).await,
        "evaluate" => evaluate(&d, &form, &who).await,
        "backup" => back_up(&d, &form, &who).await,
        "drill" => drill(&d, &form, &who).await,
        _ => Err(format!("there is no action {action:?}")),
    };
    match done {
        Ok(what) => {
            info!(%action, %who, %what, "dashboard action");
            // Back to the page the form was on (a path of this dashboard only).
            let back = if form.back.starts_with('/') && !form.back.starts_with("//") {
                form.back.clone()
            } else {
                "/".to_string()
            };
            Redirect::to(&back).into_response()
        }
        Err(why) => {
            warn!(%action, %who, error = %why, "dashboard action failed");
            message(&d, StatusCode::BAD_GATEWAY, "The action failed", &why)
        }
    }
}

fn resource(kind: Kind) -> ApiResource {
    ApiResource {
        group: homeplane_crds::GROUP.to_string(),
        version: homeplane_crds::VERSION.to_string(),
        api_version: format!("{}/{}", homeplane_crds::GROUP, homeplane_crds::VERSION),
        kind: kind.name().to_string(),
        plural: kind.plural().to_string(),
    }
}

fn api(d: &Dashboard, kind: Kind, namespace: &str) -> Api<DynamicObject> {
    if kind.namespaced() {
        Api::namespaced_with(d.client.clone(), namespace, &resource(kind))
    } else {
        Api::all_with(d.client.clone(), &resource(kind))
    }
}

/// Sets `annotation` to `value` on an object with a merge patch; returns its uid.
async fn annotate(
    d: &Dashboard,
    kind: Kind,
    namespace: &str,
    name: &str,
    annotation: &str,
    value: &str,
) -> Result<String, String> {
    let patch = serde_json::json!({"metadata": {"annotations": {annotation: value}}});
    api(d, kind, namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|o| o.uid().unwrap_or_default())
        .map_err(|e| format!("failed to annotate {} {namespace}/{name}: {e}", kind.name()))
}

/// Records what was asked, and by whom, as an Event on the object.
async fn record(
    d: &Dashboard,
    kind: Kind,
    namespace: &str,
    name: &str,
    uid: &str,
    reason: &str,
    note: String,
) {
    let reference = ObjectReference {
        api_version: Some(format!(
            "{}/{}",
            homeplane_crds::GROUP,
            homeplane_crds::VERSION
        )),
        kind: Some(kind.name().to_string()),
        name: Some(name.to_string()),
        namespace: kind.namespaced().then(|| namespace.to_string()),
        uid: Some(uid.to_string()).filter(|u| !u.is_empty()),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Normal,
        reason: reason.to_string(),
        note: Some(note),
        action: "DashboardAction".to_string(),
        secondary: None,
    };
    if let Err(error) = d.recorder.publish(&event, &reference).await {
        warn!(%error, "failed to record the dashboard action as an Event");
    }
}

fn now() -> String {
    Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or_else(|_| Timestamp::now())
        .to_string()
}

async fn reconcile(d: &Dashboard, form: &Form, who: &str) -> Result<String, String> {
    let kind = Kind::parse(&form.kind)
        .filter(|k| *k != Kind::Drift)
        .ok_or_else(|| format!("{:?} is not a homeplane kind", form.kind))?;
    let uid = annotate(
        d,
        kind,
        &form.namespace,
        &form.name,
        REAPPLY_ANNOTATION,
        &now(),
    )
    .await?;
    let note = format!("reconcile requested from the dashboard by {who}");
    record(
        d,
        kind,
        &form.namespace,
        &form.name,
        &uid,
        "ReconcileRequested",
        note.clone(),
    )
    .await;
    Ok(note)
}

async fn evaluate(d: &Dashboard, form: &Form, who: &str) -> Result<String, String> {
    let uid = annotate(
        d,
        Kind::StateRegistry,
        &form.namespace,
        &form.name,
        EVALUATE_ANNOTATION,
        &Timestamp::now().as_nanosecond().to_string(),
    )
    .await?;
    let note = format!("drift evaluation requested from the dashboard by {who}");
    record(
        d,
        Kind::StateRegistry,
        &form.namespace,
        &form.name,
        &uid,
        "EvaluationRequested",
        note.clone(),
    )
    .await;
    Ok(note)
}

async fn back_up(d: &Dashboard, form: &Form, who: &str) -> Result<String, String> {
    let stamp = Timestamp::now().strftime("%Y%m%d%H%M%S").to_string();
    let keep = 253 - stamp.len() - "-now-".len();
    let base: String = form.name.chars().take(keep).collect();
    let name = format!("{base}-now-{stamp}");
    let backup = Backup {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(form.namespace.clone()),
            labels: Some(BTreeMap::from([(
                POLICY_LABEL.to_string(),
                form.name.clone(),
            )])),
            annotations: Some(BTreeMap::from([(
                REQUESTED_BY.to_string(),
                who.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: BackupSpec {
            policy: form.name.clone(),
            trigger: BackupTrigger::Manual,
        },
        status: None,
    };
    let created = Api::<Backup>::namespaced(d.client.clone(), &form.namespace)
        .create(&PostParams::default(), &backup)
        .await
        .map_err(|e| format!("failed to create Backup {}/{name}: {e}", form.namespace))?;
    let note = format!("backup {name} requested from the dashboard by {who}");
    let policy_uid = d
        .caches
        .backup_policies
        .state()
        .iter()
        .find(|p| p.name_any() == form.name && p.namespace().as_deref() == Some(&form.namespace))
        .and_then(|p| p.uid())
        .unwrap_or_default();
    record(
        d,
        Kind::BackupPolicy,
        &form.namespace,
        &form.name,
        &policy_uid,
        "BackupRequested",
        note.clone(),
    )
    .await;
    record(
        d,
        Kind::Backup,
        &form.namespace,
        &name,
        &created.uid().unwrap_or_default(),
        "BackupRequested",
        note.clone(),
    )
    .await;
    Ok(note)
}

async fn drill(d: &Dashboard, form: &Form, who: &str) -> Result<String, String> {
    let uid = annotate(
        d,
        Kind::BackupPolicy,
        &form.namespace,
        &form.name,
        VERIFY_ANNOTATION,
        &now(),
    )
    .await?;
    let note = format!("restore drill requested from the dashboard by {who}");
    record(
        d,
        Kind::BackupPolicy,
        &form.namespace,
        &form.name,
        &uid,
        "RestoreDrillRequested",
        note.clone(),
    )
    .await;
    Ok(note)
}
