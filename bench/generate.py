#!/usr/bin/env python3
"""Prints, as one YAML stream for `kubectl create -f -`, a cluster's worth of objects for the
memory benchmark (bench/memory.sh): N homeplane objects of every namespaced kind plus a few
NodeClasses, and M objects of the kinds homeplane owns (ConfigMaps, Secrets, Services,
Deployments, StatefulSets, Jobs, ServiceAccounts, RoleBindings), all labelled
app.kubernetes.io/managed-by=homeplane so that homeplane's watches and the controller-runtime
peer's both take them in. The owned objects have no owner and no homeplane instance label, so
no controller adopts or prunes them, and they start no pod (no replicas; Jobs suspended).
The homeplane objects point at nothing that answers, so they settle in a failed or waiting
state instead of doing work.

    generate.py --namespaces 20 --homeplane 1000 --owned 10000
"""
import argparse
import json

MANAGED = {"app.kubernetes.io/managed-by": "homeplane"}
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def meta(name, namespace=None, labels=None):
    m = {"name": name}
    if namespace:
        m["namespace"] = namespace
    if labels:
        m["labels"] = labels
    return m


def hp(kind, name, namespace, spec):
    return {"apiVersion": "homeplane.dev/v1alpha1", "kind": kind,
            "metadata": meta(name, namespace), "spec": spec}


# One of each namespaced homeplane kind, in the shapes of the example homelab.
def database(ns, i):
    return hp("Database", f"db-{i}", ns, {
        "server": {"external": {"host": "127.0.0.1", "port": 1, "adminSecret": f"pg-admin-{i}",
                                "sslMode": "disable"}},
        "tiers": [{"name": "convenience", "schemas": [f"notes_{i}"]},
                  {"name": "sensitive", "schemas": [f"messages_{i}", f"health_{i}"]}],
        "roles": [{"name": f"app_{i}", "access": [{"tier": "convenience", "level": "write"},
                                                  {"tier": "sensitive", "level": "write"}]},
                  {"name": f"reader_{i}", "access": [{"tier": "convenience", "level": "read"}]}],
        "migrations": {"inline": [{"id": "0001_notes",
                                   "sql": f"CREATE TABLE notes_{i}.note (id bigserial PRIMARY KEY, body text);"}]},
    })


def backup_policy(ns, i):
    return hp("BackupPolicy", f"policy-{i}", ns, {
        "schedule": "0 3 * * *", "timeZone": "Europe/Berlin",
        "source": {"database": {"name": f"db-{i}"}},
        "destination": {"endpoint": "http://127.0.0.1:1", "bucket": "backups", "prefix": f"{ns}/",
                        "region": "auto", "credentialsSecret": f"s3-{i}"},
        "recipients": [RECIPIENT],
        "retention": {"keepLast": 7, "daily": 7, "weekly": 4},
    })


def backup(ns, i):
    return hp("Backup", f"backup-{i}", ns, {"policy": f"policy-{i}"})


def workflow(ns, i):
    return hp("Workflow", f"workflow-{i}", ns, {
        "n8n": {"url": "http://127.0.0.1:1", "apiKeySecret": {"name": f"n8n-api-{i}", "key": "apiKey"}},
        "active": True,
        "definition": {
            "name": f"Workflow {i}",
            "nodes": [
                {"name": "Every hour", "type": "n8n-nodes-base.scheduleTrigger", "typeVersion": 1.2,
                 "position": [0, 0], "parameters": {"rule": {"interval": [{"field": "hours"}]}}},
                {"name": "Work", "type": "n8n-nodes-base.code", "typeVersion": 2, "position": [220, 0],
                 "parameters": {"jsCode": "return $input.all();"}},
            ],
            "connections": {"Every hour": {"main": [[{"node": "Work", "type": "main", "index": 0}]]}},
            "settings": {"executionOrder": "v1"},
        },
    })


def agent(ns, i):
    return hp("Agent", f"agent-{i}", ns, {
        "tier": "observer", "image": "ghcr.io/homeplane/example-agent:0.1",
        "scope": {"namespaces": [ns], "resources": [{"resource": "configmaps"}, {"resource": "pods"}]},
        "budget": {"cpu": "100m", "memory": "128Mi", "maxRunSeconds": 600, "maxConcurrentRuns": 1},
        "placement": {"class": "bench-none"},
    })


def agent_run(ns, i):
    return hp("AgentRun", f"run-{i}", ns, {"agent": f"agent-{i}", "task": f"Report on {ns}, item {i}."})


def memory_server(ns, i):
    return hp("MemoryServer", f"memory-{i}", ns, {
        "image": "ghcr.io/homeplane-examples/memory-server:1.4.0",
        "placement": {"class": "pi", "cpu": "100m", "memory": "128Mi"},
        "database": {"name": f"db-{i}", "schema": f"memory_{i}", "role": f"memory_{i}"},
        "cache": {"external": "redis://127.0.0.1:1"},
        "embedding": {"endpoint": {"url": "http://127.0.0.1:1", "model": "bench"}},
    })


