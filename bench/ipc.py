#!/usr/bin/env python3
"""IPC benchmark: Python's and torch's queues (the anchors) and mpspawn's ipc
package side by side, in one run.

    python3 bench/ipc.py [--runs N] [--gobench bin/gobench] [--torch-python /usr/bin/python3]

  (a) small messages: one process puts N ints on a queue, another gets them;
      multiprocessing.Queue vs ipc.Queue[int]; messages/s, timed by the
      consumer from its first message to its last; target: >= 5x;
  (b) 64 MiB hand-off: one process fills a 64 MiB float32 tensor/buffer and
      puts it, another gets it and reads all of it (a sum);
      torch.multiprocessing Queue of tensors (moved to shared memory on put)
      vs an ipc.Buffer whose handle goes through an ipc.Queue; per second,
      timed the same way; target: >= 4x. The producer takes its buffers from
      an ipc.BufferPool (a buffer comes back once the consumer has read it),
      as a stream of equal-sized buffers should; "fresh" is the same with a
      new buffer each time, for reference: fresh memory costs the kernel's
      zeroing of every page, more than filling it. Both sides fill and sum
      with vector code: torch.full and Tensor.sum; in Go, doubling copies
      (memmove) and an eight-lane sum.

Runs alternate between the two sides; figures are medians. Standard library
only, except torch in the interpreter given by --torch-python. The script
reports, it does not assert.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

N_SMALL = 200_000
N_TENSORS = 50

PY_SMALL = r"""
import multiprocessing as mp, sys, time
N = int(sys.argv[1])
def producer(q):
    for i in range(N):
        q.put(i)
def consumer(q, out):
    start = None
    for i in range(N):
        v = q.get()
        assert v == i
        if i == 0:
            start = time.perf_counter()
    out.put((N - 1) / (time.perf_counter() - start))
if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    q, out = ctx.Queue(), ctx.Queue()
    c = ctx.Process(target=consumer, args=(q, out)); c.start()
    p = ctx.Process(target=producer, args=(q,)); p.start()
    print(out.get()); p.join(); c.join()
"""

TORCH_HANDOFF = r"""
import sys, time, torch, torch.multiprocessing as mp
N = int(sys.argv[1])
ELEMS = (64 << 20) // 4
def producer(q, done):
    for i in range(N):
        t = torch.full((ELEMS,), float(i), dtype=torch.float32)
        q.put(t)  # moved to shared memory
    done.wait()   # torch's file-descriptor sharing needs the producer alive
def consumer(q, out, done):
    start = None
    for i in range(N):
        t = q.get()
        s = float(t.sum())
        assert t[-1].item() == float(i) and (i == 0 or s > 0)
        if i == 0:
            start = time.perf_counter()
        del t
    out.put((N - 1) / (time.perf_counter() - start))
    done.set()
if __name__ == "__main__":
    torch.set_num_threads(1)
    ctx = mp.get_context("spawn")
    q, out, done = ctx.Queue(), ctx.Queue(), ctx.Event()
    c = ctx.Process(target=consumer, args=(q, out, done)); c.start()
    p = ctx.Process(target=producer, args=(q, done)); p.start()
    print(out.get()); p.join(); c.join()
"""


def run(cmd, timeout=600):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout
    return float(out.split()[-1])


def script(tmp, name, code):
    """Writes code to a file: the spawn start method re-imports __main__ by path."""
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(code)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gobench", default="bin/gobench")
    ap.add_argument("--torch-python", default="/usr/bin/python3")
    a = ap.parse_args()
    py_q, go_q, th_h, go_h, go_f = [], [], [], [], []
    tmp = tempfile.mkdtemp(prefix="mpspawn_bench_")
    small, handoff = script(tmp, "small.py", PY_SMALL), script(tmp, "handoff.py", TORCH_HANDOFF)
    for _ in range(a.runs):
        py_q.append(run([sys.executable, small, str(N_SMALL)]))
        go_q.append(run([a.gobench, "queue", str(N_SMALL)]))
        th_h.append(run([a.torch_python, handoff, str(N_TENSORS)]))
        go_h.append(run([a.gobench, "handoff", str(N_TENSORS)]))
        go_f.append(run([a.gobench, "handoff-fresh", str(N_TENSORS)]))
    shutil.rmtree(tmp)
    med = statistics.median
    print(f"machine: {os.cpu_count()} CPUs, {a.runs} runs, medians")
    print(f"(a) small ints through a queue: multiprocessing.Queue {med(py_q):10.0f} msg/s   "
          f"ipc.Queue {med(go_q):10.0f} msg/s   ratio {med(go_q) / med(py_q):4.1f}x (target >= 5x)")
    print(f"(b) 64 MiB float32 hand-off: torch.multiprocessing Queue {med(th_h):6.1f}/s   "
          f"ipc.BufferPool + Queue {med(go_h):6.1f}/s   ratio {med(go_h) / med(th_h):4.1f}x (target >= 4x)")
    print(f"    for reference, a fresh ipc.Buffer each time: {med(go_f):6.1f}/s   ratio {med(go_f) / med(th_h):4.1f}x")


if __name__ == "__main__":
    main()
