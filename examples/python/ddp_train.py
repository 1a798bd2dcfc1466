"""A small, deterministic DDP training job on CPU (gloo).

    mpspawn --standalone --nproc-per-node 4 examples/python/ddp_train.py --out /tmp/ddp
    torchrun --standalone --nproc_per_node 4 examples/python/ddp_train.py --out /tmp/ddp

Every rank trains the same MLP on its shard of a synthetic regression set;
DistributedDataParallel averages the gradients with gloo allreduce. At the end
every rank writes the final parameters to OUT/rank<RANK>.txt, each value as an
exact float hex string, and prints the file's sha256. The file depends only on
the world size and the flags, never on timing: all ranks of one run write the
same bytes, and so do two runs (or two launchers) with the same world size.
"""

import argparse
import hashlib
import os

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="deterministic CPU DDP training job")
    p.add_argument("--out", required=True, help="directory for rank<RANK>.txt")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="samples per rank per step")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args()


def synthetic_data(seed: int, n: int = 1024, features: int = 8) -> TensorDataset:
    """The same noisy nonlinear regression set on every rank."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, 1, generator=g)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def params_text(model: torch.nn.Module, world_size: int, steps: int) -> str:
    """Parameters as text: one line per parameter, values as float.hex()."""
    lines = [f"# ddp_train world_size={world_size} steps={steps}"]
    for name, p in model.named_parameters():
        values = " ".join(v.hex() for v in p.detach().flatten().tolist())
        lines.append(f"{name} {list(p.shape)} {values}")
    return "\n".join(lines) + "\n"


@record
def main() -> None:
    args = parse_args()
    # torchrun and mpspawn set OMP_NUM_THREADS=1 for several ranks per node.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.use_deterministic_algorithms(True)

    dist.init_process_group("gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(args.seed)  # same initial weights everywhere; DDP broadcasts rank 0's anyway
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
    )
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)

    data = synthetic_data(args.seed)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True)

    step, epoch, loss = 0, 0, torch.tensor(0.0)
    while step < args.steps:
        sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(ddp(x), y)
            loss.backward()  # DDP allreduces (averages) the gradients here
            opt.step()
            step += 1
            if step == args.steps:
                break
        epoch += 1

    dist.all_reduce(loss)  # mean loss over ranks, for the log line only
    text = params_text(model, world, args.steps)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"rank{rank}.txt")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)  # readers never see a half-written file

    digest = hashlib.sha256(text.encode()).hexdigest()
    print(f"rank {rank}/{world} loss {loss.item() / world:.6f} sha256 {digest}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
