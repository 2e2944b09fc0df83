//! Placement on the real control plane: VoicePipeline and MemoryServer workloads built by the
//! shared builder, placed by the real kube-scheduler on KWOK nodes, readiness read from the
//! Deployments that kube-controller-manager runs, capacity refused before creation, pruning,
//! and the latency probe against a server the test controls.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use homeplane_testkit::{
    Cluster, Operator, Postgres, S3Server, TestNamespace, TestNode, eventually, suffix,
};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");
const WAIT: Duration = Duration::from_secs(90);

fn get(cluster: &Cluster, kind: &str, name: &str, ns: &str) -> Value {
    let json = cluster
        .kubectl_ok(&["get", kind, name, "-n", ns, "-o", "json"])
        .unwrap_or_default();
    serde_json::from_str(&json).unwrap_or(Value::Null)
}

fn list(cluster: &Cluster, kind: &str, ns: &str) -> Vec<Value> {
    let json = cluster
        .kubectl_ok(&["get", kind, "-n", ns, "-o", "json"])
        .unwrap();
    let v: Value = serde_json::from_str(&json).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

fn condition(obj: &Value, type_: &str) -> (String, String, String) {
    let c = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(Value::Null);
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

/// Waits until condition `type_` of the object has `status` and `reason`; returns its message.
fn wait_condition(
    cluster: &Cluster,
    kind: &str,
    name: &str,
    ns: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> String {
    let mut last = (String::new(), String::new(), String::new());
    eventually(
        Duration::from_secs(90),
        &format!("{kind} {name}: {type_}={status} ({reason})"),
        || {
            last = condition(&get(cluster, kind, name, ns), type_);
            Ok((last.0 == status && last.1 == reason).then(|| last.2.clone()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}; last {type_}: {last:?}"))
}

/// A NodeClass of the test's own node (which only the class's workloads tolerate).
fn test_class(cluster: &Cluster, name: &str, node: &TestNode, extra: &str) {
    let yaml = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: NodeClass
metadata: {{name: {name}}}
spec:
  nodeSelector: {{homeplane.dev/test-node: "{k}"}}
  tolerations: [{{key: homeplane.dev/test-node, operator: Equal, value: "{k}", effect: NoSchedule}}]
  defaults: {{cpu: 250m, memory: 256Mi}}
{extra}"#,
        k = node.key
    );
    let (ok, out) = cluster.apply("default", &yaml).unwrap();
    assert!(ok, "{out}");
}

fn delete_class(cluster: &Cluster, name: &str) {
    let _ = cluster.kubectl(&["delete", "nodeclass", name, "--wait=false"]);
}

fn pods_of(cluster: &Cluster, ns: &str, instance: &str) -> Vec<Value> {
    list(cluster, "pods", ns)
        .into_iter()
        .filter(|p| {
            p.pointer("/metadata/labels/app.kubernetes.io~1instance")
                == Some(&Value::from(instance))
        })
        .collect()
}

fn assert_limits(pod: &Value) {
    for c in pod["spec"]["containers"].as_array().unwrap() {
        for part in ["requests", "limits"] {
            for r in ["cpu", "memory"] {
                assert!(
                    c["resources"][part][r].is_string(),
                    "pod {} container {} has no {r} {part}",
                    pod["metadata"]["name"],
                    c["name"]
                );
            }
        }
    }
}

#[test]
fn a_seed_shaped_pipeline_runs_gpu_stages_on_gpu_1_and_the_rest_on_pi_1() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "voice").unwrap();
    let s = suffix();
    let (pi, gpu) = (format!("pi-{s}"), format!("gpu-{s}"));
    // pi-1 and gpu-1 are shared with other tests (the example homelab's services run on pi-1),
    // so this pipeline asks for little.
    let classes = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: NodeClass
metadata: {{name: {pi}}}
spec:
  nodeSelector: {{homeplane.dev/class: pi}}
  architecture: arm64
  defaults: {{cpu: 100m, memory: 64Mi}}
---
apiVersion: homeplane.dev/v1alpha1
kind: NodeClass
metadata: {{name: {gpu}}}
spec:
  nodeSelector: {{homeplane.dev/class: gpu}}
  tolerations: [{{key: amd.com/gpu, operator: Exists, effect: NoSchedule}}]
  gpuResource: amd.com/gpu
  defaults: {{cpu: "1", memory: 2Gi}}
"#
    );
    let (ok, out) = cluster.apply("default", &classes).unwrap();
    assert!(ok, "{out}");
    let op = Operator::start(BINARY, cluster, &ns.name, &format!("voice-{s}"), &[]).unwrap();
    let pipeline = |tts: bool| {
        let tts = if tts {
            format!(
                r#"  - name: tts
    role: textToSpeech
    workload: {{image: "example/piper:1", port: 5000, placement: {{class: {pi}, cpu: 200m, memory: 128Mi}}}}
"#
            )
        } else {
            String::new()
        };
        format!(
            r#"apiVersion: homeplane.dev/v1alpha1
kind: VoicePipeline
metadata: {{name: assistant}}
spec:
  latencyBudget: 2s
  stages:
  - {{name: wake, role: wakeWord, external: {{url: "tcp://satellite.lan:10700"}}}}
  - {{name: stt, role: speechToText, servedBy: llm, path: /v1/audio/transcriptions}}
  - {{name: router, role: router, workload: {{image: "example/router:1", port: 8080, placement: {{class: {pi}}}}}}}
  - name: llm
    role: llm
    workload: {{image: "ollama/ollama:0.5", port: 11434, placement: {{class: {gpu}, cpu: "4", memory: 16Gi, gpu: 1}}}}
{tts}  - {{name: sonos, role: sink, external: {{url: "http://sonos.lan:1400"}}}}
"#
        )
    };
    let (ok, out) = cluster.apply(&ns.name, &pipeline(true)).unwrap();
    assert!(ok, "{out}");
    wait_condition(
        cluster,
        "voicepipeline",
        "assistant",
        &ns.name,
        "Ready",
        "True",
        "Ready",
    );

    // Placed by the real scheduler: the GPU stage on gpu-1, the rest on pi-1; every pod with
    // CPU and memory requests and limits.
    for (instance, node) in [
        ("assistant-llm", "gpu-1"),
        ("assistant-tts", "pi-1"),
        ("assistant-router", "pi-1"),
    ] {
        let pods = pods_of(cluster, &ns.name, instance);
        assert_eq!(pods.len(), 1, "{instance}: {pods:?}");
        assert_eq!(pods[0]["spec"]["nodeName"], node, "{instance}");
        assert_limits(&pods[0]);
    }
    let llm = &pods_of(cluster, &ns.name, "assistant-llm")[0];
    assert_eq!(
        llm["spec"]["containers"][0]["resources"]["limits"]["amd.com/gpu"],
        "1"
    );

    // Status lists every stage with its endpoint; the chain is published for the gateway.
    let vp = get(cluster, "voicepipeline", "assistant", &ns.name);
    assert_eq!(vp["status"]["readyStages"], "6/6");
    let stt = vp["status"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == "stt")
        .unwrap()
        .clone();
    assert_eq!(
        stt["endpoint"],
        format!(
            "http://assistant-llm.{}.svc:11434/v1/audio/transcriptions",
            ns.name
        )
    );
    let chain = get(cluster, "configmap", "assistant-chain", &ns.name);
    let links: Value = serde_json::from_str(chain["data"]["chain.json"].as_str().unwrap()).unwrap();
    assert_eq!(links.as_array().unwrap().len(), 6);
    assert_eq!(
        links[3]["next"],
        format!("http://assistant-tts.{}.svc:5000", ns.name)
    );
    let env = &llm["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "NEXT_STAGE_URL"
                && e["value"] == format!("http://assistant-tts.{}.svc:5000", ns.name)),
        "{env}"
    );

    // Ready follows the real Deployment. A deleted pod is replaced by kube-controller-manager
    // and KWOK runs the replacement at once, so to hold the rollout open the test then marks
    // the replacement unready, as a failing readiness probe would: the pipeline progresses,
    // and is Ready again when the pod is.
    let tts_pod = pods_of(cluster, &ns.name, "assistant-tts")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    cluster
        .kubectl_ok(&[
            "delete",
            "pod",
            &tts_pod,
            "-n",
            &ns.name,
            "--grace-period=0",
            "--force",
        ])
        .unwrap();
    let replacement = eventually(Duration::from_secs(60), "a running replacement pod", || {
        Ok(pods_of(cluster, &ns.name, "assistant-tts")
            .into_iter()
            .find_map(|p| {
                let name = p["metadata"]["name"].as_str()?.to_string();
                let ready = p["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (name != tts_pod && ready && p["status"]["phase"] == "Running").then_some(name)
            }))
    })
    .unwrap();
    let readiness = |status: &str| {
        let patch = format!(
            r#"{{"status":{{"conditions":[{{"type":"Ready","status":"{status}"}},{{"type":"ContainersReady","status":"{status}"}}]}}}}"#
        );
        cluster
            .kubectl_ok(&[
                "patch",
                "pod",
                &replacement,
                "-n",
                &ns.name,
                "--subresource=status",
                "-p",
                &patch,
            ])
            .unwrap();
    };
    readiness("False");
    let message = wait_condition(
        cluster,
        "voicepipeline",
        "assistant",
        &ns.name,
        "Progressing",
        "True",
        "RollingOut",
    );
    assert!(
        message.contains("tts: assistant-tts: 0 of 1 replicas available"),
        "{message}"
    );
    assert_eq!(
        condition(
            &get(cluster, "voicepipeline", "assistant", &ns.name),
            "Ready"
        )
        .0,
        "False"
    );
    readiness("True");
    wait_condition(
        cluster,
        "voicepipeline",
        "assistant",
        &ns.name,
        "Ready",
        "True",
        "Ready",
    );

    // A pass that finds everything as asked writes nothing: the stages' Deployments and
    // Services and the chain ConfigMap are read and found unchanged, not applied again.
    let owned_applies = |result: &str| -> f64 {
        ["Deployment", "Service", "ConfigMap"]
            .iter()
            .map(|kind| {
                op.metric(&format!(
                    "homeplane_owned_applies_total{{kind=\"{kind}\",result=\"{result}\"}}"
                ))
                .unwrap_or(0.0)
            })
            .sum()
    };
    let (applied, unchanged) = (owned_applies("applied"), owned_applies("unchanged"));
    assert!(applied >= 6.0, "the first pass applied them: {applied}");
    cluster
        .kubectl_ok(&[
            "annotate",
            "voicepipeline",
            "assistant",
            "-n",
            &ns.name,
            &format!("example.com/poke={}", suffix()),
        ])
        .unwrap();
    eventually(Duration::from_secs(60), "a pass after the poke", || {
        Ok((owned_applies("unchanged") >= unchanged + 6.0).then_some(()))
    })
    .unwrap();
    assert_eq!(
        owned_applies("applied"),
        applied,
        "a no-op pass applied something"
    );

    // What a person changes by hand in what homeplane owns is put back.
    cluster
        .kubectl_ok(&[
            "patch",
            "deployment",
            "assistant-router",
            "-n",
            &ns.name,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"example/edited:9"}]"#,
        ])
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the router's image put back",
        || {
            let d = get(cluster, "deployment", "assistant-router", &ns.name);
            Ok(
                (d["spec"]["template"]["spec"]["containers"][0]["image"] == "example/router:1")
                    .then_some(()),
            )
        },
    )
    .unwrap();
    assert!(owned_applies("applied") > applied);

    // A stage removed from the spec is pruned, with its Service.
    let (ok, out) = cluster.apply(&ns.name, &pipeline(false)).unwrap();
    assert!(ok, "{out}");
    eventually(Duration::from_secs(60), "tts pruned", || {
        let gone = get(cluster, "deployment", "assistant-tts", &ns.name).is_null()
            && get(cluster, "service", "assistant-tts", &ns.name).is_null();
        Ok(gone.then_some(()))
    })
    .unwrap();
    assert!(!get(cluster, "deployment", "assistant-llm", &ns.name).is_null());
    let links = get(cluster, "configmap", "assistant-chain", &ns.name);
    assert!(
        !links["data"]["chain.json"]
            .as_str()
            .unwrap()
            .contains("tts")
    );

    drop(op);
    let _ = cluster.kubectl(&[
        "delete",
        "namespace",
        &ns.name,
        "--wait=true",
        "--timeout=60s",
    ]);
    delete_class(cluster, &pi);
    delete_class(cluster, &gpu);
}

