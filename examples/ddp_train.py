"""A minimal PyTorch DDP training job, to run through mgpu.

It trains a small regression model on synthetic data with DistributedDataParallel, one
process per GPU (or per CPU slot: the gloo backend when there is no GPU), and checks at the
end that every rank holds the same weights. It reads the variables torchrun sets (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so it runs the same under
``torchrun`` on one node and under a multi-node mgpu job. See examples/README.md.

    mgpu srun -G 2 torchrun --standalone --nproc-per-node 2 examples/ddp_train.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="training epochs")
    ap.add_argument("--result-dir", type=Path, help="write each rank's figures here (JSON)")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")

    # Every rank checks the collective first: the sum of (rank + 1) over all ranks.
    probe = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(probe)

    torch.manual_seed(0)  # the same data everywhere; the sampler gives each rank its share
    x = torch.randn(512, 8)
    y = x @ torch.arange(1.0, 9.0) + 0.5
    data = TensorDataset(x, y)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=32, sampler=sampler)
    model = DistributedDataParallel(nn.Linear(8, 1).to(device),
                                    device_ids=[local_rank] if cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = torch.tensor(0.0)
    for epoch in range(args.steps):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(xb.to(device)).squeeze(1), yb.to(device))
            loss.backward()  # DDP averages the gradients over every rank here
            opt.step()

    # DDP keeps the replicas equal: the spread of a weight over the ranks must be zero.
    w = model.module.weight.detach().flatten()
    lo, hi = w.clone(), w.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    same = bool(torch.equal(lo, hi))
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "-")
    # One write per line: ranks share the job's stdout, and print() writes the line and its
    # newline apart, which two ranks can interleave.
    sys.stdout.write(f"rank {rank}/{world} on {os.uname().nodename} (GPUs {gpus}): "
                     f"all-reduce {probe.item():g}, loss {loss.item():.4f}, "
                     f"replicas equal: {same}\n")
    sys.stdout.flush()
    if args.result_dir is not None:
        args.result_dir.mkdir(parents=True, exist_ok=True)
        keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK",
                "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES", "MGPU_JOB_ID",
                "MGPU_NODE_ID", "MGPU_NODELIST")
        (args.result_dir / f"rank{rank}.json").write_text(json.dumps({
            "rank": rank, "world_size": world, "allreduce": probe.item(),
            "loss": loss.item(), "replicas_equal": same, "weight": w.tolist(),
            "env": {k: os.environ.get(k) for k in keys}}))
    # Every rank reaches the end before any leaves. Then leave at once: tearing the gloo
    # process group down (or letting the interpreter's exit destroy it) can abort in its
    # threads ("terminate called without an active exception"), after all the work is done.
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if same else 1)  # 1: the replicas diverged


if __name__ == "__main__":
    main()
