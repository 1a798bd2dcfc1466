"""mpspawn's Python side.

`python -m mpspawn ARGS` runs the mpspawn binary installed with this
package, as `mpspawn ARGS` would. mpspawn.ipc is the client of the
launcher's IPC broker (docs/ipc-protocol.md), and the one place Python code
passes file descriptors (SCM_RIGHTS) — the forkserver uses it too.
"""

try:
    from ._version import version as __version__
except ImportError:  # a checkout, not an installed wheel
    import os as _os

    with open(_os.path.join(_os.path.dirname(__file__), "..", "..", "..", "VERSION")) as _f:
        __version__ = _f.read().strip()
