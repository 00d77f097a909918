"""Multi-process training under ``torchrun``: process group, sharding, gathering.

``torchrun --nproc-per-node N -m transfusion.cli train ...`` (or ``transfusion train``) sets
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; :func:`setup` then joins the group
(NCCL on CUDA, gloo on CPU), and the loop wraps the model in DistributedDataParallel. Every rank
takes a disjoint slice of each global batch (the global batch size stays the recipe's, so the
optimisation matches the single-process run), evaluates a contiguous shard of the evaluation set,
and the predictions are gathered in rank order before any metric is computed. Only rank 0 writes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from transfusion.errors import ConfigError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> DistContext:
    """Join the torchrun process group if WORLD_SIZE > 1; pick the device (cuda:LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda requested but no CUDA device is visible: use --device cpu")
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    owns = False
    if world > 1:
        if not dist.is_available():
            raise ConfigError("this torch build has no torch.distributed: run with one process")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            owns = True
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def teardown(ctx: DistContext, clean: bool = True) -> None:
    """Destroy the process group this run made. ``clean`` (the run returned normally): every rank
    first arrives at a barrier, because rank 0 hosts the TCPStore and a rank still talking to it
    when it closes can abort ("terminate called without an active exception": seen once in 14
    runs of tests/train/test_train_ddp.py on 2026-12-08). After an error no barrier: the other
    ranks may be inside another collective."""
    if ctx.owns_group and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def shard_range(n: int, rank: int, world: int) -> range:
    """Contiguous shard ``rank`` of ``range(n)`` (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def gather_cat(ctx: DistContext, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate each tensor over ranks in rank order (CPU tensors; every rank gets the result)."""
    if not ctx.distributed:
        return tensors
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, [t.cpu() for t in tensors])
    return [torch.cat([o[i] for o in out]) for i in range(len(tensors))]


def gather_objects(ctx: DistContext, obj) -> list:
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def any_flag(ctx: DistContext, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (e.g. a stop signal seen by one process)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0],
                     device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_buffers(ctx: DistContext, module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank, as DDP does before each
    training forward. Before an evaluation, so that every rank's shard is evaluated with the
    model that rank 0 saves (after a training step each rank holds the running statistics of its
    own share of the batch)."""
    if not ctx.distributed:
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=0)


def use_sync_batchnorm(ctx: DistContext, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every BatchNorm as SyncBatchNorm (statistics over the whole global batch).

    Only under DDP on CUDA: torch's SyncBatchNorm refuses CPU tensors, so a CPU (gloo) run stops
    with one line instead of failing at its first step. Fused conv-BN-ReLU blocks (they call the
    BatchNorm's parameters directly) switch to their eager path so the SyncBatchNorm runs.
    One process: nothing to synchronise, the model is returned as it is."""
    if not ctx.distributed:
        return model
    check_sync_batchnorm(ctx)
    for m in model.modules():
        if getattr(m, "fused", None) is True and isinstance(getattr(m, "bn", None),
                                                           torch.nn.modules.batchnorm._BatchNorm):
            m.fused = False
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def check_sync_batchnorm(ctx: DistContext) -> None:
    """One line, before any work, where SyncBatchNorm cannot run (DDP on CPU / gloo)."""
    if ctx.distributed and ctx.device.type != "cuda":
        raise ConfigError(f"sync_bn=true needs CUDA devices (NCCL): torch's SyncBatchNorm does not "
                          f"run on {ctx.device.type} with gloo; drop --set sync_bn=true (each process "
                          f"then normalises with its own share of the batch) or train on GPUs")