#[test]
fn more_gpus_than_the_class_has_is_flagged_before_anything_is_created() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "gpus").unwrap();
    let node = TestNode::new(cluster, "amd64", "16", "64Gi", 1).unwrap();
    let class = format!("gpu-{}", node.key);
    test_class(cluster, &class, &node, "  gpuResource: amd.com/gpu\n");
    let _op = Operator::start(
        BINARY,
        cluster,
        &ns.name,
        &format!("gpus-{}", node.key),
        &[],
    )
    .unwrap();
    let yaml = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: VoicePipeline
metadata: {{name: greedy}}
spec:
  stages:
  - {{name: stt, role: speechToText, workload: {{image: "example/whisper:1", port: 9000, placement: {{class: {class}, gpu: 1}}}}}}
  - {{name: llm, role: llm, workload: {{image: "ollama/ollama:0.5", port: 11434, placement: {{class: {class}, gpu: 1}}}}}}
  - {{name: tts, role: textToSpeech, workload: {{image: "example/tts:1", port: 5000, placement: {{class: {class}, gpu: 1}}}}}}
"#
    );
    let (ok, out) = cluster.apply(&ns.name, &yaml).unwrap();
    assert!(ok, "{out}");
    let message = wait_condition(
        cluster,
        "voicepipeline",
        "greedy",
        &ns.name,
        "Ready",
        "False",
        "Unschedulable",
    );
    assert!(
        message.starts_with(&format!(
            "greedy-stt, greedy-llm, greedy-tts ask for 3 amd.com/gpu on NodeClass {class}, which has 1 in all and 1 free"
        )),
        "{message}"
    );
    assert!(
        list(cluster, "deployments", &ns.name).is_empty(),
        "nothing may be created"
    );
    let (status, reason, _) = condition(
        &get(cluster, "voicepipeline", "greedy", &ns.name),
        "Degraded",
    );
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Unschedulable")
    );
    delete_class(cluster, &class);
}