def voice_pipeline(ns, i):
    return hp("VoicePipeline", f"voice-{i}", ns, {
        "latencyBudget": "2s", "probeInterval": "1h",
        "stages": [
            {"name": "wake", "role": "wakeWord", "external": {"url": "tcp://127.0.0.1:1"}},
            {"name": "stt", "role": "speechToText", "external": {"url": "http://127.0.0.1:1/stt"}},
            {"name": "llm", "role": "llm", "external": {"url": "http://127.0.0.1:1/llm"}},
            {"name": "sink", "role": "sink", "external": {"url": "http://127.0.0.1:1/sink"}},
        ],
    })


def registry(ns, i):
    return hp("StateRegistry", f"registry-{i}", ns, {
        "interval": "1h",
        "properties": [
            {"id": f"{ns}.item-{i}.p{p}", "desired": "1", "severity": "info",
             "observe": {"kubernetes": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": ns,
                                        "name": f"config-{p}", "field": "/metadata/labels/missing"}}}
            for p in range(5)
        ],
    })


KINDS = [database, backup_policy, backup, workflow, agent, agent_run, memory_server, voice_pipeline,
         registry]


def node_class(prefix, i):
    return {"apiVersion": "homeplane.dev/v1alpha1", "kind": "NodeClass", "metadata": meta(f"{prefix}-{i}"),
            "spec": {"nodeSelector": {"homeplane.dev/class": f"{prefix}-{i}"}, "architecture": "arm64",
                     "defaults": {"cpu": "100m", "memory": "128Mi"}}}


# The owned kinds, with sizes of ordinary objects.
def config_map(ns, i):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(f"config-{i}", ns, MANAGED),
            "data": {"app.conf": "\n".join(f"key{k} = value {i}-{k}" for k in range(40))}}


def secret(ns, i):
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta(f"secret-{i}", ns, MANAGED),
            "stringData": {"username": f"user{i}", "password": "x" * 32, "uri": f"postgres://user{i}@db/app"}}


def service(ns, i):
    # Headless: the test cluster's service range holds 254 addresses.
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(f"svc-{i}", ns, MANAGED),
            "spec": {"clusterIP": "None", "selector": {"app": f"app-{i}"},
                     "ports": [{"name": "http", "port": 8080}]}}


def pod_template(i):
    return {"metadata": {"labels": {"app": f"app-{i}", **MANAGED}},
            "spec": {"containers": [{
                "name": "app", "image": f"ghcr.io/example/app-{i % 37}:1.{i % 9}",
                "ports": [{"containerPort": 8080}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "INSTANCE", "value": str(i)}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "100m", "memory": "128Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}}


def deployment(ns, i):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(f"deploy-{i}", ns, MANAGED),
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": f"app-{i}"}}, "template": pod_template(i)}}


def stateful_set(ns, i):
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta(f"sts-{i}", ns, MANAGED),
            "spec": {"replicas": 0, "serviceName": f"svc-{i}", "selector": {"matchLabels": {"app": f"app-{i}"}},
                     "template": pod_template(i)}}


def job(ns, i):
    template = pod_template(i)
    template["spec"]["restartPolicy"] = "Never"
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(f"job-{i}", ns, MANAGED),
            "spec": {"suspend": True, "template": template}}


def service_account(ns, i):
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(f"sa-{i}", ns, MANAGED)}


def role_binding(ns, i):
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": meta(f"binding-{i}", ns, MANAGED),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": f"sa-{i}", "namespace": ns}]}


# Shares of the owned objects, per kind (they add up to 100).
OWNED = [(config_map, 20), (secret, 20), (service, 20), (deployment, 20), (stateful_set, 5), (job, 5),
         (service_account, 5), (role_binding, 5)]


def spread(total, parts):
    """`total` split into `parts` counts that differ by at most one."""
    return [total // parts + (1 if p < total % parts else 0) for p in range(parts)]


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--namespaces", type=int, default=20)
    args.add_argument("--homeplane", type=int, default=1000)
    args.add_argument("--owned", type=int, default=10000)
    args.add_argument("--prefix", default="bench")
    a = args.parse_args()
    namespaces = [f"{a.prefix}-{n:02d}" for n in range(a.namespaces)]
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces]
    classes = a.homeplane // 25  # a few NodeClasses; the rest namespaced
    docs += [node_class(a.prefix, i) for i in range(classes)]
    for ns, count in zip(namespaces, spread(a.homeplane - classes, len(namespaces))):
        for k, kind_count in enumerate(spread(count, len(KINDS))):
            docs += [KINDS[k](ns, i) for i in range(kind_count)]
    for ns, count in zip(namespaces, spread(a.owned, len(namespaces))):
        for (make, share), n in zip(OWNED, spread_by_share(count, [s for _, s in OWNED])):
            docs += [make(ns, i) for i in range(n)]
    print("\n---\n".join(json.dumps(d) for d in docs))


def spread_by_share(total, shares):
    """`total` split by `shares`, the rounding left over given to the first kinds."""
    counts = [total * s // sum(shares) for s in shares]
    for k in range(total - sum(counts)):
        counts[k % len(counts)] += 1
    return counts


if __name__ == "__main__":
    main()
