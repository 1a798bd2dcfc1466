"""`python -m mpspawn ARGS`: run the mpspawn binary this package was
installed with, as `mpspawn ARGS` would.

The wheel puts the binary in the environment's scripts directory (bin/ of
a venv or conda env, ~/.local/bin for --user installs); it is looked up
there, not on PATH, so the binary and this package always come from the
same wheel.
"""

import os
import sys
import sysconfig


def binary():
    """The mpspawn binary installed beside this package."""
    dirs = []
    for scheme in (None, sysconfig.get_preferred_scheme("user") if hasattr(sysconfig, "get_preferred_scheme") else None):
        try:
            dirs.append(sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts"))
        except KeyError:
            pass
    dirs.append(os.path.dirname(sys.executable))
    for d in dirs:
        p = os.path.join(d, "mpspawn")
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    sys.exit("mpspawn: error: the mpspawn binary is not installed beside this package (looked in %s); "
             "reinstall the wheel: pip install --force-reinstall mpspawn-*.whl" % ", ".join(dirs))


def main():
    b = binary()
    os.execv(b, [b] + sys.argv[1:])


if __name__ == "__main__":
    main()
