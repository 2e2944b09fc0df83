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
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
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
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = params.limit(LIST_PAGE);
    let mut names = Vec::new();
    loop {
        let page = api
            .list_metadata(&params)
            .await
            .map_err(Error::kube(action))?;
        names.extend(
            page.items
                .into_iter()
                .filter_map(|o| Some((o.metadata.namespace, o.metadata.name?))),
        );
        if names.len() > MAX_LISTED {
            return Err(Error::TooMany {
                action,
                max: MAX_LISTED,
            });
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    let mut out = Vec::with_capacity(names.len());
    for (namespace, name) in names {
        match at(namespace.as_deref()).get_opt(&name).await {
            Ok(Some(object)) => out.push(object),
            Ok(None) | Err(kube::Error::SerdeError(_)) => {}
            Err(source) => return Err(Error::Kube { action, source }),
        }
    }
    Ok(out)
}
