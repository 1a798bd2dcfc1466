#!/usr/bin/env python3
"""Multi-node benchmark: torchrun (c10d) and mpspawn (etcd, c10d) side by side.

    python3 bench/multinode.py [--runs N] [--mpspawn bin/mpspawn] [--quick]
    python3 bench/multinode.py --scale [--scale-nodes 8,16,32,64,128] [--torchrun-nodes 8,16,32]

Two "nodes" on this host, 2 ranks each: separate launcher processes; mpspawn's
with --local-addr 127.0.0.2 and 127.0.0.3 (torch 1.13's torchrun has no
--local_addr: both of its nodes are this host's name).

  (a) a 2x2 gloo DDP job (examples/python/ddp_train.py), start to finish; and
      the rendezvous: from the start of the last node's launcher to the first
      rank's start (a rank that writes the time and exits);
  (b) rank 3, on node 1, exits 3 after 1 s while the others sleep: time from
      its exit until every launcher has exited, and their exit codes;
  (c) node 1's launcher is SIGKILLed while every rank sleeps: time until
      node 0's ranks are gone (bounded by --kill-bound, 60 s).

mpspawn runs with --rdzv-backend etcd (an etcd this script starts on a free
127.0.0.1 port and stops) and with --rdzv-backend c10d (node 0 hosts its own
etcd), at the default lease TTL (5 s). torchrun is Debian's torch 1.13 with
--rdzv_backend c10d. Each figure is the median of --runs runs (default 5).
The script reports, it does not assert: it exits 1 only when a launcher did
not run as it must.

--scale: N nodes, one launcher process each, one rank of /bin/true a node
(--no-python): torchrun c10d (/usr/bin/torchrun) at --torchrun-nodes, and
mpspawn on etcd (a fresh etcd per N) and on c10d at --scale-nodes, each
mpspawn node with its own --local-addr 127.0.0.x (x from 2). Per run: time
from the first launcher's start until every launcher exited, exit codes,
and for etcd the server's CPU seconds and peak RSS (/proc). A run past
--scale-bound (180 s) is "did not finish" and every process it started is
killed by pid. --runs defaults to 1 here; figures are medians.
"""

import argparse
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TORCH_PYTHON = "/usr/bin/python3"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DDP = os.path.join(REPO, "examples", "python", "ddp_train.py")
ADDRS = ["127.0.0.2", "127.0.0.3"]
NPROC = 2

STAMP = 'date +%s%N > "$BENCH_DIR/start$RANK"; '
FAIL = (STAMP + 'echo $$ > "$BENCH_DIR/pid$RANK"; '
        'if [ "$RANK" = 3 ]; then sleep 1; date +%s%N > "$BENCH_DIR/failed"; exit 3; fi; exec sleep 20')
SLEEP = STAMP + 'echo $$ > "$BENCH_DIR/pid$RANK"; exec sleep 120'


