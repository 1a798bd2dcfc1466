# mpspawn's forkserver: started by the launcher as
#
#     PYTHON -u -c <this file> CONFIG_JSON
#
# with a SOCK_SEQPACKET socket on fd 3 (ipc.PacketPair). CONFIG_JSON is
# {"preload": [...], "main": [...], "max_fds": F, "max_packet": B,
# "stack_hook": SOURCE, "ipc_module": SOURCE} (the stack hook each forked rank
# runs before its script, and mpspawn/ipc.py, whose send_fds and recv_fds are
# how the server passes descriptors): the launcher owns the bounds
# on a request (at most F fds and B bytes) and keeps its own requests within
# them. The server imports the preload modules once, reports {"ready": pid},
# then serves one JSON message per packet:
#
#   launcher -> server  {"op": "fork", "id": N, "argv": [...], "env": [...],
#                        "cwd": "...", "cpus": [...], "cgroup": "..."}  + fds
#                        (SCM_RIGHTS): the rank's fds 0, 1, 2, 3, ... in order;
#                        the server moves the child into "cgroup" (optional)
#                        before the child runs anything, and before it replies
#   server -> launcher  {"id": N, "pid": P} or {"id": N, "error": "..."}
#                       {"error": "..."}  (a bad request with no readable id)
#                       {"exit": P, "status": WAITSTATUS}  (when P has exited)
#   launcher -> server  {"op": "release", "id": N, "pid": P}  (P reported exited)
#   server -> launcher  {"id": N, "released": P, "rusage": {"utime": S,
#                        "stime": S, "maxrss": KB}}  (P reaped, by wait4)
#
# A bad request (not JSON, truncated, too many fds, unknown op, missing or
# ill-typed fields, a cwd that is no directory, ...) gets an error reply, its
# fds are closed, and the server goes on serving.
#
# "argv" is the rank's Python command line less the interpreter: -u, then
# SCRIPT ARGS or -m MODULE ARGS. The server stays single-threaded: SIGCHLD
# only wakes the select loop (signal.set_wakeup_fd), and children are reaped
# there. It refuses to fork while CUDA is initialised in it or while it runs
# more than one thread. When the launcher's end of the socket closes, the
# server kills its children's process groups and exits.

import fcntl
import json
import os
import select
import signal
import socket
import sys

CONFIG = json.loads(sys.argv[1])


def load_ipc():
    """mpspawn.ipc (ipc/python/mpspawn/ipc.py), from the source the launcher
    sent: the one Python module that passes descriptors."""
    import types
    mod = types.ModuleType("mpspawn.ipc")
    exec(compile(CONFIG["ipc_module"], "mpspawn/ipc.py", "exec"), mod.__dict__)
    return mod


IPC = load_ipc()
SOCK = socket.socket(fileno=3)
SERVER_PID = os.getpid()
MAX_PACKET = CONFIG["max_packet"]  # bytes in a request
MAX_FDS = CONFIG["max_fds"]  # fds with a request, the rank's stdio included
MAX_ERROR = 4000  # characters of an error message: replies stay far below the launcher's read buffer
CHILDREN = set()  # pids forked and not reaped yet
REPORTED = set()  # of those, the exited ones reported to the launcher
BLOCKED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2}
INTERRUPTED = object()  # run_main's code for an uncaught KeyboardInterrupt


def send(msg):
    IPC.send_fds(SOCK, json.dumps(msg).encode())


def clip(text):
    if len(text) <= MAX_ERROR:
        return text
    return "%s... (%d more characters)" % (text[:MAX_ERROR], len(text) - MAX_ERROR)


class BadRequest(ValueError):
    """A request the server refuses to act on."""


def parse_argv(argv):
    """Splits a Python command line (interpreter left out) into
    ("script", path, args) or ("module", name, args)."""
    i = 0
    while i < len(argv) and argv[i] == "-u":
        i += 1
    if i < len(argv) and argv[i] == "-m" and i + 1 < len(argv):
        return "module", argv[i + 1], argv[i + 2:]
    if i < len(argv) and not argv[i].startswith("-"):
        return "script", argv[i], argv[i + 1:]
    raise BadRequest("forkserver runs PYTHON [-u] SCRIPT ARGS or PYTHON [-u] -m MODULE ARGS, not %r" % (argv,))


