#!/usr/bin/env python3
"""What a reconciliation that changes nothing costs, per kind (run by bench/reconcile.sh).

Two windows of the same length on a settled homelab: a quiet one, and one in which every
homeplane object is annotated ROUNDS times (an annotation changes nothing homeplane reads, but
every controller's watch passes it on, so each object is reconciled once per round). For each
window it reads, from the API server's own metrics (apiserver_request_total), the writes it
received per resource and verb, and from the operator's metrics the reconciliations per
controller and homeplane_reconcile_busy_seconds: the time each spent computing, without its
round trips to the API server and the other servers. The writes of the annotations themselves
are known (one PATCH per object and round) and taken out.

    reconcile.py KUBECTL OPERATOR_METRICS_URL ROUNDS WINDOW_SECONDS OUTPUT
"""
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict

KINDS = {  # resource -> controller
    "nodeclasses": "nodeclass", "databases": "database", "backuppolicies": "backuppolicy",
    "backups": "backup", "workflows": "workflow", "agents": "agent", "agentruns": "agentrun",
    "voicepipelines": "voicepipeline", "memoryservers": "memoryserver",
    "stateregistries": "stateregistry",
}
WRITES = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "DELETECOLLECTION"}
# Resources whose POST is a question: the API server answers it and keeps nothing.
QUESTIONS = {"subjectaccessreviews", "selfsubjectaccessreviews", "localsubjectaccessreviews",
             "tokenreviews", "selfsubjectrulesreviews"}
READS = {"GET", "LIST"}
# Written on a timer by everyone, not by a reconciliation: leader and node heartbeats.
HEARTBEATS = {"leases", "nodes"}
SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} ([0-9.e+-]+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')


def series(text, name):
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name:
            yield dict(LABEL.findall(m.group(2))), float(m.group(3))


def api_requests(kubectl):
    """The API server's request counts: (writes, reads) by (group, resource, subresource, verb)."""
    text = subprocess.run([kubectl, "get", "--raw", "/metrics"], check=True,
                          capture_output=True, text=True).stdout
    writes, reads = Counter(), Counter()
    for labels, value in series(text, "apiserver_request_total"):
        if labels.get("resource") in HEARTBEATS:
            continue
        key = (labels.get("group", ""), labels.get("resource", ""), labels.get("subresource", ""),
               labels.get("verb", ""))
        if labels.get("verb") in WRITES:
            writes[key] += value
        elif labels.get("verb") in READS:
            reads[key] += value
    return writes, reads


def operator(url):
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    busy = defaultdict(Counter)  # controller -> le -> cumulative count
    for labels, value in series(text, "homeplane_reconcile_busy_seconds_bucket"):
        busy[labels["controller"]][labels["le"]] += value
    applies = Counter()  # (kind, result) -> count
    for labels, value in series(text, "homeplane_owned_applies_total"):
        applies[(labels["kind"], labels["result"])] += value
    return busy, applies


def delta(after, before):
    return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0})


def objects(kubectl):
    found = {}
    for resource in KINDS:
        out = subprocess.run([kubectl, "get", resource, "-A", "-o", "json"], check=True,
                             capture_output=True, text=True).stdout
        found[resource] = [(o["metadata"].get("namespace"), o["metadata"]["name"])
                           for o in json.loads(out)["items"]]
    return found


def poke(kubectl, found, value):
    for resource, names in found.items():
        for namespace, name in names:
            args = [kubectl, "annotate", "--overwrite", resource, name,
                    f"bench.homeplane.dev/poke={value}"]
            if namespace:
                args += ["-n", namespace]
            subprocess.run(args, check=True, capture_output=True)


def unpoke(kubectl, found):
    for resource, names in found.items():
        for namespace, name in names:
            args = [kubectl, "annotate", resource, name, "bench.homeplane.dev/poke-"]
            if namespace:
                args += ["-n", namespace]
            subprocess.run(args, capture_output=True)


def window(kubectl, url, seconds, found=None, rounds=0):
    (w0, r0), (b0, a0) = api_requests(kubectl), operator(url)
    start = time.monotonic()
    for r in range(rounds):
        poke(kubectl, found, f"{int(time.time())}-{r}")
        time.sleep(max(0.0, start + seconds * (r + 1) / rounds - time.monotonic()))
    time.sleep(max(0.0, start + seconds - time.monotonic()))
    (w1, r1), (b1, a1) = api_requests(kubectl), operator(url)
    busy = {c: Counter({le: b1[c][le] - b0.get(c, Counter())[le] for le in b1[c]}) for c in b1}
    return delta(w1, w0), delta(r1, r0), busy, delta(a1, a0)


