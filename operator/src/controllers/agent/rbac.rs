//! Pure: the ServiceAccount and the least RBAC an Agent's tier and scope allow. `observer`
//! gets get/list/watch on the scope's resources in the scope's namespaces; `builder` adds
//! create/update/patch/delete; `director` has builder rights, cluster-wide only with
//! `scope.clusterWide`. Nothing generated here contains a wildcard.

use std::collections::{BTreeMap, BTreeSet};

use homeplane_crds::agent::{Agent, AgentTier};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

/// `app.kubernetes.io/managed-by` on everything homeplane creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label with the Agent's name (hashed when longer than a label value may be).
pub const AGENT_LABEL: &str = "homeplane.dev/agent";
/// Label with the Agent's namespace.
pub const AGENT_NAMESPACE_LABEL: &str = "homeplane.dev/agent-namespace";

const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 4] = ["create", "update", "patch", "delete"];

/// Everything the Agent needs, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The ServiceAccount the runs use, in the Agent's namespace.
    pub service_account: ServiceAccount,
    /// A Role and a RoleBinding per namespace of the scope (none when cluster-wide).
    pub namespaced: Vec<(Role, RoleBinding)>,
    /// The ClusterRole and ClusterRoleBinding of a cluster-wide director.
    pub cluster: Option<(ClusterRole, ClusterRoleBinding)>,
    /// The rules, for the status message.
    pub rules: Vec<PolicyRule>,
}

/// The verbs of a tier.
pub fn verbs(tier: AgentTier) -> Vec<String> {
    let mut verbs: Vec<&str> = READ.to_vec();
    if tier != AgentTier::Observer {
        verbs.extend(WRITE);
    }
    verbs.into_iter().map(str::to_string).collect()
}

/// The ServiceAccount of an Agent.
pub fn service_account_name(agent: &Agent) -> String {
    format!("agent-{}", agent.name_any())
}

/// Name of the Roles, RoleBindings, ClusterRole and ClusterRoleBinding of an Agent: unique
/// across namespaces, since they may live outside the Agent's own.
pub fn role_name(agent: &Agent) -> String {
    format!(
        "homeplane-agent-{}-{}",
        agent.namespace().unwrap_or_default(),
        agent.name_any()
    )
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

/// The rules of the Agent's tier and scope: one rule per API group, resources sorted.
pub fn rules(agent: &Agent) -> Result<Vec<PolicyRule>, String> {
    let mut by_group: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in &agent.spec.scope.resources {
        if r.resource.contains('*') || r.api_group.contains('*') {
            return Err(format!(
                "scope.resources names {:?} in group {:?}: wildcards are refused",
                r.resource, r.api_group
            ));
        }
        if r.resource.trim().is_empty() {
            return Err("scope.resources has an empty resource".into());
        }
        by_group
            .entry(r.api_group.as_str())
            .or_default()
            .insert(r.resource.as_str());
    }
    let verbs = verbs(agent.spec.tier);
    Ok(by_group
        .into_iter()
        .map(|(group, resources)| PolicyRule {
            api_groups: Some(vec![group.to_string()]),
            resources: Some(resources.into_iter().map(str::to_string).collect()),
            verbs: verbs.clone(),
            ..PolicyRule::default()
        })
        .collect())
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

/// The whole plan for an Agent; the error says what in the spec to fix.
pub fn plan(agent: &Agent) -> Result<Plan, String> {
    let rules = rules(agent)?;
    let namespaces = namespaces(agent)?;
    let own = agent.namespace().unwrap_or_default();
    let labels = labels(agent);
    let owner = agent.controller_owner_ref(&()).map(|o| vec![o]);
    let sa = service_account_name(agent);
    let name = role_name(agent);
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: sa.clone(),
        namespace: Some(own.clone()),
        ..Subject::default()
    };
    let meta = |namespace: Option<&str>| ObjectMeta {
        name: Some(name.clone()),
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
    if is_cluster_wide(agent) {
        let role = ClusterRole {
            metadata: meta(None),
            rules: Some(rules.clone()),
            ..ClusterRole::default()
        };
        let binding = ClusterRoleBinding {
            metadata: meta(None),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: name.clone(),
            },
            subjects: Some(vec![subject]),
        };
        return Ok(Plan {
            service_account,
            namespaced: vec![],
            cluster: Some((role, binding)),
            rules,
        });
    }
    let namespaced = namespaces
        .iter()
        .map(|ns| {
            let role = Role {
                metadata: meta(Some(ns)),
                rules: Some(rules.clone()),
            };
            let binding = RoleBinding {
                metadata: meta(Some(ns)),
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: name.clone(),
                },
                subjects: Some(vec![subject.clone()]),
            };
            (role, binding)
        })
        .collect();
    Ok(Plan {
        service_account,
        namespaced,
        cluster: None,
        rules,
    })
}

