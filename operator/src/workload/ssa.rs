//! Server-side apply that does not write what is already so. A no-op reconciliation used to
//! apply every object it owns on every pass: the API server stores nothing new, but each apply
//! is a write request (admission, the managed-fields merge, a compare in etcd). Now the object
//! is read first and applied only when it does not hold what homeplane asks:
//!
//! - every field of the apply body has the same value in the live object (what the API server
//!   adds — defaults, status, other managers' fields — is not looked at; quantities compare by
//!   value, so `0.5` holds `500m`), and
//! - the live object carries the digest of the body it was last applied with
//!   ([`APPLIED`]), so a field homeplane no longer asks for — which the first rule cannot
//!   see — still leads to an apply that removes it.
//!
//! Anything in doubt is applied, as before: a skipped apply is always one that would have
//! changed nothing homeplane owns.

use std::fmt::Debug;
use std::sync::LazyLock;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::FIELD_MANAGER;
use crate::quantity::Milli;

/// Annotation holding the digest of the apply body an object was last applied with.
pub const APPLIED: &str = "homeplane.dev/applied";

/// Labels of [`APPLIES`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    /// The kind applied, e.g. `Deployment`.
    pub kind: String,
    /// `applied` (a write request) or `unchanged` (read, already so).
    pub result: &'static str,
}

/// Every owned object [`apply`] was asked for, by kind and result; served as
/// `homeplane_owned_applies_total` (one process, one count, whichever controller asked).
pub static APPLIES: LazyLock<Family<ApplyLabels, Counter>> = LazyLock::new(Family::default);

/// Reads the live `obj` (without its managed fields) and server-side applies `obj` with
/// homeplane's field manager unless that already holds it; returns the object as the server
/// has it either way.
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    Pending::read(api, obj).await?.apply(api).await
}

/// An object homeplane is about to apply, beside the live object read just before: whether
/// it already holds what is asked is known before anything is sent, so a caller can skip the
/// checks that only matter for a change.
#[derive(Debug)]
pub struct Pending<K> {
    name: String,
    body: Value,
    live: Option<K>,
    holds: bool,
}

impl<K> Pending<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    /// `obj`'s apply body beside the live object, read from `api` without its managed fields.
    pub async fn read(api: &Api<K>, obj: &K) -> Result<Self, kube::Error> {
        let live = super::lean::get_opt(api, &obj.meta().name.clone().unwrap_or_default()).await?;
        Self::new(obj, live)
    }

    /// `obj`'s apply body, compared with `live`.
    pub fn new(obj: &K, live: Option<K>) -> Result<Self, kube::Error> {
        let body =
            body(obj, &K::api_version(&()), &K::kind(&())).map_err(kube::Error::SerdeError)?;
        let holds = match &live {
            Some(live) => holds(
                &body,
                &serde_json::to_value(live).map_err(kube::Error::SerdeError)?,
            ),
            None => false,
        };
        Ok(Self {
            name: obj.meta().name.clone().unwrap_or_default(),
            body,
            live,
            holds,
        })
    }

    /// The object as the API server had it when read; `None` when it did not exist.
    pub fn live(&self) -> Option<&K> {
        self.live.as_ref()
    }

    /// Whether the live object already holds everything asked, so that applying changes
    /// nothing.
    pub fn holds(&self) -> bool {
        self.holds
    }

    /// Applies the body unless the live object holds it; returns the object as the server has
    /// it either way.
    pub async fn apply(self, api: &Api<K>) -> Result<K, kube::Error> {
        let count = |result| {
            APPLIES
                .get_or_create(&ApplyLabels {
                    kind: K::kind(&()).to_string(),
                    result,
                })
                .inc();
        };
        if self.holds
            && let Some(live) = self.live
        {
            count("unchanged");
            return Ok(live);
        }
        let applied = api
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&self.body),
            )
            .await?;
        count("applied");
        Ok(applied)
    }
}

