//! Who may look at the dashboard, and proof that a form was sent by its own pages.
//!
//! - A request from a trusted proxy (`--dashboard-trusted-proxy`) is let in as the user its
//!   forward-auth header names (`Remote-User`, as Authelia behind Caddy sets it); without the
//!   header it is refused.
//! - The user header from any other address is refused: it could be forged.
//! - A bearer token (from the Secret named by `--dashboard-token-secret`), sent as
//!   `Authorization: Bearer …` or kept in a cookie by the sign-in form, lets anyone in.
//! - Otherwise only 127.0.0.1 (`::1`) may look: this machine, or `kubectl port-forward`, which
//!   the API server has already authorised.
//!
//! Forms carry a random token that must equal the one in a `SameSite=Strict` cookie, and a
//! request whose `Origin` is another site is refused (cross-site request forgery).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use axum::http::{HeaderMap, HeaderName, header};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The cookie holding the hash of a valid bearer token after sign-in.
pub const TOKEN_COOKIE: &str = "hp_token";
/// The cookie holding the anti-forgery token.
pub const CSRF_COOKIE: &str = "hp_csrf";

/// A range of addresses, e.g. `10.42.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Parses `ADDR/PREFIX` or a single address.
pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let text = text.trim();
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?} is not an address range such as 10.42.0.0/16"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {max}"))?,
        None => max,
    };
    Ok(Cidr { addr, prefix })
}

impl Cidr {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv4 address mapped into IPv6 is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Who is looking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// A user signed in at the trusted proxy.
    User(String),
    /// Someone holding the bearer token.
    Token,
    /// Someone on this machine (or through `kubectl port-forward`).
    Local,
}

impl Who {
    /// Who asked, for Events and the footer.
    pub fn describe(&self) -> String {
        match self {
            Who::User(user) => user.clone(),
            Who::Token => "a holder of the dashboard token".to_string(),
            Who::Local => "a local user (127.0.0.1 or kubectl port-forward)".to_string(),
        }
    }
}

/// Why a request is not let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not allowed, with what to do about it.
    Forbidden(String),
    /// A token would let it in: sign in.
    SignIn,
}

/// The rules, and the token's hash as its Secret holds it now.
pub struct Access {
    user_header: HeaderName,
    trusted: Vec<Cidr>,
    token: Option<Token>,
}

/// The bearer token's Secret and the SHA-256 of its current value (the value itself is never
/// kept).
pub struct Token {
    /// `namespace/name` of the Secret.
    pub secret: String,
    hash: Arc<RwLock<Option<[u8; 32]>>>,
}

impl Access {
    /// The rules: the user header, the trusted proxies, and the token's Secret
    /// (`namespace/name`), if any.
    pub fn new(
        user_header: &str,
        trusted: Vec<Cidr>,
        token_secret: Option<String>,
    ) -> Result<Self, String> {
        let user_header = HeaderName::try_from(user_header.to_ascii_lowercase())
            .map_err(|_| format!("{user_header:?} is not an HTTP header name"))?;
        Ok(Self {
            user_header,
            trusted,
            token: token_secret.map(|secret| Token {
                secret,
                hash: Arc::new(RwLock::new(None)),
            }),
        })
    }

