//! The real node's life on this machine (`scripts/realnode.sh`): it joins a control plane of its
//! own — beside the test run's, whose real node keeps running, so two clusters' nodes on one
//! machine must not collide — and pods really run on it; the machine's kernel settings stay as
//! they were while the kubelet runs; a run killed without `down` is cleaned up by the next
//! `up`; and after `down` the machine (kernel settings, links, routes, iptables rules, mounts,
//! cgroups, folders, processes) is as it was before.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use homeplane_testkit::{Cluster, eventually, repo_root};

fn script(name: &str, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts").join(name))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/{name} {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// What of the machine a node could change, as `realnode.sh state` prints it.
fn machine(dir: &Path) -> String {
    script("realnode.sh", &["state", &dir.to_string_lossy()])
}

/// Runs a busybox pod on the real node until it ends; its log.
fn run_pod(cluster: &Cluster, name: &str, command: &str) -> String {
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  nodeSelector: {{homeplane.dev/class: real}}
  tolerations: [{{key: homeplane.dev/real-node, operator: Exists, effect: NoSchedule}}]
  containers:
  - name: main
    image: localhost/homeplane/busybox:1
    command: [sh, -c, {command}]
    resources: {{limits: {{cpu: 50m, memory: 32Mi}}}}
"#,
        command = serde_json::to_string(command).unwrap()
    );
    let (ok, text) = cluster.apply("default", &yaml).unwrap();
    assert!(ok, "{text}");
    let phase = eventually(
        Duration::from_secs(120),
        &format!("pod {name} to end"),
        || {
            let p = cluster.kubectl_ok(&["get", "pod", name, "-o", "jsonpath={.status.phase}"])?;
            Ok((p == "Succeeded" || p == "Failed").then_some(p))
        },
    )
    .unwrap();
    let log = cluster.kubectl_ok(&["logs", name]).unwrap();
    assert_eq!(phase, "Succeeded", "{log}");
    log
}

/// The pids a record of the node's folder names (`name pid` lines, or `holder pid`).
fn recorded_pids(dir: &Path, file: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join("node").join(file))
        .unwrap_or_default()
        .lines()
        .filter(|l| file == "pids" || l.starts_with("holder "))
        .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
        .collect()
}

#[test]
fn the_real_node_runs_pods_survives_a_killed_run_and_leaves_the_machine_as_found() {
    let started = Instant::now();
    let phase = |what: &str| eprintln!("{what}: {:.1}s", started.elapsed().as_secs_f64());
    // A folder of its own in the checkout, so that its containerd keeps the images it imported
    // (importing them takes longer than the rest); what a killed earlier run of this test left
    // there goes first.
    let dir = repo_root().join(".homeplane/realnode-lifecycle");
    let dir_arg = dir.to_string_lossy().into_owned();
    script("cluster.sh", &["down", &dir_arg]);
    let before = machine(&dir);
    // Stopped (node included) when this process exits, also if the test fails.
    let cluster = Cluster::start(&dir).unwrap();
    script("realnode.sh", &["up", &dir_arg]);
    phase("control plane and node up");

    // The kubelet runs, and the machine's kernel settings are what they were.
    let sysctls = |state: &str| -> Vec<String> {
        state
            .lines()
            .filter(|l| l.starts_with("sysctl "))
            .map(String::from)
            .collect()
    };
    let during = machine(&dir);
    assert_eq!(sysctls(&during), sysctls(&before));
    assert!(during.contains("process "), "{during}");

    // Containers really run, with the cluster's DNS and the API server at its Service.
    let log = run_pod(
        &cluster,
        "hello",
        "echo hello from $(hostname); nslookup kubernetes.default.svc.cluster.local | grep -c 10.0.0.1",
    );
    assert!(log.starts_with("hello from hello\n"), "{log}");
    assert!(log.trim_end().ends_with('1'), "{log}");
    phase("a pod ran");

    // A run that is killed: the node's programs die with SIGKILL and no `down`, while a pod's
    // container (and its shim) live on.
    let (ok, text) = cluster
        .apply(
            "default",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: sleeper}\nspec:\n  nodeSelector: {homeplane.dev/class: real}\n  tolerations: [{key: homeplane.dev/real-node, operator: Exists, effect: NoSchedule}]\n  containers: [{name: main, image: \"localhost/homeplane/busybox:1\", command: [sleep, \"3600\"], resources: {limits: {cpu: 10m, memory: 16Mi}}}]\n",
        )
        .unwrap();
    assert!(ok, "{text}");
    cluster
        .kubectl_ok(&[
            "wait",
            "pod/sleeper",
            "--for=condition=Ready",
            "--timeout=120s",
        ])
        .unwrap();
    let mut killed = recorded_pids(&dir, "pids");
    killed.extend(recorded_pids(&dir, "ns"));
    assert!(killed.len() >= 6, "{killed:?}");
    let status = Command::new("kill")
        .arg("-9")
        .args(&killed)
        .status()
        .unwrap();
    assert!(status.success());
    let left = eventually(Duration::from_secs(10), "the node's programs dead", || {
        let state = machine(&dir);
        Ok(killed
            .iter()
            .all(|p| !state.contains(&format!("process {p}\n")))
            .then_some(state))
    })
    .unwrap();
    assert_ne!(left, before, "a killed run leaves something behind");
    assert!(left.contains("cgroup "), "{left}");
    phase("node killed");

    // The next `up` cleans what the killed run left and starts a node that works.
    script("realnode.sh", &["up", &dir_arg]);
    let log = run_pod(&cluster, "again", "echo running again");
    assert_eq!(log.trim(), "running again");
    phase("up again, a pod ran");

    // `down` (with the control plane) leaves the machine as it was found.
    cluster.stop().unwrap();
    let after = machine(&dir);
    phase("down");
    assert_eq!(after, before);
}
