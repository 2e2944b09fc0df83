//! Reading owned objects without their managed fields. `metadata.managedFields` is the
//! largest part of most objects the API server returns (a field set per manager, each a tree
//! of JSON objects), and nothing in homeplane reads it: decoding it was a sixth of the CPU
//! time of a reconciliation that changes nothing (bench/results/reconcile.txt). It is cut
//! from the response's text before the object is decoded.

use std::borrow::Cow;
use std::fmt::Debug;

use kube::api::{GetParams, ListParams, ObjectList, PartialObjectMeta};
use kube::core::Request;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// The object `name` of `api`, without its managed fields; `None` when it does not exist.
pub async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let request = Request::new(api.resource_url()).get(name, &GetParams::default());
    match text(api, request).await? {
        Some(text) => decode(&text).map(Some),
        None => Ok(None),
    }
}

/// Whether the object `name` of `api` exists; nothing of it is decoded.
pub async fn exists<K>(api: &Api<K>, name: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let request = Request::new(api.resource_url()).get_metadata(name, &GetParams::default());
    Ok(text(api, request).await?.is_some())
}

/// The metadata of `api`'s objects that `params` selects, without their managed fields.
pub async fn list_metadata<K>(
    api: &Api<K>,
    params: &ListParams,
) -> Result<Vec<PartialObjectMeta<K>>, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let request = Request::new(api.resource_url()).list_metadata(params);
    let text = api
        .clone()
        .into_client()
        .request_text(request.map_err(kube::Error::BuildRequest)?)
        .await?;
    let list: ObjectList<PartialObjectMeta<K>> = decode(&text)?;
    Ok(list.items)
}

/// The text of the answer to `request`; `None` when the object does not exist.
async fn text<K>(
    api: &Api<K>,
    request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
) -> Result<Option<String>, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let request = request.map_err(kube::Error::BuildRequest)?;
    match api.clone().into_client().request_text(request).await {
        Ok(text) => Ok(Some(text)),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn decode<T: DeserializeOwned>(text: &str) -> Result<T, kube::Error> {
    serde_json::from_str(&without_managed_fields(text)).map_err(kube::Error::SerdeError)
}

const KEY: &str = "\"managedFields\":";

/// `json` without the members named `managedFields` whose value is an array. The key cannot
/// match inside a string (a quote there is escaped), and the array is skipped with its
/// strings and nesting honoured; text that does not have that shape is left as it is, so the
/// worst a surprise can do is leave the field in.
pub fn without_managed_fields(json: &str) -> Cow<'_, str> {
    let bytes = json.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = json[from..].find(KEY) {
        let key = from + found;
        from = key + KEY.len();
        let Some(end) = array_end(bytes, from) else {
            continue;
        };
        // A member follows `{` or `,`; the comma that joined it to its neighbours goes with
        // it: the one before it, or else the one after it.
        let (start, end) = match previous_token(bytes, key) {
            Some((at, b',')) => (at, end),
            Some((_, b'{')) => match next_token(bytes, end) {
                Some((at, b',')) => (key, at + 1),
                _ => (key, end),
            },
            _ => continue,
        };
        out.push_str(&json[copied..start]);
        copied = end;
        from = end;
    }
    if copied == 0 {
        return Cow::Borrowed(json);
    }
    out.push_str(&json[copied..]);
    Cow::Owned(out)
}

/// The index just past the array that starts (after whitespace) at `at`.
fn array_end(bytes: &[u8], at: usize) -> Option<usize> {
    let (open, b'[') = next_token(bytes, at)? else {
        return None;
    };
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

fn next_token(bytes: &[u8], at: usize) -> Option<(usize, u8)> {
    bytes
        .iter()
        .enumerate()
        .skip(at)
        .find(|(_, b)| !b.is_ascii_whitespace())
        .map(|(i, &b)| (i, b))
}

fn previous_token(bytes: &[u8], before: usize) -> Option<(usize, u8)> {
    bytes[..before]
        .iter()
        .enumerate()
        .rev()
        .find(|(_, b)| !b.is_ascii_whitespace())
        .map(|(i, &b)| (i, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::{Value, json};

    fn managed() -> Value {
        json!([{
            "manager": "homeplane", "operation": "Apply", "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:note": {"]": "[{\"x"}}}
        }])
    }

    #[test]
    fn managed_fields_are_cut_wherever_they_sit_among_their_neighbours() {
        for metadata in [
            json!({"name": "a", "managedFields": managed(), "uid": "1"}),
            json!({"managedFields": managed(), "name": "a", "uid": "1"}),
            json!({"name": "a", "uid": "1", "managedFields": managed()}),
            json!({"managedFields": managed()}),
        ] {
            let mut want = metadata.clone();
            want.as_object_mut().unwrap().remove("managedFields");
            for text in [
                json!({"metadata": metadata, "spec": {"replicas": 1}}).to_string(),
                serde_json::to_string_pretty(&json!({"metadata": metadata})).unwrap(),
            ] {
                let cut: Value = serde_json::from_str(&without_managed_fields(&text)).unwrap();
                assert_eq!(cut["metadata"], want, "{text}");
            }
        }
    }

    #[test]
    fn the_key_inside_a_string_or_with_another_shape_is_left_alone() {
        let obj = json!({
            "metadata": {
                "name": "a",
                "annotations": {"last-applied": "{\"managedFields\":[1,2]}", "managedFields": "[x]"}
            },
            "data": {"managedFields": {"a": 1}}
        });
        let text = obj.to_string();
        assert_eq!(without_managed_fields(&text), text);
        let broken = r#"{"metadata":{"managedFields":[{"a":"]"#;
        assert_eq!(without_managed_fields(broken), broken);
    }

    #[test]
    fn a_list_loses_every_items_managed_fields_and_decodes_as_before() {
        let item = |name: &str| {
            json!({
                "metadata": {"name": name, "managedFields": managed(), "labels": {"app": name}},
                "spec": {"replicas": 2, "selector": {}, "template": {}}
            })
        };
        let list = json!({"kind": "DeploymentList", "items": [item("a"), item("b")]}).to_string();
        let cut = without_managed_fields(&list);
        assert!(!cut.contains("managedFields"), "{cut}");
        let items: Vec<Deployment> =
            serde_json::from_value(serde_json::from_str::<Value>(&cut).unwrap()["items"].clone())
                .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].metadata.name.as_deref(), Some("b"));
        assert!(items[0].metadata.managed_fields.is_none());
        assert_eq!(items[0].spec.replicas, Some(2));
    }
}