    /// Whether a token Secret is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Keeps the token's hash up to date by watching its Secret (key `token`), until `stop`.
    pub fn watch_token(&self, client: &Client, tasks: &mut JoinSet<()>, stop: &CancellationToken) {
        let Some(token) = &self.token else {
            return;
        };
        let (namespace, name) = token
            .secret
            .split_once('/')
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let hash = token.hash.clone();
        let stream = watcher::watch_object(api, &name).take_until(stop.clone().cancelled_owned());
        let secret = token.secret.clone();
        tasks.spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(found) => {
                        let value = found
                            .as_ref()
                            .and_then(|s| s.data.as_ref())
                            .and_then(|d| d.get("token"))
                            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
                            .filter(|v| !v.is_empty());
                        if value.is_none() {
                            warn!(%secret, "the dashboard's token Secret has no key `token`: nobody gets in with a token");
                        } else {
                            info!(%secret, "the dashboard's token was read");
                        }
                        if let Ok(mut h) = hash.write() {
                            *h = value.map(|v| digest(&v));
                        }
                    }
                    Err(error) => warn!(%secret, %error, "watching the dashboard's token Secret failed; retrying"),
                }
            }
        });
    }

    /// Sets the token's value directly (tests).
    #[cfg(test)]
    pub fn set_token(&self, value: &str) {
        if let Some(t) = &self.token
            && let Ok(mut h) = t.hash.write()
        {
            *h = Some(digest(value));
        }
    }

    fn token_hash(&self) -> Option<[u8; 32]> {
        self.token
            .as_ref()
            .and_then(|t| t.hash.read().ok().and_then(|h| *h))
    }

    /// Whether `value` is the bearer token.
    pub fn token_matches(&self, value: &str) -> bool {
        self.token_hash()
            .is_some_and(|h| same(&h, &digest(value.trim())))
    }

    /// The value of the sign-in cookie for the current token: its hash, hex.
    pub fn cookie_for_token(&self) -> Option<String> {
        self.token_hash().map(hex::encode)
    }

    /// Decides who a request is from, by its peer address and headers.
    pub fn decide(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<Who, Refusal> {
        let ip = canonical(peer.ip());
        let user = headers.get(&self.user_header);
        if self.trusted.iter().any(|c| c.contains(ip)) {
            let name = user
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty());
            return match name {
                Some(name) => Ok(Who::User(name.to_string())),
                None => Err(Refusal::Forbidden(format!(
                    "the trusted proxy at {ip} sent no {} header: is forward authentication set up for this site?",
                    self.user_header
                ))),
            };
        }
        if user.is_some() {
            let trusted = if self.trusted.is_empty() {
                "no proxy is trusted (--dashboard-trusted-proxy)".to_string()
            } else {
                format!(
                    "only from {}",
                    self.trusted
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(Refusal::Forbidden(format!(
                "the {} header is believed only from a trusted proxy, and {ip} is not one: {trusted}",
                self.user_header
            )));
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(given) = bearer {
            return if self.token_matches(given) {
                Ok(Who::Token)
            } else {
                Err(Refusal::Forbidden(
                    "the bearer token is not the dashboard's".into(),
                ))
            };
        }
        if let (Some(cookie), Some(expected)) =
            (cookie(headers, TOKEN_COOKIE), self.cookie_for_token())
            && same(cookie.as_bytes(), expected.as_bytes())
        {
            return Ok(Who::Token);
        }
        if ip == IpAddr::from([127, 0, 0, 1]) || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST) {
            return Ok(Who::Local);
        }
        if self.token.is_some() {
            return Err(Refusal::SignIn);
        }
        Err(Refusal::Forbidden(format!(
            "only 127.0.0.1 may look at this dashboard, and this request came from {ip}: open it with kubectl port-forward, put it behind a trusted proxy with single sign-on (--dashboard-trusted-proxy), or give it a token Secret (--dashboard-token-secret)"
        )))
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name`.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The anti-forgery token of the browser, if its cookie holds a well-formed one.
pub fn csrf_cookie(headers: &HeaderMap) -> Option<String> {
    cookie(headers, CSRF_COOKIE)
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A new anti-forgery token.
pub fn new_csrf() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Without randomness no form can be trusted: a token no cookie will equal.
        return "unavailable".to_string();
    }
    hex::encode(bytes)
}

/// Checks a form post: its token equals the cookie's, and it comes from this site.
pub fn check_form(headers: &HeaderMap, form_token: &str) -> Result<(), String> {
    let Some(cookie) = csrf_cookie(headers) else {
        return Err(
            "the form came without the dashboard's cookie: reload the page and try again".into(),
        );
    };
    if !same(cookie.as_bytes(), form_token.as_bytes()) {
        return Err("the form's token does not match: reload the page and try again".into());
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(format!("the form was sent from another site ({site})"));
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
        if origin != "null" && !origin_host.eq_ignore_ascii_case(host) {
            return Err(format!(
                "the form was sent from {origin}, not from this dashboard"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(*k), HeaderValue::from_str(v)) {
                h.append(k, v);
            }
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])), 40000)
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let net = parse_cidr("10.42.0.0/16").unwrap_or(Cidr {
            addr: IpAddr::from([0, 0, 0, 0]),
            prefix: 32,
        });
        assert!(net.contains("10.42.7.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(!net.contains("10.43.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(
            net.contains(
                "::ffff:10.42.0.9"
                    .parse()
                    .unwrap_or(IpAddr::from([0, 0, 0, 0]))
            )
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("proxy").is_err());
        assert_eq!(
            parse_cidr("127.0.0.2").map(|c| c.to_string()),
            Ok("127.0.0.2/32".to_string())
        );
    }

    #[test]
    fn the_user_header_is_believed_only_from_trusted_proxies() {
        let trusted = vec![parse_cidr("10.0.0.5").unwrap_or(Cidr {
            addr: IpAddr::from([0, 0, 0, 0]),
            prefix: 32,
        })];
        let access = Access::new("Remote-User", trusted, None).unwrap_or_else(|_| unreachable!());
        let alice = headers(&[("remote-user", "alice")]);
        assert_eq!(
            access.decide(peer("10.0.0.5"), &alice),
            Ok(Who::User("alice".into()))
        );
        assert!(matches!(
            access.decide(peer("10.0.0.6"), &alice),
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            access.decide(peer("127.0.0.1"), &alice),
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            access.decide(peer("10.0.0.5"), &HeaderMap::new()),
            Err(Refusal::Forbidden(_))
        ));
        assert_eq!(
            access.decide(peer("127.0.0.1"), &HeaderMap::new()),
            Ok(Who::Local)
        );
        assert!(matches!(
            access.decide(peer("192.168.1.9"), &HeaderMap::new()),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn a_token_lets_anyone_in() {
        let access = Access::new("Remote-User", vec![], Some("hp/token".into()))
            .unwrap_or_else(|_| unreachable!());
        access.set_token("s3cret");
        let far = peer("192.168.1.9");
        assert_eq!(access.decide(far, &HeaderMap::new()), Err(Refusal::SignIn));
        assert_eq!(
            access.decide(far, &headers(&[("authorization", "Bearer s3cret")])),
            Ok(Who::Token)
        );
        assert!(matches!(
            access.decide(far, &headers(&[("authorization", "Bearer nope")])),
            Err(Refusal::Forbidden(_))
        ));
        let cookie = format!(
            "{TOKEN_COOKIE}={}",
            access.cookie_for_token().unwrap_or_default()
        );
        assert_eq!(
            access.decide(far, &headers(&[("cookie", &cookie)])),
            Ok(Who::Token)
        );
        assert!(!cookie.contains("s3cret"));
    }

    #[test]
    fn forms_need_the_cookie_token_and_this_origin() {
        let token = new_csrf();
        let cookie = format!("{CSRF_COOKIE}={token}");
        let ok = headers(&[
            ("cookie", &cookie),
            ("host", "dash:8081"),
            ("origin", "http://dash:8081"),
        ]);
        assert_eq!(check_form(&ok, &token), Ok(()));
        assert!(check_form(&ok, "0123456789abcdef0123456789abcdef").is_err());
        let evil = headers(&[
            ("cookie", &cookie),
            ("host", "dash:8081"),
            ("origin", "http://evil.example"),
        ]);
        assert!(check_form(&evil, &token).is_err());
        let cross = headers(&[("cookie", &cookie), ("sec-fetch-site", "cross-site")]);
        assert!(check_form(&cross, &token).is_err());
        assert!(check_form(&HeaderMap::new(), &token).is_err());
    }
}
