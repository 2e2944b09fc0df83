//! The AgentRun controller on the test cluster: a run becomes a Job under the Agent's
//! ServiceAccount, placed through its NodeClass (on a simulated node of the test's own); the
//! test ends each run by writing the pod's terminated state and termination message (KWOK
//! leaves agent-run pods running for that), and the run's phase follows the result contract —
//! Done/Partial/Blocked/Failed, NoContract with a Warning event, the deadline — while
//! `maxConcurrentRuns` holds further runs in `Queued`.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use homeplane_testkit::{Cluster, Operator, TestNamespace, TestNode, eventually, suffix};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");
const WAIT: Duration = Duration::from_secs(90);

/// A NodeClass of the test's own node, and an Agent placed in it.
struct Setup {
    ns: TestNamespace,
    _node: TestNode,
    class: String,
    _operator: Operator,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let cluster = Cluster::shared();
        let _ = cluster.kubectl(&["delete", "nodeclass", &self.class, "--wait=false"]);
        // Agents have a finalizer: delete them while the operator still runs.
        let _ = cluster.kubectl(&[
            "delete",
            "agents",
            "--all",
            "-n",
            &self.ns.name,
            "--timeout=30s",
        ]);
    }
}

fn setup(prefix: &str, max_run_seconds: i64, max_concurrent: i32) -> Setup {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, prefix).unwrap();
    let node = TestNode::new(cluster, "amd64", "8", "16Gi", 0).unwrap();
    let class = format!("agents-{}", suffix());
    let yaml = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: NodeClass
metadata: {{name: {class}}}
spec:
  nodeSelector: {{homeplane.dev/test-node: "{key}"}}
  tolerations: [{{key: homeplane.dev/test-node, operator: Equal, value: "{key}", effect: NoSchedule}}]
  defaults: {{cpu: 100m, memory: 64Mi}}
---
apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {{name: coder}}
spec:
  tier: builder
  image: ghcr.io/homeplane/example-agent:0.1
  command: [/agent/run.sh]
  scope:
    resources: [{{resource: configmaps}}]
  budget: {{cpu: 200m, memory: 128Mi, maxRunSeconds: {max_run_seconds}, maxConcurrentRuns: {max_concurrent}}}
  placement: {{class: {class}}}
"#,
        key = node.key
    );
    // The operator first: starting it installs the chart's admission policies, which record
    // who asked for each Agent (an Agent created before them gets no rights).
    let operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    let (ok, text) = cluster.apply(&ns.name, &yaml).unwrap();
    assert!(ok, "{text}");
    eventually(WAIT, "the Agent Ready", || {
        let s = cluster.kubectl_ok(&[
            "get",
            "agent",
            "coder",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])?;
        Ok((s == "True").then_some(()))
    })
    .unwrap();
    Setup {
        ns,
        _node: node,
        class,
        _operator: operator,
    }
}

fn create_run(ns: &str, name: &str, task: &str) {
    let yaml = format!(
        "apiVersion: homeplane.dev/v1alpha1\nkind: AgentRun\nmetadata: {{name: {name}}}\nspec:\n  agent: coder\n  task: {task:?}\n"
    );
    let (ok, text) = Cluster::shared().apply(ns, &yaml).unwrap();
    assert!(ok, "{text}");
}

