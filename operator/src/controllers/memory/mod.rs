//! The MemoryServer controller: waits for its Database, then runs the memory server (plus a
//! managed Redis and an embedding model when asked) through the shared workload builder, and
//! reports each dependency and the rollout from what the cluster says. Pipeline: dereference
//! (the Database and its role Secret) -> build (pure workloads) -> apply (capacity check, then
//! server-side apply and pruning) -> status (dependencies, rollout).

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use homeplane_crds::database::Database;
use homeplane_crds::memory::{Dependency, MemoryServer, MemoryServerStatus};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::{Context, Error, now};
use crate::conditions::{self, Desired, PROGRESSING, READY};
use crate::reconcile::{self, Outcome, Reconciler, watch};
use crate::workload::apply::{Converged, converge, pruned_note};
use crate::workload::rollout::Rollout;
use crate::workload::{MANAGED_BY, MANAGED_BY_LABEL, Owner};

/// The MemoryServer controller.
pub struct MemoryServers;

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let controller = Controller::new(ctx.watched::<MemoryServer>(), watch::config());
    let store = controller.store();
    let controller = controller
        .owns(ctx.watched::<Deployment>(), owned.clone())
        .owns(ctx.watched::<StatefulSet>(), owned.clone())
        .owns(ctx.watched::<Service>(), owned)
        .watches(
            ctx.watched::<Database>(),
            watcher::Config::default(),
            move |db| {
                store
                    .state()
                    .iter()
                    .filter(|ms| {
                        ms.spec.database.name == db.name_any() && ms.namespace() == db.namespace()
                    })
                    .map(|ms| ObjectRef::from_obj(ms.as_ref()))
                    .collect::<Vec<_>>()
            },
        );
    reconcile::run(MemoryServers, controller, ctx, shutdown).await;
}

impl Reconciler for MemoryServers {
    type Object = MemoryServer;
    const NAME: &'static str = "memoryserver";

    async fn reconcile(
        &self,
        ms: &MemoryServer,
        status: &mut MemoryServerStatus,
        ctx: &Context,
    ) -> Result<Outcome, Error> {
        status.endpoint = Some(plan::endpoint(ms));
        status.dependencies.clear();
        let ns = ms.namespace().unwrap_or_default();
        let db = Api::<Database>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&ms.spec.database.name)
            .await
            .map_err(Error::kube("read the Database"))?;
        let secret = match database_state(ms, db.as_ref()) {
            Ok(secret) => secret,
            Err(message) => {
                status.dependencies = vec![dependency("database", false, Some(message.clone()))];
                conditions::remove(&mut status.conditions, PROGRESSING);
                return Ok(Outcome::progressing("WaitingForDatabase", message)
                    .after(Duration::from_secs(60)));
            }
        };
        status.dependencies.push(dependency("database", true, None));
        let workloads = plan::workloads(ms, Some(&secret));
        let owner = Owner::of(ms);
        let (rollouts, pruned) =
            match converge(&ctx.client, &owner, &workloads, &BTreeSet::new()).await? {
                Converged::Refused { reason, message } => {
                    conditions::remove(&mut status.conditions, PROGRESSING);
                    return Ok(super::refused(reason, message));
                }
                Converged::Applied { rollouts, pruned } => (rollouts, pruned),
            };
        if let Some(note) = pruned_note(&pruned) {
            ctx.event(ms, EventType::Normal, "Pruned", note).await;
        }
        status.dependencies.push(match &ms.spec.cache.external {
            Some(url) => reachable("cache", url).await,
            None => rollout_dependency("cache", rollouts.get(&plan::cache_name(ms))),
        });
        status.dependencies.push(match &ms.spec.embedding.endpoint {
            Some(e) => reachable("embedding", &e.url).await,
            None => rollout_dependency("embedding", rollouts.get(&plan::embedding_name(ms))),
        });
        Ok(readiness(ms, status, &rollouts))
    }
}

