#!/usr/bin/env python3
"""What the live view (mpspawn status / top) costs the launcher.

    python3 bench/status_cost.py [--ranks 64] [--seconds 10] [--runs 3] [--mpspawn bin/mpspawn]

Runs the same job, --ranks ranks of `sleep`, with the state publishing on
(the default) and off (MPSPAWN_LIVE=0), alternating, --runs times each, and
reads the launcher's own CPU time (utime+stime in /proc/PID/stat) from 2 s
after it started (its ranks are up by then) to 1 s before they exit. Prints
the median CPU of each as % of one core, the difference (the publisher's
cost: issue 24's budget is 1% of one core for 64 ranks) and the ratio.
Standard library only.
"""

import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def one(binary, ranks, seconds, live):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not live:
        env["MPSPAWN_LIVE"] = "0"
    p = subprocess.Popen([binary, "--quiet", "--nproc-per-node", str(ranks), "--no-python", "sleep", str(seconds)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        t0, c0 = time.monotonic(), cpu_seconds(p.pid)
        time.sleep(seconds - 3)
        t1, c1 = time.monotonic(), cpu_seconds(p.pid)
    finally:
        p.wait(timeout=seconds + 60)
    return 100 * (c1 - c0) / (t1 - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mpspawn", default=os.path.join(REPO, "bin", "mpspawn"))
    a = ap.parse_args()
    if a.seconds < 5:
        sys.exit("--seconds must be at least 5")
    on, off = [], []
    for _ in range(a.runs):
        on.append(one(a.mpspawn, a.ranks, a.seconds, True))
        off.append(one(a.mpspawn, a.ranks, a.seconds, False))
    on.sort()
    off.sort()
    m_on, m_off = on[len(on) // 2], off[len(off) // 2]
    print(f"{a.ranks} ranks, {a.runs} runs each, launcher CPU over {a.seconds - 3} s of steady state (median, % of one core)")
    print(f"  publishing on : {m_on:.3f}%  (runs: {', '.join(f'{v:.3f}' for v in on)})")
    print(f"  publishing off: {m_off:.3f}%  (runs: {', '.join(f'{v:.3f}' for v in off)})")
    ratio = m_on / m_off if m_off > 0 else float("inf")
    print(f"  cost: {m_on - m_off:.3f}% of one core; ratio on/off {ratio:.2f}")


if __name__ == "__main__":
    main()
