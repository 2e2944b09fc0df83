//! Pure: the ServiceAccount of an Agent and the bindings that give it its tier's rights on its
//! scope. homeplane never writes a rule: an admin installs one fixed ClusterRole per
//! grantable resource and verb set (`<prefix>:read:<group>:<resource>` with get/list/watch,
//! `<prefix>:write:<group>:<resource>` with create/update/patch/delete; the chart renders them
//! from `agents.grantable`), and homeplane binds the Agent's ServiceAccount to the ones its
//! tier and scope name — `observer` to `read`, `builder` and `director` to `read` and `write` —
//! with a RoleBinding in each namespace of its scope, or a ClusterRoleBinding for a
//! cluster-wide director. So the operator needs `bind` on exactly those ClusterRoles and no
//! `escalate`; who may ask for which rights is checked before (admission policy, and a
//! SubjectAccessReview per right for the person who asked: see `mod.rs`).

use std::collections::{BTreeMap, BTreeSet};

use homeplane_crds::agent::{Agent, AgentTier};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

/// `app.kubernetes.io/managed-by` on everything homeplane creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label with the Agent's name (hashed when longer than a label value may be).
pub const AGENT_LABEL: &str = "homeplane.dev/agent";
/// Label with the Agent's namespace.
pub const AGENT_NAMESPACE_LABEL: &str = "homeplane.dev/agent-namespace";
/// Annotation the admission policy writes on every Agent: who asked for it (its last spec).
pub const REQUESTED_BY: &str = "homeplane.dev/requested-by";
/// Annotation the admission policy writes: the groups of who asked, comma-separated.
pub const REQUESTED_BY_GROUPS: &str = "homeplane.dev/requested-by-groups";

/// The verbs of the `read` ClusterRoles.
pub const READ: [&str; 3] = ["get", "list", "watch"];
/// The verbs of the `write` ClusterRoles.
pub const WRITE: [&str; 4] = ["create", "update", "patch", "delete"];

/// Resources no tier gets unless an admin allows it: they read secrets, run code in other
/// workloads, mint credentials, change who may do what, or are homeplane's own Agents.
/// `(API group, resource)`; a group with resource `*` stands for the whole group.
pub const RESTRICTED: &[(&str, &str)] = &[
    ("", "secrets"),
    ("", "pods/exec"),
    ("", "pods/attach"),
    ("", "pods/portforward"),
    ("", "pods/proxy"),
    ("", "pods/ephemeralcontainers"),
    ("", "services/proxy"),
    ("", "nodes"),
    ("", "nodes/proxy"),
    ("", "serviceaccounts/token"),
    ("rbac.authorization.k8s.io", "*"),
    ("admissionregistration.k8s.io", "*"),
    ("certificates.k8s.io", "*"),
    ("authentication.k8s.io", "*"),
    ("apiextensions.k8s.io", "*"),
    ("apiregistration.k8s.io", "*"),
    ("homeplane.dev", "agents"),
    ("homeplane.dev", "agents/status"),
    ("homeplane.dev", "agentruns"),
    ("homeplane.dev", "agentruns/status"),
];

/// Whether `group`/`resource` is on the restricted list.
pub fn is_restricted(group: &str, resource: &str) -> bool {
    resource.ends_with("/proxy")
        || RESTRICTED
            .iter()
            .any(|(g, r)| *g == group && (*r == "*" || *r == resource))
}

/// A set of verbs an Agent may be bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VerbSet {
    /// get, list, watch.
    Read,
    /// create, update, patch, delete.
    Write,
}

impl VerbSet {
    /// The word in ClusterRole names.
    pub fn word(self) -> &'static str {
        match self {
            VerbSet::Read => "read",
            VerbSet::Write => "write",
        }
    }

    /// The verbs.
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            VerbSet::Read => &READ,
            VerbSet::Write => &WRITE,
        }
    }
}

/// One right an Agent asks for: a verb set on one resource of one API group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    /// API group, empty for the core group.
    pub group: String,
    /// Plural resource name, with `/subresource` when there is one.
    pub resource: String,
    /// The verbs.
    pub verbs: VerbSet,
}

