//! Flux read back into the state registry: when Flux's CRDs exist, each Kustomization and
//! GitRepository in the registry's scope contributes derived properties (Ready, not
//! suspended, and for a Kustomization whether it applied the revision its source fetched),
//! and each homeplane object that Flux applied says whether its spec is still what Git says
//! (a hand edit lasts until Flux's next reconcile puts Git's version back). Flux's own message
//! names a failed object but never says why; the Kustomization's property adds homeplane's
//! reason from that object's status.

use homeplane_crds::registry::Severity;
use homeplane_state::catalogue::{Checked, Desired, Observe};
use homeplane_state::derived::Derived;
use homeplane_state::{Comparison, Observation};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use serde_json::Value;
use tracing::warn;

use crate::controllers::{Context, Error, FIELD_MANAGER};

/// The field manager of Flux's kustomize-controller (its server-side apply).
const FLUX_MANAGER: &str = "kustomize-controller";
/// Labels kustomize-controller puts on every object it applies: its Kustomization.
const FLUX_NAME_LABEL: &str = "kustomize.toolkit.fluxcd.io/name";
const FLUX_NAMESPACE_LABEL: &str = "kustomize.toolkit.fluxcd.io/namespace";
/// Most edited fields named in one message.
const MAX_FIELDS: usize = 5;

/// Flux's objects in the registry's scope, as the API returns them.
#[derive(Debug, Default)]
pub struct Flux {
    /// `kustomize.toolkit.fluxcd.io/v1` Kustomizations.
    pub kustomizations: Vec<Value>,
    /// `source.toolkit.fluxcd.io/v1` GitRepositories.
    pub git_repositories: Vec<Value>,
}

fn resource(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.to_string(),
        version: "v1".to_string(),
        api_version: format!("{group}/v1"),
        kind: kind.to_string(),
        plural: plural.to_string(),
    }
}

/// Lists Kustomizations and GitRepositories in `scope` (a namespace each, `None` for every
/// namespace). Without Flux's CRDs (404), or without the right to read them (403: an
/// operator installed before this rule), there are none.
pub async fn list(ctx: &Context, scope: &[Option<String>]) -> Result<Flux, Error> {
    async fn kind(
        ctx: &Context,
        scope: &[Option<String>],
        ar: &ApiResource,
    ) -> Result<Vec<Value>, Error> {
        let mut all = Vec::new();
        for ns in scope {
            let api: Api<DynamicObject> = match ns {
                Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, ar),
                None => Api::all_with(ctx.client.clone(), ar),
            };
            match api.list(&ListParams::default()).await {
                Ok(list) => {
                    for item in list.items {
                        all.push(serde_json::to_value(item).map_err(|source| {
                            Error::Serialize {
                                what: "a Flux object",
                                source,
                            }
                        })?);
                    }
                }
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Vec::new()),
                Err(kube::Error::Api(status)) if status.code == 403 => {
                    warn!(kind = %ar.kind, message = %status.message, "cannot read Flux's objects: the operator's ClusterRole lacks the rule for them");
                    return Ok(Vec::new());
                }
                Err(e) => return Err(Error::kube("list Flux objects")(e)),
            }
        }
        Ok(all)
    }
    let kustomizations = resource(
        "kustomize.toolkit.fluxcd.io",
        "Kustomization",
        "kustomizations",
    );
    let git = resource(
        "source.toolkit.fluxcd.io",
        "GitRepository",
        "gitrepositories",
    );
    Ok(Flux {
        kustomizations: kind(ctx, scope, &kustomizations).await?,
        git_repositories: kind(ctx, scope, &git).await?,
    })
}

/// The derived properties of Flux's objects and of the homeplane objects Flux applied
/// (`homeplane`: per kind, as listed for the registry). Objects of the registry's namespace
/// `home` give `<kind>.<name>.…`, others `<kind>.<namespace>.<name>.…`.
pub fn properties(flux: &Flux, homeplane: &[(&str, Vec<Value>)], home: &str) -> Vec<Derived> {
    let mut out = Vec::new();
    for k in &flux.kustomizations {
        let Some(o) = FluxObject::new("Kustomization", k, home) else {
            continue;
        };
        out.push(o.ready(homeplane));
        out.push(o.suspended());
        out.push(o.applied_revision(&flux.git_repositories));
    }
    for g in &flux.git_repositories {
        let Some(o) = FluxObject::new("GitRepository", g, home) else {
            continue;
        };
        out.push(o.ready(homeplane));
        out.push(o.suspended());
    }
    for (kind, items) in homeplane {
        for object in items {
            if let Some(p) = matches_git(kind, object, home) {
                out.push(p);
            }
        }
    }
    out
}