/// The apply body of `obj` (its `apiVersion` and `kind` set), annotated with [`APPLIED`].
pub fn body<T: Serialize>(
    obj: &T,
    api_version: &str,
    kind: &str,
) -> Result<Value, serde_json::Error> {
    let mut body = serde_json::to_value(obj)?;
    if !body.is_object() {
        return Err(serde::ser::Error::custom(format!(
            "a {kind} did not serialize to a JSON object"
        )));
    }
    body["apiVersion"] = api_version.into();
    body["kind"] = kind.into();
    let digest = digest(&body);
    if !body["metadata"].is_object() {
        body["metadata"] = Value::Object(Map::new());
    }
    if !body["metadata"]["annotations"].is_object() {
        body["metadata"]["annotations"] = Value::Object(Map::new());
    }
    body["metadata"]["annotations"][APPLIED] = Value::String(digest);
    Ok(body)
}

/// The first 16 hex digits of the SHA-256 of `value`'s JSON text.
fn digest(value: &Value) -> String {
    let hash = Sha256::digest(value.to_string().as_bytes());
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Whether `live` already holds everything `body` (from [`body`]) asks for, so that applying
/// it would change nothing homeplane owns.
pub fn holds(body: &Value, live: &Value) -> bool {
    let applied = |v: &Value| {
        v.pointer("/metadata/annotations")
            .and_then(|a| a.get(APPLIED))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    applied(body).is_some() && applied(body) == applied(live) && contains(body, live, false)
}

/// Whether every field of `want` is in `have` with the same value; `quantities` when both
/// are a `limits` or `requests` map (resource name to quantity), whose values compare as
/// quantities: the API server keeps a quantity in its canonical form (`0.5` becomes `500m`).
fn contains(want: &Value, have: &Value, quantities: bool) -> bool {
    match (want, have) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(k, w)| match have.get(k) {
            Some(h) if quantities => same_quantity(w, h),
            Some(h) => contains(w, h, matches!(k.as_str(), "limits" | "requests")),
            None => is_empty(w),
        }),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| contains(w, h, false))
        }
        (want, have) => want == have || (is_empty(want) && have.is_null()),
    }
}

/// Whether two values of a `limits` or `requests` map are the same quantity.
fn same_quantity(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::String(w), Value::String(h)) => {
            w == h || matches!((Milli::parse(w), Milli::parse(h)), (Ok(a), Ok(b)) if a == b)
        }
        (want, have) => want == have,
    }
}