#[test]
fn a_workload_too_big_for_the_pi_is_refused_before_creation_and_a_pending_pod_is_reported() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "too-big").unwrap();
    let node = TestNode::new(cluster, "arm64", "4", "8Gi", 0).unwrap();
    let class = format!("pi-{}", node.key);
    let reserve = |cpu: &str| {
        test_class(
            cluster,
            &class,
            &node,
            &format!("  architecture: arm64\n  reserved: {{cpu: {cpu}, memory: 1Gi}}\n"),
        )
    };
    reserve("500m");
    let _op =
        Operator::start(BINARY, cluster, &ns.name, &format!("big-{}", node.key), &[]).unwrap();
    let yaml = |cpu: &str| {
        format!(
            r#"apiVersion: homeplane.dev/v1alpha1
kind: VoicePipeline
metadata: {{name: local}}
spec:
  stages:
  - {{name: llm, role: llm, workload: {{image: "ollama/ollama:0.5", port: 11434, placement: {{class: {class}, cpu: "{cpu}", memory: 6Gi}}}}}}
"#
        )
    };
    let ready = |status: &str, reason: &str| {
        wait_condition(
            cluster,
            "voicepipeline",
            "local",
            &ns.name,
            "Ready",
            status,
            reason,
        )
    };
    let (ok, out) = cluster.apply(&ns.name, &yaml("6")).unwrap();
    assert!(ok, "{out}");
    let message = ready("False", "Unschedulable");
    assert!(
        message.contains(&format!("local-llm does not fit NodeClass {class}: cpu 6, memory 6Gi asked, but only cpu 3500m and memory 7Gi are free")),
        "{message}"
    );
    assert!(
        list(cluster, "deployments", &ns.name).is_empty(),
        "nothing may be created"
    );

    // Something that fits the plan but that the scheduler still cannot place (a taint the
    // class does not tolerate) is reported from the pod's PodScheduled condition.
    let (ok, out) = cluster.apply(&ns.name, &yaml("2")).unwrap();
    assert!(ok, "{out}");
    ready("True", "Ready");

    // Room is checked for a change, not for what already runs as asked: with less room left
    // in the class (a bigger reserve: 1500m free), a bigger ask is refused and changes nothing,
    // and going back to the running spec is Ready again without a check it would now fail.
    let deployment_cpu = || {
        get(cluster, "deployment", "local-llm", &ns.name)
            .pointer("/spec/template/spec/containers/0/resources/limits/cpu")
            .cloned()
    };
    reserve("2500m");
    let (ok, out) = cluster.apply(&ns.name, &yaml("3")).unwrap();
    assert!(ok, "{out}");
    let message = ready("False", "Unschedulable");
    assert!(message.contains("only cpu 1500m"), "{message}");
    assert_eq!(deployment_cpu(), Some(Value::from("2")), "nothing changed");
    let (ok, out) = cluster.apply(&ns.name, &yaml("2")).unwrap();
    assert!(ok, "{out}");
    ready("True", "Ready");
    reserve("500m");

    cluster
        .kubectl_ok(&[
            "taint",
            "node",
            &node.name,
            "homeplane.dev/maintenance=yes:NoSchedule",
        ])
        .unwrap();
    let pod = pods_of(cluster, &ns.name, "local-llm")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    cluster
        .kubectl_ok(&[
            "delete",
            "pod",
            &pod,
            "-n",
            &ns.name,
            "--grace-period=0",
            "--force",
        ])
        .unwrap();
    let message = ready("False", "Unschedulable");
    assert!(
        message.contains("is not scheduled") && message.contains("taint"),
        "{message}"
    );
    delete_class(cluster, &class);
}