/// Where the server stands once its workloads are applied: unschedulable, rolling out,
/// waiting for a dependency, or serving.
fn readiness(
    ms: &MemoryServer,
    status: &mut MemoryServerStatus,
    rollouts: &BTreeMap<String, Rollout>,
) -> Outcome {
    let generation = ms.metadata.generation;
    let mut progressing =
        |d: Desired| conditions::set(&mut status.conditions, d, generation, now());
    if let Some(outcome) = super::unschedulable(rollouts) {
        progressing(Desired::no(
            PROGRESSING,
            "Unschedulable",
            "the scheduler cannot place a pod",
        ));
        return outcome;
    }
    let rolling = rollouts.values().any(|r| !r.is_ready());
    let server = rollouts.get(&ms.name_any()).cloned();
    let server = server.unwrap_or(Rollout::Progressing("the server is not created yet".into()));
    if let Rollout::Progressing(m) = &server {
        progressing(Desired::yes(PROGRESSING, "RollingOut", m.clone()));
        return Outcome::progressing("Progressing", m.clone());
    }
    let waiting: Vec<String> = status
        .dependencies
        .iter()
        .filter(|d| !d.ready)
        .map(|d| format!("{}: {}", d.name, d.message.clone().unwrap_or_default()))
        .collect();
    let message = waiting.join("; ");
    let mut progressing =
        |d: Desired| conditions::set(&mut status.conditions, d, generation, now());
    if rolling {
        progressing(Desired::yes(PROGRESSING, "RollingOut", message.clone()));
    } else {
        progressing(Desired::no(
            PROGRESSING,
            "RolledOut",
            "every workload is available",
        ));
    }
    if !waiting.is_empty() {
        return Outcome::progressing("DependencyNotReady", message);
    }
    Outcome::ready("Ready", format!("serving at {}", plan::endpoint(ms)))
}

fn dependency(name: &str, ready: bool, message: Option<String>) -> Dependency {
    Dependency {
        name: name.into(),
        ready,
        message,
    }
}

/// Whether the Database is usable, and the Secret of the memory role when it is.
fn database_state(ms: &MemoryServer, db: Option<&Database>) -> Result<String, String> {
    let name = &ms.spec.database.name;
    let Some(db) = db else {
        return Err(format!(
            "Database {name} does not exist in namespace {}",
            ms.namespace().unwrap_or_default()
        ));
    };
    let status = db.status.clone().unwrap_or_default();
    if !conditions::is_true(&status.conditions, READY) {
        let why = status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| format!(": {}: {}", c.reason, c.message))
            .unwrap_or_default();
        return Err(format!("Database {name} is not Ready yet{why}"));
    }
    let role = &ms.spec.database.role;
    status.role_secrets.get(role).cloned().ok_or_else(|| {
        format!("Database {name} has no login role {role}: add it to the Database's spec.roles with login: true")
    })
}

/// `host:port` of a URL, for a reachability check.
pub fn host_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return None;
    }
    let has_port = host.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !host.ends_with(']')
    });
    if has_port {
        return Some(host.to_string());
    }
    let port = match scheme {
        "redis" | "rediss" => 6379,
        "https" => 443,
        _ => 80,
    };
    Some(format!("{host}:{port}"))
}

/// Whether an endpoint outside homeplane's workloads answers a TCP connection.
async fn reachable(name: &str, url: &str) -> Dependency {
    let Some(target) = host_port(url) else {
        return dependency(name, false, Some("the URL has no host".into()));
    };
    let attempt = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(target.clone()),
    )
    .await;
    match attempt {
        Ok(Ok(_)) => dependency(name, true, None),
        Ok(Err(e)) => dependency(
            name,
            false,
            Some(format!("{target} refuses connections: {e}")),
        ),
        Err(_) => dependency(
            name,
            false,
            Some(format!("{target} did not answer within 3s")),
        ),
    }
}

fn rollout_dependency(name: &str, rollout: Option<&Rollout>) -> Dependency {
    match rollout {
        Some(Rollout::Ready) => dependency(name, true, None),
        Some(Rollout::Progressing(m)) | Some(Rollout::Unschedulable(m)) => {
            dependency(name, false, Some(m.clone()))
        }
        None => dependency(name, false, Some("not created".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(
            host_port("redis://cache.lan").as_deref(),
            Some("cache.lan:6379")
        );
        assert_eq!(
            host_port("redis://:secret@cache.lan:6380/0").as_deref(),
            Some("cache.lan:6380")
        );
        assert_eq!(
            host_port("http://gpu.lan:11434/api").as_deref(),
            Some("gpu.lan:11434")
        );
        assert_eq!(
            host_port("https://embed.example").as_deref(),
            Some("embed.example:443")
        );
        assert_eq!(host_port("nonsense"), None);
    }
}
