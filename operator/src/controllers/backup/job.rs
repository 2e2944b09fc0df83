//! Pure: the Job that backs up a PersistentVolumeClaim. It runs the operator's own image as
//! `homeplane backup pvc`, with the claim mounted read-only at [`MOUNT`], the bucket's
//! credentials from the policy's Secret as environment variables (the operator never copies
//! them), the policy's recipients, compression and part plan as flags, and its result written
//! as the container's termination message. It reads every file of the volume whatever its
//! owner (root with only `CAP_DAC_READ_SEARCH`), cannot write to it, cannot escalate, has no
//! API token, and has CPU and memory limits sized from the part plan (the pipeline's memory is
//! bounded by part size × concurrency). A claim already mounted by a running pod is backed up
//! on that pod's node, with its tolerations (a ReadWriteOnce volume is reachable only there).

use std::collections::BTreeMap;

use homeplane_backups::PartPlan;
use homeplane_backups::crypto::Compress;
use homeplane_crds::backup::{Backup, BackupPolicy};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EnvVar, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec,
    ResourceRequirements, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::controllers::agent::rbac::label_value;
use crate::workload::{MANAGED_BY, MANAGED_BY_LABEL, env_from_secret};

/// Label with the Backup's name on its Job and pod. (The test cluster's KWOK leaves pods with
/// this label running, so that tests decide how each run ends.)
pub const RUN_LABEL: &str = "homeplane.dev/backup-run";
/// Label with the policy's name.
pub const POLICY_LABEL: &str = "homeplane.dev/backup-policy";
/// The container's name.
pub const CONTAINER: &str = "backup";
/// Where the claim is mounted.
pub const MOUNT: &str = "/data";
/// Where the container writes its result (Kubernetes' default termination message path).
pub const RESULT_PATH: &str = "/dev/termination-log";
/// The longest a run may take before the Job is stopped.
pub const DEADLINE_SECONDS: i64 = 6 * 3600;
/// CPU of the Job (request = limit).
pub const CPU: &str = "500m";
/// Memory beyond the parts in flight: the runtime, the archive and zstd buffers, the HTTP
/// client.
const MEMORY_OVERHEAD: u64 = 128 << 20;

/// Where the claim is used now: the node of a running pod that mounts it, and that pod's
/// tolerations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Consumer {
    /// The pod's name.
    pub pod: String,
    /// The node's name.
    pub node: String,
    /// The pod's tolerations.
    pub tolerations: Vec<Toleration>,
}

/// What a PVC backup Job is built from.
pub struct PvcJob<'a> {
    /// The run.
    pub backup: &'a Backup,
    /// Its policy.
    pub policy: &'a BackupPolicy,
    /// The claim's name.
    pub claim: &'a str,
    /// The object key the run writes.
    pub key: &'a str,
    /// The image (the operator's own).
    pub image: &'a str,
    /// Compression, as validated from the policy.
    pub compress: Compress,
    /// Part plan, as validated from the policy.
    pub plan: PartPlan,
    /// Where the claim is used now, if anywhere.
    pub consumer: Option<&'a Consumer>,
}

/// The Job's name: `backup-<backup>`, shortened with a hash when it would not fit the
/// `job-name` label the Job controller adds.
pub fn job_name(backup: &Backup) -> String {
    label_value(&format!("backup-{}", backup.name_any()))
}

/// The labels of a run's Job and pod.
pub fn labels(backup: &Backup) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (RUN_LABEL.to_string(), label_value(&backup.name_any())),
        (POLICY_LABEL.to_string(), label_value(&backup.spec.policy)),
    ])
}

/// Memory limit of the Job: the parts in flight plus a fixed overhead.
pub fn memory_bytes(plan: PartPlan) -> u64 {
    plan.memory_bound() + MEMORY_OVERHEAD
}

