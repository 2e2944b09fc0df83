//! The role Secrets of a Database: one per login role, made by homeplane for this Database and
//! role only (someone else's Secret of the same name is never read nor written over), holding a
//! password from the operating system's random source until `rotatePasswords` changes.

use std::collections::BTreeMap;

use homeplane_crds::database::{Database, ExternalServer};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use tracing::info;

use super::sql;
use crate::controllers::{Context, Error, FIELD_MANAGER};
use crate::reconcile::Outcome;

/// Annotation on role Secrets: the `rotatePasswords` value their password was made for.
const ROTATION_ANNOTATION: &str = "homeplane.dev/rotation";
/// Annotation on role Secrets: the role whose credentials they hold.
const ROLE_ANNOTATION: &str = "homeplane.dev/role";
/// Label on role Secrets: the Database they belong to.
const OWNER_LABEL: &str = "homeplane.dev/owner";

/// The login roles that need a new password (no Secret yet, or one made for an earlier
/// `rotatePasswords`), each with a new one; the outcome to report when a Secret of the same
/// name is someone else's.
pub(super) async fn new_passwords(
    db: &Database,
    ctx: &Context,
) -> Result<Result<BTreeMap<String, String>, Outcome>, Error> {
    let ns = db.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let rotation = db.spec.rotate_passwords.clone().unwrap_or_default();
    let mut passwords = BTreeMap::new();
    for role in db.spec.roles.iter().filter(|r| r.login) {
        let name = role_secret_name(db, &role.name);
        let existing = secrets
            .get_opt(&name)
            .await
            .map_err(Error::kube("read a role Secret"))?;
        if let Some(secret) = &existing
            && !is_role_secret_of(secret, db, &role.name)
        {
            return Ok(Err(Outcome::blocked(
                "SecretNameTaken",
                format!(
                    "Secret {ns}/{name} for role {} exists and was not made by homeplane for this Database and role; it is neither read nor written over: rename the role or the Database, remove that Secret, or hand it to homeplane with its password by labelling it app.kubernetes.io/managed-by=homeplane and {OWNER_LABEL}=database.{} and annotating it {ROLE_ANNOTATION}={}",
                    role.name,
                    db.name_any(),
                    role.name
                ),
            )));
        }
        let current = existing.as_ref().filter(|s| {
            s.annotations()
                .get(ROTATION_ANNOTATION)
                .map(String::as_str)
                .unwrap_or_default()
                == rotation
        });
        if current.and_then(|s| secret_value(s, "password")).is_none() {
            passwords.insert(role.name.clone(), generate_password()?);
        }
    }
    Ok(Ok(passwords))
}

/// The SCRAM verifiers PostgreSQL stores for `passwords` (the passwords never reach it).
pub(super) fn verifiers(
    passwords: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, Error> {
    let mut verifiers = BTreeMap::new();
    for (role, password) in passwords {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| Error::Random(e.to_string()))?;
        verifiers.insert(role.clone(), sql::scram_verifier(password, &salt));
    }
    Ok(verifiers)
}

/// Writes the Secrets of the roles that got a new password; `server` is where applications
/// connect.
pub(super) async fn write(
    db: &Database,
    ctx: &Context,
    server: &ExternalServer,
    dbname: &str,
    passwords: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let rotation = db.spec.rotate_passwords.clone().unwrap_or_default();
    for (role, password) in passwords {
        apply_role_secret(db, ctx, server, dbname, role, password, &rotation).await?;
    }
    Ok(())
}

/// The Secret holding a role's credentials: `<database object>-<role>` in DNS form.
pub(crate) fn role_secret_name(db: &Database, role: &str) -> String {
    format!("{}-{}", db.name_any(), role.replace('_', "-"))
}

/// Whether `secret` may hold `role`'s credentials for `db`: made by homeplane for this
/// Database, and for this role (`a` + `b-c` and `a-b` + `c` give the same name, as do roles
/// `x_y` and `x-y`). Someone else's Secret is never read nor written over.
fn is_role_secret_of(secret: &Secret, db: &Database, role: &str) -> bool {
    let labels = secret.labels();
    let owner = format!("database.{}", db.name_any());
    labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some("homeplane")
        && labels.get(OWNER_LABEL) == Some(&owner)
        && match secret.annotations().get(ROLE_ANNOTATION) {
            Some(r) => r == role,
            // Made before the annotation existed: its username says whose it is.
            None => secret_value(secret, "username").as_deref() == Some(role),
        }
}

