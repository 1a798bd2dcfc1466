"""One rank fails on purpose; the others wait to be stopped.

    mpspawn --nproc-per-node 4 examples/python/fail_record.py --fail-rank 2

@record writes the exception and its traceback, in torchelastic's JSON
format, to the file named by TORCHELASTIC_ERROR_FILE, so the launcher can
report the root cause. No process group is created: nothing here needs one.
"""

import argparse
import os
import time

from torch.distributed.elastic.multiprocessing.errors import record


@record
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fail-rank", type=int, default=1, help="rank that raises")
    parser.add_argument("--sleep", type=float, default=30.0, help="seconds the other ranks wait")
    args = parser.parse_args()

    rank = int(os.environ["RANK"])
    if rank == args.fail_rank:
        raise RuntimeError(f"rank {rank} failed on purpose")
    # The launcher should stop this rank long before the sleep ends.
    time.sleep(args.sleep)


if __name__ == "__main__":
    main()