/// A tiny HTTP server whose answer takes `delay` milliseconds.
fn probe_server(delay: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let delay = delay.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf);
                std::thread::sleep(Duration::from_millis(delay.load(Ordering::SeqCst)));
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    format!("http://{addr}/probe")
}

#[test]
fn the_latency_probe_turns_latency_budget_exceeded_on_and_off() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "latency").unwrap();
    let delay = Arc::new(AtomicU64::new(10));
    let url = probe_server(delay.clone());
    let _op = Operator::start(
        BINARY,
        cluster,
        &ns.name,
        &format!("latency-{}", suffix()),
        &[],
    )
    .unwrap();
    let yaml = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: VoicePipeline
metadata: {{name: probed}}
spec:
  latencyBudget: 300ms
  probeInterval: 1s
  probe: {{url: "{url}", timeout: 5s, window: 3}}
  stages:
  - {{name: gateway, role: router, external: {{url: "http://gateway.lan:8080"}}}}
"#
    );
    let (ok, out) = cluster.apply(&ns.name, &yaml).unwrap();
    assert!(ok, "{out}");
    wait_condition(
        cluster,
        "voicepipeline",
        "probed",
        &ns.name,
        "WithinBudget",
        "True",
        "WithinBudget",
    );
    delay.store(600, Ordering::SeqCst);
    let message = wait_condition(
        cluster,
        "voicepipeline",
        "probed",
        &ns.name,
        "Degraded",
        "True",
        "LatencyBudgetExceeded",
    );
    assert!(message.contains("budget 300ms"), "{message}");
    let vp = get(cluster, "voicepipeline", "probed", &ns.name);
    let p95 = vp["status"]["latencyP95"].as_str().unwrap();
    assert!(
        p95.ends_with("ms") && p95.trim_end_matches("ms").parse::<u64>().unwrap() >= 600,
        "{p95}"
    );
    delay.store(10, Ordering::SeqCst);
    wait_condition(
        cluster,
        "voicepipeline",
        "probed",
        &ns.name,
        "WithinBudget",
        "True",
        "WithinBudget",
    );
    let vp = get(cluster, "voicepipeline", "probed", &ns.name);
    assert_eq!(
        condition(&vp, "Degraded").0,
        "",
        "Degraded must be gone once p95 is back"
    );
}