impl Grant {
    /// `apps/deployments`, or `configmaps` for the core group.
    pub fn describe(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.group, self.resource)
        }
    }

    /// The resource without its subresource, and the subresource.
    pub fn split(&self) -> (&str, Option<&str>) {
        match self.resource.split_once('/') {
            Some((r, sub)) => (r, Some(sub)),
            None => (&self.resource, None),
        }
    }
}

/// The name of the fixed ClusterRole of `grant`: `<prefix>:<read|write>:<group>:<resource>`
/// (a subresource after one more `:`), e.g. `homeplane-agent:write:apps:deployments`.
pub fn cluster_role(prefix: &str, grant: &Grant) -> String {
    format!(
        "{prefix}:{}:{}:{}",
        grant.verbs.word(),
        grant.group,
        grant.resource.replace('/', ":")
    )
}

/// Everything the Agent needs, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The ServiceAccount the runs use, in the Agent's namespace.
    pub service_account: ServiceAccount,
    /// The namespaces of the scope (empty when cluster-wide).
    pub namespaces: Vec<String>,
    /// The rights, one per resource and verb set.
    pub grants: Vec<Grant>,
    /// A RoleBinding per namespace and grant (none when cluster-wide).
    pub role_bindings: Vec<RoleBinding>,
    /// A ClusterRoleBinding per grant of a cluster-wide director.
    pub cluster_bindings: Vec<ClusterRoleBinding>,
}

/// The verbs of a tier.
pub fn verbs(tier: AgentTier) -> Vec<String> {
    let mut verbs: Vec<&str> = READ.to_vec();
    if tier != AgentTier::Observer {
        verbs.extend(WRITE);
    }
    verbs.into_iter().map(str::to_string).collect()
}

/// The verb sets of a tier.
fn verb_sets(tier: AgentTier) -> &'static [VerbSet] {
    match tier {
        AgentTier::Observer => &[VerbSet::Read],
        AgentTier::Builder | AgentTier::Director => &[VerbSet::Read, VerbSet::Write],
    }
}

/// The ServiceAccount of an Agent.
pub fn service_account_name(agent: &Agent) -> String {
    format!("agent-{}", agent.name_any())
}

/// The name of one binding: `<prefix>:<agent namespace>:<agent>:<read|write>:<group>:<resource>`.
/// `:` never occurs in a namespace, Agent, group or resource name, so two Agents can never
/// produce the same name (`a-b/c` and `a/b-c` once did); past 253 characters a hash replaces
/// the tail.
pub fn binding_name(prefix: &str, agent: &Agent, grant: &Grant) -> String {
    let raw = format!(
        "{prefix}:{}:{}:{}:{}:{}",
        agent.namespace().unwrap_or_default(),
        agent.name_any(),
        grant.verbs.word(),
        grant.group,
        grant.resource.replace('/', ":")
    );
    if raw.len() <= 253 {
        return raw;
    }
    let hash = hex::encode(&Sha256::digest(raw.as_bytes())[..8]);
    let mut cut = 230;
    while !raw.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}:{hash}", &raw[..cut])
}

/// A label value for `s`: itself when it fits in 63 characters, else a prefix and a hash.
pub fn label_value(s: &str) -> String {
    if s.len() <= 63 {
        return s.to_string();
    }
    let hash = hex::encode(&Sha256::digest(s.as_bytes())[..6]);
    let prefix: String = s.chars().take(50).collect();
    format!("{}-{hash}", prefix.trim_end_matches(['-', '.']))
}

/// The labels of everything generated for an Agent.
pub fn labels(agent: &Agent) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), "homeplane".to_string()),
        (AGENT_LABEL.to_string(), label_value(&agent.name_any())),
        (
            AGENT_NAMESPACE_LABEL.to_string(),
            agent.namespace().unwrap_or_default(),
        ),
    ])
}

