#!/usr/bin/env python3
"""Rendezvous at scale: N simulated nodes in one process against a real etcd.

    python3 bench/rdzvscale.py [--nodes 16,64,256,1024] [--job-timeout 10m] [--ttl 30s]

Runs rendezvous/etcd's BenchmarkScale once per node count (go test
-bench BenchmarkScale -benchtime 1x) and prints one table. Each node has its
own etcd client, connection and lease, as separate launchers would; a fresh
etcd (the one on PATH, as the tests start it) serves each node count. Per N:

  form      the round's forming, from the last node's Next (the others have
            joined and etcd is quiet) until every node has the round
  fail      one node's Fail until every other node has it on Stopped
  ev/node   watch events etcd sent over a whole job (connect, join, finish
            with the verdict, End, close), per node
  msg/node  watch responses (gRPC messages) etcd sent, per node
  req/node  requests etcd received, per node (lease keep-alives left out)
  fail ev   watch events per node from Fail until every node has it
  cpu       etcd's CPU seconds for the jobs of that N
  rss/peak  etcd's resident memory after them, and its peak

A node count whose job fails (no round within --job-timeout, say) is a row
that says so, with the error's first line; the others still run. --ttl is
each simulated node's lease TTL (longer than a launcher's 5 s default: the
simulated nodes share this machine's CPUs; see docs/multinode.md). The
machine's load is printed before and after: figures from a loaded 2-core
machine are upper bounds. Needs Go and etcd; standard library only.
"""

import argparse
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"^BenchmarkScale/nodes=(\d+)\S*\s+\d+\s+\d+ ns/op(.*)$")
FAIL = re.compile(r"^--- FAIL: BenchmarkScale/nodes=(\d+)")
COLS = [("form-ms", "form ms", "{:.0f}"), ("fail-ms", "fail ms", "{:.1f}"),
        ("events/node", "ev/node", "{:.1f}"), ("watchmsgs/node", "msg/node", "{:.1f}"),
        ("reqs/node", "req/node", "{:.1f}"), ("failevents/node", "fail ev", "{:.2f}"),
        ("leases-expired", "expired", "{:.0f}"), ("etcd-cpu-s", "cpu s", "{:.2f}"), ("etcd-rss-MB", "rss MB", "{:.0f}"),
        ("etcd-peak-MB", "peak MB", "{:.0f}")]


def uptime():
    with open("/proc/loadavg") as f:
        return "load average " + " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="16,64,256,1024")
    ap.add_argument("--job-timeout", default="10m", help="bound on each simulated job")
    ap.add_argument("--ttl", default="30s", help="each simulated node's lease TTL")
    args = ap.parse_args()
    print("before:", uptime(), f"({os.cpu_count()} CPUs)", flush=True)
    cmd = ["go", "test", "-count=1", "-run", "^$", "-bench", "BenchmarkScale", "-benchtime", "1x",
           "-timeout", "24h", "./rendezvous/etcd", "-args", "-scale.nodes=" + args.nodes,
           "-scale.timeout=" + args.job_timeout, "-scale.ttl=" + args.ttl]
    p = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rows, failed = [], {}
    lines = p.stdout.splitlines()
    for i, line in enumerate(lines):
        m = FAIL.match(line)
        if m:
            why = lines[i + 1].strip() if i + 1 < len(lines) else ""
            failed[int(m.group(1))] = why.split(": ", 1)[-1][:160]
            continue
        m = LINE.match(line)
        if not m:
            continue
        f = m.group(2).split()
        vals = {f[i + 1]: float(f[i]) for i in range(0, len(f) - 1, 2)}
        rows.append((int(m.group(1)), vals))
    print("after: ", uptime())
    if not rows and not failed:
        sys.stdout.write(p.stdout)
        print("bench/rdzvscale.py: go test failed", file=sys.stderr)
        return 1
    head = ["nodes"] + [c[1] for c in COLS]
    print("  ".join(f"{h:>9}" for h in head))
    for n, vals in sorted(rows + [(n, None) for n in failed]):
        if vals is None:
            print(f"{n:>9}  failed: {failed[n]}")
            continue
        cells = [str(n)] + [c[2].format(vals[c[0]]) if c[0] in vals else "-" for c in COLS]
        print("  ".join(f"{c:>9}" for c in cells))
    if failed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