/// Whether a value of the apply body is one the API server drops when stored (null, an empty
/// list or object), so that its absence in the live object is no difference.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn applied(obj: Value) -> Value {
        body(&obj, "apps/v1", "Deployment").unwrap()
    }

    /// The live object as the API server returns it: the body plus defaults and status.
    fn stored(body: &Value) -> Value {
        let mut live = body.clone();
        live["metadata"]["uid"] = "1234".into();
        live["metadata"]["managedFields"] = json!([{"manager": "homeplane"}]);
        live["spec"]["progressDeadlineSeconds"] = 600.into();
        live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] =
            "IfNotPresent".into();
        live["status"] = json!({"replicas": 1});
        live
    }

    fn deployment() -> Value {
        json!({
            "metadata": {"name": "app", "labels": {"app.kubernetes.io/managed-by": "homeplane"}},
            "spec": {
                "replicas": 1,
                "template": {
                    "metadata": {"labels": {"app": "app"}},
                    "spec": {
                        "containers": [{
                            "name": "app",
                            "image": "busybox:1",
                            "env": [],
                            "resources": {"limits": {"cpu": "0.5", "memory": "1024Mi"}},
                        }],
                        "volumes": [],
                    },
                },
            },
        })
    }

    #[test]
    fn what_the_server_adds_is_no_difference() {
        let body = applied(deployment());
        let mut live = stored(&body);
        // Stored canonically, and the empty lists dropped.
        live["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] =
            json!({"cpu": "500m", "memory": "1Gi"});
        live["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("env");
        live["spec"]["template"]["spec"]
            .as_object_mut()
            .unwrap()
            .remove("volumes");
        assert!(holds(&body, &live));
    }

    #[test]
    fn a_changed_or_missing_field_is_a_difference() {
        let body = applied(deployment());
        let mut edited = stored(&body);
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = "busybox:2".into();
        assert!(!holds(&body, &edited));

        let mut edited = stored(&body);
        edited["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] =
            "600m".into();
        assert!(!holds(&body, &edited));

        let mut edited = stored(&body);
        edited["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("app.kubernetes.io/managed-by");
        assert!(!holds(&body, &edited));

        let mut edited = stored(&body);
        edited["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar"}));
        assert!(!holds(&body, &edited));
    }

    #[test]
    fn a_field_no_longer_asked_for_changes_the_digest() {
        let old = applied(deployment());
        let live = stored(&old);
        let mut smaller = deployment();
        smaller["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
            .as_object_mut()
            .unwrap()
            .remove("cpu");
        let new = applied(smaller);
        // Everything the new body asks is in the live object, but the cpu limit homeplane
        // set before must go: only an apply removes it.
        let mut without_digest = new.clone();
        without_digest["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(APPLIED);
        assert!(contains(&without_digest, &live, false));
        assert!(!holds(&new, &live));
        assert!(holds(&old, &live));
    }

    #[test]
    fn an_object_applied_by_an_older_homeplane_is_applied_again() {
        let body = applied(deployment());
        let mut live = stored(&body);
        live["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(APPLIED);
        assert!(!holds(&body, &live));
    }

    #[test]
    fn quantities_compare_by_value_only_where_they_are_quantities() {
        let limits = |memory: &str| json!({"resources": {"limits": {"memory": memory}}});
        assert!(contains(&limits("1024Mi"), &limits("1Gi"), false));
        assert!(!contains(&limits("1025Mi"), &limits("1Gi"), false));
        let gpus = |n: &str| json!({"requests": {"amd.com/gpu": n}});
        assert!(contains(&gpus("1"), &gpus("1.0"), false));
        // Text elsewhere is text, whatever it looks like.
        let env = |v: &str| json!({"env": [{"name": "SIZE", "value": v}]});
        assert!(!contains(&env("1024Mi"), &env("1Gi"), false));
        let label = |v: &str| json!({"labels": {"example.com/size": v}});
        assert!(!contains(&label("1"), &label("1.0"), false));
    }

    #[test]
    fn false_and_zero_are_values_not_absence() {
        assert!(!contains(&json!({"automount": false}), &json!({}), false));
        assert!(!contains(&json!({"replicas": 0}), &json!({}), false));
        assert!(contains(
            &json!({"x": {}, "y": [], "z": null}),
            &json!({}),
            false
        ));
    }

    #[test]
    fn the_digest_is_stable_and_covers_the_whole_body() {
        assert_eq!(applied(deployment()), applied(deployment()));
        let mut other = deployment();
        other["spec"]["replicas"] = 2.into();
        assert_ne!(
            applied(deployment())["metadata"]["annotations"][APPLIED],
            applied(other)["metadata"]["annotations"][APPLIED]
        );
    }

    #[test]
    fn whether_a_typed_object_holds_is_known_before_anything_is_sent() {
        use k8s_openapi::api::apps::v1::Deployment;
        let asked: Deployment = serde_json::from_value(deployment()).unwrap();
        assert!(
            !Pending::new(&asked, None).unwrap().holds(),
            "nothing live: create it"
        );
        let as_stored =
            |body: &Value| -> Deployment { serde_json::from_value(stored(body)).unwrap() };
        let body = body(&asked, "apps/v1", "Deployment").unwrap();
        assert!(
            Pending::new(&asked, Some(as_stored(&body)))
                .unwrap()
                .holds()
        );
        let mut edited = body.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = "busybox:2".into();
        assert!(
            !Pending::new(&asked, Some(as_stored(&edited)))
                .unwrap()
                .holds()
        );
    }
}