fn run_field(ns: &str, name: &str, path: &str) -> String {
    Cluster::shared()
        .kubectl_ok(&[
            "get",
            "agentrun",
            name,
            "-n",
            ns,
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
        .unwrap()
}

fn wait_phase(ns: &str, name: &str, phase: &str) {
    let mut last = String::new();
    let result = eventually(WAIT, &format!("{name} in phase {phase}"), || {
        last = run_field(ns, name, ".status.phase");
        Ok((last == phase).then_some(()))
    });
    if result.is_err() {
        let status = run_field(ns, name, ".status");
        panic!("{name} never reached {phase}; status {status}");
    }
}

/// The pod of a run's Job, once it is scheduled and Running (KWOK's doing).
fn running_pod(ns: &str, run: &str) -> Value {
    let job = eventually(WAIT, "the run's Job", || {
        let j = run_field(ns, run, ".status.jobName");
        Ok((!j.is_empty()).then_some(j))
    })
    .unwrap();
    Cluster::shared().running_job_pod(ns, &job, WAIT).unwrap()
}

/// What a kubelet would write when the agent container exits.
fn finish(ns: &str, pod: &Value, exit_code: i32, message: &str) {
    let reason = if exit_code == 0 { "Completed" } else { "Error" };
    Cluster::shared()
        .end_pod(ns, pod, exit_code, reason, message)
        .unwrap();
}

fn events(ns: &str, reason: &str) -> String {
    Cluster::shared()
        .kubectl_ok(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            &format!("reason={reason}"),
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .unwrap()
}

#[test]
fn a_run_is_a_job_that_ends_with_its_contract() {
    let s = setup("agentrun", 600, 4);
    let ns = s.ns.name.as_str();
    let cluster = Cluster::shared();
    create_run(ns, "fix-tests", "make the tests green");
    wait_phase(ns, "fix-tests", "Running");
    let pod = running_pod(ns, "fix-tests");

    // The Job runs the Agent's image under its ServiceAccount, with the task, the budget as
    // limits and deadline, on the NodeClass's node.
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "agent-coder");
    assert_eq!(spec["nodeName"], s._node.name.as_str());
    let c = &spec["containers"][0];
    assert_eq!(c["image"], "ghcr.io/homeplane/example-agent:0.1");
    assert_eq!(c["command"], json!(["/agent/run.sh"]));
    assert_eq!(
        c["resources"]["limits"],
        json!({"cpu": "200m", "memory": "128Mi"})
    );
    let task = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "HOMEPLANE_TASK")
        .unwrap();
    assert_eq!(task["value"], "make the tests green");
    let job = run_field(ns, "fix-tests", ".status.jobName");
    let deadline = cluster
        .kubectl_ok(&[
            "get",
            "job",
            &job,
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.activeDeadlineSeconds}",
        ])
        .unwrap();
    assert_eq!(deadline, "600");
    // Still running: KWOK leaves agent-run pods alone.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(run_field(ns, "fix-tests", ".status.phase"), "Running");

    let contract = json!({
        "status": "DONE", "summary": "fixed the flaky test",
        "filesChanged": ["src/lib.rs", "tests/it.rs"], "commits": ["a1b2c3d"],
        "testsRun": ["unit", "integration", "e2e"], "deviations": [], "followUps": ["add a benchmark"]
    });
    finish(ns, &pod, 0, &contract.to_string());
    wait_phase(ns, "fix-tests", "Done");
    assert_eq!(run_field(ns, "fix-tests", ".status.filesChangedCount"), "2");
    assert_eq!(run_field(ns, "fix-tests", ".status.testsRunCount"), "3");
    assert_eq!(
        run_field(ns, "fix-tests", ".status.result.summary"),
        "fixed the flaky test"
    );
    assert_eq!(
        run_field(ns, "fix-tests", ".status.result.followUps[0]"),
        "add a benchmark"
    );
    assert!(!run_field(ns, "fix-tests", ".status.duration").is_empty());
    assert_eq!(
        run_field(
            ns,
            "fix-tests",
            ".status.conditions[?(@.type==\"Ready\")].reason"
        ),
        "ContractReturned"
    );
    let table = cluster.kubectl_ok(&["get", "agentruns", "-n", ns]).unwrap();
    let header = table.lines().next().unwrap_or_default();
    for column in ["AGENT", "PHASE", "DURATION", "FILES", "TESTS"] {
        assert!(header.contains(column), "{table}");
    }
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("coder") && row.contains("Done") && row.contains(" 2 ") && row.contains(" 3 "),
        "{table}"
    );

    // The other contract words, including a failed container that still returned one.
    for (name, word, exit, phase) in [
        ("half", "PARTIAL", 0, "Partial"),
        ("stuck", "BLOCKED", 0, "Blocked"),
        ("broke", "FAILED", 1, "Failed"),
    ] {
        create_run(ns, name, "something");
        let pod = running_pod(ns, name);
        finish(
            ns,
            &pod,
            exit,
            &json!({"status": word, "summary": word}).to_string(),
        );
        wait_phase(ns, name, phase);
        assert_eq!(
            run_field(ns, name, ".status.conditions[?(@.type==\"Ready\")].status"),
            "True"
        );
    }
}

