#!/usr/bin/env python3
"""Go API benchmark: Python's multiprocessing (the anchor) and mpspawn's Go
API side by side, in one run.

    python3 bench/goapi.py [--runs N] [--items N] [--gobench PATH]

  (a) spawn and join 8 no-op ranks: multiprocessing with the "spawn" start
      method (what torch.multiprocessing.spawn does) vs launcher.Spawn;
      target: Go >= 10x faster;
  (b) Pool.map throughput of a tiny function (x*x) over --items items,
      default chunksize, one worker per CPU: multiprocessing.Pool.map vs
      launcher.Map, in items/s: the median of 5 maps on a started pool after
      one warm-up map, the same on both sides; target: Go >= 5x.

Runs alternate between the two sides, so that machine noise hits both;
every figure is the median of --runs runs. Standard library only. The script
reports, it does not assert.
"""

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time


MAPS = 5  # timed maps per run on one warm pool, median taken (as gobench does)


def noop(_):
    pass


def square(x):
    return x * x


def py_spawn():
    ctx = mp.get_context("spawn")
    start = time.perf_counter()
    procs = [ctx.Process(target=noop, args=(i,)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            sys.exit(f"python rank exited {p.exitcode}")
    return time.perf_counter() - start


def py_map(items, workers):
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(square, range(items))  # warm-up, as on the Go side
        rates = []
        for _ in range(MAPS):
            start = time.perf_counter()
            out = pool.map(square, range(items))
            rates.append(items / (time.perf_counter() - start))
            assert out[-1] == (items - 1) ** 2
    return statistics.median(rates)


def go(gobench, *args):
    out = subprocess.run([gobench, *map(str, args)], check=True, capture_output=True, text=True).stdout
    return [float(x) for x in out.split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--gobench", default="bin/gobench")
    a = ap.parse_args()
    workers = os.cpu_count()
    py_s, go_s, py_m, go_m = [], [], [], []
    for _ in range(a.runs):
        py_s.append(py_spawn())
        go_s += go(a.gobench, "spawn", 1)
        py_m.append(py_map(a.items, workers))
        go_m += go(a.gobench, "map", a.items, workers)
    ms = lambda xs: statistics.median(xs) * 1000
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {a.runs} runs, medians")
    print(f"(a) spawn+join 8 no-op ranks: multiprocessing spawn {ms(py_s):8.1f} ms   "
          f"mpspawn Go API {ms(go_s):6.1f} ms   ratio {statistics.median(py_s) / statistics.median(go_s):5.1f}x (target >= 10x)")
    print(f"(b) Pool.map x*x, {a.items} items, {workers} workers: multiprocessing {statistics.median(py_m):10.0f} items/s   "
          f"mpspawn {statistics.median(go_m):10.0f} items/s   ratio {statistics.median(go_m) / statistics.median(py_m):5.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
