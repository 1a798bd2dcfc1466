"""The Python rank helper of the CLI tests (testdata/script/methods), run
under every start method with python3 (no torch needed):

    rank.py env ARGS...          print the rank contract and how the script runs
    rank.py family FIFO          start a child; write "PID CHILDPID PPID" to FIFO; wait
    rank.py fail R CODE FIFO GO  family; rank R then reads a line from GO and exits CODE
    rank.py errorfile R MESSAGE  rank R writes a torch @record error file and exits 1
    rank.py print N SIZE         print N lines of SIZE bytes tagged with RANK
    rank.py trapint FIFO         write "PID" to FIFO; on each SIGINT write "int"; wait
    rank.py ignoreterm R FIFO    rank R waits for FIFO and exits 4; others ignore SIGTERM
    rank.py raise | exit ARG     an uncaught exception, or sys.exit(ARG)
    rank.py atexit               a non-daemon thread and an atexit hook print after main

Readiness goes through FIFOs, never sleeps.
"""

import atexit
import os
import signal
import subprocess
import sys
import threading

CONTRACT = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
            "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
            "TORCHELASTIC_ERROR_FILE", "OMP_NUM_THREADS"}


def tell(path, line):
    with open(path, "w") as f:
        f.write(line + "\n")


def block():
    while True:
        signal.pause()


def family(fifo):
    child = subprocess.Popen(["sleep", "1000"])
    tell(fifo, "%d %d %d" % (os.getpid(), child.pid, os.getppid()))


def cpulist(cpus):
    """Linux cpulist form: 0-3,8."""
    out, cpus = [], sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else "%d-%d" % (cpus[i], cpus[j]))
        i = j + 1
    return ",".join(out)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    rank = os.environ["RANK"]
    if mode == "env":
        for k in sorted(os.environ):
            if k in CONTRACT or k.startswith(("MPSPAWN_", "CUDA_")):
                print("%s=%s" % (k, os.environ[k]))
        print("argv=%s" % sys.argv)
        print("path0=%s" % sys.path[0])
        print("name=%s file=%s" % (__name__, __file__))
        print("stdin=%s" % os.readlink("/proc/self/fd/0"))
        print("cwd=%s" % os.getcwd())
        print("pgid_is_pid=%s" % (os.getpgid(0) == os.getpid()))
        print("affinity_matches=%s" % (cpulist(os.sched_getaffinity(0)) == os.environ.get("MPSPAWN_CPUS", cpulist(os.sched_getaffinity(0)))))
        print("stdout_unbuffered=%s" % (sys.stdout.write_through or not sys.stdout.line_buffering))
    elif mode == "family":
        family(args[0])
        block()
    elif mode == "fail":
        family(args[2])
        if rank == args[0]:
            with open(args[3]) as f:
                f.readline()
            sys.exit(int(args[1]))
        block()
    elif mode == "errorfile":
        if rank != args[0]:
            block()
        import json
        msg = {"message": {"message": args[1], "extraInfo": {
            "py_callstack": "Traceback (most recent call last):\n  File \"train.py\", line 7, in main\n%s\n" % args[1],
            "timestamp": "1700000000"}}}
        with open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as f:
            json.dump(msg, f)
        sys.exit(1)
    elif mode == "print":
        n, size = int(args[0]), int(args[1])
        body = rank * size
        for i in range(n):
            print("%s %d %s" % (rank, i, body))
    elif mode == "trapint":
        signal.signal(signal.SIGINT, lambda *_: tell(args[0], "int"))
        tell(args[0], str(os.getpid()))
        block()
    elif mode == "ignoreterm":
        if rank == args[0]:
            with open(args[1]) as f:
                f.readline()
            sys.exit(4)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        tell(args[1], "trapped")
        block()
    elif mode == "raise":
        raise RuntimeError("rank %s failed on purpose" % rank)
    elif mode == "exit":
        sys.exit(int(args[0]) if args[0].isdigit() else args[0])
    elif mode == "atexit":
        atexit.register(lambda: print("atexit hook ran", flush=True))
        ev = threading.Event()
        t = threading.Thread(target=lambda: (ev.wait(), print("thread joined", flush=True)))
        t.start()
        print("main done", flush=True)
        ev.set()
    else:
        sys.exit("rank.py: unknown mode %r" % mode)


if __name__ == "__main__":
    main()
