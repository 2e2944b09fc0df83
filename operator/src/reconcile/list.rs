//! Lists that one unreadable object cannot break: a page the client cannot parse (an object
//! whose JSON is nested deeper than serde_json reads) is read again object by object, and the
//! objects that still cannot be read are left out — their own controller reports them
//! (`Stalled=True`, `Unreadable`). Every list is capped ([`crate::controllers::list_capped`]).

use kube::Api;
use kube::api::ListParams;

use crate::controllers::{Error, LIST_PAGE, MAX_LISTED, list_capped};

/// Lists `api` with `params`, capped, leaving out the objects that cannot be read; `at` gives
/// the API an object of a namespace (or none) is read through one by one.
pub async fn readable<K>(
    api: &Api<K>,
    params: ListParams,
    action: &'static str,
    at: impl Fn(Option<&str>) -> Api<K>,
) -> Result<Vec<K>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match list_capped(api, params.clone(), action).await {
        Err(Error::Kube {
            source: kube::Error::SerdeError(_),
            ..
        }) => one_by_one(api, params, action, at).await,
        other => other,
    }
}

/// The names from a metadata list, then each object on its own.
async fn one_by_one<K>(
    api: &Api<K>,
    params: ListParams,
    action: &'static str,
    at: impl Fn(Option<&str>) -> Api<K>,
) -> Result<Vec<K>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let client = api.clone().into_client();
    let names = names(&client, api.resource_url(), params, action).await?;
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        match at(n.namespace.as_deref()).get_opt(&n.name).await {
            Ok(Some(object)) => out.push(object),
            Ok(None) | Err(kube::Error::SerdeError(_)) => {}
            Err(source) => return Err(Error::Kube { action, source }),
        }
    }
    Ok(out)
}

/// The part of an object's metadata that reading objects one by one needs.
#[derive(Debug, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Names {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: Option<String>,
    /// Its uid.
    pub uid: Option<String>,
    /// Its resource version.
    pub resource_version: Option<String>,
    /// Its generation.
    pub generation: Option<i64>,
}

#[derive(serde::Deserialize)]
struct NamesPage {
    #[serde(default)]
    metadata: PageMeta,
    items: Vec<NamesItem>,
}

#[derive(Default, serde::Deserialize)]
struct PageMeta {
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

#[derive(serde::Deserialize)]
struct NamesItem {
    metadata: Names,
}

/// The names of the objects at `url` (a kind's list path) selected by `params`, from metadata
/// lists in pages of [`LIST_PAGE`], at most [`MAX_LISTED`] (`action` names the list in the
/// error). Read into [`Names`]
/// only: the managed fields of an object with a deep value are as deep as it, and a field that
/// is skipped is not held to the parser's depth limit, so the names are read where a typed
/// metadata list fails.
pub async fn names(
    client: &kube::Client,
    url: &str,
    params: ListParams,
    action: &'static str,
) -> Result<Vec<Names>, Error> {
    let mut params = params.limit(LIST_PAGE);
    let mut names = Vec::new();
    loop {
        let request = kube::core::Request::new(url)
            .list_metadata(&params)
            .map_err(kube::Error::BuildRequest)
            .map_err(Error::kube(action))?;
        let text = client
            .request_text(request)
            .await
            .map_err(Error::kube(action))?;
        let page = parse_names(&text).map_err(Error::kube(action))?;
        names.extend(page.items.into_iter().map(|i| i.metadata));
        if names.len() > MAX_LISTED {
            return Err(Error::TooMany {
                action,
                max: MAX_LISTED,
            });
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(names),
        }
    }
}

fn parse_names(text: &str) -> Result<NamesPage, kube::Error> {
    serde_json::from_str(text).map_err(kube::Error::SerdeError)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The managed fields of an object with a 200-deep value are 200 deep too: a typed
    /// metadata list fails on them; the names are read all the same.
    #[test]
    fn names_are_read_from_a_list_whose_managed_fields_are_too_deep() {
        let deep = format!("{}{{}}{}", "{\"f:x\":".repeat(200), "}".repeat(200));
        let text = format!(
            r#"{{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1","metadata":{{"continue":"next"}},"items":[{{"metadata":{{"name":"deep","namespace":"ns","uid":"u1","resourceVersion":"7","generation":2,"managedFields":[{{"manager":"kubectl","fieldsV1":{deep}}}]}}}}]}}"#
        );
        let typed = serde_json::from_str::<
            kube::core::ObjectList<kube::core::PartialObjectMeta<homeplane_crds::StateRegistry>>,
        >(&text);
        assert!(typed.is_err(), "the typed list fails on the deep fields");
        let page = parse_names(&text).unwrap();
        assert_eq!(page.metadata.continue_.as_deref(), Some("next"));
        let names: Vec<Names> = page.items.into_iter().map(|i| i.metadata).collect();
        assert_eq!(
            names,
            vec![Names {
                name: "deep".into(),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                resource_version: Some("7".into()),
                generation: Some(2),
            }]
        );
    }
}