/// The label selector of everything generated for an Agent.
pub fn selector(agent: &Agent) -> String {
    labels(agent)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `labels` say the object was made for `agent` (so it may be changed or deleted).
pub fn is_ours(agent: &Agent, object_labels: &BTreeMap<String, String>) -> bool {
    labels(agent)
        .iter()
        .all(|(k, v)| object_labels.get(k) == Some(v))
}

/// The rights of the Agent's tier and scope, one per resource and verb set, sorted.
pub fn grants(agent: &Agent) -> Result<Vec<Grant>, String> {
    let mut out = BTreeSet::new();
    for r in &agent.spec.scope.resources {
        if r.resource.contains('*') || r.api_group.contains('*') {
            return Err(format!(
                "scope.resources names {:?} in group {:?}: wildcards are refused",
                r.resource, r.api_group
            ));
        }
        let resource = r.resource.trim();
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        let parts: Vec<&str> = resource.split('/').collect();
        if parts.len() > 2 || !parts.iter().all(|p| valid(p)) {
            return Err(format!(
                "scope.resources has {resource:?}, which is not a resource name such as configmaps or pods/log"
            ));
        }
        if !r.api_group.is_empty() && !valid(&r.api_group) {
            return Err(format!(
                "scope.resources has API group {:?}, which is not a group name such as apps",
                r.api_group
            ));
        }
        for verbs in verb_sets(agent.spec.tier) {
            out.insert(Grant {
                group: r.api_group.clone(),
                resource: resource.to_string(),
                verbs: *verbs,
            });
        }
    }
    Ok(out.into_iter().collect())
}

/// The namespaces the Agent works in: the scope's, or its own when the scope names none.
pub fn namespaces(agent: &Agent) -> Result<Vec<String>, String> {
    let own = agent.namespace().unwrap_or_default();
    let mut out = BTreeSet::new();
    for ns in &agent.spec.scope.namespaces {
        let valid = !ns.is_empty()
            && ns.len() <= 63
            && ns
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !valid {
            return Err(format!(
                "scope.namespaces has {ns:?}, which is not a namespace name (lower-case letters, digits and '-'; wildcards are refused)"
            ));
        }
        out.insert(ns.clone());
    }
    if out.is_empty() {
        out.insert(own);
    }
    Ok(out.into_iter().collect())
}

/// Whether the Agent's rights are cluster-wide.
pub fn is_cluster_wide(agent: &Agent) -> bool {
    agent.spec.tier == AgentTier::Director && agent.spec.scope.cluster_wide
}

/// The whole plan for an Agent, binding ClusterRoles named with `prefix`; the error says what
/// in the spec to fix.
pub fn plan(agent: &Agent, prefix: &str) -> Result<Plan, String> {
    let grants = grants(agent)?;
    let cluster_wide = is_cluster_wide(agent);
    let namespaces = if cluster_wide {
        Vec::new()
    } else {
        namespaces(agent)?
    };
    let own = agent.namespace().unwrap_or_default();
    let labels = labels(agent);
    let owner = agent.controller_owner_ref(&()).map(|o| vec![o]);
    let sa = service_account_name(agent);
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: sa.clone(),
        namespace: Some(own.clone()),
        ..Subject::default()
    };
    let meta = |name: String, namespace: Option<&str>| ObjectMeta {
        name: Some(name),
        namespace: namespace.map(str::to_string),
        labels: Some(labels.clone()),
        // Owner references only work inside the owner's namespace; the rest is removed by
        // the Agent's finalizer.
        owner_references: if namespace == Some(own.as_str()) {
            owner.clone()
        } else {
            None
        },
        ..ObjectMeta::default()
    };
    let role_ref = |grant: &Grant| RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "ClusterRole".into(),
        name: cluster_role(prefix, grant),
    };
    let service_account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(sa),
            namespace: Some(own.clone()),
            labels: Some(labels.clone()),
            owner_references: owner.clone(),
            ..ObjectMeta::default()
        },
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    };
    let mut role_bindings = Vec::new();
    let mut cluster_bindings = Vec::new();
    for grant in &grants {
        let name = binding_name(prefix, agent, grant);
        if cluster_wide {
            cluster_bindings.push(ClusterRoleBinding {
                metadata: meta(name, None),
                role_ref: role_ref(grant),
                subjects: Some(vec![subject.clone()]),
            });
        } else {
            for ns in &namespaces {
                role_bindings.push(RoleBinding {
                    metadata: meta(name.clone(), Some(ns)),
                    role_ref: role_ref(grant),
                    subjects: Some(vec![subject.clone()]),
                });
            }
        }
    }
    Ok(Plan {
        service_account,
        namespaces,
        grants,
        role_bindings,
        cluster_bindings,
    })
}

