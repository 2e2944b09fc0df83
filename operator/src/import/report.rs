//! What the README of an import says: what was imported, what was left out and why, what to
//! check by hand, and the Secrets to create (their keys, never their values).

use std::collections::BTreeSet;

/// A Secret the output refers to and the person creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretToCreate {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its keys, in order.
    pub keys: Vec<String>,
    /// Values that are not secret and known (e.g. a username), by key.
    pub known: std::collections::BTreeMap<String, String>,
    /// What it is for.
    pub purpose: String,
    /// The Database and role whose password it holds, when homeplane is to adopt it: the
    /// database controller reads and writes only Secrets marked as its own, so the person
    /// creating it marks it (`handover`).
    pub role_of: Option<(String, String)>,
}

impl SecretToCreate {
    /// The command that creates it, values left out (`...`).
    pub fn command(&self) -> String {
        let literals: Vec<String> = self
            .keys
            .iter()
            .map(|k| match self.known.get(k) {
                Some(v) => format!("--from-literal={k}={v}"),
                None => format!("--from-literal={k}=..."),
            })
            .collect();
        format!(
            "kubectl create secret generic {} -n {} {}",
            self.name,
            self.namespace,
            literals.join(" ")
        )
    }

    /// The commands that hand it to homeplane as the role Secret of `role_of`, if any.
    pub fn handover(&self) -> Vec<String> {
        let Some((database, role)) = &self.role_of else {
            return Vec::new();
        };
        vec![
            format!(
                "kubectl label secret {} -n {} app.kubernetes.io/managed-by=homeplane homeplane.dev/owner=database.{database}",
                self.name, self.namespace
            ),
            format!(
                "kubectl annotate secret {} -n {} homeplane.dev/role={role}",
                self.name, self.namespace
            ),
        ]
    }
}

/// The README's lists, filled while building.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per imported thing.
    pub imported: Vec<String>,
    /// What was not imported, and why.
    pub left_out: Vec<String>,
    /// What a person should look at before switching over.
    pub check: Vec<String>,
    /// Secrets the output names.
    pub secrets: Vec<SecretToCreate>,
    /// Values that must appear in no file (secrets read from the sources).
    pub hidden: BTreeSet<String>,
}

impl Report {
    /// Adds a value that must never be written. Values under 6 characters are not searched
    /// for (they occur in ordinary text); they are kept out of files all the same.
    pub fn hide(&mut self, value: &str) {
        if value.len() >= 6 {
            self.hidden.insert(value.to_string());
        }
    }

    /// Adds a Secret, or keys to one already listed.
    pub fn secret(&mut self, namespace: &str, name: &str, key: &str, purpose: &str) {
        if let Some(s) = self
            .secrets
            .iter_mut()
            .find(|s| s.namespace == namespace && s.name == name)
        {
            if !s.keys.iter().any(|k| k == key) {
                s.keys.push(key.to_string());
            }
            return;
        }
        self.secrets.push(SecretToCreate {
            namespace: namespace.to_string(),
            name: name.to_string(),
            keys: vec![key.to_string()],
            known: Default::default(),
            purpose: purpose.to_string(),
            role_of: None,
        });
    }

    /// Marks a listed Secret as the password Secret of `role` in Database `database`.
    pub fn role_secret(&mut self, namespace: &str, name: &str, database: &str, role: &str) {
        if let Some(s) = self
            .secrets
            .iter_mut()
            .find(|s| s.namespace == namespace && s.name == name)
        {
            s.role_of = Some((database.to_string(), role.to_string()));
        }
    }

    /// Records a key's value that is not a secret (written out in the command).
    pub fn known(&mut self, namespace: &str, name: &str, key: &str, value: &str) {
        if let Some(s) = self
            .secrets
            .iter_mut()
            .find(|s| s.namespace == namespace && s.name == name)
        {
            s.known.insert(key.to_string(), value.to_string());
        }
    }

    /// The first hidden value that occurs in `text`, if any.
    pub fn leak_in<'a>(&'a self, text: &str) -> Option<&'a str> {
        self.hidden
            .iter()
            .map(String::as_str)
            .find(|v| text.contains(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_leave_values_out() {
        let mut r = Report::default();
        r.secret("back", "db-env", "POSTGRES_PASSWORD", "environment of db");
        r.secret("back", "db-env", "API_TOKEN", "environment of db");
        r.secret("back", "db-env", "API_TOKEN", "environment of db");
        assert_eq!(r.secrets.len(), 1);
        assert_eq!(
            r.secrets[0].command(),
            "kubectl create secret generic db-env -n back --from-literal=POSTGRES_PASSWORD=... --from-literal=API_TOKEN=..."
        );
        r.hide("hunter2");
        r.hide("no");
        assert_eq!(r.leak_in("password: hunter2"), Some("hunter2"));
        assert_eq!(r.leak_in("password: ..."), None);
        assert_eq!(r.leak_in("no"), None, "too short to search for");
        assert!(r.secrets[0].handover().is_empty(), "not a role Secret");
    }

    #[test]
    fn a_role_secret_is_handed_to_its_database() {
        let mut r = Report::default();
        r.secret("back", "homelab-app", "username", "role app");
        r.secret("back", "homelab-app", "password", "");
        r.known("back", "homelab-app", "username", "app");
        r.role_secret("back", "homelab-app", "homelab", "app");
        assert_eq!(
            r.secrets[0].handover(),
            [
                "kubectl label secret homelab-app -n back app.kubernetes.io/managed-by=homeplane homeplane.dev/owner=database.homelab",
                "kubectl annotate secret homelab-app -n back homeplane.dev/role=app",
            ]
        );
    }
}