#[test]
fn a_run_without_a_valid_contract_is_flagged() {
    let s = setup("nocontract", 600, 4);
    let ns = s.ns.name.as_str();
    for (name, exit, message, why) in [
        ("chatty", 0, "all done, trust me", "not JSON"),
        (
            "wrong-word",
            0,
            r#"{"status":"FINISHED"}"#,
            "not one of DONE",
        ),
        ("silent-crash", 137, "", "returned no termination message"),
    ] {
        create_run(ns, name, "something");
        let pod = running_pod(ns, name);
        finish(ns, &pod, exit, message);
        wait_phase(ns, name, "NoContract");
        let message = run_field(ns, name, ".status.conditions[?(@.type==\"Ready\")].message");
        assert!(
            message.contains("without a valid result contract") && message.contains(why),
            "{name}: {message}"
        );
        assert_eq!(
            run_field(
                ns,
                name,
                ".status.conditions[?(@.type==\"Degraded\")].reason"
            ),
            "NoContract"
        );
    }
    let notes = eventually(WAIT, "NoContract events", || {
        let e = events(ns, "NoContract");
        Ok((e.matches("without a valid result contract").count() >= 3).then_some(e))
    })
    .unwrap();
    assert!(notes.contains("not JSON"), "{notes}");
}

#[test]
fn a_run_past_its_deadline_fails() {
    let s = setup("deadline", 3, 1);
    let ns = s.ns.name.as_str();
    create_run(ns, "slow", "take forever");
    wait_phase(ns, "slow", "Running");
    // Nobody finishes it: the Job controller stops it at activeDeadlineSeconds.
    wait_phase(ns, "slow", "Failed");
    assert_eq!(
        run_field(
            ns,
            "slow",
            ".status.conditions[?(@.type==\"Ready\")].reason"
        ),
        "DeadlineExceeded"
    );
    let message = run_field(
        ns,
        "slow",
        ".status.conditions[?(@.type==\"Ready\")].message",
    );
    assert!(message.contains("maxRunSeconds (3s)"), "{message}");
    eventually(WAIT, "a DeadlineExceeded event", || {
        Ok((!events(ns, "DeadlineExceeded").is_empty()).then_some(()))
    })
    .unwrap();
}

#[test]
fn max_concurrent_runs_queues_the_rest() {
    let s = setup("queue", 600, 2);
    let ns = s.ns.name.as_str();
    let cluster = Cluster::shared();
    for name in ["first", "second", "third", "fourth"] {
        create_run(ns, name, name);
        // Distinct creation times, so the queue order is the creation order.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let active_jobs = || {
        let out = cluster
            .kubectl_ok(&[
                "get",
                "jobs",
                "-n",
                ns,
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.active}{\"\\n\"}{end}",
            ])
            .unwrap();
        out.lines()
            .filter(|l| {
                l.split(' ')
                    .nth(1)
                    .is_some_and(|a| !a.is_empty() && a != "0")
            })
            .count()
    };
    wait_phase(ns, "first", "Running");
    wait_phase(ns, "second", "Running");
    wait_phase(ns, "third", "Queued");
    let message = run_field(
        ns,
        "third",
        ".status.conditions[?(@.type==\"Ready\")].message",
    );
    assert!(message.contains("2 of 2 run(s)"), "{message}");
    // Give a wrong operator time to start more.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(run_field(ns, "third", ".status.phase"), "Queued");
    assert_eq!(run_field(ns, "fourth", ".status.phase"), "Queued");
    assert!(active_jobs() <= 2);
    let jobs = cluster
        .kubectl_ok(&["get", "jobs", "-n", ns, "-o", "name"])
        .unwrap();
    assert_eq!(jobs.lines().count(), 2, "{jobs}");
    eventually(WAIT, "the Agent counting 2 running runs", || {
        let n = cluster.kubectl_ok(&[
            "get",
            "agent",
            "coder",
            "-n",
            ns,
            "-o",
            "jsonpath={.status.runningRuns}",
        ])?;
        Ok((n == "2").then_some(()))
    })
    .unwrap();

    // One ends: the oldest queued run takes its slot, the newest keeps waiting.
    let pod = running_pod(ns, "first");
    finish(ns, &pod, 0, r#"{"status":"DONE"}"#);
    wait_phase(ns, "first", "Done");
    wait_phase(ns, "third", "Running");
    assert_eq!(run_field(ns, "fourth", ".status.phase"), "Queued");
    assert!(active_jobs() <= 2);
    for name in ["second", "third"] {
        let pod = running_pod(ns, name);
        finish(ns, &pod, 0, r#"{"status":"DONE"}"#);
    }
    wait_phase(ns, "fourth", "Running");
    let pod = running_pod(ns, "fourth");
    finish(ns, &pod, 0, r#"{"status":"DONE"}"#);
    wait_phase(ns, "fourth", "Done");
}
