//! The Agent controller on the test cluster, with the operator running as the chart's
//! ServiceAccount: each tier's ServiceAccount gets exactly the rights of its tier and scope,
//! checked by the API server itself with `kubectl auth can-i --as=system:serviceaccount:…`;
//! changing tier or scope narrows or widens them; nothing generated has a wildcard; deleting
//! the Agent removes its rights. And nobody gains a right through an Agent: a user holding only
//! edit rights on homeplane's kinds is refused (`kubectl --as`) an Agent that reads Secrets,
//! execs into pods, mints tokens, touches another namespace or creates Agents, gets an Agent
//! with no rights when asking for one they do not hold, and can give what they hold.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use homeplane_testkit::{Cluster, Operator, TestNamespace, eventually};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");
const WAIT: Duration = Duration::from_secs(60);

fn agent_yaml(name: &str, tier: &str, namespaces: &[&str], cluster_wide: bool) -> String {
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {{name: {name}}}
spec:
  tier: {tier}
  image: ghcr.io/homeplane/example-agent:0.1
  scope:
    namespaces: [{}]
    clusterWide: {cluster_wide}
    resources:
    - {{resource: configmaps}}
    - {{apiGroup: apps, resource: deployments}}
  budget: {{cpu: "1", memory: 1Gi, maxRunSeconds: 600}}
"#,
        namespaces.join(", ")
    )
}

