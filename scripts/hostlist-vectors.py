#!/usr/bin/env python3
"""Writes rendezvous/testdata/hostlist.json: Slurm node lists and what
Slurm's own parser makes of them (`scontrol show hostnames LIST`), the
oracle that rendezvous.ExpandHostlist is tested against.

    scripts/hostlist-vectors.py            # rewrite the table
    scripts/hostlist-vectors.py --check    # compare, exit 1 on a difference

scontrol needs a configuration to start even for this local command (else
it looks for one in DNS): a two-line slurm.conf in a temporary directory,
removed afterwards. Nothing is started and nothing global is touched.

Each entry: {"list", "hosts" (scontrol's output, one name a line),
"invalid" (scontrol said "Invalid hostlist"), "diverges" (why mpspawn
rejects a list that Slurm accepts but mangles; empty for the others)}.
"""
import json
import os
import subprocess
import sys
import tempfile

# (list, why mpspawn diverges or ""). Keep the divergences few and explained.
# Not here: a range that ends at 2^64-1, such as n[18446744073709551614-
# 18446744073709551615], on which scontrol 22.05 crashes (SIGSEGV);
# ExpandHostlist rejects it.
VECTORS = [
    # The examples.
    ("rack[1-2]-n[01-02]", ""),
    ("n[01-3]", ""),
    ("n[99-101]", ""),
    ("node[1-02]", ""),
    ("x[1-3]y", ""),
    ("n[3-1]", ""),
    ("n[]", ""),
    ("n[a-c]", ""),
    # Separators, order and duplicates.
    ("n1", ""),
    ("n1,n2", ""),
    ("a,b c", ""),
    ("a\tb", ""),
    ("a,,b", ""),
    (",a", ""),
    ("a,", ""),
    ("", ""),
    ("n5,n5", ""),
    ("n3,n1", ""),
    ("n[1-2],n[1-2]", ""),
    ("n[1-5],n[3-7]", ""),
    ("n[1-3],", ""),
    ("n[1-2] m", ""),
    ("n[01-03],m", ""),
    # Ranges and padding.
    ("n[1,3,5-6]", ""),
    ("n[001-3]", ""),
    ("n[007]", ""),
    ("n[0-0]", ""),
    ("n[09-10]", ""),
    ("n[00-02]", ""),
    ("n[0-1],n[002-003]", ""),
    ("n[8-9],n[10-11]", ""),
    ("n01,n2", ""),
    ("n9,n010", ""),
    ("n[3-]", ""),
    ("n[ 1-3]", ""),
    ("n[+1-2]", ""),
    ("n[1- 2]", ""),
    ("n[1-+2]", ""),
    ("[1-3]", ""),
    ("123", ""),
    ("0", ""),
    ("n-1", ""),
    ("n3,n1-2", ""),
    ("a;b", ""),
    ("n[0-99]", ""),
    # Several bracket groups.
    ("n[1-3]x[1-2]", ""),
    ("n[1-2][3-4]", ""),
    ("a[1-2]-[3-4]", ""),
    ("x[1-2]-[1,2]", ""),
    ("n[01-2]-n[1-2]", ""),
    ("n[1-2,4]x[5]", ""),
    ("a[1-2]b[3]c[4-5]", ""),
    ("a[1-2]b[0-1]c[1-2]", ""),
    ("a[1][2][3]", ""),
    ("r[1-2]c[1-2]n[1-2]p[1-2]", ""),
    ("a[0-255]b[1-2]", ""),
    # Brackets Slurm reads oddly but consistently.
    ("n[1-2", ""),
    ("n[", ""),
    ("[", ""),
    ("]", ""),
    ("n]", ""),
    ("n1-2]", ""),
    ("n[[1-2]", ""),
    ("a[1],b[2", ""),
    ("a[1,b[2]", ""),
    # Errors.
    ("n[1--3]", ""),
    ("n[1-3 ]", ""),
    ("n[-3]", ""),
    ("n[,1]", ""),
    ("n[1,]", ""),
    ("[]", ""),
    ("n[1-2]]", ""),
    ("n[1]]", ""),
    ("a[1]b", ""),
    ("a[1-2]b[3-4]c", ""),
    ("n[1-2]-x", ""),
    ("n[1-2]x", ""),
    ("[1-2]x", ""),
    ("n[1-2];x", ""),
    ("n[1-3]:2", ""),
    ("n[1-2,b]", ""),
    ("n[01-02]-[a]", ""),
    ("n[1],n[x]", ""),
    ("n[0-65536]", ""),
    ("a[0-65536]b[1]", ""),
    ("n[1x2]", ""),
    # Lists Slurm accepts but mangles: mpspawn says why instead.
    ("n99999999999999999999999", "a number of 2^64 or more: Slurm writes 18446744073709551615 instead"),
    ("n[18446744073709551615]", ""),
    ("n[18446744073709551616]", "a number of 2^64 or more: Slurm writes 18446744073709551615 instead"),
    ("a[x]b[1]c[2]", "a bad group before the last two: Slurm drops its hosts and reports no error"),
]


def scontrol(conf, hostlist):
    env = dict(os.environ, SLURM_CONF=conf)
    p = subprocess.run(["scontrol", "--", "show", "hostnames", hostlist],
                       env=env, capture_output=True, text=True, timeout=60)
    hosts = p.stdout.splitlines()
    return {"list": hostlist, "hosts": hosts,
            "invalid": "Invalid hostlist" in p.stderr}


def table():
    with tempfile.TemporaryDirectory(prefix="hostlist-vectors-") as d:
        conf = os.path.join(d, "slurm.conf")
        with open(conf, "w") as f:
            f.write("ClusterName=vectors\nSlurmctldHost=localhost\n")
        out = []
        for hostlist, diverges in VECTORS:
            v = scontrol(conf, hostlist)
            v["diverges"] = diverges
            out.append(v)
        return out


def main():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                        "rendezvous", "testdata", "hostlist.json")
    # One list a line, so that a regenerated table diffs by list.
    text = "[\n" + ",\n".join(json.dumps(v) for v in table()) + "\n]\n"
    if "--check" in sys.argv:
        with open(path) as f:
            if f.read() != text:
                print("hostlist vectors: scontrol now differs from", path, file=sys.stderr)
                return 1
        return 0
    with open(path, "w") as f:
        f.write(text)
    print(f"hostlist vectors: {len(VECTORS)} lists written to {os.path.normpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
