//! The VoicePipeline controller: runs the in-cluster stages through the shared workload builder
//! (refusing the whole pipeline before anything is created when its stages do not fit,
//! GPUs included), wires each stage to the next, publishes the chain in a ConfigMap for the
//! gateway, reports every stage's readiness from its rollout, and measures end-to-end latency
//! with the probe against the budget. Pipeline: build (pure workloads and chain) -> apply
//! (capacity check, server-side apply, pruning) -> status (stages) -> probe (latency).

pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeplane_crds::voice::{LatencyProbe, StageStatus, VoicePipeline, VoicePipelineStatus};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::ObjectMeta;
use kube::runtime::events::EventType;
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Context, Error, now};
use crate::conditions::{self, Desired, PROGRESSING};
use crate::duration;
use crate::reconcile::{self, Outcome, Reconciler, State, watch};
use crate::workload::apply::{Converged, apply_one, converge, pruned_note, room};
use crate::workload::rollout::Rollout;
use crate::workload::{MANAGED_BY, MANAGED_BY_LABEL, OWNER_LABEL, Owner, Workload};

use self::plan::{Latency, Samples};

/// Condition type: p95 within the latency budget.
pub const WITHIN_BUDGET: &str = "WithinBudget";

/// The VoicePipeline controller, with the probe results per pipeline (`namespace/name`) and
/// when each was last probed, and the one HTTP client every probe call shares (its connection
/// pool and TLS setup are built once).
#[derive(Default)]
pub struct VoicePipelines {
    by_pipeline: Mutex<HashMap<String, (Instant, Samples)>>,
    client: reqwest::Client,
}

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let controller = Controller::new(ctx.watched::<VoicePipeline>(), watch::config())
        .owns(ctx.watched::<Deployment>(), owned.clone())
        .owns(ctx.watched::<StatefulSet>(), owned.clone())
        .owns(ctx.watched::<Service>(), owned.clone())
        .owns(ctx.watched::<ConfigMap>(), owned);
    reconcile::run(VoicePipelines::default(), controller, ctx, shutdown).await;
}

impl Reconciler for VoicePipelines {
    type Object = VoicePipeline;
    const NAME: &'static str = "voicepipeline";

    async fn reconcile(
        &self,
        vp: &VoicePipeline,
        status: &mut VoicePipelineStatus,
        ctx: &Context,
    ) -> Result<Outcome, Error> {
        let owner = Owner::of(vp);
        let keep = BTreeSet::from([format!("ConfigMap/{}", plan::chain_name(vp))]);
        let workloads = plan::workloads(vp);
        let mut outcome = match converge(&ctx.client, &owner, &workloads, &keep).await? {
            Converged::Refused { reason, message } => {
                conditions::remove(&mut status.conditions, PROGRESSING);
                status.stages = stage_statuses(vp, &BTreeMap::new());
                if more_gpus_than_a_class_has(ctx, &workloads, reason).await? {
                    Outcome::blocked(reason, message).after(Duration::from_secs(60))
                } else {
                    super::refused(reason, message)
                }
            }
            Converged::Applied { rollouts, pruned } => {
                if let Some(note) = pruned_note(&pruned) {
                    ctx.event(vp, EventType::Normal, "Pruned", note).await;
                }
                apply_one(&ctx.client, &chain_config_map(vp, &owner)?).await?;
                status.stages = stage_statuses(vp, &rollouts);
                rollout(vp, status, &rollouts)
            }
        };
        let ready = status.stages.iter().filter(|s| s.ready).count();
        status.ready_stages = Some(format!("{ready}/{}", status.stages.len()));
        if let Some((interval, budget_exceeded)) = self.probe(vp, status, ctx).await? {
            let current = match (outcome.requeue, outcome.state) {
                (Some(after), _) => after,
                (None, State::Progressing) => reconcile::driver::PROGRESS_POLL,
                (None, _) => interval,
            };
            outcome.requeue = Some(current.min(interval));
            if let Some(figures) = budget_exceeded {
                outcome = outcome.degraded("LatencyBudgetExceeded", figures);
            }
        }
        Ok(outcome)
    }
}

