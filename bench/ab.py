#!/usr/bin/env python3
"""Two builds of mpspawn side by side, in one run: is a change within noise?

    python3 bench/ab.py --a OLD/mpspawn --b bin/mpspawn [--gobench-a OLD/gobench --gobench-b bin/gobench] [--runs 15]

For a refactoring that must not change speed: the same jobs under build A
(before) and build B (after), interleaved round by round so that machine
noise hits both, medians and the ratio B/A. The jobs:

  version   mpspawn --version: the process's start alone (package inits, and
            the page faults of a larger binary);
  true1     mpspawn --no-python --nproc-per-node 1 /bin/true: the smallest
            single-node job;
  true8     mpspawn --no-python --nproc-per-node 8 /bin/true: start, supervise
            and reap 8 ranks (the launcher's own cost dominates);
  py4       mpspawn --nproc-per-node 4 --python /usr/bin/python3 -c-free
            script that exits at once: 4 Python ranks, the common case;
  fail8     8 ranks of /bin/sh, rank 3 exits 3 at once, the others sleep:
            first failure to every rank stopped and mpspawn exited;
  spawn8    (with --gobench-a/-b) mp.Spawn + Join of 8 no-op Go ranks, from
            bench/gobench built at A and at B.

Standard library only. It reports; it does not assert.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def timed(argv, env=None, ok=(0,)):
    t = time.perf_counter()
    p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    d = time.perf_counter() - t
    if p.returncode not in ok:
        sys.exit(f"ab: {' '.join(argv)} exited {p.returncode}")
    return d


def gobench_spawn(gobench):
    out = subprocess.run([gobench, "spawn", "3"], capture_output=True, text=True, check=True).stdout.split()
    return float(out[-1])  # the last of 3: the first pays the guard's start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="mpspawn before")
    ap.add_argument("--b", required=True, help="mpspawn after")
    ap.add_argument("--gobench-a", help="bench/gobench built before")
    ap.add_argument("--gobench-b", help="bench/gobench built after")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--python", default="/usr/bin/python3")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="mpspawn_ab_")
    try:
        bins = {}
        for name, path in (("A", a.a), ("B", a.b)):  # private copies: a rebuild cannot mix in
            bins[name] = os.path.join(tmp, "mpspawn-" + name)
            shutil.copy2(path, bins[name])
        script = os.path.join(tmp, "nop.py")
        with open(script, "w") as f:
            f.write("pass\n")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        fail = 'if [ "$RANK" = 3 ]; then exit 3; fi; exec sleep 30'
        jobs = {
            "version": lambda m: timed([m, "--version"], env),
            "true1": lambda m: timed([m, "--quiet", "--no-python", "--nproc-per-node", "1", "/bin/true"], env),
            "true8": lambda m: timed([m, "--quiet", "--no-python", "--nproc-per-node", "8", "/bin/true"], env),
            "py4": lambda m: timed([m, "--quiet", "--nproc-per-node", "4", "--python", a.python, script], env),
            "fail8": lambda m: timed([m, "--quiet", "--no-python", "--nproc-per-node", "8", "sh", "-c", fail], env, ok=(3,)),
        }
        res = {(j, n): [] for j in jobs for n in bins}
        floor = []  # the machine's own: /bin/true
        gores = {"A": [], "B": []}
        for r in range(a.runs):
            order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
            floor.append(timed(["/bin/true"]))
            for j, run in jobs.items():
                for n in order:
                    res[(j, n)].append(run(bins[n]))
            if a.gobench_a and a.gobench_b:
                for n in order:
                    gores[n].append(gobench_spawn(a.gobench_a if n == "A" else a.gobench_b))
        load = os.getloadavg()
        print(f"{a.runs} rounds, A = {a.a}, B = {a.b}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"/bin/true: {statistics.median(floor) * 1000:.2f} ms (this machine's floor for a process)")
        print(f"{'job':8} {'A ms':>9} {'B ms':>9} {'B/A':>6}")
        rows = [(j, res[(j, 'A')], res[(j, 'B')]) for j in jobs]
        if gores["A"]:
            rows.append(("spawn8", gores["A"], gores["B"]))
        for j, xa, xb in rows:
            ma, mb = statistics.median(xa) * 1000, statistics.median(xb) * 1000
            print(f"{j:8} {ma:9.1f} {mb:9.1f} {mb / ma:6.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