/// `configmaps, apps/deployments` — the resources of the grants in a few words, for status.
pub fn describe(grants: &[Grant]) -> String {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for g in grants {
        let text = g.describe();
        if seen.insert(text.clone()) {
            out.push(text);
        }
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use homeplane_crds::agent::{AgentScope, AgentSpec, Budget, ScopedResource};

    fn agent(tier: AgentTier, namespaces: &[&str], cluster_wide: bool) -> Agent {
        let mut a = Agent::new(
            "mail-sorter",
            AgentSpec {
                tier,
                scope: AgentScope {
                    namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
                    resources: vec![
                        ScopedResource {
                            api_group: String::new(),
                            resource: "configmaps".into(),
                        },
                        ScopedResource {
                            api_group: "apps".into(),
                            resource: "deployments".into(),
                        },
                        ScopedResource {
                            api_group: String::new(),
                            resource: "pods/log".into(),
                        },
                    ],
                    cluster_wide,
                },
                image: "example/agent:1".into(),
                command: vec![],
                budget: Budget {
                    cpu: "1".into(),
                    memory: "1Gi".into(),
                    max_run_seconds: 600,
                    max_concurrent_runs: 1,
                },
                placement: None,
            },
        );
        a.metadata.namespace = Some("agents".into());
        a.metadata.uid = Some("uid-1".into());
        a
    }

    fn roles(plan: &Plan) -> Vec<String> {
        plan.role_bindings
            .iter()
            .map(|b| b.role_ref.name.clone())
            .chain(
                plan.cluster_bindings
                    .iter()
                    .map(|b| b.role_ref.name.clone()),
            )
            .collect()
    }

    #[test]
    fn observer_is_bound_to_read_roles_in_its_own_namespace() {
        let p = plan(&agent(AgentTier::Observer, &[], false), "homeplane-agent").unwrap();
        assert!(p.cluster_bindings.is_empty());
        assert_eq!(p.namespaces, ["agents"]);
        assert_eq!(
            roles(&p),
            [
                "homeplane-agent:read::configmaps",
                "homeplane-agent:read::pods:log",
                "homeplane-agent:read:apps:deployments",
            ]
        );
        let binding = &p.role_bindings[0];
        assert_eq!(binding.metadata.namespace.as_deref(), Some("agents"));
        assert_eq!(
            binding.metadata.name.as_deref(),
            Some("homeplane-agent:agents:mail-sorter:read::configmaps")
        );
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(subject.name, "agent-mail-sorter");
        assert_eq!(subject.namespace.as_deref(), Some("agents"));
        // Same namespace: owned by the Agent.
        assert!(binding.metadata.owner_references.is_some());
        assert_eq!(
            describe(&p.grants),
            "configmaps, pods/log, apps/deployments"
        );
    }

    #[test]
    fn builder_is_bound_to_read_and_write_in_each_namespace_of_its_scope() {
        let p = plan(
            &agent(AgentTier::Builder, &["mail", "web", "mail"], false),
            "hp-agent",
        )
        .unwrap();
        assert_eq!(p.namespaces, ["mail", "web"]);
        assert_eq!(p.role_bindings.len(), 2 * 3 * 2);
        assert!(roles(&p).contains(&"hp-agent:write:apps:deployments".to_string()));
        // Other namespaces: no owner reference (the finalizer removes them).
        assert!(p.role_bindings[0].metadata.owner_references.is_none());
        for b in &p.role_bindings {
            let labels = b.metadata.labels.as_ref().unwrap();
            assert_eq!(labels[MANAGED_BY_LABEL], "homeplane");
            assert_eq!(labels[AGENT_LABEL], "mail-sorter");
            assert!(is_ours(&agent(AgentTier::Builder, &[], false), labels));
        }
    }

    #[test]
    fn director_is_cluster_wide_only_when_asked() {
        let p = plan(&agent(AgentTier::Director, &["mail"], false), "p").unwrap();
        assert!(p.cluster_bindings.is_empty());
        assert_eq!(p.role_bindings.len(), 6);
        let p = plan(&agent(AgentTier::Director, &["mail"], true), "p").unwrap();
        assert!(p.role_bindings.is_empty());
        assert_eq!(p.cluster_bindings.len(), 6);
        assert!(p.cluster_bindings[0].metadata.owner_references.is_none());
        // A builder asking for clusterWide stays namespaced (CEL refuses it earlier anyway).
        let p = plan(&agent(AgentTier::Builder, &[], true), "p").unwrap();
        assert!(p.cluster_bindings.is_empty());
    }

    #[test]
    fn wildcards_and_bad_names_are_refused() {
        let mut a = agent(AgentTier::Observer, &[], false);
        a.spec.scope.resources[0].api_group = "*".into();
        assert!(plan(&a, "p").unwrap_err().contains("wildcards are refused"));
        let mut a = agent(AgentTier::Observer, &["*"], false);
        assert!(plan(&a, "p").unwrap_err().contains("not a namespace name"));
        a.spec.scope.namespaces = vec!["Mail".into()];
        assert!(plan(&a, "p").is_err());
        let mut a = agent(AgentTier::Observer, &[], false);
        a.spec.scope.resources[0].resource = "pods/log/x".into();
        assert!(plan(&a, "p").unwrap_err().contains("not a resource name"));
        a.spec.scope.resources[0].resource = "Pods:x".into();
        assert!(plan(&a, "p").is_err());
    }

    #[test]
    fn binding_names_of_two_agents_never_collide() {
        // `homeplane-agent-<namespace>-<name>` made these two the same.
        let mut one = agent(AgentTier::Observer, &[], false);
        one.metadata.namespace = Some("a-b".into());
        one.metadata.name = Some("c".into());
        let mut two = agent(AgentTier::Observer, &[], false);
        two.metadata.namespace = Some("a".into());
        two.metadata.name = Some("b-c".into());
        let grant = &grants(&one).unwrap()[0];
        assert_ne!(
            binding_name("p", &one, grant),
            binding_name("p", &two, grant)
        );
        let mut long = agent(AgentTier::Observer, &[], false);
        long.metadata.name = Some("x".repeat(250));
        let name = binding_name("p", &long, grant);
        assert!(name.len() <= 253, "{}", name.len());
    }

    #[test]
    fn the_restricted_list_holds_what_the_issue_names() {
        for (g, r) in [
            ("", "secrets"),
            ("", "pods/exec"),
            ("", "pods/attach"),
            ("", "pods/portforward"),
            ("", "serviceaccounts/token"),
            ("rbac.authorization.k8s.io", "roles"),
            ("rbac.authorization.k8s.io", "clusterrolebindings"),
            (
                "admissionregistration.k8s.io",
                "validatingadmissionpolicies",
            ),
            ("certificates.k8s.io", "certificatesigningrequests"),
            ("", "nodes"),
            ("homeplane.dev", "agents"),
            ("homeplane.dev", "agentruns"),
            ("", "services/proxy"),
        ] {
            assert!(is_restricted(g, r), "{g}/{r}");
        }
        for (g, r) in [
            ("", "configmaps"),
            ("apps", "deployments"),
            ("homeplane.dev", "databases"),
        ] {
            assert!(!is_restricted(g, r), "{g}/{r}");
        }
    }

    #[test]
    fn the_admission_policy_refuses_the_same_list() {
        let policy = include_str!("../../../../charts/homeplane/templates/agent-admission.yaml");
        for (group, resource) in RESTRICTED {
            let listed = if *resource == "*" {
                policy.contains(&format!("\"{group}\""))
            } else {
                policy.contains(&format!("\"{group}/{resource}\""))
            };
            assert!(
                listed,
                "{group}/{resource} is not refused by the admission policy"
            );
        }
    }

    #[test]
    fn long_names_fit_in_labels() {
        let long = "a".repeat(100);
        let v = label_value(&long);
        assert!(v.len() <= 63, "{v}");
        assert_ne!(label_value(&format!("{long}b")), v);
        assert_eq!(label_value("short"), "short");
    }
}
