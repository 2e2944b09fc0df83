//! What a VoicePipeline runs and how its stages are wired, as pure functions: a workload per
//! in-cluster stage (each told the next stage's endpoint), the endpoint of every stage, the
//! chain the gateway reads, and the latency figures of the probe. Also used by `homeplane plan`.

use std::collections::VecDeque;
use std::time::Duration;

use homeplane_crds::voice::{Stage, StageRole, VoicePipeline};
use k8s_openapi::api::core::v1::EnvVar;
use kube::ResourceExt;
use serde::Serialize;

use crate::workload::{NamedPort, Workload};

/// Name of a stage's workload: `<pipeline>-<stage>`.
pub fn workload_name(vp: &VoicePipeline, stage: &str) -> String {
    format!("{}-{stage}", vp.name_any())
}

/// Name of the ConfigMap holding the chain.
pub fn chain_name(vp: &VoicePipeline) -> String {
    format!("{}-chain", vp.name_any())
}

/// The role as the API writes it (`speechToText`).
pub fn role_name(role: StageRole) -> String {
    serde_json::to_value(role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Where a stage is reached: an external URL, its own Service, or the Service of the stage
/// that serves it; plus the stage's `path`.
pub fn endpoint(vp: &VoicePipeline, stage: &Stage) -> Option<String> {
    let ns = vp.namespace().unwrap_or_default();
    let base = if let Some(e) = &stage.external {
        e.url.clone()
    } else if let Some(w) = &stage.workload {
        format!(
            "http://{}.{ns}.svc:{}",
            workload_name(vp, &stage.name),
            w.port
        )
    } else {
        let host = vp
            .spec
            .stages
            .iter()
            .find(|s| Some(&s.name) == stage.served_by.as_ref())?;
        let w = host.workload.as_ref()?;
        format!(
            "http://{}.{ns}.svc:{}",
            workload_name(vp, &host.name),
            w.port
        )
    };
    Some(match &stage.path {
        Some(path) => format!("{}{path}", base.trim_end_matches('/')),
        None => base,
    })
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// One workload per stage that runs in the cluster, in pipeline order.
pub fn workloads(vp: &VoicePipeline) -> Vec<Workload> {
    let stages = &vp.spec.stages;
    stages
        .iter()
        .enumerate()
        .filter_map(|(i, stage)| {
            let w = stage.workload.as_ref()?;
            let mut vars: Vec<EnvVar> = w.env.iter().map(|(k, v)| env(k, v.clone())).collect();
            vars.push(env("STAGE_NAME", stage.name.clone()));
            vars.push(env("STAGE_ROLE", role_name(stage.role)));
            if let Some(next) = stages.get(i + 1).and_then(|n| endpoint(vp, n)) {
                vars.push(env("NEXT_STAGE_URL", next));
            }
            // A workload that also serves other stages learns their names.
            let served: Vec<&str> = stages
                .iter()
                .filter(|s| s.served_by.as_ref() == Some(&stage.name))
                .map(|s| s.name.as_str())
                .collect();
            if !served.is_empty() {
                vars.push(env("ALSO_SERVES", served.join(",")));
            }
            Some(Workload {
                name: workload_name(vp, &stage.name),
                app: "voice-stage".into(),
                component: Some(stage.name.clone()),
                image: w.image.clone(),
                args: w.args.clone(),
                env: vars,
                ports: vec![NamedPort {
                    name: "http".into(),
                    port: w.port,
                }],
                readiness_path: w.health_path.clone(),
                readiness_command: Vec::new(),
                storage: None,
                replicas: 1,
                placement: w.placement.clone(),
            })
        })
        .collect()
}

/// One link of the chain, as the gateway reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// Stage name.
    pub name: String,
    /// Stage role.
    pub role: String,
    /// Where it is reached.
    pub endpoint: Option<String>,
    /// The next stage's endpoint.
    pub next: Option<String>,
}

/// The whole chain in order.
pub fn chain(vp: &VoicePipeline) -> Vec<Link> {
    let stages = &vp.spec.stages;
    stages
        .iter()
        .enumerate()
        .map(|(i, s)| Link {
            name: s.name.clone(),
            role: role_name(s.role),
            endpoint: endpoint(vp, s),
            next: stages.get(i + 1).and_then(|n| endpoint(vp, n)),
        })
        .collect()
}

/// The last probe results of a pipeline, newest last, at most `window` long.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    /// Each call: its latency, or `None` when it failed or timed out.
    pub calls: VecDeque<Option<Duration>>,
}

/// p50 and p95 of a window, and how many calls failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// Calls that failed (counted at the timeout, so they raise the percentiles).
    pub failed: usize,
    /// Calls in the window.
    pub calls: usize,
}