#[test]
fn a_memory_server_waits_for_its_database_then_runs_with_everything_wired() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "memory").unwrap();
    let node = TestNode::new(cluster, "arm64", "4", "8Gi", 0).unwrap();
    let class = format!("pi-{}", node.key);
    test_class(cluster, &class, &node, "  architecture: arm64\n");
    // An embedding endpoint outside the cluster that accepts connections.
    let embedding = TcpListener::bind("127.0.0.1:0").unwrap();
    let embedding_url = format!("http://{}", embedding.local_addr().unwrap());
    let _op = Operator::start(
        BINARY,
        cluster,
        &ns.name,
        &format!("memory-{}", node.key),
        &[],
    )
    .unwrap();

    let memory = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: MemoryServer
metadata: {{name: memory}}
spec:
  image: example/memory-server:1
  placement: {{class: {class}, cpu: 500m, memory: 512Mi}}
  database: {{name: homelab}}
  cache:
    managed: {{placement: {{class: {class}, cpu: 100m, memory: 128Mi}}}}
  embedding:
    endpoint: {{url: "{embedding_url}", model: nomic-embed-text}}
  layers: {{episodicTtl: 72h}}
"#
    );
    let (ok, out) = cluster.apply(&ns.name, &memory).unwrap();
    assert!(ok, "{out}");
    let message = wait_condition(
        cluster,
        "memoryserver",
        "memory",
        &ns.name,
        "Ready",
        "False",
        "WaitingForDatabase",
    );
    assert!(
        message.contains("Database homelab does not exist"),
        "{message}"
    );
    assert!(list(cluster, "deployments", &ns.name).is_empty());

    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "pg-admin",
            "-n",
            &ns.name,
            &format!("--from-literal=username={}", pg.user),
            &format!("--from-literal=password={}", pg.password),
        ])
        .unwrap();
    let db = format!("hp_memory_{}", suffix());
    let database = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: homelab}}