def median(xs):
    s = sorted(x for x in xs if x is not None)
    if not s:
        return float("nan")
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Etcd:
    """A one-member etcd on free 127.0.0.1 ports, stopped by pid."""

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="bench_etcd_")
        port, peer = free_port(), free_port()
        self.endpoint = f"127.0.0.1:{port}"
        c, p = f"http://{self.endpoint}", f"http://127.0.0.1:{peer}"
        self.proc = subprocess.Popen(
            [shutil.which("etcd") or "/usr/bin/etcd", "--data-dir", self.dir + "/data",
             "--listen-client-urls", c, "--advertise-client-urls", c, "--listen-peer-urls", p,
             "--initial-advertise-peer-urls", p, "--initial-cluster", "default=" + p,
             "--heartbeat-interval=10", "--election-timeout=100", "--logger", "zap"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        for line in self.proc.stderr:
            if "serving client traffic" in line:
                break
            if time.monotonic() > deadline:
                raise SystemExit("etcd did not start")
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def argv(kind, mpspawn, node, run_id, endpoint, prog):
    """The launch line of node (0 or 1) of a 2x2 job."""
    if kind == "torchrun":
        head = [TORCH_PYTHON, "-m", "torch.distributed.run", "--redirects", "1", "--tee", "1",
                "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", run_id,
                "--nnodes", "2", "--nproc_per_node", str(NPROC)]
    else:
        backend = "etcd" if kind == "mpspawn-etcd" else "c10d"
        head = [mpspawn, "--rdzv-backend", backend, "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
                "--nnodes", "2", "--nproc-per-node", str(NPROC), "--local-addr", ADDRS[node]]
    return head + prog


def ddp_prog(kind, out):
    py = ["--python", TORCH_PYTHON] if kind != "torchrun" else []
    return py + [DDP, "--out", out]


def sh_prog(script):
    return ["--no-python", "sh", "-c", script]


def launch(kind, mpspawn, endpoint, prog_for, workdir):
    """Start both nodes; returns (procs, time.time_ns() of the last start)."""
    run_id = "b" + str(time.time_ns())
    if kind != "mpspawn-etcd":
        endpoint = f"{ADDRS[0] if kind != 'torchrun' else '127.0.0.1'}:{free_port()}"
    procs = []
    env = dict(os.environ, BENCH_DIR=workdir, OMP_NUM_THREADS="1")
    last = 0
    for node in range(2):
        prog = prog_for(kind)
        if kind == "torchrun" and prog[0] == "--no-python":
            # torchrun's argument macros (string.Template) turn $$ into $.
            prog = ["--no_python"] + [a.replace("$$", "$$$$") for a in prog[1:]]
        a = argv(kind, mpspawn, node, run_id, endpoint, prog)
        last = time.time_ns()
        procs.append(subprocess.Popen(a, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))
    return procs, last


def wait_all(procs, timeout):
    """Exit codes and exit times (ns) of procs, by pidfd; None past timeout."""
    fds = {os.pidfd_open(p.pid): p for p in procs}
    ended = {}
    deadline = time.monotonic() + timeout
    while len(ended) < len(procs):
        left = deadline - time.monotonic()
        ready, _, _ = select.select(list(set(fds) - set(ended)), [], [], max(left, 0))
        now = time.time_ns()
        if not ready:
            break
        for fd in ready:
            ended[fd] = now
    out = []
    for fd, p in fds.items():
        if fd in ended:
            out.append((p.wait(), ended[fd]))
        else:
            out.append((None, None))
        os.close(fd)
    return out


def cleanup(procs):
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def read_ns(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def scenario_ddp(kind, mpspawn, endpoint, workdir):
    out = os.path.join(workdir, "out")
    start = time.time_ns()
    procs, _ = launch(kind, mpspawn, endpoint, lambda k: ddp_prog(k, out), workdir)
    try:
        res = wait_all(procs, 300)
    finally:
        cleanup(procs)
    if any(rc != 0 for rc, _ in res):
        raise SystemExit(f"{kind}: DDP job failed: {[rc for rc, _ in res]}\n{procs[0].stderr.read()[-2000:]}")
    return (max(t for _, t in res) - start) / 1e6


def scenario_rendezvous(kind, mpspawn, endpoint, workdir):
    procs, last = launch(kind, mpspawn, endpoint, lambda k: sh_prog(STAMP), workdir)
    try:
        res = wait_all(procs, 120)
    finally:
        cleanup(procs)
    if any(rc != 0 for rc, _ in res):
        raise SystemExit(f"{kind}: rendezvous job failed: {[rc for rc, _ in res]}")
    first = min(read_ns(os.path.join(workdir, f"start{r}")) for r in range(4))
    return (first - last) / 1e6


def baseline_start(mpspawn, workdir):
    """One node on its own (--standalone, 2 ranks): launcher start to the
    first rank's start, what every launch costs before any rendezvous."""
    env = dict(os.environ, BENCH_DIR=workdir, RANK="0")
    start = time.time_ns()
    subprocess.run([mpspawn, "--standalone", "--nproc-per-node", "2", "--no-python", "sh", "-c", STAMP],
                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    first = min(read_ns(os.path.join(workdir, f"start{r}")) for r in range(2))
    return (first - start) / 1e6


def scenario_fail(kind, mpspawn, endpoint, workdir):
    procs, _ = launch(kind, mpspawn, endpoint, lambda k: sh_prog(FAIL), workdir)
    try:
        res = wait_all(procs, 120)
    finally:
        cleanup(procs)
    failed = read_ns(os.path.join(workdir, "failed"))
    if failed is None or any(t is None for _, t in res):
        return None, [rc for rc, _ in res]
    return (max(t for _, t in res) - failed) / 1e6, [rc for rc, _ in res]


def pids_gone(pids, timeout):
    """Time (ns) when every pid in pids has exited, or None past timeout."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    pending = set(fds)
    while pending:
        ready, _, _ = select.select(list(pending), [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        pending -= set(ready)
    done = time.time_ns() if not pending else None
    for fd in fds:
        os.close(fd)
    return done


def scenario_kill(kind, mpspawn, endpoint, workdir, bound):
    procs, _ = launch(kind, mpspawn, endpoint, lambda k: sh_prog(SLEEP), workdir)
    try:
        deadline = time.monotonic() + 120
        while not all(read_ns(os.path.join(workdir, f"pid{r}")) for r in range(4)):
            if time.monotonic() > deadline:
                raise SystemExit(f"{kind}: ranks did not start")
            time.sleep(0.01)  # polling for files the ranks write: the bench's own start-up
        # The ranks of the node that is not killed: those outside the killed
        # launcher's session.
        node0 = [read_ns(os.path.join(workdir, f"pid{r}")) for r in range(4)]
        killed_children = set(int(x) for x in subprocess.run(
            ["pgrep", "-s", str(procs[1].pid)], capture_output=True, text=True).stdout.split())
        watch = [p for p in node0 if p not in killed_children]
        t0 = time.time_ns()
        os.kill(procs[1].pid, signal.SIGKILL)
        gone = pids_gone(watch, bound)
        return None if gone is None else (gone - t0) / 1e6
    finally:
        cleanup(procs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=None, help="runs per figure (default 5; 1 with --scale)")
    ap.add_argument("--scale", action="store_true", help="N nodes of one launcher process each (see above)")
    ap.add_argument("--scale-nodes", default="8,16,32,64,128", help="node counts for mpspawn (--scale)")
    ap.add_argument("--torchrun-nodes", default="8,16,32", help="node counts for torchrun (--scale)")
    ap.add_argument("--scale-bound", type=float, default=180.0, help="seconds a --scale run may take")
    ap.add_argument("--mpspawn", default=os.path.join(REPO, "bin", "mpspawn"))
    ap.add_argument("--quick", action="store_true", help="3 runs, no DDP job")
    ap.add_argument("--kill-bound", type=float, default=60.0)
    args = ap.parse_args()
    if args.scale:
        import multinode_scale
        return multinode_scale.main(args, Etcd)
    runs = 3 if args.quick else (args.runs or 5)
    kinds = ["torchrun", "mpspawn-etcd", "mpspawn-c10d"]
    figures = {k: {"ddp": [], "rdzv": [], "fail": [], "codes": [], "kill": []} for k in kinds}
    baseline = []
    with Etcd() as etcd:
        for _ in range(runs):
            workdir = tempfile.mkdtemp(prefix="bench_mn_")
            try:
                baseline.append(baseline_start(args.mpspawn, workdir))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            for kind in kinds:
                for name, fn in [("rdzv", scenario_rendezvous), ("fail", scenario_fail), ("ddp", scenario_ddp),
                                 ("kill", None)]:
                    if name == "ddp" and args.quick:
                        continue
                    workdir = tempfile.mkdtemp(prefix="bench_mn_")
                    try:
                        if name == "kill":
                            figures[kind]["kill"].append(scenario_kill(kind, args.mpspawn, etcd.endpoint, workdir, args.kill_bound))
                        elif name == "fail":
                            ms, codes = fn(kind, args.mpspawn, etcd.endpoint, workdir)
                            figures[kind]["fail"].append(ms)
                            figures[kind]["codes"].append(codes)
                        else:
                            figures[kind][name].append(fn(kind, args.mpspawn, etcd.endpoint, workdir))
                    finally:
                        shutil.rmtree(workdir, ignore_errors=True)
    print(f"2 nodes x {NPROC} ranks on loopback, median of {runs} runs")
    print(f"baseline: mpspawn --standalone, launcher start to first rank: {median(baseline):.1f} ms "
          f"(the rendezvous column includes it)")
    print(f"{'':14} {'DDP job ms':>11} {'rendezvous ms':>14} {'fail->all exit ms':>18} {'exit codes':>14} {'node killed->ranks gone ms':>27}")
    for k in kinds:
        f = figures[k]
        kill = [x for x in f["kill"] if x is not None]
        kill_s = f"{median(kill):.0f}" if len(kill) == len(f["kill"]) else f"> {args.kill_bound * 1000:.0f} ({len(f['kill']) - len(kill)} runs)"
        codes = f["codes"][-1] if f["codes"] else []
        print(f"{k:14} {median(f['ddp']):11.0f} {median(f['rdzv']):14.1f} {median(f['fail']):18.1f} {str(codes):>14} {kill_s:>27}")
    t, m = figures["torchrun"], figures["mpspawn-etcd"]
    if not args.quick:
        print(f"ratio DDP job torchrun/mpspawn-etcd: {median(t['ddp']) / median(m['ddp']):.2f}x")
    print(f"ratio rendezvous torchrun/mpspawn-etcd: {median(t['rdzv']) / median(m['rdzv']):.1f}x; "
          f"mpspawn-etcd rendezvous beyond the baseline: {median(m['rdzv']) - median(baseline):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
