"""mpspawn's Python side: mpspawn.ipc is the client of the launcher's IPC
broker (docs/ipc-protocol.md), and the one place Python code passes file
descriptors (SCM_RIGHTS) — the forkserver uses it too."""
