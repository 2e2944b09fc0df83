//! The MemoryServer controller: waits for its Database, then runs the memory server (plus a
//! managed Redis and an embedding model when asked) through the shared workload builder, and
//! reports each dependency and the rollout from what the cluster says.

pub mod plan;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use homeplane_crds::database::Database;
use homeplane_crds::memory::{Dependency, MemoryServer, MemoryServerStatus};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::instrument;

use super::{Context, Error, apply_status, error_policy, now};
use crate::conditions::{self, DEGRADED, Desired, PROGRESSING, READY};
use crate::workload::apply::{Converged, converge, pruned_note, unschedulable};
use crate::workload::rollout::Rollout;
use crate::workload::{MANAGED_BY, MANAGED_BY_LABEL, Owner};

const CONTROLLER: &str = "memoryserver";

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let controller = Controller::new(ctx.watched::<MemoryServer>(), watcher::Config::default());
    let store = controller.store();
    controller
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
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile,
            |ms, error, ctx| error_policy(CONTROLLER, ms, error, ctx),
            ctx,
        )
        .for_each(super::log_stream_error(CONTROLLER))
        .await;
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

#[instrument(skip_all, fields(memoryserver = %ms.name_any(), namespace = ms.namespace().unwrap_or_default()))]
async fn reconcile(ms: Arc<MemoryServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = ms.namespace().unwrap_or_default();
    let old = ms.status.clone().unwrap_or_default();
    let mut status = MemoryServerStatus {
        conditions: old.conditions.clone(),
        endpoint: Some(plan::endpoint(&ms)),
        ..MemoryServerStatus::default()
    };
    let generation = ms.metadata.generation;
    let set = |status: &mut MemoryServerStatus, d: Desired| {
        conditions::set(&mut status.conditions, d, generation, now());
    };

    let db = Api::<Database>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&ms.spec.database.name)
        .await
        .map_err(Error::kube("read the Database"))?;
    let secret = match database_state(&ms, db.as_ref()) {
        Ok(secret) => secret,
        Err(message) => {
            status.dependencies = vec![dependency("database", false, Some(message.clone()))];
            set(
                &mut status,
                Desired::no(READY, "WaitingForDatabase", message),
            );
            conditions::remove(&mut status.conditions, PROGRESSING);
            conditions::remove(&mut status.conditions, DEGRADED);
            status.observed_generation = generation;
            write(&ms, &ctx, &old, status).await?;
            ctx.metrics.reconciled(CONTROLLER, started.elapsed());
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    status.dependencies.push(dependency("database", true, None));

    let owner = Owner::of(ms.as_ref());
    let workloads = plan::workloads(&ms, Some(&secret));
    let converged = converge(&ctx.client, &owner, &workloads, &BTreeSet::new()).await?;
    let action = match converged {
        Converged::Refused { reason, message } => {
            if Converged::refusal_is_news(&old.conditions, reason) {
                ctx.event(ms.as_ref(), EventType::Warning, reason, message.clone())
                    .await;
            }
            for d in Converged::refused_conditions(reason, &message) {
                set(&mut status, d);
            }
            conditions::remove(&mut status.conditions, PROGRESSING);
            Action::requeue(Duration::from_secs(60))
        }
        Converged::Applied { rollouts, pruned } => {
            if let Some(note) = pruned_note(&pruned) {
                ctx.event(ms.as_ref(), EventType::Normal, "Pruned", note)
                    .await;
            }
            status.dependencies.push(match &ms.spec.cache.external {
                Some(url) => reachable("cache", url).await,
                None => rollout_dependency("cache", rollouts.get(&plan::cache_name(&ms))),
            });
            status.dependencies.push(match &ms.spec.embedding.endpoint {
                Some(e) => reachable("embedding", &e.url).await,
                None => rollout_dependency("embedding", rollouts.get(&plan::embedding_name(&ms))),
            });
            let server = rollouts
                .get(&ms.name_any())
                .cloned()
                .unwrap_or(Rollout::Progressing("the server is not created yet".into()));
            let waiting: Vec<String> = status
                .dependencies
                .iter()
                .filter(|d| !d.ready)
                .map(|d| format!("{}: {}", d.name, d.message.clone().unwrap_or_default()))
                .collect();
            conditions::remove(&mut status.conditions, DEGRADED);
            if let Some(refused) = unschedulable(&rollouts) {
                for d in refused {
                    set(&mut status, d);
                }
            } else if let Rollout::Progressing(m) = &server {
                set(&mut status, Desired::no(READY, "Progressing", m.clone()));
                set(
                    &mut status,
                    Desired::yes(PROGRESSING, "RollingOut", m.clone()),
                );
            } else if !waiting.is_empty() {
                let message = waiting.join("; ");
                set(
                    &mut status,
                    Desired::no(READY, "DependencyNotReady", message.clone()),
                );
                let rolling = rollouts.values().any(|r| !r.is_ready());
                if rolling {
                    set(
                        &mut status,
                        Desired::yes(PROGRESSING, "RollingOut", message),
                    );
                } else {
                    set(
                        &mut status,
                        Desired::no(PROGRESSING, "RolledOut", "every workload is available"),
                    );
                }
            } else {
                set(
                    &mut status,
                    Desired::yes(
                        READY,
                        "Ready",
                        format!("serving at {}", plan::endpoint(&ms)),
                    ),
                );
                set(
                    &mut status,
                    Desired::no(PROGRESSING, "RolledOut", "every workload is available"),
                );
            }
            if conditions::is_true(&status.conditions, READY) {
                Action::requeue(Duration::from_secs(300))
            } else {
                Action::requeue(Duration::from_secs(10))
            }
        }
    };
    status.observed_generation = generation;
    write(&ms, &ctx, &old, status).await?;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    ctx.succeeded(&super::key(ms.as_ref()));
    Ok(action)
}

async fn write(
    ms: &MemoryServer,
    ctx: &Context,
    old: &MemoryServerStatus,
    new: MemoryServerStatus,
) -> Result<(), Error> {
    if old == &new && ms.status.is_some() {
        return Ok(());
    }
    let api: Api<MemoryServer> =
        Api::namespaced(ctx.client.clone(), &ms.namespace().unwrap_or_default());
    apply_status(&api, ms, &new).await
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
