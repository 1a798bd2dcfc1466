#!/usr/bin/env python3
"""Forkserver benchmark: 8 torch ranks under --start-method forkserver
--preload torch vs --start-method spawn, in one run.

    python3 bench/forkserver.py [--runs N] [--mpspawn bin/mpspawn] [--python /usr/bin/python3]

Every rank runs a script that does `import torch`, prints one line and
exits. For each method it reports, as the median of --runs runs (default 5,
the methods alternating so that drift hits both alike):

  start-to-finish  Popen of mpspawn -> mpspawn's exit (pidfd, not polling)
  first line       Popen of mpspawn -> the first rank's first line on stdout

then the ratios (target: forkserver >= 3x faster start-to-finish).

Memory: one more run per method in which every rank, after `import torch`,
prints its pid and blocks on a FIFO; while all 8 are alive the script sums
their PSS from /proc/<pid>/smaps_rollup (and, for forkserver, the server's,
which holds the preloaded pages too), then releases them.

Exec'd programs (why there is no --no-python forkserver): 8 x /bin/true
under mpspawn --no-python (spawn) against a shell loop that forks and execs
the same 8 processes, the floor of any fork+exec design, server or not.

Only the Python standard library is used. The script reports; it does not
assert: it exits 1 only when a run failed.
"""

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

NPROC = 8
TARGET = 3.0
RANK = r'''import os, sys
import torch
print("rank %s pid %d ppid %d torch %s" % (os.environ["RANK"], os.getpid(), os.getppid(), torch.__version__), flush=True)
fifo = os.environ.get("BENCH_FIFO")
if fifo:
    fd = os.open(fifo, os.O_RDONLY)  # the bench holds a writer: this does not block
    print("holding", flush=True)
    os.read(fd, 1)  # until the bench closes its end
'''


def launch(cmd, env, on_line=None):
    """Runs cmd; returns (seconds to exit, seconds to first stdout line, lines)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    first, lines, buf = None, [], b""
    fd = p.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        if first is None:
            first = time.perf_counter() - t0
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            lines.append(line.decode())
            if on_line:
                on_line(lines)
    pidfd = os.pidfd_open(p.pid)
    select.select([pidfd], [], [], 120)
    total = time.perf_counter() - t0
    os.close(pidfd)
    if p.wait(5) != 0:
        raise SystemExit("bench: %s exited %d" % (" ".join(cmd), p.returncode))
    return total, first, lines


def pss_kb(pid):
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def memory(cmd, env, tmp):
    """Total PSS (kB) of the ranks, and of their parent (the forkserver or mpspawn), all alive."""
    fifo = os.path.join(tmp, "hold")
    if os.path.exists(fifo):
        os.unlink(fifo)
    os.mkfifo(fifo)
    holder = os.open(fifo, os.O_RDWR)
    env = dict(env, BENCH_FIFO=fifo)
    result = {}

    def on_line(lines):
        holding = [l for l in lines if l.endswith("holding")]
        if len(holding) == NPROC and not result:
            ranks = [l.split() for l in lines if " pid " in l]
            pids = [int(f[f.index("pid") + 1]) for f in ranks]
            ppids = {int(f[f.index("ppid") + 1]) for f in ranks}
            result["ranks"] = sum(pss_kb(p) for p in pids)
            result["parent"] = sum(pss_kb(p) for p in ppids)
            os.close(holder)

    launch(cmd, env, on_line)
    if not result:
        os.close(holder)
        raise SystemExit("bench: the ranks never all reported")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mpspawn", default="bin/mpspawn")
    ap.add_argument("--python", default="/usr/bin/python3", help="interpreter with torch")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mpspawn_fsbench_")
    try:
        exe = os.path.join(tmp, "mpspawn")
        shutil.copy(args.mpspawn, exe)  # a rebuild during the run cannot mix versions
        script = os.path.join(tmp, "rank_torch.py")
        with open(script, "w") as f:
            f.write(RANK)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        base = [exe, "--nproc-per-node", str(NPROC), "--python", args.python]
        methods = {
            "spawn": base + ["--start-method", "spawn", script],
            "forkserver --preload torch": base + ["--start-method", "forkserver", "--preload", "torch", script],
        }
        print("8 ranks of `import torch` with %s, %d runs each, on %d CPUs" % (args.python, args.runs, os.cpu_count()))
        launch(methods["spawn"], env)  # warm the page cache
        times = {m: [] for m in methods}
        firsts = {m: [] for m in methods}
        for i in range(args.runs):
            order = list(methods) if i % 2 == 0 else list(reversed(methods))
            for m in order:
                total, first, lines = launch(methods[m], env)
                if len([l for l in lines if " pid " in l]) != NPROC:
                    raise SystemExit("bench: %s: %d rank lines, want %d" % (m, len(lines), NPROC))
                times[m].append(total)
                firsts[m].append(first)
        print("\n%-28s %14s %22s %14s" % ("method", "start-to-finish", "[min .. max]", "first line"))
        for m in methods:
            print("%-28s %12.0f ms   [%6.0f .. %6.0f] ms %11.0f ms" % (
                m, 1000 * statistics.median(times[m]), 1000 * min(times[m]), 1000 * max(times[m]),
                1000 * statistics.median(firsts[m])))
        fs, sp = "forkserver --preload torch", "spawn"
        ratio = statistics.median(times[sp]) / statistics.median(times[fs])
        ratio_first = statistics.median(firsts[sp]) / statistics.median(firsts[fs])
        print("\nforkserver is %.2fx faster start-to-finish (target >= %.0fx: %s), %.2fx to the first line"
              % (ratio, TARGET, "met" if ratio >= TARGET else "MISSED", ratio_first))

        print("\nPSS with all 8 ranks alive (after import torch):")
        for m in methods:
            r = memory(methods[m], env, tmp)
            parent = "the forkserver" if m == fs else "mpspawn"
            print("  %-28s ranks %7.1f MiB   + %s %6.1f MiB   = %7.1f MiB" % (
                m, r["ranks"] / 1024, parent, r["parent"] / 1024, (r["ranks"] + r["parent"]) / 1024))

        print("\nExec'd programs: 8 x /bin/true, start-to-finish (median of %d)" % (4 * args.runs))
        loop = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do /bin/true & done; wait"]
        spawn_true = [exe, "--nproc-per-node", str(NPROC), "--no-python", "/bin/true"]
        spawn_one = [exe, "--nproc-per-node", "1", "--no-python", "/bin/true"]
        loop_one = ["sh", "-c", "/bin/true & wait"]
        t = {"loop": [], "spawn": [], "spawn1": [], "loop1": []}
        for _ in range(4 * args.runs):
            t["loop"].append(launch(loop, env)[0])
            t["spawn"].append(launch(spawn_true, env)[0])
            t["loop1"].append(launch(loop_one, env)[0])
            t["spawn1"].append(launch(spawn_one, env)[0])
        med = {k: 1000 * statistics.median(v) for k, v in t.items()}
        print("  shell loop (fork+exec floor)  8 ranks %6.2f ms   1 rank %6.2f ms   per extra rank %5.2f ms" % (
            med["loop"], med["loop1"], (med["loop"] - med["loop1"]) / 7))
        print("  mpspawn --no-python (spawn)   8 ranks %6.2f ms   1 rank %6.2f ms   per extra rank %5.2f ms" % (
            med["spawn"], med["spawn1"], (med["spawn"] - med["spawn1"]) / 7))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