pub(crate) fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|s| !s.is_empty())
}

/// A 32-character password from the operating system's random source, letters and digits
/// only so it needs no escaping in a URI.
pub(crate) fn generate_password() -> Result<String, Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(32);
    while out.len() < 32 {
        let mut buf = [0u8; 64];
        getrandom::fill(&mut buf).map_err(|e| Error::Random(e.to_string()))?;
        // 248 is the largest multiple of 62 below 256: rejection keeps the choice uniform.
        out.extend(
            buf.iter()
                .filter(|&&b| b < 248)
                .map(|&b| ALPHABET[usize::from(b) % 62] as char),
        );
    }
    out.truncate(32);
    Ok(out)
}

async fn apply_role_secret(
    db: &Database,
    ctx: &Context,
    server: &ExternalServer,
    dbname: &str,
    role: &str,
    password: &str,
    rotation: &str,
) -> Result<(), Error> {
    let ns = db.namespace().unwrap_or_default();
    let name = role_secret_name(db, role);
    let uri = format!(
        "postgres://{role}:{password}@{}:{}/{dbname}",
        server.host, server.port
    );
    let data: BTreeMap<String, ByteString> = [
        ("username", role.to_string()),
        ("password", password.to_string()),
        ("host", server.host.clone()),
        ("port", server.port.to_string()),
        ("dbname", dbname.to_string()),
        ("uri", uri),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "homeplane".to_string(),
                ),
                (
                    OWNER_LABEL.to_string(),
                    format!("database.{}", db.name_any()),
                ),
            ])),
            annotations: Some(BTreeMap::from([
                (ROTATION_ANNOTATION.to_string(), rotation.to_string()),
                (ROLE_ANNOTATION.to_string(), role.to_string()),
            ])),
            owner_references: db.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/basic-auth".to_string()),
        data: Some(data),
        ..Secret::default()
    };
    let mut value = serde_json::to_value(&secret).map_err(|source| Error::Serialize {
        what: "Secret",
        source,
    })?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await
        .map_err(Error::kube("apply a role Secret"))?;
    info!(secret = %name, "role credentials written");
    Ok(())
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;

    fn database(name: &str) -> Database {
        let mut db = Database::new(name, homeplane_crds::database::DatabaseSpec::default());
        db.metadata.namespace = Some("data".into());
        db
    }

    fn secret(owner: &str, role: Option<&str>, username: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "homeplane".to_string(),
                    ),
                    (OWNER_LABEL.to_string(), format!("database.{owner}")),
                ])),
                annotations: role
                    .map(|r| BTreeMap::from([(ROLE_ANNOTATION.to_string(), r.to_string())])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                "username".to_string(),
                ByteString(username.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        }
    }

    #[test]
    fn a_role_secret_of_another_database_or_role_is_never_taken() {
        // Database `a` role `b-c` and Database `a-b` role `c` both name `a-b-c`.
        let (a, ab) = (database("a"), database("a-b"));
        assert_eq!(role_secret_name(&a, "b-c"), role_secret_name(&ab, "c"));
        let made_for_ab = secret("a-b", Some("c"), "c");
        assert!(is_role_secret_of(&made_for_ab, &ab, "c"));
        assert!(!is_role_secret_of(&made_for_ab, &a, "b-c"));
        // Roles `x_y` and `x-y` of one Database share a name too.
        assert_eq!(role_secret_name(&a, "x_y"), role_secret_name(&a, "x-y"));
        assert!(!is_role_secret_of(
            &secret("a", Some("x_y"), "x_y"),
            &a,
            "x-y"
        ));
        // A managed server's admin Secret `<db>-admin` is not the role `admin`'s.
        assert!(!is_role_secret_of(
            &secret("a", None, "postgres"),
            &a,
            "admin"
        ));
        // Made before the role annotation: its username says whose it is.
        assert!(is_role_secret_of(&secret("a", None, "app"), &a, "app"));
        // Someone else's Secret.
        let mut foreign = secret("a", Some("app"), "app");
        foreign.metadata.labels = None;
        assert!(!is_role_secret_of(&foreign, &a, "app"));
    }
}