def path0(kind, target):
    """sys.path[0] as python sets it for the command line."""
    if kind == "script":
        return os.path.dirname(os.path.realpath(target))
    return os.getcwd()


def preload():
    main = CONFIG.get("main") or []
    try:
        kind, target, _ = parse_argv(main)
        sys.path[0] = path0(kind, target)
    except (ValueError, OSError):
        pass
    for name in CONFIG.get("preload") or []:
        try:
            __import__(name)
        except BaseException as e:  # noqa: BLE001 - reported, then exit
            send({"error": clip("%s: %s" % (type(e).__name__, e)), "preload": name})
            sys.exit(1)


def refusal():
    """Why forking now would give broken ranks, or None."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and getattr(cuda, "is_initialized", None) is not None:
        try:
            initialised = cuda.is_initialized()
        except Exception:  # noqa: BLE001
            initialised = False
        if initialised:
            return ("CUDA is initialised in the forkserver (torch.cuda.is_initialized() is true after "
                    "--preload); forked ranks could not use CUDA: preload nothing that touches the GPU, "
                    "or use --start-method spawn")
    if cuda_context():
        return ("CUDA is initialised in the forkserver (libcuda has a context after --preload); forked "
                "ranks could not use CUDA: preload nothing that touches the GPU, or use --start-method spawn")
    tasks = os.listdir("/proc/self/task")
    if len(tasks) > 1:
        import threading
        pythons = {t.native_id: t.name for t in threading.enumerate()}
        names = []
        for t in sorted(tasks, key=int):
            if int(t) == SERVER_PID:
                continue
            if int(t) in pythons:
                names.append(pythons[int(t)])
                continue
            try:
                with open("/proc/self/task/%s/comm" % t) as f:
                    names.append(f.read().strip())
            except OSError:
                names.append(t)
        return ("the forkserver runs %d threads besides its own (%s), started by --preload; a fork "
                "copies only the forking thread, so locks they hold would stay held in the ranks: "
                "preload modules that start no threads, or use --start-method spawn"
                % (len(tasks) - 1, ", ".join(names)))
    return None


def cuda_context():
    """True when libcuda is loaded and has been initialised (cuInit)."""
    try:
        with open("/proc/self/maps") as f:
            if "libcuda.so" not in f.read():
                return False
        import ctypes
        lib = ctypes.CDLL("libcuda.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        ctx = ctypes.c_void_p()
        # CUDA_ERROR_NOT_INITIALIZED (3) until cuInit has run.
        return lib.cuCtxGetCurrent(ctypes.byref(ctx)) != 3
    except Exception:  # noqa: BLE001 - no libcuda, no CUDA
        return False


def handle(msg, fds, flags):
    """The reply to one packet: a forked rank's pid, or an error, with the
    request's id when one can be read. Never raises an Exception."""
    try:
        req, why = json.loads(msg), None
    except Exception as e:  # noqa: BLE001 - not JSON, not UTF-8, or nested too deep
        req, why = None, "not JSON (%s: %s)" % (type(e).__name__, e)
    rid = request_id(req)
    try:
        if flags & socket.MSG_TRUNC:
            raise BadRequest("longer than %d bytes" % MAX_PACKET)
        if flags & socket.MSG_CTRUNC:
            raise BadRequest("more than %d fds (ancillary data truncated)" % MAX_FDS)
        if why is not None:
            raise BadRequest(why)
        if isinstance(req, dict) and rid is not None and req.get("op") == "release" and not fds:
            return release(req, rid)
        check(req, rid, len(fds))
        return fork_rank(req, fds)
    except BadRequest as e:
        return error_reply(rid, "bad request: %s" % e)
    except Exception as e:  # noqa: BLE001 - reported to the launcher
        return error_reply(rid, "%s: %s" % (type(e).__name__, e))


def request_id(req):
    """req's id, or None when it has none the launcher could read back (an
    integer that fits its int)."""
    rid = req.get("id") if isinstance(req, dict) else None
    if type(rid) is int and -(1 << 63) <= rid < 1 << 63:
        return rid
    return None


