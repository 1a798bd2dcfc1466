"""bench/multinode.py --scale: N launcher processes on this host, one rank of
/bin/true each, torchrun c10d against mpspawn on etcd and on c10d.

Every launcher starts in its own session; a run past the bound, and any run
at its end, has every process it started killed by pid: the launchers, and
every process whose session is one of theirs or whose parent chain leads to
one of them (read from /proc before the kill).
"""

import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time

TORCHRUN = "/usr/bin/torchrun"


def proc_table():
    """{pid: (ppid, sid)} of every process, from /proc/<pid>/stat."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(name)] = (int(fields[1]), int(fields[3]))
    return table


def started_by(roots):
    """Pids alive that descend from roots or sit in a session a root leads."""
    table = proc_table()
    roots = set(roots)
    found = {p for p, (_, sid) in table.items() if sid in roots} | (roots & set(table))
    grew = True
    while grew:
        more = {p for p, (ppid, _) in table.items() if ppid in found and p not in found}
        found |= more
        grew = bool(more)
    return found


def kill_all(procs):
    """SIGKILL every process procs started, by pid, and reap the launchers."""
    for _ in range(3):  # a process may fork while it is being collected
        pids = started_by(p.pid for p in procs)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in procs:
            if p.poll() is None:
                p.wait()
    for p in procs:
        p.poll()


def wait_exits(procs, bound):
    """Exit codes of procs and the time (monotonic) the last one exited, or
    None for the time if any is still running after bound seconds."""
    fds = {os.pidfd_open(p.pid): p for p in procs}
    pending = set(fds)
    deadline = time.monotonic() + bound
    last = None
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(pending), [], [], left)
            last = time.monotonic()
            pending -= set(ready)
    finally:
        for fd in fds:
            os.close(fd)
    codes = [p.poll() for p in procs]
    return codes, (last if not pending else None)


def line(kind, mpspawn, n, node, run_id, endpoint):
    if kind == "torchrun":
        return [TORCHRUN, "--redirects", "1", "--tee", "1", "--rdzv_backend", "c10d",
                "--rdzv_endpoint", endpoint, "--rdzv_id", run_id, "--nnodes", str(n),
                "--nproc_per_node", "1", "--no_python", "/bin/true"]
    backend = "etcd" if kind == "mpspawn-etcd" else "c10d"
    return [mpspawn, "--rdzv-backend", backend, "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
            "--nnodes", str(n), "--nproc-per-node", "1", "--local-addr", f"127.0.0.{node + 2}",
            "--no-python", "/bin/true"]


def one_run(kind, mpspawn, n, endpoint, bound, free_port):
    """(seconds or None, exit codes summary, log tail of a failing node)."""
    run_id = f"s{n}x{time.time_ns()}"
    if kind == "torchrun":
        endpoint = f"127.0.0.1:{free_port()}"
    elif kind == "mpspawn-c10d":
        endpoint = f"127.0.0.2:{free_port('127.0.0.2')}"
    logdir = tempfile.mkdtemp(prefix="bench_mns_")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = []
    try:
        start = time.monotonic()
        for node in range(n):
            with open(os.path.join(logdir, f"{node}.log"), "w") as log:
                procs.append(subprocess.Popen(line(kind, mpspawn, n, node, run_id, endpoint), env=env,
                                              stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                              start_new_session=True))
        codes, end = wait_exits(procs, bound - (time.monotonic() - start))
        tail = ""
        bad = [i for i, c in enumerate(codes) if c != 0]
        if bad:
            with open(os.path.join(logdir, f"{bad[0]}.log"), errors="replace") as f:
                tail = f"node {bad[0]}: " + f.read()[-600:]
        return (None if end is None else end - start), summary(codes), tail
    finally:
        kill_all(procs)
        shutil.rmtree(logdir, ignore_errors=True)


def summary(codes):
    counts = {}
    for c in codes:
        key = "running" if c is None else str(c)
        counts[key] = counts.get(key, 0) + 1
    return " ".join(f"{k}x{v}" for k, v in sorted(counts.items()))


def etcd_usage(pid):
    """(CPU seconds, peak RSS MB) of pid from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith("VmHWM:"):
                hwm = int(row.split()[1]) / 1024
    return cpu, hwm