def quantile(buckets, q):
    """The upper bound of the bucket that holds quantile q, and the count."""
    bounds = sorted(((float("inf") if le == "+Inf" else float(le)), n) for le, n in buckets.items())
    total = bounds[-1][1] if bounds else 0
    if total == 0:
        return None, 0
    for bound, cumulative in bounds:
        if cumulative >= q * total:
            return bound, int(total)
    return float("inf"), int(total)


def ms(bound):
    if bound is None:
        return "-"
    return "inf" if bound == float("inf") else f"<= {bound * 1000:g}"


def main():
    kubectl, url, rounds, seconds, output = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
        float(sys.argv[4]), sys.argv[5]
    found = objects(kubectl)
    quiet_writes, quiet_reads, _, _ = window(kubectl, url, seconds)
    try:
        poked_writes, poked_reads, busy, applies = window(kubectl, url, seconds, found, rounds)
    finally:
        unpoke(kubectl, found)
    annotations = Counter()
    for resource, names in found.items():
        annotations[("homeplane.dev", resource, "", "PATCH")] = len(names) * rounds
    lines = []
    lines.append(f"{rounds} rounds in {seconds:g} s; every homeplane object annotated once a round "
                 f"({sum(len(n) for n in found.values())} objects)")
    lines.append("")
    lines.append(f"{'kind':<16}{'objects':>8}{'reconciles':>11}{'busy p50 ms':>13}{'busy p99 ms':>13}"
                 f"{'writes':>8}  (goal: 0 writes, p99 <= 5 ms)")
    caused = Counter()
    for key in set(poked_writes) | set(quiet_writes):
        extra = poked_writes.get(key, 0) - annotations.get(key, 0) - quiet_writes.get(key, 0)
        if extra > 0:
            caused[key] = extra
    for resource, controller in KINDS.items():
        p50, count = quantile(busy.get(controller, {}), 0.5)
        p99, _ = quantile(busy.get(controller, {}), 0.99)
        own = sum(v for (g, r, s, verb), v in caused.items() if r == resource)
        lines.append(f"{resource:<16}{len(found[resource]):>8}{count:>11}{ms(p50):>13}{ms(p99):>13}"
                     f"{own:>8.0f}")
    lines.append("")
    lines.append("writes the API server received (apiserver_request_total; Leases and Nodes left out):")
    lines.append(f"  {'group/resource/subresource verb':<58}{'quiet':>7}{'poked':>7}{'annot.':>7}{'caused':>7}")
    for key in sorted(set(poked_writes) | set(quiet_writes)):
        g, r, s, verb = key
        name = f"{g or 'core'}/{r}{'/' + s if s else ''} {verb}"
        lines.append(f"  {name:<58}{quiet_writes.get(key, 0):>7.0f}{poked_writes.get(key, 0):>7.0f}"
                     f"{annotations.get(key, 0):>7.0f}{caused.get(key, 0):>7.0f}")
    asked = sum(v for (g, r, s, verb), v in caused.items() if r in QUESTIONS)
    lines.append(f"writes caused by the no-op reconciliations (poked - annotations - quiet): "
                 f"{sum(caused.values()) - asked:.0f}, and {asked:.0f} access reviews (a POST the API server")
    lines.append("  answers and stores nowhere: an Agent's requester is asked about again once the last answer is")
    lines.append("  100 s old, so they fall in whichever window that moment does)")
    lines.append("")
    lines.append("owned objects the operator looked at in the poked window (homeplane_owned_applies_total):")
    for kind in sorted({k for k, _ in applies}):
        lines.append(f"  {kind:<24} applied {applies[(kind, 'applied')]:>5.0f}   unchanged (read only) "
                     f"{applies[(kind, 'unchanged')]:>5.0f}")
    reads = Counter()
    for key in set(poked_reads) | set(quiet_reads):
        extra = poked_reads.get(key, 0) - quiet_reads.get(key, 0)
        if extra > 0:
            reads[key] = extra
    lines.append(f"reads caused (GET and LIST, poked - quiet): {sum(reads.values()):.0f}; the largest:")
    for key, n in reads.most_common(8):
        g, r, s_, verb = key
        lines.append(f"  {(g or 'core') + '/' + r + ('/' + s_ if s_ else '') + ' ' + verb:<58}{n:>7.0f}")
    text = "\n".join(lines)
    print(text)
    with open(output, "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