/// The Job of a PVC backup.
pub fn build(spec: PvcJob<'_>) -> Job {
    let ns = spec.backup.namespace().unwrap_or_default();
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        containers: vec![container(&spec, &ns)],
        volumes: Some(vec![Volume {
            name: "source".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: spec.claim.to_string(),
                read_only: Some(true),
            }),
            ..Volume::default()
        }]),
        affinity: spec.consumer.map(|c| on_node(&c.node)),
        tolerations: spec
            .consumer
            .map(|c| c.tolerations.clone())
            .filter(|t| !t.is_empty()),
        termination_grace_period_seconds: Some(30),
        ..PodSpec::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(spec.backup)),
            namespace: Some(ns),
            labels: Some(labels(spec.backup)),
            owner_references: spec.backup.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            // One attempt: a retry would be a new run, with a new object key.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(DEADLINE_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(spec.backup)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// `homeplane backup pvc` with the policy's bucket, recipients, compression and part plan.
fn args(spec: &PvcJob<'_>, ns: &str) -> Vec<String> {
    let dest = &spec.policy.spec.destination;
    let fixed = [
        "backup",
        "pvc",
        "--path",
        MOUNT,
        "--claim",
        spec.claim,
        "--namespace",
        ns,
        "--object",
        spec.key,
        "--endpoint",
        &dest.endpoint,
        "--bucket",
        &dest.bucket,
        "--region",
        &dest.region,
    ];
    let mut args: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    if !dest.path_style {
        args.push("--virtual-hosted".into());
    }
    for recipient in &spec.policy.spec.recipients {
        args.extend(["--recipient".to_string(), recipient.0.clone()]);
    }
    let level = match spec.compress {
        Compress::Zstd(level) => level,
        Compress::None => 0,
    };
    let part_size_mib = spec.plan.part_size() >> 20;
    let concurrency = spec.plan.memory_bound() / spec.plan.part_size().max(1);
    for (flag, value) in [
        ("--zstd-level", level.to_string()),
        ("--part-size-mib", part_size_mib.to_string()),
        ("--concurrency", concurrency.to_string()),
        ("--result-file", RESULT_PATH.to_string()),
    ] {
        args.extend([flag.to_string(), value]);
    }
    args
}

/// The container: the claim read-only, the bucket's credentials from the Secret, root with
/// only `CAP_DAC_READ_SEARCH`, limits from the part plan, the result as termination message.
fn container(spec: &PvcJob<'_>, ns: &str) -> Container {
    let secret = &spec.policy.spec.destination.credentials_secret;
    let memory = Quantity(format!("{}Mi", memory_bytes(spec.plan) >> 20));
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(CPU.to_string())),
        ("memory".to_string(), memory),
    ]);
    Container {
        name: CONTAINER.to_string(),
        image: Some(spec.image.to_string()),
        args: Some(args(spec, ns)),
        env: Some(vec![
            env_from_secret("AWS_ACCESS_KEY_ID", secret, "accessKeyId"),
            env_from_secret("AWS_SECRET_ACCESS_KEY", secret, "secretAccessKey"),
            EnvVar {
                name: "RUST_LOG".into(),
                value: Some("info".into()),
                ..EnvVar::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            limits: Some(resources.clone()),
            requests: Some(resources),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "source".into(),
            mount_path: MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["DAC_READ_SEARCH".into()]),
            }),
            ..SecurityContext::default()
        }),
        termination_message_path: Some(RESULT_PATH.to_string()),
        termination_message_policy: Some("File".to_string()),
        ..Container::default()
    }
}

