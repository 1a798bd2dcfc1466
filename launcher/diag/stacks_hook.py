# mpspawn's stack hook, run in every Python rank before its script: by a
# sitecustomize module that the launcher puts first on the rank's
# PYTHONPATH (spawn start method), and by the forkserver in each rank it
# forks. It changes two things in the rank:
#
#  - faulthandler is registered on signal $MPSPAWN_STACKS_SIGNAL (a
#    real-time signal, never SIGUSR1/SIGUSR2) to append the stack of every
#    thread to $MPSPAWN_STACKS_DIR/<pid>.stacks, a file the rank keeps open
#    (its first line names the rank: "# rank N"); the rank goes on running
#    after a dump;
#  - PYTHONPATH is given back its value from before the launcher added the
#    hook's directory (and sitecustomize takes that directory off
#    sys.path), so the script and its children see the path they were
#    given.
#
# Nothing else: when a variable is missing, or faulthandler cannot be set
# up, the hook does nothing and the rank runs as it would without it.


def _mpspawn_stacks():
    import os

    env = os.environ
    stacks_dir = env.get("MPSPAWN_STACKS_DIR")
    orig = env.pop("MPSPAWN_STACKS_PYTHONPATH", None)
    if stacks_dir:
        site_dir = os.path.join(stacks_dir, "site")
        if env.get("PYTHONPATH", "").split(os.pathsep)[0] == site_dir:
            if orig is None:
                env.pop("PYTHONPATH", None)
            else:
                env["PYTHONPATH"] = orig
    signum = env.get("MPSPAWN_STACKS_SIGNAL", "")
    if not stacks_dir or not signum.isdigit():
        return None
    try:
        import faulthandler

        f = open(os.path.join(stacks_dir, "%d.stacks" % os.getpid()), "a")
        if f.tell() == 0:
            f.write("# rank %s\n" % env.get("RANK", "?"))
            f.flush()
        faulthandler.register(int(signum), file=f, all_threads=True, chain=False)
        return f
    except Exception:  # noqa: BLE001 - no hook, and the rank runs as it would
        return None


_mpspawn_stacks_file = _mpspawn_stacks()  # kept open for the rank's life