fn prefix(kind: &str, object: &Value, home: &str) -> Option<String> {
    let name = object["metadata"]["name"].as_str()?;
    Some(match object["metadata"]["namespace"].as_str() {
        Some(ns) if ns != home => format!("{}.{ns}.{name}", kind.to_ascii_lowercase()),
        _ => format!("{}.{name}", kind.to_ascii_lowercase()),
    })
}

fn property(kind: &str, name: &str, id: String, description: String, desired: Value) -> Checked {
    Checked {
        id,
        description: Some(description),
        desired: Desired::Literal(desired),
        observe: Observe::Derived {
            kind: kind.to_string(),
            name: name.to_string(),
        },
        comparison: Comparison::Equals,
        severity: Severity::Warning,
        grace: None,
        corrector: None,
    }
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// A Kustomization or GitRepository.
struct FluxObject<'a> {
    kind: &'static str,
    object: &'a Value,
    name: &'a str,
    namespace: &'a str,
    prefix: String,
}

impl<'a> FluxObject<'a> {
    fn new(kind: &'static str, object: &'a Value, home: &str) -> Option<Self> {
        Some(Self {
            kind,
            object,
            name: object["metadata"]["name"].as_str()?,
            namespace: object["metadata"]["namespace"].as_str().unwrap_or_default(),
            prefix: prefix(kind, object, home)?,
        })
    }

    fn property(&self, suffix: &str, description: String, desired: Value) -> Checked {
        property(
            self.kind,
            self.name,
            format!("{}.{suffix}", self.prefix),
            description,
            desired,
        )
    }

    fn what(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }

    /// Flux's `Ready`: a failure is drift (with homeplane's reason for each homeplane object
    /// Flux names as failed), a reconciliation under way is not known yet.
    fn ready(&self, homeplane: &[(&str, Vec<Value>)]) -> Derived {
        let p = self.property(
            "ready",
            format!("Flux's {} is Ready", self.what()),
            Value::Bool(true),
        );
        let o = match condition(self.object, "Ready") {
            Some(c) if c["status"] == "True" => Observation {
                value: Ok(Value::Bool(true)),
                message: c["message"].as_str().map(str::to_string),
            },
            Some(c) if c["status"] == "False" => {
                let flux = c["message"].as_str().unwrap_or("no message");
                let reasons = homeplane_reasons(flux, homeplane);
                Observation {
                    value: Ok(Value::Bool(false)),
                    message: Some(if reasons.is_empty() {
                        flux.to_string()
                    } else {
                        format!("{flux} — {}", reasons.join("; "))
                    }),
                }
            }
            Some(c) => Observation::failed(format!(
                "Flux is reconciling {}: {}",
                self.what(),
                c["message"].as_str().unwrap_or("no message")
            )),
            None => Observation::failed(format!(
                "{} has no Ready condition yet (Flux has not reconciled it)",
                self.what()
            )),
        };
        (p, o)
    }

    fn suspended(&self) -> Derived {
        let p = self.property(
            "suspended",
            format!("Flux's {} is not suspended", self.what()),
            Value::Bool(false),
        );
        let suspended = self.object["spec"]["suspend"].as_bool().unwrap_or(false);
        let o = Observation {
            value: Ok(Value::Bool(suspended)),
            message: suspended.then(|| {
                format!(
                    "Flux does not reconcile {} while spec.suspend is true",
                    self.what()
                )
            }),
        };
        (p, o)
    }