spec:
  databaseName: {db}
  server: {{external: {{host: "{host}", port: {port}, adminSecret: pg-admin, sslMode: disable}}}}
  tiers: [{{name: memory, schemas: [memory]}}]
  roles:
  - {{name: memory_{s}, login: true, access: [{{tier: memory, level: write}}]}}
"#,
        host = pg.host,
        port = pg.port,
        s = node.key
    );
    let (ok, out) = cluster.apply(&ns.name, &database).unwrap();
    assert!(ok, "{out}");
    // The Database is Ready but has no role called `memory`: said so.
    let message = wait_condition(
        cluster,
        "memoryserver",
        "memory",
        &ns.name,
        "Ready",
        "False",
        "WaitingForDatabase",
    );
    let message = if message.contains("no login role") {
        message
    } else {
        eventually(Duration::from_secs(60), "no login role", || {
            let (_, _, m) = condition(&get(cluster, "memoryserver", "memory", &ns.name), "Ready");
            Ok(m.contains("no login role").then_some(m))
        })
        .unwrap()
    };
    assert!(
        message.contains("add it to the Database's spec.roles"),
        "{message}"
    );

    let (ok, out) = cluster
        .apply(
            &ns.name,
            &memory.replace(
                "database: {name: homelab}",
                &format!("database: {{name: homelab, role: memory_{}}}", node.key),
            ),
        )
        .unwrap();
    assert!(ok, "{out}");
    wait_condition(
        cluster,
        "memoryserver",
        "memory",
        &ns.name,
        "Ready",
        "True",
        "Ready",
    );

    let ms = get(cluster, "memoryserver", "memory", &ns.name);
    let deps = ms["status"]["dependencies"].as_array().unwrap();
    let names: Vec<&str> = deps.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["database", "cache", "embedding"]);
    assert!(deps.iter().all(|d| d["ready"] == true), "{deps:?}");
    assert_eq!(
        ms["status"]["endpoint"],
        format!("http://memory.{}.svc:8080", ns.name)
    );

    let server = &pods_of(cluster, &ns.name, "memory")[0];
    assert_eq!(server["spec"]["nodeName"], node.name.as_str());
    assert_limits(server);
    assert_limits(&pods_of(cluster, &ns.name, "memory-cache")[0]);
    let env = server["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone();
    let var = |k: &str| {
        env.iter()
            .find(|e| e["name"] == k)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        var("DATABASE_URL")["valueFrom"]["secretKeyRef"]["key"],
        "uri"
    );
    assert_eq!(
        var("REDIS_URL")["value"],
        format!("redis://memory-cache.{}.svc:6379", ns.name)
    );
    assert_eq!(var("EMBEDDING_URL")["value"], embedding_url);
    assert_eq!(var("EPISODIC_TTL")["value"], "72h");

    // The embedding endpoint goes away: reported on its dependency, not hidden.
    drop(embedding);
    cluster
        .kubectl_ok(&[
            "annotate",
            "memoryserver",
            "memory",
            "-n",
            &ns.name,
            "--overwrite",
            "test/touch=1",
        ])
        .unwrap();
    let message = wait_condition(
        cluster,
        "memoryserver",
        "memory",
        &ns.name,
        "Ready",
        "False",
        "DependencyNotReady",
    );
    assert!(message.starts_with("embedding: "), "{message}");
    delete_class(cluster, &class);
}

