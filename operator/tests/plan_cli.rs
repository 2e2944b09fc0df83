//! `homeplane plan -f DIR`, offline: the example homelab fits; a folder where something does
//! not fit prints why and exits non-zero; a class without declared capacity is a clear error.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");

fn plan(dir: &Path) -> (i32, String, String) {
    let out = Command::new(BINARY)
        .args(["plan", "-f"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

const CLASSES: &str = r#"apiVersion: homeplane.dev/v1alpha1
kind: NodeClass
metadata: {name: pi}
spec:
  nodeSelector: {homeplane.dev/class: pi}
  capacity: {cpu: "4", memory: 8Gi}
  defaults: {cpu: 250m, memory: 256Mi}
  reserved: {cpu: 500m, memory: 1Gi}
---
apiVersion: homeplane.dev/v1alpha1
kind: NodeClass
metadata: {name: gpu}
spec:
  nodeSelector: {homeplane.dev/class: gpu}
  gpuResource: amd.com/gpu
  capacity: {cpu: "16", memory: 64Gi, gpu: 1}
  defaults: {cpu: "1", memory: 2Gi}
"#;

#[test]
fn the_example_homelab_fits() {
    let (code, out, err) = plan(&root().join("manifests/overlays/homelab"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("NodeClass pi: 1 node(s) (arm64); allocatable cpu 4, memory 8Gi"),
        "{out}"
    );
    assert!(
        out.contains("* ai/assistant-llm (VoicePipeline assistant)"),
        "{out}"
    );
    assert!(out.contains("edge/caddy"), "{out}");
    assert!(!out.contains("DOES NOT FIT"), "{out}");
}

#[test]
fn what_does_not_fit_is_named_and_the_exit_status_says_so() {
    let dir = tempdir();
    std::fs::write(dir.join("classes.yaml"), CLASSES).unwrap();
    std::fs::write(
        dir.join("running.yaml"),
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: n8n, namespace: automation}
spec:
  replicas: 2
  selector: {matchLabels: {app: n8n}}
  template:
    metadata: {labels: {app: n8n}}
    spec:
      nodeSelector: {homeplane.dev/class: pi}
      containers:
      - name: n8n
        image: n8nio/n8n
        resources: {limits: {cpu: "1", memory: 2Gi}}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("voice.yaml"),
        r#"apiVersion: homeplane.dev/v1alpha1
kind: VoicePipeline
metadata: {name: greedy, namespace: ai}
spec:
  stages:
  - {name: stt, role: speechToText, workload: {image: whisper, port: 9000, placement: {class: gpu, gpu: 1}}}
  - {name: llm, role: llm, workload: {image: ollama, port: 11434, placement: {class: gpu, gpu: 1}}}
  - {name: tts, role: textToSpeech, workload: {image: piper, port: 5000, placement: {class: pi, cpu: "2"}}}
"#,
    )
    .unwrap();
    let (code, out, err) = plan(&dir);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("DOES NOT FIT: greedy-stt, greedy-llm ask for 2 amd.com/gpu on NodeClass gpu, which has 1 in all and 1 free"),
        "{out}"
    );
    assert!(
        out.contains("DOES NOT FIT: greedy-tts does not fit NodeClass pi: cpu 2, memory 256Mi asked, but only cpu 1500m and memory 3Gi are free"),
        "{out}"
    );
    assert!(
        out.contains(
            "automation/n8n                                            2        1       2Gi"
        ),
        "{out}"
    );
    assert!(err.contains("do not fit"), "{err}");
}

#[test]
fn a_class_without_capacity_is_a_clear_error() {
    let dir = tempdir();
    std::fs::write(
        dir.join("classes.yaml"),
        CLASSES.replace("  capacity: {cpu: \"4\", memory: 8Gi}\n", ""),
    )
    .unwrap();
    let (code, out, err) = plan(&dir);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("NodeClass pi declares no spec.capacity"),
        "{err}"
    );
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("homeplane-plan-{}", homeplane_testkit::suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn declared_workloads_that_exceed_a_class_are_named() {
    let dir = tempdir();
    std::fs::write(dir.join("classes.yaml"), CLASSES).unwrap();
    let deployment = |name: &str, cpu: &str, memory: &str| {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: ai}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeSelector: {{homeplane.dev/class: gpu}}
      containers:
      - name: {name}
        image: x
        resources: {{limits: {{cpu: "{cpu}", memory: {memory}}}}}
"#
        )
    };
    std::fs::write(
        dir.join("running.yaml"),
        [
            deployment("ollama", "8", "24Gi"),
            deployment("whisper", "4", "8Gi"),
            deployment("embeddings", "4", "8Gi"),
            deployment("piper", "2", "2Gi"),
        ]
        .join("---\n"),
    )
    .unwrap();
    let (code, out, _) = plan(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("DOES NOT FIT: the workloads declared for it ask for cpu 18 and memory 42Gi, of cpu 16 and memory 64Gi available; these do not fit beside the others: ai/ollama (cpu 8, memory 24Gi)"),
        "{out}"
    );
}