    /// A Kustomization applied the revision its GitRepository fetched: otherwise the cluster is
    /// not at Git's HEAD (a commit that fails to apply or to become healthy).
    fn applied_revision(&self, git_repositories: &[Value]) -> Derived {
        let source = &self.object["spec"]["sourceRef"];
        let source_name = source["name"].as_str().unwrap_or_default();
        let source_ns = source["namespace"].as_str().unwrap_or(self.namespace);
        let fetched = (source["kind"] == "GitRepository")
            .then(|| {
                git_repositories.iter().find(|g| {
                    g["metadata"]["name"] == source_name
                        && g["metadata"]["namespace"].as_str() == Some(source_ns)
                })
            })
            .flatten()
            .map(|g| g["status"]["artifact"]["revision"].as_str());
        let p = self.property(
            "applied-revision",
            format!(
                "Flux's {} applied the revision its source fetched",
                self.what()
            ),
            fetched.flatten().map_or(Value::Null, Value::from),
        );
        let applied = self.object["status"]["lastAppliedRevision"].as_str();
        let reconciling = condition(self.object, "Ready").is_some_and(|c| c["status"] == "Unknown");
        let o = match fetched {
            None => Observation::failed(format!(
                "the source of {} ({} {source_ns}/{source_name}) is not a GitRepository this registry reads",
                self.what(),
                source["kind"].as_str().unwrap_or("?")
            )),
            Some(None) => Observation::failed(format!(
                "GitRepository {source_ns}/{source_name} has fetched no revision yet"
            )),
            Some(Some(_)) if reconciling => Observation::failed(format!(
                "Flux is applying revision {} of {}",
                self.object["status"]["lastAttemptedRevision"]
                    .as_str()
                    .unwrap_or("?"),
                self.what()
            )),
            Some(Some(fetched)) => Observation {
                value: Ok(applied.map_or(Value::Null, Value::from)),
                message: (applied != Some(fetched)).then(|| {
                    format!(
                        "Git is at {fetched}, the cluster at {}: {}",
                        applied.unwrap_or("nothing applied yet"),
                        condition(self.object, "Ready")
                            .and_then(|c| c["message"].as_str())
                            .unwrap_or("no message")
                    )
                }),
            },
        };
        (p, o)
    }
}

/// homeplane's own reason for each homeplane object that Flux's message names
/// (`Kind/namespace/name status: 'Failed'`, or `'InProgress'` after a timeout), when the
/// registry reads that object: its `Stalled` message, or else its `Ready` message.
fn homeplane_reasons(flux_message: &str, homeplane: &[(&str, Vec<Value>)]) -> Vec<String> {
    let mut reasons = Vec::new();
    for part in flux_message.split(['[', ',', ']']) {
        let Some((id, _)) = part.trim().split_once(" status: '") else {
            continue;
        };
        let pieces: Vec<&str> = id.split('/').collect();
        let (kind, ns, name) = match pieces.as_slice() {
            [kind, ns, name] => (*kind, *ns, *name),
            [kind, name] => (*kind, "", *name),
            _ => continue,
        };
        let Some(object) = homeplane
            .iter()
            .filter(|(k, _)| *k == kind)
            .flat_map(|(_, items)| items)
            .find(|o| {
                o["metadata"]["name"] == name
                    && o["metadata"]["namespace"].as_str().unwrap_or_default() == ns
            })
        else {
            continue;
        };
        let stalled = condition(object, "Stalled").filter(|c| c["status"] == "True");
        let not_ready = condition(object, "Ready").filter(|c| c["status"] != "True");
        if let Some(c) = stalled.or(not_ready) {
            reasons.push(format!(
                "{kind} {}: {}: {}",
                if ns.is_empty() {
                    name.to_string()
                } else {
                    format!("{ns}/{name}")
                },
                c["reason"].as_str().unwrap_or_default(),
                c["message"].as_str().unwrap_or_default()
            ));
        }
    }
    reasons
}