#[test]
fn a_managed_database_server_is_placed_with_its_volume_serves_its_roles_and_is_backed_up() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "managed-db").unwrap();
    let node = TestNode::new(cluster, "arm64", "4", "8Gi", 0).unwrap();
    let class = format!("pi-{}", node.key);
    test_class(cluster, &class, &node, "  architecture: arm64\n");
    // The node's disk: a volume waiting for the server's claim (the real PV controller binds
    // it), reachable only on the test's node.
    let pv = format!("{}-pgdata", ns.name);
    let volume = format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}}}
spec:
  capacity: {{storage: 10Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: disk-{key}
  hostPath: {{path: /var/lib/homeplane-test/{pv}}}
  claimRef: {{namespace: {ns}, name: data-homelab-postgres-0}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{node}]}}]
"#,
        key = node.key,
        ns = ns.name,
        node = node.name
    );
    let (ok, out) = cluster.apply(&ns.name, &volume).unwrap();
    assert!(ok, "{out}");
    let _op = Operator::start(
        BINARY,
        cluster,
        &ns.name,
        &format!("managed-{}", node.key),
        &[],
    )
    .unwrap();
    let database = |cpu: &str| {
        format!(
            r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: homelab}}
spec:
  deletionPolicy: Delete
  server:
    managed:
      image: pgvector/pgvector:pg16
      storage: 8Gi
      storageClass: disk-{key}
      placement: {{class: {class}, cpu: "{cpu}", memory: 1Gi}}
  roles: [{{name: app}}]