def check(req, rid, nfds):
    """Raises BadRequest unless req is a fork request the server can act on."""
    if not isinstance(req, dict):
        raise BadRequest("a JSON %s, not an object" % type(req).__name__)
    if rid is None:
        raise BadRequest("id %r is not an integer" % (req.get("id"),))
    if req.get("op") != "fork":
        raise BadRequest("unknown op %r" % (req.get("op"),))
    for key in ("argv", "env"):
        v = req.get(key)
        if not isinstance(v, list) or not all(isinstance(a, str) and "\0" not in a for a in v):
            raise BadRequest("%s %r is not a list of strings without NUL" % (key, v))
    cg = req.get("cgroup")
    if cg is not None and not (isinstance(cg, str) and os.path.isdir(cg)):
        raise BadRequest("cgroup %r is not a directory" % (cg,))
    cwd = req.get("cwd")
    if cwd not in (None, "") and not (isinstance(cwd, str) and os.path.isdir(cwd)):
        raise BadRequest("cwd %r is not a directory" % (cwd,))
    cpus = req.get("cpus")
    if cpus is not None and not (isinstance(cpus, list) and all(type(c) is int and c >= 0 for c in cpus)):
        raise BadRequest("cpus %r is not a list of CPU numbers" % (cpus,))
    if nfds < 3:
        raise BadRequest("%d fds; a rank needs at least its stdin, stdout and stderr" % nfds)


def error_reply(rid, text):
    msg = {"error": clip(text)}
    if rid is not None:
        msg["id"] = rid
    return msg


def fork_rank(req, fds):
    err = refusal()
    if err is not None:
        return error_reply(req["id"], "refusing to fork: " + err)
    kind, target, args = parse_argv(req["argv"])
    # The child waits for the server's go (one byte on this pipe) before
    # anything else: see place.
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    # Signals the launcher may send at once stay blocked in the child until
    # it has its own handlers, as if it were a fresh python.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(go_r)
        os.close(go_w)
        raise
    if pid == 0:
        code = 1
        try:
            os.close(go_w)  # so that the server's death reads as EOF
            code = child(req, fds, kind, target, args, mask, go_r)
        except BaseException:  # noqa: BLE001 - set-up failed: say why, on the rank's stderr
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(go_r)
    CHILDREN.add(pid)
    try:
        place(pid, req.get("cgroup"))
    except OSError as e:
        os.close(go_w)  # the child reads EOF and exits; it never ran the rank's code
        kill_child(pid)
        return error_reply(req["id"], "cannot place the rank in its cgroup %s: %s" % (req.get("cgroup"), e))
    try:
        os.write(go_w, b"1")
    except OSError:
        pass  # the child is already dead: its exit is reported as any rank's
    finally:
        os.close(go_w)
    return {"id": req["id"], "pid": pid}


def place(pid, cgroup):
    """Moves the forked child into its rank's cgroup, then into a process
    group of its own, before the launcher hears of it. Until then the child
    is in the server's process group, which the launcher (and its guard,
    should the launcher die) kills with the server: at every moment the
    child is either there or in its cgroup, and it never moves itself, so
    nothing enters a rank cgroup once the server is gone."""
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(pid))
    os.setpgid(pid, pid)


def kill_child(pid):
    """Kills and reaps a child that will not run its rank."""
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    CHILDREN.discard(pid)


def child(req, fds, kind, target, args, mask, go):
    """The rank: returns its exit code (the caller os._exits with it)."""
    # First of all: the server has placed this process in its cgroup and
    # its own process group (see place), so whatever the rank starts is
    # born in its cgroup. EOF: the server died, or could not place it.
    if os.read(go, 1) != b"1":
        return 1
    os.close(go)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != SERVER_PID:
        return 1  # the server died before the death signal was armed
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if req.get("cpus"):
        os.sched_setaffinity(0, req["cpus"])
    SOCK.close()
    os.close(WAKE_R)
    os.close(WAKE_W)
    # Move the received fds above every target first, then into place.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, len(fds)) for fd in fds]
    for fd in fds:
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, i)  # inheritable, as a rank's stdio is
        os.close(fd)
    if req.get("cwd"):
        os.chdir(req["cwd"])
    os.environ.clear()
    for kv in req["env"]:
        k, _, v = kv.partition("=")
        os.environ[k] = v
    if CONFIG.get("stack_hook"):
        # The rank's stacks on demand (stacks_hook.py): the same hook that
        # an injected sitecustomize runs in a spawned rank.
        exec(compile(CONFIG["stack_hook"], "<mpspawn stack hook>", "exec"), {"__name__": "mpspawn_stack_hook"})
    return run_main(kind, target, args, mask)