/// For a homeplane object that Flux applied: whether a field manager other than Flux and
/// homeplane owns part of its spec that Flux no longer owns — someone changed its value since
/// Flux applied it (a change leaves the field to whoever made it; setting the value Flux
/// applied shares the field with Flux, and is no drift).
fn matches_git(kind: &str, object: &Value, home: &str) -> Option<Derived> {
    let labels = &object["metadata"]["labels"];
    let kustomization = labels[FLUX_NAME_LABEL].as_str()?;
    let name = object["metadata"]["name"].as_str()?;
    let at = match labels[FLUX_NAMESPACE_LABEL].as_str() {
        Some(ns) => format!("{ns}/{kustomization}"),
        None => kustomization.to_string(),
    };
    let p = property(
        kind,
        name,
        format!("{}.matches-git", prefix(kind, object, home)?),
        format!("{kind} {name} is as Flux applied it from Git (no hand edit)"),
        Value::Bool(true),
    );
    let entries: Vec<&Value> = object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["subresource"].as_str().is_none_or(str::is_empty))
        .collect();
    let spec_fields = |entry: &Value| {
        let mut fields = Vec::new();
        if let Some(spec) = entry["fieldsV1"].get("f:spec") {
            leaf_fields(spec, "spec", &mut fields);
        }
        fields
    };
    let flux: Vec<String> = entries
        .iter()
        .filter(|e| e["manager"] == FLUX_MANAGER)
        .flat_map(|e| spec_fields(e))
        .collect();
    let owned_by_flux = |field: &str| {
        flux.iter().any(|f| {
            field == f
                || field
                    .strip_prefix(f.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        })
    };
    let mut edits = Vec::new();
    for entry in entries {
        let manager = entry["manager"].as_str().unwrap_or("unknown");
        if manager == FLUX_MANAGER || manager == FIELD_MANAGER {
            continue;
        }
        let mut fields = spec_fields(entry);
        fields.retain(|f| !owned_by_flux(f));
        if fields.is_empty() {
            continue;
        }
        let more = fields.len().saturating_sub(MAX_FIELDS);
        fields.truncate(MAX_FIELDS);
        let mut text = format!("{} by {manager}", fields.join(", "));
        if more > 0 {
            text.push_str(&format!(" (and {more} more)"));
        }
        if let Some(time) = entry["time"].as_str() {
            text.push_str(&format!(" at {time}"));
        }
        edits.push(text);
    }
    let o = Observation {
        value: Ok(Value::Bool(edits.is_empty())),
        message: (!edits.is_empty()).then(|| {
            format!(
                "changed by hand since Flux applied it: {}; Flux's Kustomization {at} puts back what Git declares at its next reconcile (change it in Git to keep it)",
                edits.join("; ")
            )
        }),
    };
    Some((p, o))
}

