"""mpspawn, the launcher's Python side.

`python -m mpspawn ARGS` runs the mpspawn binary installed with this
package (the same as `mpspawn ARGS`); `mpspawn.ipc` is the client of the
launcher's IPC broker for ranks started with `--ipc`.
"""

try:
    from ._version import version as __version__
except ImportError:  # a checkout, not an installed wheel
    import os as _os

    with open(_os.path.join(_os.path.dirname(__file__), "..", "..", "VERSION")) as _f:
        __version__ = _f.read().strip()
