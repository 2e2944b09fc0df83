//! The `http` observer: one GET per distinct URL, whatever number of properties read it; the
//! status code, or a value at a JSON pointer in the body.
//!
//! What it may reach is limited (docs/security.md): addresses that are never a homelab service
//! are refused — link-local (169.254.0.0/16 and fe80::/10, where clouds serve instance
//! metadata and credentials), the cloud metadata addresses outside those ranges, unspecified,
//! multicast and reserved addresses — whether the URL names them or a DNS name resolves to
//! them (checked on the resolved addresses the connection uses, so a name cannot change its
//! answer between the check and the connection). Redirects are never followed, bodies are
//! read up to 4 MiB, and every request has a timeout.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use homeplane_crds::registry::HttpObserver;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::observation::{Observation, select};

/// Largest body read.
const MAX_BODY: usize = 4 << 20;
/// Requests in flight at once.
const CONCURRENCY: usize = 8;

/// What one URL answered.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    body: Result<Value, String>,
}

/// Observes every `(id, observer)`; returns one observation per id.
pub async fn observe(properties: &[(&str, &HttpObserver)]) -> HashMap<String, Observation> {
    let mut by_url: HashMap<&str, Duration> = HashMap::new();
    for (_, o) in properties {
        let timeout = Duration::from_secs(u64::try_from(o.timeout_seconds.max(1)).unwrap_or(5));
        let entry = by_url.entry(o.url.as_str()).or_insert(timeout);
        *entry = (*entry).max(timeout);
    }
    let client = match connector() {
        Ok(connector) => Client::builder(TokioExecutor::new()).build(connector),
        Err(reason) => {
            return properties
                .iter()
                .map(|(id, _)| (id.to_string(), Observation::failed(reason.clone())))
                .collect();
        }
    };
    let requests: Vec<(String, Duration)> = by_url
        .into_iter()
        .map(|(url, timeout)| (url.to_string(), timeout))
        .collect();
    let answers: HashMap<String, Result<Answer, String>> = futures::stream::iter(requests)
        .map(|(url, timeout)| {
            let client = client.clone();
            async move {
                let answer = get(&client, &url, timeout).await;
                (url, answer)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    properties
        .iter()
        .map(|(id, o)| {
            let observation = match answers.get(o.url.as_str()) {
                Some(Ok(answer)) => read(answer, o.json_pointer.as_deref()),
                Some(Err(reason)) => Observation::failed(reason.clone()),
                None => Observation::failed("the URL was not requested"),
            };
            (id.to_string(), observation)
        })
        .collect()
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

fn connector() -> Result<Connector, String> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("failed to set up TLS: {e}"))?;
    let mut http = HttpConnector::new_with_resolver(GuardedResolver);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    Ok(builder.https_or_http().enable_http1().wrap_connector(http))
}

/// Why the observer never connects to `ip`, or `None` when it may.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let segments = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return forbidden_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            if v6.is_unspecified() {
                Some("the unspecified address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if segments[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address (where clouds serve instance metadata)")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata address")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_link_local() {
        Some("a link-local address (where clouds serve instance metadata)")
    } else if a == 0 {
        Some("an unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if a >= 240 {
        Some("a reserved or broadcast address")
    } else if ip == Ipv4Addr::new(100, 100, 100, 200) || (a == 192 && b == 0 && ip.octets()[2] == 0)
    {
        // Alibaba's metadata address, and 192.0.0.0/24 (IETF protocol assignments), where
        // Oracle's is.
        Some("a cloud metadata address")
    } else {
        None
    }
}

/// The URL's host when it is an IP address the observer never connects to.
fn refused_literal(uri: &hyper::Uri) -> Option<String> {
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    forbidden_address(ip)
        .map(|why| format!("{host} is {why}; the http observer never connects there"))
}

/// A DNS resolver that drops every address [`forbidden_address`] refuses, and fails when
/// none is left; the connection uses exactly the addresses it returns.
#[derive(Clone, Copy, Debug)]
pub struct GuardedResolver;

type Addresses = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = Addresses;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addresses, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| forbidden_address(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let why = found
                    .first()
                    .and_then(|a| forbidden_address(a.ip()))
                    .unwrap_or("an address that was refused");
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves to {why}; the http observer never connects there"),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

async fn get(
    client: &Client<Connector, Empty<Bytes>>,
    url: &str,
    timeout: Duration,
) -> Result<Answer, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url} is not a URL: {e}"))?;
    if let Some(refused) = refused_literal(&uri) {
        return Err(refused);
    }
    let request = hyper::Request::get(uri)
        .header("accept", "application/json")
        .header("user-agent", "homeplane-state-registry")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("failed to build the request: {e}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("GET {url} failed: {}", chain(&e)))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the body of {url} failed: {e}"))?
            .to_bytes();
        let body = serde_json::from_slice::<Value>(&body)
            .map_err(|e| format!("the body of {url} is not JSON: {e}"));
        Ok(Answer { status, body })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("GET {url} timed out after {}s", timeout.as_secs()))?
}

fn read(answer: &Answer, pointer: Option<&str>) -> Observation {
    let Some(pointer) = pointer else {
        return Observation::value(Value::from(answer.status));
    };
    match &answer.body {
        Ok(body) => {
            let mut values = select(body, pointer);
            let value = if pointer.contains('*') {
                Value::Array(values)
            } else {
                values.pop().unwrap_or(Value::Null)
            };
            Observation {
                value: Ok(value),
                message: (answer.status >= 400).then(|| format!("HTTP {}", answer.status)),
            }
        }
        Err(reason) => Observation::failed(format!("HTTP {}: {reason}", answer.status)),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_addresses_are_refused() {
        for refused in [
            "169.254.169.254",
            "169.254.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "100.100.100.200",
            "192.0.0.192",
            "fe80::1",
            "fd00:ec2::254",
            "::",
            "ff02::1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(
                forbidden_address(ip).is_some(),
                "{refused} should be refused"
            );
        }
        for allowed in [
            "127.0.0.1",
            "10.0.0.5",
            "192.168.1.20",
            "8.8.8.8",
            "::1",
            "fd12::1",
        ] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert_eq!(forbidden_address(ip), None, "{allowed} should be allowed");
        }
    }

    #[tokio::test]
    async fn the_observer_never_connects_to_a_refused_address() {
        let observer = |url: &str| HttpObserver {
            url: url.to_string(),
            json_pointer: None,
            timeout_seconds: 2,
        };
        let literal = observer("http://169.254.169.254/latest/meta-data/");
        let bracketed = observer("http://[fe80::1]:8080/");
        let observed = observe(&[("a", &literal), ("b", &bracketed)]).await;
        for id in ["a", "b"] {
            let reason = observed[id].value.clone().unwrap_err();
            assert!(reason.contains("never connects there"), "{id}: {reason}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_refused_address_is_refused() {
        let mut resolver = GuardedResolver;
        // `localhost` resolves to loopback: allowed.
        let ok = tower_service::Service::call(&mut resolver, "localhost".parse().unwrap()).await;
        assert!(ok.is_ok(), "{ok:?}");
        // A name that is an IP in text form still goes through the same filter.
        let refused =
            tower_service::Service::call(&mut resolver, "169.254.169.254".parse().unwrap()).await;
        let error = refused.unwrap_err().to_string();
        assert!(error.contains("link-local"), "{error}");
    }
}
