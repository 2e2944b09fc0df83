//! The VoicePipeline controller: runs the in-cluster stages through the shared workload builder
//! (refusing the whole pipeline before anything is created when its stages do not fit,
//! GPUs included), wires each stage to the next, publishes the chain in a ConfigMap for the
//! gateway, reports every stage's readiness from its rollout, and measures end-to-end latency
//! with the probe against the budget.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use homeplane_crds::voice::{LatencyProbe, StageStatus, VoicePipeline, VoicePipelineStatus};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::ObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument};

use super::{Context, Error, apply_status, error_policy, now};
use crate::conditions::{self, DEGRADED, Desired, PROGRESSING, READY, STALLED};
use crate::duration;
use crate::workload::apply::{Converged, apply_one, converge, pruned_note, room, unschedulable};
use crate::workload::rollout::Rollout;
use crate::workload::{MANAGED_BY, MANAGED_BY_LABEL, OWNER_LABEL, Owner, Workload};

use self::plan::Samples;

const CONTROLLER: &str = "voicepipeline";
/// Condition type: p95 within the latency budget.
pub const WITHIN_BUDGET: &str = "WithinBudget";

/// Probe results per pipeline (`namespace/name`), with when the last call was made, and the
/// one HTTP client every probe call shares (its connection pool and TLS setup are built once).
#[derive(Default)]
struct Probes {
    by_pipeline: Mutex<HashMap<String, (Instant, Samples)>>,
    client: reqwest::Client,
}

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let probes = Arc::new(Probes::default());
    Controller::new(ctx.watched::<VoicePipeline>(), watcher::Config::default())
        .owns(ctx.watched::<Deployment>(), owned.clone())
        .owns(ctx.watched::<StatefulSet>(), owned.clone())
        .owns(ctx.watched::<Service>(), owned.clone())
        .owns(ctx.watched::<ConfigMap>(), owned)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            move |vp, ctx| reconcile(vp, ctx, probes.clone()),
            |vp, error, ctx| error_policy(CONTROLLER, vp, error, ctx),
            ctx,
        )
        .for_each(super::log_stream_error(CONTROLLER))
        .await;
}

fn chain_config_map(vp: &VoicePipeline, owner: &Owner) -> Result<ConfigMap, Error> {
    let chain =
        serde_json::to_string_pretty(&plan::chain(vp)).map_err(|source| Error::Serialize {
            what: "the stage chain",
            source,
        })?;
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(plan::chain_name(vp)),
            namespace: vp.namespace(),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (OWNER_LABEL.to_string(), owner.label()),
                (
                    "app.kubernetes.io/name".to_string(),
                    "voice-chain".to_string(),
                ),
                (
                    "app.kubernetes.io/instance".to_string(),
                    plan::chain_name(vp),
                ),
            ])),
            owner_references: vp.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("chain.json".to_string(), chain)])),
        ..ConfigMap::default()
    })
}

fn stage_statuses(vp: &VoicePipeline, rollouts: &BTreeMap<String, Rollout>) -> Vec<StageStatus> {
    vp.spec
        .stages
        .iter()
        .map(|s| {
            let host = if s.workload.is_some() {
                Some(s.name.as_str())
            } else {
                s.served_by.as_deref()
            };
            let (ready, message) = match host {
                None => (
                    true,
                    Some(
                        "external endpoint: not run by homeplane (the latency probe reaches it)"
                            .into(),
                    ),
                ),
                Some(h) => match rollouts.get(&plan::workload_name(vp, h)) {
                    Some(Rollout::Ready) => (true, None),
                    Some(Rollout::Progressing(m)) | Some(Rollout::Unschedulable(m)) => {
                        (false, Some(m.clone()))
                    }
                    None => (false, Some("not created".into())),
                },
            };
            StageStatus {
                name: s.name.clone(),
                ready,
                endpoint: plan::endpoint(vp, s),
                message,
            }
        })
        .collect()
}

