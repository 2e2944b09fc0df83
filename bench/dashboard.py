#!/usr/bin/env python3
"""The dashboard benchmark's measurements, run by bench/dashboard.sh against an operator that
stands by in a namespace of 1,000 homeplane objects and 200 Drifts:

  pages URL KUBECTL N      N views of each page: server time (Server-Timing), page weight,
                           and the API server's request counters around the views (GET/LIST of
                           any resource), against the same time without views
  rss PID                  the resident memory of a process, KiB
  sse URL                  keeps a server-sent-event stream open (until killed)
  objects NS DIR           writes DIR/objects.yaml (1,000 homeplane objects and 200 Drifts in
                           namespace NS) and DIR/status.yaml (their statuses: most Ready, some
                           Failed, some in progress)

Prints `key value` lines."""
import json
import statistics
import subprocess
import sys
import time
import urllib.request

PAGES = ["/", "/drift", "/capacity", "/databases", "/backups", "/ai"]


def api_reads(kubectl):
    """Sum of apiserver_request_total for GET and LIST, from the API server's own metrics."""
    text = subprocess.run([kubectl, "get", "--raw", "/metrics"], check=True,
                          capture_output=True, text=True).stdout
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and ('verb="GET"' in line or 'verb="LIST"' in line):
            # Our own reads of /metrics are GETs of no resource: left out.
            if 'resource=""' in line:
                continue
            total += float(line.rsplit(" ", 1)[1])
    return total


def fetch(url):
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
        timing = r.headers.get("Server-Timing", "")
    wall = (time.perf_counter() - start) * 1000
    server = float(timing.split("dur=")[1]) if "dur=" in timing else float("nan")
    return server, wall, len(body)


