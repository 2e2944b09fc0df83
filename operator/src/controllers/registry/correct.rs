//! `mode: Correct`: the corrector of each drifted property run as the registry namespace's
//! corrector ServiceAccount (impersonated), so that what it may change is decided by that
//! ServiceAccount's RBAC, never by the operator's own rights.

use std::collections::HashMap;

use homeplane_crds::registry::{RegistryMode, StateRegistry};
use homeplane_state::engine::{Report, State};
use homeplane_state::{Checked, Observe};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{REAPPLY_ANNOTATION, observe, publish};
use crate::controllers::{Context, now};

/// Runs the correctors of the drifted properties that have one, when the registry is in
/// `Correct` mode; returns how many succeeded. Each success is a Normal event, each failure a
/// Warning on the property.
pub(super) async fn drifted(
    ctx: &Context,
    registry: &StateRegistry,
    scope: &observe::Scope,
    properties: &[Checked],
    report: &Report,
    resources: &mut observe::Resources,
) -> i32 {
    if registry.spec.mode != RegistryMode::Correct {
        return 0;
    }
    let by_id: HashMap<&str, &Checked> = properties.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut corrections = 0;
    for v in report.verdicts.iter().filter(|v| v.state == State::Drifted) {
        let Some(property) = by_id.get(v.id.as_str()).filter(|p| p.corrector.is_some()) else {
            continue;
        };
        match correct(ctx, scope, property, resources).await {
            Ok(what) => {
                corrections += 1;
                ctx.metrics.corrected("applied");
                let note = format!("{}: {what}", v.id);
                ctx.event(registry, EventType::Normal, "Corrected", note)
                    .await;
            }
            Err(why) => {
                ctx.metrics.corrected("failed");
                let note = format!("{}: {why}", v.id);
                let warning = EventType::Warning;
                publish::about_property(ctx, registry, &v.id, warning, "CorrectionFailed", note)
                    .await;
            }
        }
    }
    corrections
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
