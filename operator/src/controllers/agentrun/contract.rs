//! Pure: the result contract an agent run returns as JSON in its container's termination
//! message, validated against the documented schema (the `ResultContract` type of the CRD:
//! `status` required and one of DONE/PARTIAL/BLOCKED/FAILED; `summary` a string;
//! `filesChanged`, `commits`, `testsRun`, `deviations`, `followUps` lists of strings; nothing
//! else).

use homeplane_crds::agent::{AgentRunPhase, ContractStatus, ResultContract};
use serde_json::Value;

/// The fields a contract may have.
const FIELDS: [&str; 7] = [
    "status",
    "summary",
    "filesChanged",
    "commits",
    "testsRun",
    "deviations",
    "followUps",
];

/// Parses and validates a termination message; the error says what is wrong, for the
/// `NoContract` condition.
pub fn parse(message: &str) -> Result<ResultContract, String> {
    let text = message.trim();
    if text.is_empty() {
        return Err("the container's termination message is empty".into());
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("the termination message is not JSON ({e})"))?;
    let Some(fields) = value.as_object() else {
        return Err("the termination message is JSON but not an object".into());
    };
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "the contract has an unknown field {unknown:?} (allowed: {})",
            FIELDS.join(", ")
        ));
    }
    match fields.get("status") {
        None => return Err("the contract has no status".into()),
        Some(Value::String(s))
            if ["DONE", "PARTIAL", "BLOCKED", "FAILED"].contains(&s.as_str()) => {}
        Some(other) => {
            return Err(format!(
                "the contract's status is {other}, not one of DONE, PARTIAL, BLOCKED, FAILED"
            ));
        }
    }
    if let Some(summary) = fields.get("summary")
        && !summary.is_string()
    {
        return Err("the contract's summary must be a string".into());
    }
    for list in &FIELDS[2..] {
        if let Some(v) = fields.get(*list) {
            let ok = v
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string));
            if !ok {
                return Err(format!("the contract's {list} must be a list of strings"));
            }
        }
    }
    serde_json::from_value(value)
        .map_err(|e| format!("the contract does not match the schema: {e}"))
}

/// The phase a valid contract puts the run in.
pub fn phase(status: ContractStatus) -> AgentRunPhase {
    match status {
        ContractStatus::Done => AgentRunPhase::Done,
        ContractStatus::Partial => AgentRunPhase::Partial,
        ContractStatus::Blocked => AgentRunPhase::Blocked,
        ContractStatus::Failed => AgentRunPhase::Failed,
    }
}

/// A duration such as `3m12s`, `1h0m5s` or `4s`.
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_contract_parses() {
        let c = parse(
            r#"{"status":"PARTIAL","summary":"sorted 40 of 50 mails","filesChanged":["a.rs","b.rs"],
                "commits":["abc123"],"testsRun":["t1","t2","t3"],"deviations":["skipped spam"],
                "followUps":["do the rest"]}"#,
        )
        .unwrap();
        assert_eq!(c.status, ContractStatus::Partial);
        assert_eq!(c.files_changed.len(), 2);
        assert_eq!(c.tests_run.len(), 3);
        assert_eq!(phase(c.status), AgentRunPhase::Partial);
    }

    #[test]
    fn only_status_is_required() {
        let c = parse(" {\"status\": \"DONE\"}\n").unwrap();
        assert_eq!(c.status, ContractStatus::Done);
        assert!(c.files_changed.is_empty() && c.summary.is_empty());
    }

    #[test]
    fn invalid_contracts_say_why() {
        let cases = [
            ("", "empty"),
            ("done!", "not JSON"),
            ("[1]", "not an object"),
            ("{}", "no status"),
            (r#"{"status":"done"}"#, "not one of DONE"),
            (r#"{"status":"DONE","files":[]}"#, "unknown field \"files\""),
            (
                r#"{"status":"DONE","testsRun":"all"}"#,
                "testsRun must be a list",
            ),
            (
                r#"{"status":"DONE","commits":[1]}"#,
                "commits must be a list of strings",
            ),
            (
                r#"{"status":"DONE","summary":3}"#,
                "summary must be a string",
            ),
        ];
        for (text, why) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    /// Runs `examples/agent/agent.sh` with `task` and `env`; returns its exit success and the
    /// contract it wrote.
    fn run_example_agent(task: &str, env: &[(&str, &str)]) -> (bool, String) {
        let dir = std::env::temp_dir().join(format!(
            "homeplane-example-agent-{}-{}",
            std::process::id(),
            env.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let result = dir.join("termination-log");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agent/agent.sh");
        let status = std::process::Command::new("sh")
            .arg(script)
            .env("HOMEPLANE_TASK", task)
            .env("HOMEPLANE_RESULT_PATH", &result)
            .env("HOMEPLANE_SA_DIR", dir.join("no-such-dir"))
            .envs(env.iter().copied())
            .status()
            .unwrap();
        let written = std::fs::read_to_string(&result).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (status.success(), written)
    }

    #[test]
    fn the_example_agent_writes_a_valid_contract() {
        // Outside a pod there is no ServiceAccount token: the agent reports itself blocked.
        let task = "count \"configmaps\"\tthen\nstop \\ here";
        let (ok, written) = run_example_agent(task, &[]);
        assert!(!ok);
        let c = parse(&written).unwrap();
        assert_eq!(c.status, ContractStatus::Blocked);
        assert!(c.summary.contains(task), "{}", c.summary);

        // With a token but an API server that does not answer, it reports the failure.
        let sa = std::env::temp_dir().join(format!("homeplane-example-sa-{}", std::process::id()));
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::write(sa.join("token"), "t").unwrap();
        std::fs::write(sa.join("namespace"), "ai").unwrap();
        std::fs::write(sa.join("ca.crt"), "").unwrap();
        let (ok, written) = run_example_agent(
            "audit",
            &[
                ("HOMEPLANE_SA_DIR", sa.to_str().unwrap()),
                ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
                ("KUBERNETES_SERVICE_PORT", "1"),
            ],
        );
        let _ = std::fs::remove_dir_all(&sa);
        assert!(!ok);
        let c = parse(&written).unwrap();
        assert_eq!(c.status, ContractStatus::Failed);
        assert_eq!(c.tests_run, vec!["list configmaps"]);
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(duration(4), "4s");
        assert_eq!(duration(192), "3m12s");
        assert_eq!(duration(3605), "1h0m5s");
        assert_eq!(duration(-3), "0s");
    }
}