/// The leaf field paths of a `fieldsV1` set: `f:name` is a field, `k:{…}` a list item by key,
/// `v:…` a set member, `.` the node itself.
fn leaf_fields(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        return;
    };
    let children: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| *k != ".").collect();
    if children.is_empty() {
        out.push(path.to_string());
        return;
    }
    for (key, child) in children {
        let next = if let Some(field) = key.strip_prefix("f:") {
            format!("{path}.{field}")
        } else if let Some(item) = key.strip_prefix("k:") {
            format!("{path}[{item}]")
        } else if let Some(value) = key.strip_prefix("v:") {
            format!("{path}[{value}]")
        } else {
            format!("{path}.{key}")
        };
        leaf_fields(child, &next, out);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn by_id(derived: &[Derived], id: &str) -> Observation {
        derived
            .iter()
            .find(|(p, _)| p.id == id)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("no property {id}"))
    }

    fn git(revision: &str) -> Value {
        json!({"metadata": {"name": "homelab", "namespace": "flux-system"},
            "spec": {"url": "http://127.0.0.1/homelab.git"},
            "status": {"artifact": {"revision": revision},
                "conditions": [{"type": "Ready", "status": "True", "message": "stored artifact"}]}})
    }

    fn kustomization(ready: &str, message: &str, applied: &str) -> Value {
        json!({"metadata": {"name": "homelab", "namespace": "flux-system"},
            "spec": {"sourceRef": {"kind": "GitRepository", "name": "homelab"}, "suspend": false},
            "status": {"lastAppliedRevision": applied, "lastAttemptedRevision": "main@sha1:b",
                "conditions": [{"type": "Ready", "status": ready, "message": message}]}})
    }

    #[test]
    fn a_kustomization_at_the_fetched_revision_is_in_sync() {
        let flux = Flux {
            kustomizations: vec![kustomization(
                "True",
                "Applied revision: main@sha1:a",
                "main@sha1:a",
            )],
            git_repositories: vec![git("main@sha1:a")],
        };
        let d = properties(&flux, &[], "monitoring");
        let ids: Vec<&str> = d.iter().map(|(p, _)| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "kustomization.flux-system.homelab.ready",
                "kustomization.flux-system.homelab.suspended",
                "kustomization.flux-system.homelab.applied-revision",
                "gitrepository.flux-system.homelab.ready",
                "gitrepository.flux-system.homelab.suspended",
            ]
        );
        let (p, o) = d
            .iter()
            .find(|(p, _)| p.id.ends_with("applied-revision"))
            .unwrap();
        assert_eq!(p.desired, Desired::Literal(json!("main@sha1:a")));
        assert_eq!(o.value, Ok(json!("main@sha1:a")));
        assert_eq!(o.message, None);
        assert_eq!(
            by_id(&d, "kustomization.flux-system.homelab.suspended").value,
            Ok(json!(false))
        );
    }

    #[test]
    fn a_failed_commit_leaves_the_cluster_behind_git_with_homeplanes_reason() {
        let flux_message = "health check failed after 31ms: failed early due to stalled resources: [VoicePipeline/ai/assistant status: 'Failed', Database/data/other status: 'Failed']";
        let flux = Flux {
            kustomizations: vec![kustomization("False", flux_message, "main@sha1:a")],
            git_repositories: vec![git("main@sha1:b")],
        };
        let pipeline = json!({"metadata": {"name": "assistant", "namespace": "ai"},
            "status": {"conditions": [
                {"type": "Ready", "status": "False", "reason": "Unschedulable", "message": "asks for 2 amd.com/gpu"},
                {"type": "Stalled", "status": "True", "reason": "Unschedulable", "message": "assistant-llm asks for 2 amd.com/gpu on NodeClass gpu, which has 1 in all"}]}});
        let homeplane = vec![("VoicePipeline", vec![pipeline])];
        let d = properties(&flux, &homeplane, "flux-system");
        let ready = by_id(&d, "kustomization.homelab.ready");
        assert_eq!(ready.value, Ok(json!(false)));
        assert_eq!(
            ready.message.as_deref(),
            Some(
                "health check failed after 31ms: failed early due to stalled resources: [VoicePipeline/ai/assistant status: 'Failed', Database/data/other status: 'Failed'] — VoicePipeline ai/assistant: Unschedulable: assistant-llm asks for 2 amd.com/gpu on NodeClass gpu, which has 1 in all"
            ),
            "the Database is outside what the registry reads, so only Flux's words stand for it"
        );
        let revision = by_id(&d, "kustomization.homelab.applied-revision");
        assert_eq!(revision.value, Ok(json!("main@sha1:a")));
        assert!(
            revision.message.as_deref().is_some_and(|m| m.starts_with(
                "Git is at main@sha1:b, the cluster at main@sha1:a: health check failed"
            )),
            "{revision:?}"
        );
    }

    #[test]
    fn a_reconciliation_under_way_is_not_known_yet() {
        let flux = Flux {
            kustomizations: vec![kustomization(
                "Unknown",
                "Reconciliation in progress",
                "main@sha1:a",
            )],
            git_repositories: vec![git("main@sha1:b")],
        };
        let d = properties(&flux, &[], "flux-system");
        let ready = by_id(&d, "kustomization.homelab.ready");
        assert_eq!(
            ready.value,
            Err(
                "Flux is reconciling Kustomization flux-system/homelab: Reconciliation in progress"
                    .to_string()
            )
        );
        assert_eq!(
            by_id(&d, "kustomization.homelab.applied-revision").value,
            Err(
                "Flux is applying revision main@sha1:b of Kustomization flux-system/homelab"
                    .to_string()
            )
        );
    }

    #[test]
    fn a_suspended_source_and_an_unknown_source_are_reported() {
        let mut repository = git("main@sha1:a");
        repository["spec"]["suspend"] = json!(true);
        let mut k = kustomization("True", "Applied", "main@sha1:a");
        k["spec"]["sourceRef"] = json!({"kind": "OCIRepository", "name": "homelab"});
        let flux = Flux {
            kustomizations: vec![k],
            git_repositories: vec![repository],
        };
        let d = properties(&flux, &[], "flux-system");
        let suspended = by_id(&d, "gitrepository.homelab.suspended");
        assert_eq!(suspended.value, Ok(json!(true)));
        assert!(suspended.message.is_some());
        assert_eq!(
            by_id(&d, "kustomization.homelab.applied-revision").value,
            Err("the source of Kustomization flux-system/homelab (OCIRepository flux-system/homelab) is not a GitRepository this registry reads".to_string())
        );
    }

    fn database(managed_fields: Value) -> Value {
        json!({"metadata": {"name": "homelab", "namespace": "data",
            "labels": {FLUX_NAME_LABEL: "homelab", FLUX_NAMESPACE_LABEL: "flux-system"},
            "managedFields": managed_fields}})
    }

    #[test]
    fn a_hand_edit_of_a_flux_managed_object_is_drift_until_flux_puts_it_back() {
        let flux_apply = json!({"manager": "kustomize-controller", "operation": "Apply",
            "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {"f:databaseName": {}, "f:roles": {}}}});
        let status = json!({"manager": "homeplane", "operation": "Apply", "subresource": "status",
            "fieldsV1": {"f:status": {"f:conditions": {}}}});
        let finalizer = json!({"manager": "unknown", "operation": "Update",
            "fieldsV1": {"f:metadata": {"f:finalizers": {".": {}, "v:\"homeplane.dev/database-cleanup\"": {}}}}});
        let annotate = json!({"manager": "kubectl-annotate", "operation": "Update",
            "fieldsV1": {"f:metadata": {"f:annotations": {"f:homeplane.dev/evaluate-requested": {}}}}});
        let clean = database(json!([flux_apply, status, finalizer, annotate]));
        let homeplane = vec![("Database", vec![clean])];
        let d = properties(&Flux::default(), &homeplane, "data");
        assert_eq!(
            by_id(&d, "database.homelab.matches-git").value,
            Ok(json!(true))
        );

        // Flux owns what it applied; a hand edit takes the fields it changes away from Flux.
        let flux_after_edit = json!({"manager": "kustomize-controller", "operation": "Apply",
            "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {"f:roles": {"k:{\"name\":\"readonly\"}": {".": {}, "f:login": {}}}}}});
        let patch = json!({"manager": "kubectl-patch", "operation": "Update", "time": "2026-11-30T11:43:38Z",
            "fieldsV1": {"f:spec": {"f:databaseName": {}, "f:roles": {"k:{\"name\":\"app\"}": {".": {}, "f:login": {}}}}}});
        let edited = database(json!([flux_after_edit, status, patch]));
        let homeplane = vec![("Database", vec![edited])];
        let o = by_id(
            &properties(&Flux::default(), &homeplane, "monitoring"),
            "database.data.homelab.matches-git",
        );
        assert_eq!(o.value, Ok(json!(false)));
        assert_eq!(
            o.message.as_deref(),
            Some(
                "changed by hand since Flux applied it: spec.databaseName, spec.roles[{\"name\":\"app\"}].login by kubectl-patch at 2026-11-30T11:43:38Z; Flux's Kustomization flux-system/homelab puts back what Git declares at its next reconcile (change it in Git to keep it)"
            )
        );
    }

    #[test]
    fn an_edit_that_sets_what_flux_applied_shares_the_field_and_is_no_drift() {
        // e.g. `kubectl patch` of a value Flux later applied unchanged, or `kubectl apply` of
        // the same manifest: both managers own the field, and its value is Git's.
        let flux_apply = json!({"manager": "kustomize-controller", "operation": "Apply",
            "fieldsV1": {"f:spec": {"f:server": {"f:external": {"f:host": {}, "f:port": {}}}, "f:recipients": {}}}});
        let patch = json!({"manager": "kubectl-patch", "operation": "Update",
            "fieldsV1": {"f:spec": {"f:server": {"f:external": {"f:host": {}}}, "f:recipients": {}}}});
        let homeplane = vec![("Database", vec![database(json!([flux_apply, patch]))])];
        let d = properties(&Flux::default(), &homeplane, "data");
        assert_eq!(
            by_id(&d, "database.homelab.matches-git").value,
            Ok(json!(true))
        );
    }

    #[test]
    fn objects_flux_did_not_apply_have_no_git_to_match() {
        let mut object = database(json!([]));
        object["metadata"]["labels"] = json!({});
        let homeplane = vec![("Database", vec![object])];
        assert!(properties(&Flux::default(), &homeplane, "data").is_empty());
    }
}