/// `configmaps, apps/deployments` — the rules in a few words, for the status.
pub fn describe(rules: &[PolicyRule]) -> String {
    rules
        .iter()
        .flat_map(|r| {
            let group = r
                .api_groups
                .as_ref()
                .and_then(|g| g.first())
                .cloned()
                .unwrap_or_default();
            r.resources
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(move |res| {
                    if group.is_empty() {
                        res
                    } else {
                        format!("{group}/{res}")
                    }
                })
        })
        .collect::<Vec<_>>()
        .join(", ")
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
                            resource: "secrets".into(),
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

    fn all_strings(plan: &Plan) -> Vec<String> {
        let mut out = vec![];
        let value = serde_json::to_value((&plan.namespaced, &plan.cluster)).unwrap();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(s) => out.push(s.clone()),
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                serde_json::Value::Object(m) => m.values().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        walk(&value, &mut out);
        out
    }

    #[test]
    fn observer_reads_only_in_its_own_namespace() {
        let p = plan(&agent(AgentTier::Observer, &[], false)).unwrap();
        assert!(p.cluster.is_none());
        assert_eq!(p.namespaced.len(), 1);
        let (role, binding) = &p.namespaced[0];
        assert_eq!(role.metadata.namespace.as_deref(), Some("agents"));
        let rules = role.rules.as_ref().unwrap();
        assert_eq!(rules.len(), 2, "one rule per API group: {rules:?}");
        assert_eq!(rules[0].api_groups, Some(vec!["".to_string()]));
        assert_eq!(
            rules[0].resources,
            Some(vec!["configmaps".to_string(), "secrets".to_string()])
        );
        assert_eq!(rules[0].verbs, vec!["get", "list", "watch"]);
        assert_eq!(rules[1].api_groups, Some(vec!["apps".to_string()]));
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(subject.name, "agent-mail-sorter");
        assert_eq!(subject.namespace.as_deref(), Some("agents"));
        assert_eq!(binding.role_ref.name, "homeplane-agent-agents-mail-sorter");
        // Same namespace: owned by the Agent.
        assert!(role.metadata.owner_references.is_some());
        assert_eq!(describe(&p.rules), "configmaps, secrets, apps/deployments");
    }

    #[test]
    fn builder_writes_in_each_namespace_of_its_scope() {
        let p = plan(&agent(AgentTier::Builder, &["mail", "web", "mail"], false)).unwrap();
        let namespaces: Vec<_> = p
            .namespaced
            .iter()
            .map(|(r, _)| r.metadata.namespace.clone().unwrap())
            .collect();
        assert_eq!(namespaces, vec!["mail", "web"]);
        let verbs = &p.namespaced[0].0.rules.as_ref().unwrap()[0].verbs;
        assert_eq!(
            verbs,
            &vec![
                "get", "list", "watch", "create", "update", "patch", "delete"
            ]
        );
        // Other namespaces: no owner reference (the finalizer removes them).
        assert!(p.namespaced[0].0.metadata.owner_references.is_none());
        for (role, binding) in &p.namespaced {
            for meta in [&role.metadata, &binding.metadata] {
                let labels = meta.labels.as_ref().unwrap();
                assert_eq!(labels[MANAGED_BY_LABEL], "homeplane");
                assert_eq!(labels[AGENT_LABEL], "mail-sorter");
            }
        }
    }

    #[test]
    fn director_is_cluster_wide_only_when_asked() {
        let p = plan(&agent(AgentTier::Director, &["mail"], false)).unwrap();
        assert!(p.cluster.is_none());
        assert_eq!(p.namespaced.len(), 1);
        let p = plan(&agent(AgentTier::Director, &["mail"], true)).unwrap();
        assert!(p.namespaced.is_empty());
        let (role, binding) = p.cluster.as_ref().unwrap();
        assert!(role.metadata.owner_references.is_none());
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(role.rules.as_ref().unwrap()[0].verbs.len(), 7);
        // A builder asking for clusterWide stays namespaced (CEL refuses it earlier anyway).
        let p = plan(&agent(AgentTier::Builder, &[], true)).unwrap();
        assert!(p.cluster.is_none());
    }

    #[test]
    fn nothing_generated_has_a_wildcard() {
        for tier in [AgentTier::Observer, AgentTier::Builder, AgentTier::Director] {
            for cw in [false, true] {
                let p = plan(&agent(tier, &["a", "b"], cw)).unwrap();
                assert!(all_strings(&p).iter().all(|s| !s.contains('*')));
            }
        }
        let mut a = agent(AgentTier::Observer, &[], false);
        a.spec.scope.resources[0].api_group = "*".into();
        assert!(plan(&a).unwrap_err().contains("wildcards are refused"));
        let mut a = agent(AgentTier::Observer, &["*"], false);
        assert!(plan(&a).unwrap_err().contains("not a namespace name"));
        a.spec.scope.namespaces = vec!["Mail".into()];
        assert!(plan(&a).is_err());
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