/// Node affinity to one node by hostname (where a ReadWriteOnce claim is in use).
fn on_node(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: "kubernetes.io/hostname".into(),
                        operator: "In".into(),
                        values: Some(vec![node.to_string()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use homeplane_crds::backup::{
        AgeRecipient, BackupPolicySpec, BackupSource, BackupSpec, PvcSource, S3Destination,
    };

    const KEY: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    fn fixtures() -> (Backup, BackupPolicy) {
        let mut backup = Backup::new(
            "n8n-data-1",
            BackupSpec {
                policy: "n8n-data".into(),
                ..BackupSpec::default()
            },
        );
        backup.metadata.namespace = Some("automation".into());
        backup.metadata.uid = Some("u-1".into());
        let mut policy = BackupPolicy::new(
            "n8n-data",
            BackupPolicySpec {
                schedule: "@daily".into(),
                source: BackupSource {
                    pvc: Some(PvcSource {
                        claim_name: "n8n-data".into(),
                    }),
                    ..BackupSource::default()
                },
                destination: S3Destination {
                    endpoint: "https://acct.r2.cloudflarestorage.com".into(),
                    bucket: "homelab".into(),
                    region: "auto".into(),
                    path_style: true,
                    credentials_secret: "r2".into(),
                    part_size_mib: 16,
                    concurrency: 2,
                    ..S3Destination::default()
                },
                recipients: vec![AgeRecipient(KEY.into())],
                ..BackupPolicySpec::default()
            },
        );
        policy.metadata.namespace = Some("automation".into());
        (backup, policy)
    }

    fn job(consumer: Option<&Consumer>) -> Job {
        let (backup, policy) = fixtures();
        build(PvcJob {
            backup: &backup,
            policy: &policy,
            claim: "n8n-data",
            key: "automation/n8n-data/x.tar.zst.age",
            image: "ghcr.io/homeplane/homeplane:0.1.0",
            compress: Compress::Zstd(3),
            plan: PartPlan::new(16 << 20, 2).unwrap(),
            consumer,
        })
    }

    #[test]
    fn the_job_archives_the_claim_read_only_with_the_policy_settings() {
        let job = job(None);
        assert_eq!(job.metadata.name.as_deref(), Some("backup-n8n-data-1"));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("Backup", Some(true))
        );
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let volume = &pod.volumes.as_ref().unwrap()[0];
        let claim = volume.persistent_volume_claim.as_ref().unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("n8n-data", Some(true))
        );
        let c = &pod.containers[0];
        let args = c.args.as_ref().unwrap().join(" ");
        assert_eq!(
            args,
            format!(
                "backup pvc --path /data --claim n8n-data --namespace automation \
                 --object automation/n8n-data/x.tar.zst.age \
                 --endpoint https://acct.r2.cloudflarestorage.com --bucket homelab --region auto \
                 --recipient {KEY} --zstd-level 3 --part-size-mib 16 --concurrency 2 \
                 --result-file /dev/termination-log"
            )
        );
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/data", Some(true))
        );
        // Credentials come from the Secret, never as values.
        let env = c.env.as_ref().unwrap();
        for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            let e = env.iter().find(|e| e.name == var).unwrap();
            assert!(e.value.is_none());
            let r = e
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            assert_eq!(r.name, "r2");
        }
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["memory"].0, "160Mi");
        assert_eq!(limits["cpu"].0, "500m");
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref(),
            Some(limits)
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(
            caps.add.as_deref(),
            Some(&["DAC_READ_SEARCH".to_string()][..])
        );
        assert!(pod.affinity.is_none());
        assert_eq!(
            c.termination_message_path.as_deref(),
            Some("/dev/termination-log")
        );
    }

    #[test]
    fn a_claim_in_use_is_backed_up_on_its_node_with_its_tolerations() {
        let consumer = Consumer {
            pod: "ollama-0".into(),
            node: "gpu-1".into(),
            tolerations: vec![Toleration {
                key: Some("amd.com/gpu".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            }],
        };
        let pod = job(Some(&consumer)).spec.unwrap().template.spec.unwrap();
        let terms = pod
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        let req = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(req.key, "kubernetes.io/hostname");
        assert_eq!(req.values.as_deref(), Some(&["gpu-1".to_string()][..]));
        assert_eq!(
            pod.tolerations.unwrap()[0].key.as_deref(),
            Some("amd.com/gpu")
        );
    }

    #[test]
    fn long_backup_names_still_make_a_job_name() {
        let (mut backup, _) = fixtures();
        backup.metadata.name = Some("x".repeat(200));
        let name = job_name(&backup);
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with("backup-xxx"));
    }
}
