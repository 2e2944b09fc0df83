//! A PostgreSQL server that homeplane runs for a Database (`spec.server.managed`): a
//! StatefulSet with its own volume and a Service, from the shared workload builder (placed by
//! its NodeClass, requests = limits, checked against the class's room before anything is
//! created), and the admin Secret `<database>-admin` (user `postgres`, a generated password)
//! that the server is initialised with and homeplane connects with. The Secret is made once and
//! never rewritten: the server keeps the password it was initialised with. Until the server
//! reports ready and accepts connections the Database waits (`WaitingForServer`); then
//! everything else is as for an external server. Applications reach it through its Service
//! (the host in the role Secrets); homeplane reaches the instance itself, at its pod's address,
//! as CloudNativePG's operator does: that works wherever the pod network is reachable, inside
//! the cluster or not.

use std::collections::{BTreeMap, BTreeSet};

use homeplane_crds::database::{Database, ExternalServer, ManagedServer, SslMode};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{EnvVar, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use tracing::info;

use super::secrets::generate_password;
use crate::controllers::{Context, Error, refused, unschedulable};
use crate::reconcile::Outcome;
use crate::workload::apply::{Converged, converge as converge_workloads};
use crate::workload::rollout::Rollout;
use crate::workload::{NamedPort, Owner, Storage, Workload, env_from_secret};

/// PostgreSQL's port.
pub const PORT: i32 = 5432;
/// The admin role the server is initialised with.
pub const ADMIN_USER: &str = "postgres";
/// Where the volume is mounted; the data lives in a folder below it (a fresh volume may hold
/// `lost+found`, which `initdb` refuses).
const MOUNT: &str = "/var/lib/postgresql/data";

/// The StatefulSet and Service: `<database>-postgres`.
pub fn name(db: &Database) -> String {
    format!("{}-postgres", db.name_any())
}

/// The admin Secret: `<database>-admin`.
pub fn admin_secret_name(db: &Database) -> String {
    format!("{}-admin", db.name_any())
}

/// How applications (and the role Secrets' URIs) reach a managed server: its Service.
pub fn endpoint(db: &Database) -> ExternalServer {
    ExternalServer {
        host: format!("{}.{}.svc", name(db), db.namespace().unwrap_or_default()),
        port: PORT,
        admin_secret: admin_secret_name(db),
        ssl_mode: SslMode::Prefer,
    }
}

/// The server as a workload.
pub fn workload(db: &Database, server: &ManagedServer) -> Workload {
    let secret = admin_secret_name(db);
    Workload {
        name: name(db),
        app: "postgres".into(),
        component: Some("database".into()),
        image: server.image.clone(),
        args: Vec::new(),
        env: vec![
            env_from_secret("POSTGRES_USER", &secret, "username"),
            env_from_secret("POSTGRES_PASSWORD", &secret, "password"),
            EnvVar {
                name: "PGDATA".into(),
                value: Some(format!("{MOUNT}/pgdata")),
                ..EnvVar::default()
            },
        ],
        ports: vec![NamedPort {
            name: "postgres".into(),
            port: PORT,
        }],
        readiness_path: None,
        readiness_command: ["pg_isready", "-U", ADMIN_USER, "-h", "127.0.0.1"]
            .map(String::from)
            .to_vec(),
        storage: Some(Storage {
            size: server.storage.clone(),
            mount_path: MOUNT.into(),
            storage_class: server.storage_class.clone(),
        }),
        replicas: 1,
        placement: server.placement.clone(),
    }
}

/// The admin Secret's contents for a new server.
fn admin_secret(db: &Database, password: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(admin_secret_name(db)),
            namespace: db.namespace(),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "homeplane".to_string(),
                ),
                (
                    "homeplane.dev/owner".to_string(),
                    format!("database.{}", db.name_any()),
                ),
            ])),
            owner_references: db.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/basic-auth".to_string()),
        data: Some(BTreeMap::from([
            (
                "username".to_string(),
                ByteString(ADMIN_USER.as_bytes().to_vec()),
            ),
            (
                "password".to_string(),
                ByteString(password.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

/// Makes the admin Secret if it is missing; an existing one keeps its password (the server was
/// initialised with it). One kept from a Database deleted with `Retain` is adopted.
async fn ensure_admin_secret(db: &Database, ctx: &Context) -> Result<(), Error> {
    let ns = db.namespace().unwrap_or_default();
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    let name = admin_secret_name(db);
    if let Some(existing) = secrets
        .get_opt(&name)
        .await
        .map_err(Error::kube("read the admin Secret"))?
    {
        if existing
            .metadata
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .is_empty()
        {
            let adopt = serde_json::json!({"metadata": {"ownerReferences": [db.controller_owner_ref(&())]}});
            secrets
                .patch(&name, &PatchParams::default(), &Patch::Merge(&adopt))
                .await
                .map_err(Error::kube("adopt the admin Secret"))?;
            info!(secret = %name, "kept admin credentials of the managed server adopted");
        }
        return Ok(());
    }
    let secret = admin_secret(db, &generate_password()?);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(secret = %name, "admin credentials of the managed server written");
            Ok(())
        }
        // Made meanwhile by another pass: that one is the server's.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::kube("create the admin Secret")(e)),
    }
}

/// How homeplane reaches the instance: the Service's settings at the address of its pod, once
/// the pod has one.
pub async fn instance(ctx: &Context, db: &Database) -> Result<Option<ExternalServer>, Error> {
    let ns = db.namespace().unwrap_or_default();
    let pod = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&format!("{}-0", name(db)))
        .await
        .map_err(Error::kube("read the managed server's pod"))?;
    Ok(pod
        .and_then(|p| p.status?.pod_ip)
        .filter(|ip| !ip.is_empty())
        .map(|ip| ExternalServer {
            host: ip,
            ..endpoint(db)
        }))
}

/// The Database waits for its server, which is starting (looked at again soon; not a failure).
pub(super) fn waiting(why: String) -> Outcome {
    let message = format!("the managed server is starting ({why})");
    Outcome::progressing("WaitingForServer", message).after(std::time::Duration::from_secs(5))
}

/// Runs the server; once it is ready and accepts connections, how homeplane reaches it;
/// otherwise the outcome to report (refused before creation, unschedulable, or starting).
pub(super) async fn converge(
    db: &Database,
    ctx: &Context,
    server: &ManagedServer,
) -> Result<Result<ExternalServer, Outcome>, Error> {
    ensure_admin_secret(db, ctx).await?;
    let owner = Owner::of(db);
    let workloads = [workload(db, server)];
    match converge_workloads(&ctx.client, &owner, &workloads, &BTreeSet::new()).await? {
        Converged::Refused { reason, message } => Ok(Err(refused(reason, message))),
        Converged::Applied { rollouts, .. } => {
            if let Some(outcome) = unschedulable(&rollouts) {
                return Ok(Err(outcome));
            }
            match rollouts.get(&name(db)) {
                Some(r) if r.is_ready() => {}
                Some(Rollout::Progressing(m) | Rollout::Unschedulable(m)) => {
                    return Ok(Err(waiting(m.clone())));
                }
                _ => return Ok(Err(waiting("not created yet".into()))),
            }
            match instance(ctx, db).await? {
                Some(instance) => Ok(Ok(instance)),
                None => Ok(Err(waiting("its pod has no address yet".into()))),
            }
        }
    }
}

/// Keeps the admin Secret with the server's volume (deletionPolicy Retain): the server was
/// initialised with its password, so it must outlive the Database the garbage collector would
/// otherwise take it with. A Database declared again adopts it and reaches the same data.
pub(super) async fn keep_admin_secret(db: &Database, ctx: &Context) -> Result<(), Error> {
    let ns = db.namespace().unwrap_or_default();
    let orphan = serde_json::json!({"metadata": {"ownerReferences": null}});
    match Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &admin_secret_name(db),
            &PatchParams::default(),
            &Patch::Merge(&orphan),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("keep the admin Secret")(e)),
    }
}

