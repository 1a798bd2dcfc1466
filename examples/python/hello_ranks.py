"""Print one line per rank from the torchrun environment contract.

    mpspawn --nproc-per-node 4 examples/python/hello_ranks.py

Needs no torch: every rank reads the variables the launcher sets and exits 0.
"""

import os
import sys

env = os.environ
if "RANK" not in env:
    sys.exit("hello_ranks.py: no RANK in the environment; run it under mpspawn or torchrun")
print(
    f"hello from rank {env['RANK']}/{env['WORLD_SIZE']}"
    f" (local {env['LOCAL_RANK']}/{env['LOCAL_WORLD_SIZE']})"
    f" pid {os.getpid()}"
    f" master {env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    f" run-id {env.get('TORCHELASTIC_RUN_ID', '')}",
    flush=True,
)