/// `kubectl auth can-i VERB RESOURCE -n NS --as=system:serviceaccount:AGENT_NS:agent-NAME`.
fn can(
    cluster: &Cluster,
    agent_ns: &str,
    agent: &str,
    verb: &str,
    resource: &str,
    ns: &str,
) -> bool {
    let out = cluster
        .kubectl(&[
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            ns,
            &format!("--as=system:serviceaccount:{agent_ns}:agent-{agent}"),
        ])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// Waits until every `(verb, resource, namespace, allowed)` holds.
fn wait_rights(
    cluster: &Cluster,
    agent_ns: &str,
    agent: &str,
    checks: &[(&str, &str, &str, bool)],
) {
    let mut wrong = vec![];
    let result = eventually(WAIT, &format!("the rights of {agent}"), || {
        wrong = checks
            .iter()
            .filter(|(verb, res, ns, allowed)| {
                can(cluster, agent_ns, agent, verb, res, ns) != *allowed
            })
            .map(|c| format!("{c:?}"))
            .collect();
        Ok(wrong.is_empty().then_some(()))
    });
    if result.is_err() {
        panic!("{agent}: wrong rights {wrong:?}");
    }
}

fn ready(cluster: &Cluster, ns: &str, name: &str) -> String {
    eventually(WAIT, &format!("Agent {name} Ready"), || {
        let out = cluster.kubectl_ok(&[
            "get",
            "agent",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}|{.status.conditions[?(@.type==\"Ready\")].message}",
        ])?;
        Ok(out.strip_prefix("True|").map(str::to_string))
    })
    .unwrap()
}

#[test]
fn each_tier_gets_exactly_its_rights() {
    let cluster = Cluster::shared();
    let home = TestNamespace::new(cluster, "agents").unwrap();
    let work = TestNamespace::new(cluster, "agent-work").unwrap();
    let other = TestNamespace::new(cluster, "agent-other").unwrap();
    let (h, w, o) = (home.name.as_str(), work.name.as_str(), other.name.as_str());
    let _operator = Operator::start(BINARY, cluster, h, h, &[]).unwrap();
    for yaml in [
        agent_yaml("watcher", "observer", &[], false),
        agent_yaml("fixer", "builder", &[w], false),
        agent_yaml("lead", "director", &[w], false),
        agent_yaml("chief", "director", &[], true),
    ] {
        let (ok, text) = cluster.apply(h, &yaml).unwrap();
        assert!(ok, "{text}");
    }
    let message = ready(cluster, h, "watcher");
    assert!(
        message.contains("observer rights (get, list, watch) on configmaps, apps/deployments")
            && message.contains(&format!("in namespace(s) {h}")),
        "{message}"
    );

    // Observer: may list in its own namespace, but not patch, and nothing else anywhere.
    wait_rights(
        cluster,
        h,
        "watcher",
        &[
            ("list", "configmaps", h, true),
            ("watch", "deployments.apps", h, true),
            ("patch", "configmaps", h, false),
            ("delete", "configmaps", h, false),
            ("list", "secrets", h, false),
            ("list", "configmaps", w, false),
        ],
    );
    // Builder: changes things in its scope's namespace only — not in another namespace, not
    // even its own.
    ready(cluster, h, "fixer");
    wait_rights(
        cluster,
        h,
        "fixer",
        &[
            ("patch", "configmaps", w, true),
            ("create", "deployments.apps", w, true),
            ("delete", "configmaps", w, true),
            ("patch", "configmaps", o, false),
            ("list", "configmaps", o, false),
            ("patch", "configmaps", h, false),
            ("list", "secrets", w, false),
        ],
    );
    // Director without clusterWide: like a builder.
    ready(cluster, h, "lead");
    wait_rights(
        cluster,
        h,
        "lead",
        &[
            ("patch", "configmaps", w, true),
            ("patch", "configmaps", o, false),
        ],
    );
    // Director with clusterWide: everywhere, still only the scope's resources.
    let message = ready(cluster, h, "chief");
    assert!(message.contains("in every namespace"), "{message}");
    wait_rights(
        cluster,
        h,
        "chief",
        &[
            ("patch", "configmaps", o, true),
            ("list", "deployments.apps", "default", true),
            ("list", "secrets", o, false),
        ],
    );

    // Everything generated carries the label and no wildcard; it is only bindings to the
    // install's fixed ClusterRoles (homeplane writes no rule).
    let generated = cluster
        .kubectl_ok(&[
            "get",
            "roles,rolebindings,clusterroles,clusterrolebindings,serviceaccounts",
            "-A",
            "-l",
            &format!("homeplane.dev/agent-namespace={h}"),
            "-o",
            "json",
        ])
        .unwrap();
    let list: serde_json::Value = serde_json::from_str(&generated).unwrap();
    let items = list["items"].as_array().unwrap();
    // Bindings per resource (2) and verb set: watcher 2, fixer 4, lead 4, chief 4
    // ClusterRoleBindings; 4 ServiceAccounts; no Role or ClusterRole.
    assert_eq!(items.len(), 18, "{generated}");
    for item in items {
        assert_eq!(
            item["metadata"]["labels"]["app.kubernetes.io/managed-by"], "homeplane",
            "{item}"
        );
        assert!(
            !["Role", "ClusterRole"].contains(&item["kind"].as_str().unwrap_or_default()),
            "homeplane wrote a rule: {item}"
        );
        if let Some(role) = item["roleRef"]["name"].as_str() {
            assert!(role.starts_with(&format!("hp-{h}-agent:")), "{role}");
        }
    }
    assert!(
        !generated.contains('*'),
        "a wildcard in generated RBAC: {generated}"
    );

    // CEL refuses a wildcard and a cluster-wide non-director before anything is created.
    let (ok, text) = cluster
        .apply(h, &agent_yaml("greedy", "builder", &[], true))
        .unwrap();
    assert!(
        !ok && text.contains("clusterWide is allowed only for tier director"),
        "{text}"
    );
    let wildcard = agent_yaml("wild", "observer", &[], false)
        .replace("{resource: configmaps}", "{resource: '*'}");
    let (ok, text) = cluster.apply(h, &wildcard).unwrap();
    assert!(!ok && text.contains("wildcards are refused"), "{text}");
    let wildcard =
        agent_yaml("wild", "observer", &[], false).replace("{apiGroup: apps,", "{apiGroup: '*',");
    let (ok, text) = cluster.apply(h, &wildcard).unwrap();
    assert!(!ok && text.contains("wildcards are refused"), "{text}");

    // Narrowing: builder -> observer loses write at the next reconcile.
    let (ok, text) = cluster
        .apply(h, &agent_yaml("fixer", "observer", &[w], false))
        .unwrap();
    assert!(ok, "{text}");
    wait_rights(
        cluster,
        h,
        "fixer",
        &[
            ("patch", "configmaps", w, false),
            ("list", "configmaps", w, true),
        ],
    );
    // Moving the scope: the old namespace's rights go, the new one's come.
    let (ok, text) = cluster
        .apply(h, &agent_yaml("fixer", "builder", &[o], false))
        .unwrap();
    assert!(ok, "{text}");
    wait_rights(
        cluster,
        h,
        "fixer",
        &[
            ("patch", "configmaps", o, true),
            ("list", "configmaps", w, false),
        ],
    );
    let roles = cluster
        .kubectl_ok(&["get", "rolebindings", "-n", w, "-o", "name"])
        .unwrap();
    assert!(
        !roles.contains("fixer"),
        "the old bindings were not pruned: {roles}"
    );
    // Widening a director to cluster-wide, then back.
    let (ok, text) = cluster
        .apply(h, &agent_yaml("lead", "director", &[w], true))
        .unwrap();
    assert!(ok, "{text}");
    wait_rights(cluster, h, "lead", &[("patch", "configmaps", o, true)]);
    let (ok, text) = cluster
        .apply(h, &agent_yaml("lead", "director", &[w], false))
        .unwrap();
    assert!(ok, "{text}");
    wait_rights(
        cluster,
        h,
        "lead",
        &[
            ("patch", "configmaps", o, false),
            ("patch", "configmaps", w, true),
        ],
    );

    // A namespace that does not exist is a clear condition.
    let (ok, text) = cluster
        .apply(
            h,
            &agent_yaml("lost", "observer", &["no-such-namespace-x"], false),
        )
        .unwrap();
    assert!(ok, "{text}");
    let reason = eventually(WAIT, "NamespaceMissing", || {
        let r = cluster.kubectl_ok(&[
            "get",
            "agent",
            "lost",
            "-n",
            h,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
        ])?;
        Ok((!r.is_empty() && r != "Reconciling").then_some(r))
    })
    .unwrap();
    assert_eq!(reason, "NamespaceMissing");

    // Deleting the Agents removes their rights everywhere.
    cluster
        .kubectl_ok(&[
            "delete",
            "agents",
            "--all",
            "-n",
            h,
            "--wait=true",
            "--timeout=60s",
        ])
        .unwrap();
    wait_rights(cluster, h, "chief", &[("patch", "configmaps", o, false)]);
    let left = cluster
        .kubectl_ok(&[
            "get",
            "rolebindings,clusterrolebindings",
            "-A",
            "-l",
            &format!("homeplane.dev/agent-namespace={h}"),
            "-o",
            "name",
        ])
        .unwrap();
    assert!(left.trim().is_empty(), "left behind: {left}");
}

/// `kubectl --as USER ARGS` with `stdin`: (success, stdout+stderr).
fn as_user(cluster: &Cluster, user: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut all: Vec<&str> = args.to_vec();
    let as_user = format!("--as={user}");
    all.push(&as_user);
    all.push("--as-group=system:authenticated");
    let out = cluster.kubectl_stdin(&all, stdin).unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn scoped_agent(name: &str, namespaces: &[&str], resources: &str) -> String {
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Agent
metadata: {{name: {name}}}
spec:
  tier: builder
  image: ghcr.io/homeplane/example-agent:0.1
  scope:
    namespaces: [{}]
    resources: [{resources}]
  budget: {{cpu: "1", memory: 1Gi, maxRunSeconds: 600}}
"#,
        namespaces.join(", ")
    )
}

fn condition(cluster: &Cluster, ns: &str, name: &str) -> (String, String) {
    eventually(WAIT, &format!("Agent {name} reconciled"), || {
        let out = cluster.kubectl_ok(&[
            "get",
            "agent",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}|{.status.conditions[?(@.type==\"Ready\")].message}",
        ])?;
        Ok(out
            .split_once('|')
            // `Reconciling` is the frame's first look, before homeplane's conclusion.
            .filter(|(reason, _)| !reason.is_empty() && *reason != "Reconciling")
            .map(|(r, m)| (r.to_string(), m.to_string())))
    })
    .unwrap()
}

#[test]
fn nobody_gains_a_right_through_an_agent() {
    let cluster = Cluster::shared();
    let home = TestNamespace::new(cluster, "agent-trust").unwrap();
    let other = TestNamespace::new(cluster, "agent-elsewhere").unwrap();
    let (h, o) = (home.name.as_str(), other.name.as_str());
    let user = format!("alice-{}", homeplane_testkit::suffix());
    let operator = Operator::start(BINARY, cluster, h, h, &[]).unwrap();
    let install = operator.install.clone().unwrap();

    // The operator holds no escalate and may bind nothing but the install's fixed roles.
    assert!(!install.can(&["escalate", "clusterroles"]).unwrap());
    assert!(!install.can(&["escalate", "roles", "-n", h]).unwrap());
    assert!(
        !install
            .can(&["bind", "clusterroles/cluster-admin", "-n", h])
            .unwrap()
    );
    assert!(
        !install
            .can(&["bind", "clusterroles/admin", "-n", h])
            .unwrap()
    );
    assert!(
        install
            .can(&[
                "bind",
                &format!("clusterroles/{}-agent:read::configmaps", install.release),
                "-n",
                h,
            ])
            .unwrap()
    );
    assert!(!install.can(&["create", "roles", "-n", h]).unwrap());
    assert!(!install.can(&["impersonate", "users"]).unwrap());
    assert!(
        !install
            .can(&["impersonate", "serviceaccounts/default", "-n", h])
            .unwrap()
    );

    // The user edits homeplane's kinds in one namespace, and nothing else.
    cluster
        .kubectl_ok(&[
            "create",
            "role",
            "homeplane-edit",
            "-n",
            h,
            "--verb=get,list,watch,create,update,patch,delete",
            "--resource=agents.homeplane.dev,agentruns.homeplane.dev,databases.homeplane.dev,stateregistries.homeplane.dev",
        ])
        .unwrap();
    cluster
        .kubectl_ok(&[
            "create",
            "rolebinding",
            "homeplane-edit",
            "-n",
            h,
            "--role=homeplane-edit",
            &format!("--user={user}"),
        ])
        .unwrap();

    // Refused at once, each with a message that says why.
    for (name, namespaces, resources, why) in [
        (
            "reads-secrets",
            vec![],
            "{resource: secrets}",
            "the Agent asks for secrets, which no tier gets without an admin's consent",
        ),
        (
            "execs",
            vec![],
            "{resource: pods/exec}",
            "the Agent asks for pods/exec",
        ),
        (
            "mints-tokens",
            vec![],
            "{resource: serviceaccounts/token}",
            "the Agent asks for serviceaccounts/token",
        ),
        (
            "spawns-agents",
            vec![],
            "{apiGroup: homeplane.dev, resource: agents}",
            "the Agent asks for homeplane.dev/agents",
        ),
        (
            "binds-roles",
            vec![],
            "{apiGroup: rbac.authorization.k8s.io, resource: rolebindings}",
            "rbac.authorization.k8s.io/rolebindings",
        ),
        (
            "elsewhere",
            vec![o],
            "{resource: configmaps}",
            &format!("may not give an Agent of namespace {h} rights in namespace {o}"),
        ),
    ] {
        let (ok, text) = as_user(
            cluster,
            &user,
            &["create", "-n", h, "-f", "-"],
            Some(&scoped_agent(name, &namespaces, resources)),
        );
        assert!(!ok, "{name} was accepted: {text}");
        assert!(text.contains(why), "{name}: {why:?} not in {text}");
        assert!(
            text.contains(&user),
            "{name}: the message names the user: {text}"
        );
    }

    // Asking for a right the user does not hold: the Agent exists but gets nothing, and says
    // why.
    let (ok, text) = as_user(
        cluster,
        &user,
        &["create", "-n", h, "-f", "-"],
        Some(&scoped_agent(
            "overreach",
            &[],
            "{apiGroup: apps, resource: deployments}",
        )),
    );
    assert!(ok, "{text}");
    let (reason, message) = condition(cluster, h, "overreach");
    assert_eq!(reason, "RequesterLacksRights", "{message}");
    assert!(
        message.contains(&user) && message.contains(&format!("apps/deployments in namespace {h}")),
        "{message}"
    );
    assert!(!can(cluster, h, "overreach", "list", "deployments.apps", h));

    // A right the user holds can be given to an Agent in their namespace.
    cluster
        .kubectl_ok(&[
            "create",
            "role",
            "configmaps-edit",
            "-n",
            h,
            "--verb=get,list,watch,create,update,patch,delete",
            "--resource=configmaps",
        ])
        .unwrap();
    cluster
        .kubectl_ok(&[
            "create",
            "rolebinding",
            "configmaps-edit",
            "-n",
            h,
            "--role=configmaps-edit",
            &format!("--user={user}"),
        ])
        .unwrap();
    let (ok, text) = as_user(
        cluster,
        &user,
        &["create", "-n", h, "-f", "-"],
        Some(&scoped_agent("helper", &[], "{resource: configmaps}")),
    );
    assert!(ok, "{text}");
    let message = ready(cluster, h, "helper");
    assert!(
        message.contains(&format!("as asked by {user}")),
        "{message}"
    );
    wait_rights(
        cluster,
        h,
        "helper",
        &[
            ("create", "configmaps", h, true),
            ("delete", "configmaps", h, true),
            ("get", "secrets", h, false),
            ("create", "pods/exec", h, false),
            ("create", "serviceaccounts/token", h, false),
            ("create", "agents.homeplane.dev", h, false),
            ("list", "configmaps", o, false),
            ("create", "rolebindings", h, false),
        ],
    );
    // Someone else editing the Agent's annotations does not change who asked: the annotation
    // is written over with the editor's own name.
    let (ok, text) = as_user(
        cluster,
        &user,
        &[
            "annotate",
            "agent",
            "helper",
            "-n",
            h,
            "--overwrite",
            "homeplane.dev/requested-by=admin",
        ],
        None,
    );
    assert!(ok, "{text}");
    let requester = cluster
        .kubectl_ok(&[
            "get",
            "agent",
            "helper",
            "-n",
            h,
            "-o",
            "jsonpath={.metadata.annotations.homeplane\\.dev/requested-by}",
        ])
        .unwrap();
    assert_eq!(requester, user, "the policy records the real requester");

    // When the user loses the right, so does the Agent.
    cluster
        .kubectl_ok(&["delete", "rolebinding", "configmaps-edit", "-n", h])
        .unwrap();
    cluster
        .kubectl_ok(&[
            "annotate",
            "agent",
            "helper",
            "-n",
            h,
            &format!(
                "homeplane.dev/evaluate-requested={}",
                homeplane_testkit::suffix()
            ),
        ])
        .unwrap();
    // (The annotation by the admin does not change the requester: only spec changes and the
    // requester annotations are stamped. It asks for a new SubjectAccessReview: without it the
    // requester's rights are checked again within the answer's 100 s.)
    wait_rights(cluster, h, "helper", &[("create", "configmaps", h, false)]);

    // Another namespace needs its admin's consent (and the rights there).
    cluster
        .kubectl_ok(&[
            "create",
            "role",
            "delegate",
            "-n",
            o,
            "--verb=grant",
            "--resource=agents.homeplane.dev/delegate",
        ])
        .unwrap();
    for (name, role) in [
        ("delegate", "delegate"),
        ("configmaps-edit", "configmaps-edit"),
    ] {
        if role == "configmaps-edit" {
            cluster
                .kubectl_ok(&[
                    "create",
                    "role",
                    role,
                    "-n",
                    o,
                    "--verb=get,list,watch,create,update,patch,delete",
                    "--resource=configmaps",
                ])
                .unwrap();
        }
        cluster
            .kubectl_ok(&[
                "create",
                "rolebinding",
                name,
                "-n",
                o,
                &format!("--role={role}"),
                &format!("--user={user}"),
            ])
            .unwrap();
    }
    let (ok, text) = as_user(
        cluster,
        &user,
        &["create", "-n", h, "-f", "-"],
        Some(&scoped_agent("visitor", &[o], "{resource: configmaps}")),
    );
    assert!(ok, "{text}");
    ready(cluster, h, "visitor");
    wait_rights(
        cluster,
        h,
        "visitor",
        &[
            ("create", "configmaps", o, true),
            ("create", "configmaps", h, false),
        ],
    );

    // Even an admin cannot give an Agent Secrets unless the install lists them as grantable.
    let (ok, text) = cluster
        .apply(
            h,
            &scoped_agent("admin-secrets", &[], "{resource: secrets}"),
        )
        .unwrap();
    assert!(ok, "{text}");
    let (reason, message) = condition(cluster, h, "admin-secrets");
    assert_eq!(reason, "NotGrantable", "{message}");
    assert!(message.contains("secrets (restricted"), "{message}");
    assert!(!can(cluster, h, "admin-secrets", "get", "secrets", h));
}
