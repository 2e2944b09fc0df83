//! Names for what the import writes: Docker and n8n names become Kubernetes names (DNS
//! labels), property ids and Secret keys, without collisions.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

/// `text` as a DNS-1123 label: lowercase letters, digits and `-`, starting and ending with a
/// letter or digit, at most 63 characters (shortened with a hash of the whole when longer).
/// `fallback` is used when nothing of `text` is left.
pub fn dns_label(text: &str, fallback: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.trim().chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        return fallback.to_string();
    }
    shorten(trimmed, 63)
}

/// A name for a workload and its Service: a DNS label that starts with a letter (Service names
/// must).
pub fn object_name(text: &str) -> String {
    let label = dns_label(text, "container");
    if label.starts_with(|c: char| c.is_ascii_digit()) {
        shorten(&format!("c-{label}"), 63)
    } else {
        label
    }
}

/// `label` cut to `max` characters with the first 8 hex digits of its SHA-256 at the end, so
/// that two long names stay apart.
pub fn shorten(label: &str, max: usize) -> String {
    if label.len() <= max {
        return label.to_string();
    }
    let hash = hex::encode(Sha256::digest(label.as_bytes()));
    let mut head: String = label.chars().take(max.saturating_sub(9)).collect();
    while head.ends_with(['-', '.', '_']) {
        head.pop();
    }
    format!("{head}-{}", &hash[..8])
}

/// Hands out names unique within one scope (a namespace): a second `web` becomes `web-2`.
#[derive(Debug, Default)]
pub struct Unique(BTreeSet<String>);

impl Unique {
    /// `wanted`, or `wanted-N` for the first N that is free.
    pub fn take(&mut self, wanted: &str) -> String {
        if self.0.insert(wanted.to_string()) {
            return wanted.to_string();
        }
        let mut n = 2;
        loop {
            let candidate = shorten(&format!("{wanted}-{n}"), 63);
            if self.0.insert(candidate.clone()) {
                return candidate;
            }
            n += 1;
        }
    }
}

/// A Secret key for an environment variable or argument: letters, digits, `-`, `_` and `.`.
pub fn secret_key(name: &str) -> String {
    let key: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if key.is_empty() { "value".into() } else { key }
}

/// A lowercase SQL-identifier-like segment of a property id (`[a-z0-9][-a-z0-9_]*[a-z0-9]`).
pub fn id_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches(|c| c == '-' || c == '_');
    if trimmed.is_empty() {
        "x".into()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names_become_dns_labels() {
        assert_eq!(dns_label("Home_Assistant", "x"), "home-assistant");
        assert_eq!(dns_label("/web.1", "x"), "web-1");
        assert_eq!(dns_label("___", "container"), "container");
        let long = "a".repeat(80);
        let label = dns_label(&long, "x");
        assert_eq!(label.len(), 63);
        assert_ne!(
            label,
            dns_label(&"a".repeat(81), "x"),
            "a hash keeps them apart"
        );
    }

    #[test]
    fn names_stay_unique_in_a_scope() {
        let mut unique = Unique::default();
        assert_eq!(unique.take("web"), "web");
        assert_eq!(unique.take("web"), "web-2");
        assert_eq!(unique.take("web"), "web-3");
    }

    #[test]
    fn ids_and_keys() {
        assert_eq!(id_segment("Caddy.Proxy"), "caddy-proxy");
        assert_eq!(secret_key("DB PASSWORD"), "DB_PASSWORD");
    }
}