/// Where the pipeline stands once its workloads are applied.
fn rollout(
    vp: &VoicePipeline,
    status: &mut VoicePipelineStatus,
    rollouts: &BTreeMap<String, Rollout>,
) -> Outcome {
    let generation = vp.metadata.generation;
    let mut set = |d: Desired| conditions::set(&mut status.conditions, d, generation, now());
    if let Some(outcome) = super::unschedulable(rollouts) {
        set(Desired::no(
            PROGRESSING,
            "Unschedulable",
            "the scheduler cannot place a pod",
        ));
        return outcome;
    }
    let waiting: Vec<String> = status
        .stages
        .iter()
        .filter(|s| !s.ready)
        .map(|s| format!("{}: {}", s.name, s.message.clone().unwrap_or_default()))
        .collect();
    let mut set = |d: Desired| conditions::set(&mut status.conditions, d, generation, now());
    if waiting.is_empty() {
        set(Desired::no(
            PROGRESSING,
            "RolledOut",
            "every stage is available",
        ));
        return Outcome::ready("Ready", "every stage is ready");
    }
    let message = waiting.join("; ");
    set(Desired::yes(PROGRESSING, "RollingOut", message.clone()));
    Outcome::progressing("StagesNotReady", message)
}

impl VoicePipelines {
    /// Runs the latency probe when it is due and records p50/p95 and `WithinBudget`; returns the
    /// probe interval and, when p95 exceeds the budget, the figures. `None` without a probe.
    async fn probe(
        &self,
        vp: &VoicePipeline,
        status: &mut VoicePipelineStatus,
        ctx: &Context,
    ) -> Result<Option<(Duration, Option<String>)>, Error> {
        let key = reconcile::key(vp);
        let Some(probe) = &vp.spec.probe else {
            self.by_pipeline.lock().map(|mut m| m.remove(&key)).ok();
            status.latency_p50 = None;
            status.latency_p95 = None;
            conditions::remove(&mut status.conditions, WITHIN_BUDGET);
            return Ok(None);
        };
        let parse = |text: &str, field: &str| {
            duration::parse(text).map_err(|e| Error::Spec(format!("spec.{field}: {e}")))
        };
        let interval = parse(&vp.spec.probe_interval, "probeInterval")?;
        let timeout = parse(&probe.timeout, "probe.timeout")?;
        let budget = parse(&vp.spec.latency_budget, "latencyBudget")?;
        let window = usize::try_from(probe.window).unwrap_or(1);
        if self.due(&key, interval) {
            let call = call_probe(&self.client, probe, timeout).await;
            if let Ok(mut m) = self.by_pipeline.lock() {
                let entry = m
                    .entry(key.clone())
                    .or_insert_with(|| (Instant::now(), Samples::default()));
                entry.0 = Instant::now();
                entry.1.record(call, window);
            }
        }
        let latency = self
            .by_pipeline
            .lock()
            .ok()
            .and_then(|m| m.get(&key).and_then(|(_, s)| s.latency(timeout)));
        let exceeded = match latency {
            Some(l) => budget_verdict(vp, status, l, budget, ctx).await,
            None => None,
        };
        Ok(Some((interval, exceeded)))
    }

    fn due(&self, key: &str, interval: Duration) -> bool {
        self.by_pipeline
            .lock()
            .map(|m| m.get(key).is_none_or(|(at, _)| at.elapsed() >= interval))
            .unwrap_or(true)
    }
}

/// Records the latency against the budget (`WithinBudget`, an event when it changes); the
/// figures when p95 exceeds it.
async fn budget_verdict(
    vp: &VoicePipeline,
    status: &mut VoicePipelineStatus,
    l: Latency,
    budget: Duration,
    ctx: &Context,
) -> Option<String> {
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
    let exceeded = l.p95 > budget;
    let was = status
        .conditions
        .iter()
        .find(|c| c.type_ == WITHIN_BUDGET)
        .map(|c| c.status == "False");
    let verdict = match exceeded {
        true => Desired::no(WITHIN_BUDGET, "LatencyBudgetExceeded", figures.clone()),
        false => Desired::yes(WITHIN_BUDGET, "WithinBudget", figures.clone()),
    };
    conditions::set(
        &mut status.conditions,
        verdict,
        vp.metadata.generation,
        now(),
    );
    if was.unwrap_or(false) != exceeded {
        let (kind, reason) = match exceeded {
            true => (EventType::Warning, "LatencyBudgetExceeded"),
            false => (EventType::Normal, "WithinBudget"),
        };
        info!(exceeded, message = %figures, "latency budget");
        ctx.event(vp, kind, reason, figures.clone()).await;
    }
    exceeded.then_some(figures)
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

/// Whether an `Unschedulable` refusal asks for more GPUs on a class than all of its nodes have
/// together: no workload finishing elsewhere can free them, so only a person can cure it
/// (`Stalled`, and Flux fails the Kustomization at once instead of waiting out its timeout). A
/// shortfall of free room, or a class that does not exist yet, may pass and is retried.
async fn more_gpus_than_a_class_has(
    ctx: &Context,
    workloads: &[Workload],
    reason: &str,
) -> Result<bool, Error> {
    if reason != "Unschedulable" {
        return Ok(false);
    }
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