def run_main(kind, target, args, mask):
    """Runs the script or module as __main__ as python does, and returns
    the exit code python would exit with."""
    import atexit
    import threading
    import types

    sys.path[0] = path0(kind, target)
    code = 0
    try:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if kind == "module":
                import runpy
                sys.argv = [target] + args  # runpy replaces argv[0] with the module's path
                runpy._run_module_as_main(target, alter_argv=True)
            else:
                sys.argv = [target] + args
                path = os.path.abspath(target)
                with open(path, "rb") as f:
                    src = f.read()
                main = types.ModuleType("__main__")
                main.__dict__.update({"__file__": path, "__builtins__": __builtins__, "__cached__": None})
                sys.modules["__main__"] = main
                exec(compile(src, path, "exec"), main.__dict__)
        except SystemExit as e:
            code = exit_code(e)
        except KeyboardInterrupt:
            print_exception()
            code = INTERRUPTED
        except BaseException:  # noqa: BLE001 - python's own top level
            print_exception()
            code = 1
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001
                pass
    if code is INTERRUPTED:
        # As python does after an uncaught KeyboardInterrupt: die by SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    return code


def exit_code(e):
    c = e.code
    if c is None:
        return 0
    if isinstance(c, int):
        return c & 0xFF
    try:
        print(c, file=sys.stderr)
    except Exception:  # noqa: BLE001
        pass
    return 1


def print_exception():
    """sys.excepthook with the server's own frames left out, as if the
    script were the program."""
    t, v, tb = sys.exc_info()
    while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
        tb = tb.tb_next
    try:
        if v is not None:
            v.__traceback__ = tb
        sys.excepthook(t, v, tb)
    except Exception:  # noqa: BLE001
        pass


def reap():
    """Reports every rank that exited, without reaping it: its pid and
    process group id stay pinned until the launcher, done signalling its
    group, releases it."""
    for pid in list(CHILDREN - REPORTED):
        try:
            r = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            CHILDREN.discard(pid)
            continue
        if r is None:
            continue
        REPORTED.add(pid)
        send({"exit": pid, "status": wait_status(r)})


def wait_status(r):
    """The wait(2) status an os.waitid result stands for."""
    if r.si_code == os.CLD_EXITED:
        return (r.si_status & 0xFF) << 8
    if r.si_code == os.CLD_DUMPED:
        return r.si_status | 0x80
    return r.si_status  # CLD_KILLED


def release(req, rid):
    """Reaps a rank the launcher is done with (it was reported exited), and
    replies with its resource usage as wait4 returned it: CPU seconds, and
    its maximum resident set in kilobytes."""
    pid = req.get("pid")
    if type(pid) is not int or pid not in REPORTED:
        raise BadRequest("release: pid %r is not an exited rank" % (pid,))
    _, _, ru = os.wait4(pid, 0)
    CHILDREN.discard(pid)
    REPORTED.discard(pid)
    return {"id": rid, "released": pid,
            "rusage": {"utime": ru.ru_utime, "stime": ru.ru_stime, "maxrss": ru.ru_maxrss}}


def serve():
    while True:
        r, _, _ = select.select([SOCK, WAKE_R], [], [])
        if WAKE_R in r:
            try:
                while os.read(WAKE_R, 512):
                    pass
            except BlockingIOError:
                pass
            reap()
        if SOCK in r:
            msg, fds, flags = IPC.recv_fds(SOCK, MAX_PACKET, MAX_FDS)
            if not msg and not fds and peer_closed():
                return  # the launcher is gone or done
            try:
                reply = handle(msg, fds, flags)
            finally:
                for fd in fds:  # the rank has its own copies
                    os.close(fd)
            send(reply)


def peer_closed():
    """True once the launcher has closed (or shut down) its end: reading
    nothing is then the end, not an empty packet."""
    p = select.poll()
    p.register(SOCK, select.POLLRDHUP)
    return bool(p.poll(0))


def shutdown():
    """Kills the process groups of the ranks still running and reaps them:
    the launcher is gone, or closed the socket with ranks left (it only
    does so after reaping every rank)."""
    for pid in list(CHILDREN):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in list(CHILDREN):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


WAKE_R, WAKE_W = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
signal.set_wakeup_fd(WAKE_W, warn_on_full_buffer=False)
signal.signal(signal.SIGCHLD, lambda *_: None)
preload()
send({"ready": SERVER_PID})
try:
    serve()
finally:
    shutdown()