/// Whether a refusal is one that only a person can cure (`Stalled`, so that Flux fails the
/// Kustomization at once instead of waiting out its timeout): a placement the builder refuses,
/// or more GPUs on a class than all of its nodes have together, which no workload finishing
/// elsewhere can free. A shortfall of free room, or a class that does not exist yet, may pass.
async fn refusal_needs_a_person(
    ctx: &Context,
    workloads: &[Workload],
    reason: &str,
) -> Result<bool, Error> {
    match reason {
        "InvalidPlacement" => Ok(true),
        "Unschedulable" => {
            for (class, asked) in gpus_by_class(workloads) {
                if let Some((_, room)) = room(&ctx.client, class, None).await? {
                    let total = room.gpu.map_or(0, |(_, gpus)| gpus.allocatable.0 / 1000);
                    if i128::from(asked) > total {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// The GPUs the workloads ask for, per class (pods × GPUs per pod).
fn gpus_by_class(workloads: &[Workload]) -> BTreeMap<&str, i64> {
    let mut by_class = BTreeMap::new();
    for w in workloads {
        let gpus = i64::from(w.placement.gpu.unwrap_or(0).max(0)) * i64::from(w.replicas.max(0));
        if gpus > 0 {
            *by_class.entry(w.placement.class.as_str()).or_insert(0) += gpus;
        }
    }
    by_class
}

/// Calls the probe once: `Some(latency)` for a 2xx answer within the timeout.
async fn call_probe(
    client: &reqwest::Client,
    probe: &LatencyProbe,
    timeout: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let answer = client.get(&probe.url).timeout(timeout).send().await.ok()?;
    let ok = answer.status().is_success();
    // The run is over when the whole answer has arrived.
    answer.bytes().await.ok()?;
    ok.then(|| started.elapsed())
}

#[instrument(skip_all, fields(voicepipeline = %vp.name_any(), namespace = vp.namespace().unwrap_or_default()))]
async fn reconcile(
    vp: Arc<VoicePipeline>,
    ctx: Arc<Context>,
    probes: Arc<Probes>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let old = vp.status.clone().unwrap_or_default();
    let generation = vp.metadata.generation;
    let mut status = VoicePipelineStatus {
        conditions: old.conditions.clone(),
        latency_p50: old.latency_p50.clone(),
        latency_p95: old.latency_p95.clone(),
        ..VoicePipelineStatus::default()
    };
    let set = |status: &mut VoicePipelineStatus, d: Desired| {
        conditions::set(&mut status.conditions, d, generation, now());
    };
    let owner = Owner::of(vp.as_ref());
    let keep = BTreeSet::from([format!("ConfigMap/{}", plan::chain_name(&vp))]);
    let workloads = plan::workloads(&vp);
    let mut requeue = Duration::from_secs(300);
    match converge(&ctx.client, &owner, &workloads, &keep).await? {
        Converged::Refused { reason, message } => {
            if Converged::refusal_is_news(&old.conditions, reason) {
                ctx.event(vp.as_ref(), EventType::Warning, reason, message.clone())
                    .await;
            }
            for d in Converged::refused_conditions(reason, &message) {
                set(&mut status, d);
            }
            if refusal_needs_a_person(&ctx, &workloads, reason).await? {
                set(&mut status, Desired::yes(STALLED, reason, message.as_str()));
            } else {
                conditions::remove(&mut status.conditions, STALLED);
            }
            conditions::remove(&mut status.conditions, PROGRESSING);
            status.stages = stage_statuses(&vp, &BTreeMap::new());
            requeue = Duration::from_secs(60);
        }
        Converged::Applied { rollouts, pruned } => {
            if let Some(note) = pruned_note(&pruned) {
                ctx.event(vp.as_ref(), EventType::Normal, "Pruned", note)
                    .await;
            }
            apply_one(&ctx.client, &chain_config_map(&vp, &owner)?).await?;
            status.stages = stage_statuses(&vp, &rollouts);
            let waiting: Vec<String> = status
                .stages
                .iter()
                .filter(|s| !s.ready)
                .map(|s| format!("{}: {}", s.name, s.message.clone().unwrap_or_default()))
                .collect();
            conditions::remove(&mut status.conditions, DEGRADED);
            conditions::remove(&mut status.conditions, STALLED);
            if let Some(refused) = unschedulable(&rollouts) {
                for d in refused {
                    set(&mut status, d);
                }
            } else if !waiting.is_empty() {
                let message = waiting.join("; ");
                set(
                    &mut status,
                    Desired::no(READY, "StagesNotReady", message.clone()),
                );
                set(
                    &mut status,
                    Desired::yes(PROGRESSING, "RollingOut", message),
                );
            } else {
                set(
                    &mut status,
                    Desired::yes(READY, "Ready", "every stage is ready"),
                );
                set(
                    &mut status,
                    Desired::no(PROGRESSING, "RolledOut", "every stage is available"),
                );
            }
            if !conditions::is_true(&status.conditions, READY) {
                requeue = Duration::from_secs(10);
            }
        }
    }
    let ready = status.stages.iter().filter(|s| s.ready).count();
    status.ready_stages = Some(format!("{ready}/{}", status.stages.len()));

    // The latency probe.
    let key = super::key(vp.as_ref());
    match &vp.spec.probe {
        None => {
            probes.by_pipeline.lock().map(|mut m| m.remove(&key)).ok();
            status.latency_p50 = None;
            status.latency_p95 = None;
            conditions::remove(&mut status.conditions, WITHIN_BUDGET);
        }
        Some(probe) => {
            let parse = |text: &str, field: &str| {
                duration::parse(text).map_err(|e| Error::Spec(format!("spec.{field}: {e}")))
            };
            let interval = parse(&vp.spec.probe_interval, "probeInterval")?;
            let timeout = parse(&probe.timeout, "probe.timeout")?;
            let budget = parse(&vp.spec.latency_budget, "latencyBudget")?;
            let window = usize::try_from(probe.window).unwrap_or(1);
            let due = probes
                .by_pipeline
                .lock()
                .map(|m| m.get(&key).is_none_or(|(at, _)| at.elapsed() >= interval))
                .unwrap_or(true);
            if due {
                let call = call_probe(&probes.client, probe, timeout).await;
                if let Ok(mut m) = probes.by_pipeline.lock() {
                    let entry = m
                        .entry(key.clone())
                        .or_insert_with(|| (Instant::now(), Samples::default()));
                    entry.0 = Instant::now();
                    entry.1.record(call, window);
                }
            }
            let latency = probes
                .by_pipeline
                .lock()
                .ok()
                .and_then(|m| m.get(&key).and_then(|(_, s)| s.latency(timeout)));
            if let Some(l) = latency {
                status.latency_p50 = Some(duration::format(l.p50));
                status.latency_p95 = Some(duration::format(l.p95));
                let figures = format!(
                    "p95 {} and p50 {} over the last {} probes ({} failed); budget {}",
                    duration::format(l.p95),
                    duration::format(l.p50),
                    l.calls,
                    l.failed,
                    vp.spec.latency_budget
                );
                if l.p95 > budget {
                    set(
                        &mut status,
                        Desired::no(WITHIN_BUDGET, "LatencyBudgetExceeded", figures.clone()),
                    );
                    if !conditions::is_true(&status.conditions, DEGRADED) {
                        set(
                            &mut status,
                            Desired::yes(DEGRADED, "LatencyBudgetExceeded", figures),
                        );
                    }
                } else {
                    set(
                        &mut status,
                        Desired::yes(WITHIN_BUDGET, "WithinBudget", figures),
                    );
                }
            }
            let was = !conditions::is_true(&old.conditions, WITHIN_BUDGET)
                && old.conditions.iter().any(|c| c.type_ == WITHIN_BUDGET);
            let is = status
                .conditions
                .iter()
                .any(|c| c.type_ == WITHIN_BUDGET && c.status == "False");
            if was != is {
                let (kind, reason) = if is {
                    (EventType::Warning, "LatencyBudgetExceeded")
                } else {
                    (EventType::Normal, "WithinBudget")
                };
                let message = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == WITHIN_BUDGET)
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                info!(exceeded = is, %message, "latency budget");
                ctx.event(vp.as_ref(), kind, reason, message).await;
            }
            requeue = requeue.min(interval);
        }
    }
    if !conditions::is_true(&status.conditions, DEGRADED) {
        conditions::remove(&mut status.conditions, DEGRADED);
    }
    status.observed_generation = generation;
    if old != status || vp.status.is_none() {
        let api: Api<VoicePipeline> =
            Api::namespaced(ctx.client.clone(), &vp.namespace().unwrap_or_default());
        apply_status(&api, vp.as_ref(), &status).await?;
    }
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    ctx.succeeded(&key);
    Ok(Action::requeue(requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_counted_per_class() {
        let vp: VoicePipeline = serde_yaml::from_str(
            r#"
apiVersion: homeplane.dev/v1alpha1
kind: VoicePipeline
metadata: {name: greedy, namespace: ai}
spec:
  stages:
  - {name: stt, role: speechToText, workload: {image: "whisper:1", port: 9000, placement: {class: gpu, gpu: 1}}}
  - {name: llm, role: llm, workload: {image: "ollama:1", port: 11434, placement: {class: gpu, gpu: 2}}}
  - {name: tts, role: textToSpeech, workload: {image: "piper:1", port: 5000, placement: {class: pi}}}
"#,
        )
        .unwrap();
        let workloads = plan::workloads(&vp);
        assert_eq!(
            gpus_by_class(&workloads),
            BTreeMap::from([("gpu", 3)]),
            "one GPU for speech-to-text and two for the LLM on the GPU class; none on the Pi"
        );
    }
}