"#,
            key = node.key
        )
    };

    // Too big for the class: refused before anything is created.
    let (ok, out) = cluster.apply(&ns.name, &database("6")).unwrap();
    assert!(ok, "{out}");
    let message = wait_condition(
        cluster,
        "database",
        "homelab",
        &ns.name,
        "Ready",
        "False",
        "Unschedulable",
    );
    assert!(message.contains("homelab-postgres"), "{message}");
    assert!(list(cluster, "statefulsets", &ns.name).is_empty());

    // It fits: the server runs on the class's node with its volume, its limits and the admin
    // password homeplane generated. KWOK reports the pod ready at once, but nothing answers at
    // its address yet: the Database waits.
    let (ok, out) = cluster.apply(&ns.name, &database("1")).unwrap();
    assert!(ok, "{out}");
    let mut last = Default::default();
    eventually(
        WAIT,
        "the Database waiting for its server to answer",
        || {
            last = condition(&get(cluster, "database", "homelab", &ns.name), "Ready");
            Ok((last.1 == "WaitingForServer"
                && last.2.contains(":5432 does not accept connections"))
            .then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}; last Ready: {last:?}"));
    let ss = get(cluster, "statefulset", "homelab-postgres", &ns.name);
    assert_eq!(ss["status"]["readyReplicas"], 1, "{ss}");
    let c = &ss["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "pgvector/pgvector:pg16");
    assert_eq!(c["resources"]["limits"]["cpu"], "1");
    assert_eq!(c["resources"]["requests"]["memory"], "1Gi");
    assert_eq!(c["readinessProbe"]["exec"]["command"][0], "pg_isready");
    let pods = pods_of(cluster, &ns.name, "homelab-postgres");
    assert_eq!(pods[0]["spec"]["nodeName"], node.name.as_str());
    let claim = get(cluster, "pvc", "data-homelab-postgres-0", &ns.name);
    assert_eq!(claim["status"]["phase"], "Bound");
    assert_eq!(claim["spec"]["volumeName"], pv.as_str());
    let secret = cluster
        .secret_value(&ns.name, "homelab-admin", "password")
        .unwrap();
    assert_eq!(secret.len(), 32);
    assert_eq!(
        cluster
            .secret_value(&ns.name, "homelab-admin", "username")
            .unwrap(),
        "postgres"
    );
    let svc = get(cluster, "service", "homelab-postgres", &ns.name);
    assert_eq!(svc["spec"]["ports"][0]["port"], 5432);

    // Play the pod: the real PostgreSQL, initialised as the image would be (POSTGRES_PASSWORD
    // from the admin Secret), serving at the pod's address, which the test (as the kubelet)
    // reports on a loopback address of its own.
    let address = format!("127.0.{}.{}", 60 + rand_byte() % 60, 2 + rand_byte() % 250);
    let data = std::env::temp_dir().join(format!("hp-managed-{}", node.key));
    let pg_script = homeplane_testkit::repo_root().join("scripts/postgres.sh");
    let out = std::process::Command::new("bash")
        .arg(&pg_script)
        .arg("up")
        .arg(&data)
        .env("POSTGRES_LISTEN", &address)
        .env("POSTGRES_PORT", "5432")
        .env("POSTGRES_PASSWORD", &secret)
        .env(
            "HOMEPLANE_POSTGRES_OWNER_PID",
            std::process::id().to_string(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    let ip = format!(r#"{{"status":{{"podIP":"{address}","podIPs":[{{"ip":"{address}"}}]}}}}"#);
    cluster
        .kubectl_ok(&[
            "patch",
            "pod",
            &pod,
            "-n",
            &ns.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &ip,
        ])
        .unwrap();

    // homeplane reaches the instance at its address and makes the database, its roles and
    // their Secrets, whose URIs name the Service (where applications reach it).
    let message = wait_condition(
        cluster,
        "database",
        "homelab",
        &ns.name,
        "Ready",
        "True",
        "Reconciled",
    );
    let service_host = format!("homelab-postgres.{}.svc", ns.name);
    assert!(
        message.contains(&format!("{service_host}:5432")),
        "{message}"
    );
    assert_eq!(
        cluster
            .secret_value(&ns.name, "homelab-app", "host")
            .unwrap(),
        service_host
    );
    let app_password = cluster
        .secret_value(&ns.name, "homelab-app", "password")
        .unwrap();
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-t",
            "-A",
            "-c",
            "SELECT current_user || '@' || current_database()",
        ])
        .arg(format!(
            "postgres://app:{app_password}@{address}:5432/homelab?sslmode=require"
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "app@homelab",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Its backups reach it the same way: pg_dump of the instance, into the bucket.
    let s3 = S3Server::shared();
    let bucket = S3Server::bucket_name("managed");
    let out = std::process::Command::new(BINARY)
        .args([
            "backup",
            "ensure-bucket",
            "--endpoint",
            &s3.endpoint,
            "--bucket",
            &bucket,
        ])
        .env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_file = data.with_extension("age");
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let recipient = std::process::Command::new("age-keygen")
        .arg("-y")
        .arg(&key_file)
        .output()
        .unwrap()
        .stdout;
    let recipient = String::from_utf8(recipient).unwrap().trim().to_string();
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "r2",
            "-n",
            &ns.name,
            &format!("--from-literal=accessKeyId={}", s3.access_key_id),
            &format!("--from-literal=secretAccessKey={}", s3.secret_access_key),
        ])
        .unwrap();
    let backup = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: BackupPolicy
metadata: {{name: homelab}}
spec:
  schedule: "0 3 1 1 *"
  source: {{database: {{name: homelab}}}}
  destination: {{endpoint: "{endpoint}", bucket: {bucket}, credentialsSecret: r2, partSizeMiB: 5}}
  recipients: ["{recipient}"]
---
apiVersion: homeplane.dev/v1alpha1
kind: Backup
metadata: {{name: first}}
spec: {{policy: homelab}}
"#,
        endpoint = s3.endpoint
    );
    let (ok, out) = cluster.apply(&ns.name, &backup).unwrap();
    assert!(ok, "{out}");
    let message = wait_condition(
        cluster,
        "backup",
        "first",
        &ns.name,
        "Ready",
        "True",
        "Succeeded",
    );
    assert!(message.contains("size and SHA-256 checked"), "{message}");

    // deletionPolicy Delete: the server goes with the Database, and so does its volume.
    cluster
        .kubectl_ok(&[
            "delete",
            "database",
            "homelab",
            "-n",
            &ns.name,
            "--timeout=60s",
        ])
        .unwrap();
    eventually(Duration::from_secs(60), "the volume claim deleted", || {
        let out = cluster.kubectl(&["get", "pvc", "data-homelab-postgres-0", "-n", &ns.name])?;
        Ok((!out.status.success()).then_some(()))
    })
    .unwrap();
    delete_class(cluster, &class);
    let _ = cluster.kubectl(&["delete", "pv", &pv, "--wait=false"]);
    let _ = std::process::Command::new("bash")
        .arg(&pg_script)
        .arg("down")
        .arg(&data)
        .output();
}

/// A byte from the system's randomness (distinct loopback addresses per run).
fn rand_byte() -> u32 {
    let mut b = [0u8; 1];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    u32::from(b[0])
}
