"""Multi-process runs (torchrun + DistributedDataParallel): process group, samplers, reductions.

A plain ``python train.py`` is a world of one process and every helper here degrades to a no-op.
Under ``torchrun --nproc_per_node N`` the process group uses nccl on CUDA and gloo otherwise.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

from util.runtime import resolve_device


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the run: its rank, the world size and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device_name: str) -> DistContext:
    """Join the torchrun process group if there is one (env ``WORLD_SIZE`` > 1) and pick this rank's device.

    If a process group is already initialised (e.g. by a test harness) it is used as is.
    """
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_available() and dist.is_initialized():
        if device.type == "cuda" and dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        return DistContext(dist.get_rank(), dist.get_world_size(), device)
    return DistContext(0, 1, device)


def data_parallel(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when the run has more than one process, else ``model`` itself.

    Every trainable parameter gets its gradient here, zeros in the parameter's own layout, and the training loop
    keeps it between steps (``zero_grad(set_to_none=False)``), so autograd accumulates into it in place and it
    keeps the strides of the parameter, which are those of DDP's bucket views. Left to autograd, a convolution
    fed channels-last input (the CPU layout, :func:`model.backbone.cpu_layout`) returns a channels-last weight
    gradient, which autograd keeps for weights with a size-1 dimension (depthwise ``[C, 1, k, k]``, pointwise
    ``[O, I, 1, 1]``: the same memory order, other strides) while DDP compares strides one by one and warns
    "Grad strides do not match bucket view strides".
    """
    if ctx.world_size == 1:
        return model
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def shutdown_distributed() -> None:
    """Leave the process group (if this process created one through torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (a copy; the input is untouched). Identity in a single process."""
    if not is_distributed():
        return tensor.clone()
    work = tensor.detach().clone()
    if dist.get_backend() == "nccl":
        work = work.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over all ranks."""
    world = dist.get_world_size() if is_distributed() else 1
    return all_reduce_sum(tensor) / world


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _Length:
    """A stand-in dataset of ``n`` items for :class:`DistributedSampler`, which only needs ``len``."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class EpochSampler(Sampler[int]):
    """Training order of one epoch: a pure function of (seed, epoch), sharded over ranks, resumable.

    Built on :class:`DistributedSampler` (shuffle, ``drop_last`` so every rank gets the same count);
    ``skip`` drops this rank's first indices, which is how a resumed run continues mid-epoch.
    """

    def __init__(self, length: int, epoch: int, seed: int, ctx: DistContext, skip: int = 0):
        self.sampler = DistributedSampler(
            _Length(length), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


class ShardSampler(Sampler[int]):
    """Evaluation order: indices ``rank, rank + world, ...`` with no padding, so no episode is counted twice.

    (:class:`DistributedSampler` pads the last round with repeats, which would bias the scores.)
    """

    def __init__(self, length: int, ctx: DistContext):
        self.indices = range(ctx.rank, length, ctx.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
