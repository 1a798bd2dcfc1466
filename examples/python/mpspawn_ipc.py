"""The pure-Python client of mpspawn's IPC broker, for the examples.

The client itself is the package mpspawn (module mpspawn.ipc, in
ipc/python/mpspawn/ of the repository): this file puts that directory on
sys.path and re-exports it, so that `from mpspawn_ipc import Client` works
with examples/python on PYTHONPATH. New code imports mpspawn.ipc.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", "ipc", "python"))

from mpspawn.ipc import *  # noqa: E402,F401,F403 - the examples' name for mpspawn.ipc