impl Samples {
    /// Records a call and keeps the newest `window`.
    pub fn record(&mut self, call: Option<Duration>, window: usize) {
        self.calls.push_back(call);
        while self.calls.len() > window.max(1) {
            self.calls.pop_front();
        }
    }

    /// Nearest-rank percentiles over the window; a failed call counts as `timeout`.
    pub fn latency(&self, timeout: Duration) -> Option<Latency> {
        if self.calls.is_empty() {
            return None;
        }
        let mut all: Vec<Duration> = self.calls.iter().map(|c| c.unwrap_or(timeout)).collect();
        all.sort();
        let rank = |p: f64| {
            let n = all.len() as f64;
            let i = (p * n).ceil() as usize;
            all[i.clamp(1, all.len()) - 1]
        };
        Some(Latency {
            p50: rank(0.50),
            p95: rank(0.95),
            failed: self.calls.iter().filter(|c| c.is_none()).count(),
            calls: all.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
apiVersion: homeplane.dev/v1alpha1
kind: VoicePipeline
metadata: {name: assistant, namespace: ai}
spec:
  latencyBudget: 2s
  stages:
  - {name: wake, role: wakeWord, external: {url: "tcp://satellite.lan:10700"}}
  - {name: stt, role: speechToText, servedBy: llm, path: /v1/audio/transcriptions}
  - {name: router, role: router, external: {url: "http://n8n.automation.svc:5678/webhook/voice"}}
  - name: llm
    role: llm
    workload: {image: "ollama/ollama:0.5", port: 11434, placement: {class: gpu, cpu: "4", memory: 16Gi, gpu: 1}}
  - name: tts
    role: textToSpeech
    workload: {image: "piper:1", port: 5000, env: {VOICE: en_GB}, placement: {class: pi}}
  - {name: sonos, role: sink, external: {url: "http://sonos.lan:1400"}}
"#;

    fn seed() -> VoicePipeline {
        serde_yaml::from_str(SEED).unwrap()
    }

    #[test]
    fn in_cluster_stages_become_workloads_told_the_next_endpoint() {
        let vp = seed();
        let ws = workloads(&vp);
        let names: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["assistant-llm", "assistant-tts"]);
        let var = |w: &Workload, k: &str| {
            w.env
                .iter()
                .find(|e| e.name == k)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            var(&ws[0], "NEXT_STAGE_URL").as_deref(),
            Some("http://assistant-tts.ai.svc:5000")
        );
        assert_eq!(var(&ws[0], "ALSO_SERVES").as_deref(), Some("stt"));
        assert_eq!(
            var(&ws[1], "NEXT_STAGE_URL").as_deref(),
            Some("http://sonos.lan:1400")
        );
        assert_eq!(var(&ws[1], "VOICE").as_deref(), Some("en_GB"));
        assert_eq!(var(&ws[1], "STAGE_ROLE").as_deref(), Some("textToSpeech"));
    }

    #[test]
    fn the_chain_lists_every_stage_with_its_endpoint_and_next() {
        let c = chain(&seed());
        assert_eq!(c.len(), 6);
        assert_eq!(
            c[1].endpoint.as_deref(),
            Some("http://assistant-llm.ai.svc:11434/v1/audio/transcriptions")
        );
        assert_eq!(c[0].next, c[1].endpoint);
        assert_eq!(c[5].next, None);
        assert_eq!(c[1].role, "speechToText");
    }

    #[test]
    fn percentiles_over_the_window_count_failures_at_the_timeout() {
        let mut s = Samples::default();
        assert_eq!(s.latency(Duration::from_secs(10)), None);
        for ms in [100, 200, 300, 400, 500] {
            s.record(Some(Duration::from_millis(ms)), 4);
        }
        assert_eq!(s.calls.len(), 4);
        let l = s.latency(Duration::from_secs(10)).unwrap();
        assert_eq!(l.p50, Duration::from_millis(300));
        assert_eq!(l.p95, Duration::from_millis(500));
        s.record(None, 4);
        let l = s.latency(Duration::from_secs(10)).unwrap();
        assert_eq!(l.p95, Duration::from_secs(10));
        assert_eq!(l.failed, 1);
    }
}
