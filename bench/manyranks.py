#!/usr/bin/env python3
"""Many ranks on one node: mpspawn against a shell loop starting the same.

    python3 bench/manyranks.py [--ranks 500,1000,2000,4000] [--runs 5] [--mpspawn bin/mpspawn]

For each rank count N, alternating, --runs times:

  mpspawn     mpspawn --standalone --nproc-per-node N --no-python /bin/true
  shell loop  sh -c 'i=0; while [ $i -lt N ]; do /bin/true & i=$((i+1)); done; wait'

and prints per N the median wall time of each (start to reaped), their
ratio (issue 26's target: at most 1.5x at 2,000 ranks), and the launcher's
peak RSS from wait4's rusage (ru_maxrss: the launcher's own peak, or a rank's
if larger: /bin/true's is about 1 MB), with the RSS per rank above the
smallest N's, to show memory linear in ranks. Rank counts the limits do not
allow (ulimit -u, kernel.pid_max, RLIMIT_NOFILE: mpspawn holds 6 fds per
rank) are skipped with the reason; the open-file limit is raised first, to
what the largest N needs where this process may (root), else to the hard
limit. The machine's load is printed before and
after. Standard library only.
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FDS_PER_RANK = 6  # what mpspawn holds per rank (its own check says so)


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def load():
    with open("/proc/loadavg") as f:
        return "load average " + " ".join(f.read().split()[:3])


def limit_reason(n):
    """Why n ranks cannot run here, or None."""
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    if nproc != resource.RLIM_INFINITY and n + 200 > nproc:
        return f"ulimit -u is {nproc}"
    if n * 2 + 1000 > pid_max:
        return f"kernel.pid_max is {pid_max}"
    if n * FDS_PER_RANK + 100 > nofile:
        return f"the hard RLIMIT_NOFILE is {nofile}"
    return None


def run(argv):
    """Runs argv to its end; returns (seconds, ru_maxrss in bytes)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
        raise SystemExit(f"bench/manyranks.py: {argv[:4]}... exited {p.returncode}")
    return dt, ru.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", default="500,1000,2000,4000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mpspawn", default=os.path.join(REPO, "bin", "mpspawn"))
    args = ap.parse_args()
    ranks = [int(x) for x in args.ranks.split(",")]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(hard, max(ranks) * FDS_PER_RANK + 1000)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # mpspawn inherits it
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    tmp = tempfile.mkdtemp(prefix="manyranks-")
    try:
        mp = os.path.join(tmp, "mpspawn")  # a rebuild during the run cannot mix versions
        shutil.copy2(args.mpspawn, mp)
        print("before:", load(), f"({os.cpu_count()} CPUs; ulimit -u {resource.getrlimit(resource.RLIMIT_NPROC)[0]},"
              f" RLIMIT_NOFILE {hard})", flush=True)
        rows = []
        for n in ranks:
            why = limit_reason(n)
            if why:
                print(f"{n} ranks: skipped ({why})")
                continue
            loop = ["sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true & i=$((i+1)); done; wait"]
            launch = [mp, "--standalone", "--nproc-per-node", str(n), "--no-python", "/bin/true"]
            mt, st, rss = [], [], []
            for _ in range(args.runs):
                dt, r = run(launch)
                mt.append(dt)
                rss.append(r)
                st.append(run(loop)[0])
            rows.append((n, median(mt), median(st), max(rss)))
            print(f"{n} ranks: done", flush=True)
        print("after: ", load())
        print(f"{'ranks':>6}  {'mpspawn s':>9}  {'shell s':>8}  {'ratio':>6}  {'peak RSS MB':>11}  {'KB/rank over first':>18}")
        for n, m, s, r in rows:
            per = ""
            if n != rows[0][0]:
                per = f"{(r - rows[0][3]) / 1024 / (n - rows[0][0]):.1f}"
            print(f"{n:>6}  {m:>9.3f}  {s:>8.3f}  {m / s:>5.2f}x  {r / 2**20:>11.1f}  {per:>18}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