def median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def fmt(times, runs):
    done = [t for t in times if t is not None]
    if len(done) < runs:
        return "did not finish" if not done else f"{median(done):.2f} ({runs - len(done)} dnf)"
    return f"{median(done):.2f}"


def measure(kind, mpspawn, n, runs, bound, free_port, etcd_cls, out):
    """Runs kind at n nodes runs times; fills out[(kind, n)]."""
    rec = {"times": [], "codes": [], "cpu": [], "rss": [], "tail": ""}
    for _ in range(runs):
        if kind == "mpspawn-etcd":
            with etcd_cls() as etcd:
                drain = threading.Thread(target=etcd.proc.stderr.read, daemon=True)
                drain.start()  # etcd's log must not fill its pipe
                cpu0, _ = etcd_usage(etcd.proc.pid)
                t, codes, tail = one_run(kind, mpspawn, n, etcd.endpoint, bound, free_port)
                cpu1, hwm = etcd_usage(etcd.proc.pid)
                rec["cpu"].append(cpu1 - cpu0)
                rec["rss"].append(hwm)
        else:
            t, codes, tail = one_run(kind, mpspawn, n, None, bound, free_port)
        rec["times"].append(t)
        rec["codes"].append(codes)
        rec["tail"] = rec["tail"] or tail
        print(f"  {kind:13} N={n:4}: {'did not finish' if t is None else f'{t:.2f} s'}, exit codes {codes}",
              flush=True)
    out[(kind, n)] = rec


def main(args, etcd_cls):
    from multinode import free_port
    runs = args.runs or 1
    nodes = [int(x) for x in args.scale_nodes.split(",") if x]
    tnodes = [int(x) for x in args.torchrun_nodes.split(",") if x]
    me = os.getpid()
    before = set(started_by([me])) - {me}
    load0 = os.getloadavg()
    print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    out = {}
    for n in sorted(set(nodes) | set(tnodes)):
        for kind in ("torchrun", "mpspawn-etcd", "mpspawn-c10d"):
            if n in (tnodes if kind == "torchrun" else nodes):
                measure(kind, args.mpspawn, n, runs, args.scale_bound, free_port, etcd_cls, out)
    load1 = os.getloadavg()
    left = set(started_by([me])) - {me} - before
    print()
    print(f"N nodes x 1 rank of /bin/true, one launcher process a node, loopback; median of {runs} run(s); "
          f"first launcher's start -> every launcher exited, seconds; bound {args.scale_bound:.0f} s")
    hdr = ["N", "torchrun c10d s", "mpspawn etcd s", "mpspawn c10d s", "ratio torchrun/mpspawn etcd",
           "etcd CPU s", "etcd peak RSS MB", "exit codes (torchrun; etcd; c10d)"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    bad = False
    for n in sorted(set(nodes) | set(tnodes)):
        t, e, c = (out.get((k, n)) for k in ("torchrun", "mpspawn-etcd", "mpspawn-c10d"))
        cell = lambda r: "–" if r is None else fmt(r["times"], runs)
        ratio = "–"
        if t and e and all(x is not None for x in t["times"] + e["times"]):
            ratio = f"{median(t['times']) / median(e['times']):.1f}x"
        cpu = f"{median(e['cpu']):.2f}" if e else "–"
        rss = f"{median(e['rss']):.0f}" if e else "–"
        codes = "; ".join("–" if r is None else r["codes"][-1] for r in (t, e, c))
        print(f"| {n} | {cell(t)} | {cell(e)} | {cell(c)} | {ratio} | {cpu} | {rss} | {codes} |")
        for r in (t, e, c):
            if r and any(x != f"0x{n}" for x in r["codes"]):
                bad = True
    print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
          f"at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(f"processes of this script left running: {sorted(left) if left else 'none'}")
    for (kind, n), r in sorted(out.items()):
        if r["tail"]:
            print(f"--- {kind} N={n}, a failing node's log tail:\n{r['tail']}")
    return 1 if bad or left else 0
