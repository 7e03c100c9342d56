"""Multi-process runs (torchrun + DistributedDataParallel): process group, samplers, reductions.

A plain ``python train.py`` is a world of one process and every helper here degrades to a no-op.
Under ``torchrun --nproc_per_node N`` the process group uses nccl on CUDA and gloo otherwise.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

from util.common.runtime import resolve_device


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


_CONTROL_GROUP = None
"""A gloo process group for small CPU messages (stop votes) when the main group is nccl: voting there needs no copy
to the GPU and no wait on its queue. None: the main group (gloo) serves."""


def init_distributed(device_name: str) -> DistContext:
    """Join the torchrun process group if there is one (env ``WORLD_SIZE`` > 1) and pick this rank's device.

    On CUDA each process takes device ``LOCAL_RANK % device_count()`` (one process per GPU of its node; the modulo
    keeps a launcher that numbers ranks across nodes working) and the group uses nccl, plus a gloo group for control
    messages; elsewhere gloo. If a process group is already initialised (e.g. by a test harness) it is used as is.
    """
    global _CONTROL_GROUP
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _CONTROL_GROUP = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else None
    if dist.is_available() and dist.is_initialized():
        if device.type == "cuda" and dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        return DistContext(dist.get_rank(), dist.get_world_size(), device)
    return DistContext(0, 1, device)


class MaxVote:
    """The maximum of one integer over all ranks, started at construction and read by :meth:`result` (an
    asynchronous all-reduce on CPU: the ranks wait for each other only when the result is read)."""

    def __init__(self, value: int):
        self.tensor = torch.tensor([value], dtype=torch.int64)
        self.work = (dist.all_reduce(self.tensor, op=dist.ReduceOp.MAX, group=_CONTROL_GROUP, async_op=True)
                     if is_distributed() else None)

    def result(self) -> int:
        if self.work is not None:
            self.work.wait()
        return int(self.tensor)


def data_parallel(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when the run has more than one process, else ``model`` itself;
    a model with ``loss_mean`` (model/reduction.py) then averages its losses over the global batch (:func:`global_mean`).

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
    if hasattr(model, "loss_mean"):
        model.loss_mean = global_mean
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def shutdown_distributed() -> None:
    """Leave the process group (if this process created one through torchrun)."""
    global _CONTROL_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTROL_GROUP = None


def communication_device() -> torch.device | None:
    """Where the main group's tensors must be: this rank's GPU under nccl, anywhere (None) under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    """``op`` over all ranks of a copy of ``tensor`` (on the group's device), returned on ``tensor``'s device."""
    work = tensor.detach().clone()
    device = communication_device()
    if device is not None:
        work = work.to(device)
    dist.all_reduce(work, op=op)
    return work.to(tensor.device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (a copy; the input is untouched). Identity in a single process."""
    return _all_reduce(tensor, dist.ReduceOp.SUM) if is_distributed() else tensor.clone()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over all ranks."""
    world = dist.get_world_size() if is_distributed() else 1
    return all_reduce_sum(tensor) / world


def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """A model's ``loss_mean`` under DDP: this rank's summed loss over the global batch's count, times the number of
    ranks, so that DDP's average of the ranks' gradients is the gradient of the global batch's mean (and the ranks'
    average of the losses is that mean), however the ignored pixels fall between the ranks."""
    counted = all_reduce_sum(count.detach())
    return total * dist.get_world_size() / counted.clamp_min(1)


def all_reduce_first(value: torch.Tensor) -> torch.Tensor:
    """The smallest positive value of an int64 scalar over all ranks (0 if every rank holds 0): e.g. the first
    iteration at which any rank saw something."""
    if not is_distributed():
        return value.clone()
    never = torch.iinfo(torch.int64).max
    first = _all_reduce(torch.where(value > 0, value, never), dist.ReduceOp.MIN)
    return torch.where(first == never, 0, first)


def gather_to_main(obj: Any) -> list[Any] | None:
    """``[obj of rank 0, obj of rank 1, ...]`` on the main rank, None on the others (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0, group=_CONTROL_GROUP)
    return gathered


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _Length:
    """A stand-in dataset of ``n`` items for :class:`DistributedSampler`, which only needs ``len``."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class EpochSampler(Sampler[tuple[int, int]]):
    """Training order of one epoch: a pure function of (seed, epoch), sharded over ranks, resumable; it yields
    ``(epoch, index)`` keys, so one loader (and its workers) serves every epoch (:meth:`set_epoch` between epochs).

    Built on :class:`DistributedSampler` (shuffle, ``drop_last`` so every rank gets the same count);
    ``skip`` drops this rank's first indices, which is how a resumed run continues mid-epoch.
    """

    def __init__(self, length: int, epoch: int, seed: int, ctx: DistContext, skip: int = 0):
        self.seed, self.ctx = seed, ctx
        self.set_epoch(epoch, length, skip)

    def set_epoch(self, epoch: int, length: int, skip: int = 0) -> None:
        """Serve ``epoch``, whose dataset has ``length`` items, from this rank's ``skip``-th index on."""
        self.epoch, self.skip = epoch, skip
        self.sampler = DistributedSampler(_Length(length), num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                          shuffle=True, seed=self.seed, drop_last=True)
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in itertools.islice(iter(self.sampler), self.skip, None))

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