def percentile(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def pages(base, kubectl, n):
    for path in PAGES:
        fetch(base + path)  # warm: templates, first snapshot
    # The API server's reads with nobody looking, then with every page viewed n times.
    before = api_reads(kubectl)
    t0 = time.time()
    results = {}
    for path in PAGES:
        results[path] = [fetch(base + path) for _ in range(n)]
    viewing = time.time() - t0
    after = api_reads(kubectl)
    time.sleep(viewing)
    idle = api_reads(kubectl)
    views = n * len(PAGES)
    for path, rs in results.items():
        server = [r[0] for r in rs]
        wall = [r[1] for r in rs]
        name = "landing" if path == "/" else path.strip("/")
        print(f"{name}_server_ms_median {statistics.median(server):.2f}")
        print(f"{name}_server_ms_p95 {percentile(server, 95):.2f}")
        print(f"{name}_wall_ms_median {statistics.median(wall):.2f}")
        print(f"{name}_bytes {rs[-1][2]}")
    print(f"views {views}")
    print(f"viewing_seconds {viewing:.1f}")
    print(f"api_reads_during_views {after - before:.0f}")
    print(f"api_reads_same_time_idle {idle - after:.0f}")
    extra = max(0.0, (after - before) - (idle - after))
    print(f"api_reads_per_view {extra / views:.3f}")


RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
COUNTS = {"NodeClass": 20, "Database": 200, "BackupPolicy": 100, "Backup": 300, "Workflow": 100,
          "Agent": 150, "AgentRun": 80, "VoicePipeline": 20, "MemoryServer": 20, "StateRegistry": 10}


def spec(kind, i):
    if kind == "NodeClass":
        return {"nodeSelector": {"homeplane.dev/class": f"bench-{i}"}, "reserved": {"cpu": "500m", "memory": "1Gi"}}
    if kind == "Database":
        return {"server": {"external": {"host": "postgres.data", "adminSecret": "pg-admin"}},
                "tiers": [{"name": "sacred", "schemas": [f"s{i}"]}, {"name": "open", "schemas": [f"o{i}"]}],
                "roles": [{"name": "app", "access": [{"tier": "sacred", "level": "write"}]},
                          {"name": "reader", "access": [{"tier": "open", "level": "read"}]}]}
    if kind == "BackupPolicy":
        return {"schedule": "0 3 * * *", "source": {"database": {"name": f"database-{i}"}},
                "destination": {"endpoint": "https://r2.example", "bucket": "backups", "credentialsSecret": "r2"},
                "recipients": [RECIPIENT]}
    if kind == "Backup":
        return {"policy": f"backuppolicy-{i % 100}"}
    if kind == "Workflow":
        return {"n8n": {"url": "http://n8n:5678", "apiKeySecret": {"name": "n8n", "key": "apiKey"}},
                "active": True, "definition": {"name": f"flow {i}", "nodes": [], "connections": {}}}
    if kind == "Agent":
        return {"tier": "observer", "image": "agent:1", "scope": {"resources": [{"resource": "configmaps"}]},
                "budget": {"cpu": "250m", "memory": "256Mi", "maxRunSeconds": 600}}
    if kind == "AgentRun":
        return {"agent": f"agent-{i}", "task": "audit the limits"}
    if kind == "VoicePipeline":
        return {"stages": [{"name": "wake", "role": "wakeWord", "external": {"url": "tcp://sat:1"}},
                           {"name": "llm", "role": "llm", "external": {"url": "http://llm:1"}}]}
    if kind == "MemoryServer":
        return {"image": "memory:1", "placement": {"class": "nodeclass-0"}, "database": {"name": f"database-{i}"},
                "cache": {"external": "redis://redis:6379/0"},
                "embedding": {"endpoint": {"url": "http://embed:1/v1", "model": "nomic"}},
                "layers": {"episodicTtl": "168h", "permanent": True}}
    if kind == "StateRegistry":
        return {"interval": "60s"}
    raise ValueError(kind)


def condition(kind, i, now):
    # 85 % Ready, 10 % Failed, 5 % on their way.
    bucket = i % 20
    if bucket < 17:
        ready = {"type": "Ready", "status": "True", "reason": "Reconciled", "message": f"{kind} {i} matches its spec"}
        return [ready]
    if bucket < 19:
        return [{"type": "Ready", "status": "False", "reason": "ServerUnreachable", "message": f"cannot reach the server of {kind} {i}: connection refused"},
                {"type": "Degraded", "status": "True", "reason": "ServerUnreachable", "message": f"cannot reach the server of {kind} {i}: connection refused"}]
    return [{"type": "Ready", "status": "False", "reason": "Progressing", "message": f"{kind} {i} is rolling out"}]


def status(kind, i, now):
    conditions = [dict(c, lastTransitionTime=now, observedGeneration=1) for c in condition(kind, i, now)]
    s = {"observedGeneration": 1, "conditions": conditions}
    if kind == "NodeClass":
        plan = lambda a, r, q, l, f: {"allocatable": a, "reserved": r, "requested": q, "limits": l, "free": f}
        s.update({"nodes": [f"node-{i}"], "nodeCount": 1, "podCount": 20,
                  "capacity": {"cpu": plan("4", "500m", "2500m", "3", "1"), "memory": plan("8Gi", "1Gi", "5Gi", "6Gi", "2Gi")},
                  "pods": [{"namespace": "apps", "name": f"pod-{i}-{p}", "node": f"node-{i}", "cpuRequest": "125m",
                            "cpuLimit": "150m", "memoryRequest": "256Mi", "memoryLimit": "300Mi", "gpu": 0, "managed": p % 2 == 0}
                           for p in range(20)]})
    if kind == "Backup":
        s.update({"phase": "Succeeded" if i % 20 < 18 else "Failed", "size": "1.2 GiB", "encryptedBytes": 1288490188,
                  "startedAt": now, "completedAt": now, "durationSeconds": 42.0, "verified": i % 3 == 0})
    if kind == "BackupPolicy":
        s.update({"lastSuccessfulTime": now, "nextScheduleTime": now})
    if kind == "Database":
        s.update({"serverVersion": "16.4", "migrationsApplied": 227, "migrationsPending": 0,
                  "roleSecrets": {"app": f"database-{i}-app", "reader": f"database-{i}-reader"}})
    if kind == "AgentRun":
        s.update({"phase": "Done", "duration": "3m12s",
                  "result": {"status": "DONE", "summary": "checked the limits", "filesChanged": [], "commits": [],
                             "testsRun": ["kubectl get pods"], "deviations": [], "followUps": []}})
    return s


def objects(ns, out):
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    docs, statuses = [], []
    for kind, count in COUNTS.items():
        for i in range(count):
            meta = {"name": f"{kind.lower()}-{i}"}
            if kind != "NodeClass":
                meta["namespace"] = ns
            base = {"apiVersion": "homeplane.dev/v1alpha1", "kind": kind, "metadata": meta}
            docs.append(dict(base, spec=spec(kind, i)))
            statuses.append(dict(base, status=status(kind, i, now)))
    severities = ["critical", "warning", "warning", "info"]
    for i in range(200):
        docs.append({"apiVersion": "homeplane.dev/v1alpha1", "kind": "Drift",
                     "metadata": {"name": f"stateregistry-{i % 10}.property-{i}", "namespace": ns},
                     "spec": {"registry": f"stateregistry-{i % 10}", "property": f"pi.containers.service-{i}.memory-limit",
                              "desired": "512Mi", "observed": "none", "severity": severities[i % 4],
                              "since": now, "message": f"container service-{i} runs without a memory limit"}})
    with open(f"{out}/objects.yaml", "w") as f:
        f.write("\n".join("---\n" + json.dumps(d) for d in docs) + "\n")
    with open(f"{out}/status.yaml", "w") as f:
        f.write("\n".join("---\n" + json.dumps(d) for d in statuses) + "\n")
    print(f"objects {sum(COUNTS.values())}")
    print("drifts 200")


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                print(line.split()[1])
                return


def sse(url):
    with urllib.request.urlopen(url, timeout=3600) as r:
        while r.readline():
            pass


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "pages":
        pages(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif command == "rss":
        rss(sys.argv[2])
    elif command == "objects":
        objects(sys.argv[2], sys.argv[3])
    elif command == "sse":
        sse(sys.argv[2])
    else:
        sys.exit(f"unknown command {command}")