/// Removes the server's volume (deletionPolicy Delete): the StatefulSet and Service go with
/// the Database (owner references), but Kubernetes keeps a StatefulSet's volumes.
pub(super) async fn delete_volume(db: &Database, ctx: &Context) -> Result<(), Error> {
    let ns = db.namespace().unwrap_or_default();
    let claim = format!("data-{}-0", name(db));
    match Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(
        ctx.client.clone(),
        &ns,
    )
    .delete(&claim, &Default::default())
    .await
    {
        Ok(_) => {
            info!(%claim, "deleted the managed server's volume (deletionPolicy Delete)");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("delete the managed server's volume")(e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::workload::{Class, build};
    use homeplane_crds::common::Placement;
    use homeplane_crds::database::{DatabaseSpec, Server};
    use homeplane_crds::nodeclass::NodeClassSpec;

    fn db() -> Database {
        let mut db = Database::new(
            "homelab",
            DatabaseSpec {
                server: Server {
                    managed: Some(ManagedServer {
                        image: "pgvector/pgvector:pg16".into(),
                        storage: "20Gi".into(),
                        storage_class: Some("local-path".into()),
                        placement: Placement {
                            class: "pi".into(),
                            cpu: Some("1".into()),
                            memory: Some("1Gi".into()),
                            ..Placement::default()
                        },
                    }),
                    ..Server::default()
                },
                ..DatabaseSpec::default()
            },
        );
        db.metadata.namespace = Some("data".into());
        db.metadata.uid = Some("u-1".into());
        db
    }

    #[test]
    fn the_server_is_a_stateful_set_with_its_volume_and_the_admin_secret() {
        let db = db();
        let server = db.spec.server.managed.clone().unwrap();
        let class_spec: NodeClassSpec =
            serde_yaml::from_str("nodeSelector: {homeplane.dev/class: pi}\narchitecture: arm64\n")
                .unwrap();
        let class = Class {
            name: "pi",
            spec: &class_spec,
        };
        let objects = build(&workload(&db, &server), &Owner::of(&db), class).unwrap();
        let crate::workload::Runner::StatefulSet(ss) = objects.runner else {
            panic!("a server keeps data: a StatefulSet");
        };
        assert_eq!(ss.metadata.name.as_deref(), Some("homelab-postgres"));
        let spec = ss.spec;
        let claim = &spec.volume_claim_templates.unwrap()[0];
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("local-path"));
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"]
                .0,
            "20Gi"
        );
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("pgvector/pgvector:pg16"));
        let env = c.env.as_ref().unwrap();
        let password = env.iter().find(|e| e.name == "POSTGRES_PASSWORD").unwrap();
        assert!(
            password.value.is_none(),
            "the password comes from the Secret"
        );
        let r = password
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("homelab-admin", "password")
        );
        assert_eq!(
            env.iter()
                .find(|e| e.name == "PGDATA")
                .unwrap()
                .value
                .as_deref(),
            Some("/var/lib/postgresql/data/pgdata")
        );
        let probe = c.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap();
        assert_eq!(probe.command.as_ref().unwrap()[0], "pg_isready");
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(
            (limits["cpu"].0.as_str(), limits["memory"].0.as_str()),
            ("1", "1Gi")
        );
        assert_eq!(
            objects.service.unwrap().spec.unwrap().ports.unwrap()[0].port,
            5432
        );

        let endpoint = endpoint(&db);
        assert_eq!(endpoint.host, "homelab-postgres.data.svc");
        assert_eq!(endpoint.admin_secret, "homelab-admin");
        let secret = admin_secret(&db, "s3cret");
        let data = secret.data.unwrap();
        assert_eq!(data["username"].0, b"postgres");
        assert_eq!(data["password"].0, b"s3cret");
        assert_eq!(
            secret.metadata.owner_references.unwrap()[0].kind,
            "Database"
        );
    }
}
