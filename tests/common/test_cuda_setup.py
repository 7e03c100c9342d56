"""The CUDA branch of the process-group set-up, with ``torch.cuda`` and ``torch.distributed`` replaced by recorders
(no GPU here): each rank takes GPU ``LOCAL_RANK % device_count``, the main group is nccl with a gloo group beside it
for the stop votes, DDP gets the rank's device, all-reduces copy to that device, cuDNN benchmarks, and a checkpoint's
GPU random state goes back onto the rank's own device. What this cannot show: that nccl, cuDNN and the kernels
behave on a real GPU (``python -m bench.gpu_check`` is the script for that)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import util.common.distributed as distributed
from util.common.runtime import restore_rng_state, rng_state
from util.common.distributed import DistContext, data_parallel, init_distributed
from util.common.errors import UserError
from util.common.runtime import configure_device


class FakeDist:
    """What init_distributed asks of torch.distributed, recorded."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world, self.backend, self.groups, self.initialised = rank, world, None, [], False

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialised

    def init_process_group(self, backend: str) -> None:
        self.backend, self.initialised = backend, True

    def new_group(self, backend: str):
        self.groups.append(backend)
        return f"group:{backend}"

    def get_backend(self) -> str:
        return self.backend

    def get_rank(self) -> int:
        return self.rank

    def get_world_size(self) -> int:
        return self.world

    def destroy_process_group(self) -> None:
        self.initialised = False


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two visible GPUs; ``set_device`` calls recorded."""
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(torch.device(device)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: chosen[-1].index)
    return chosen


@pytest.mark.parametrize("local_rank, gpu", [("0", 0), ("1", 1), ("3", 1)])
def test_each_rank_takes_its_gpu_and_nccl_with_a_gloo_control_group(monkeypatch, fake_cuda, local_rank, gpu):
    fake = FakeDist(rank=int(local_rank), world=4)
    monkeypatch.setattr(distributed, "dist", fake)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    ctx = init_distributed("cuda")
    try:
        assert ctx == DistContext(int(local_rank), 4, torch.device("cuda", gpu))
        assert fake_cuda == [torch.device("cuda", gpu)]
        assert fake.backend == "nccl" and fake.groups == ["gloo"] and distributed._CONTROL_GROUP == "group:gloo"
        assert distributed.communication_device() == torch.device("cuda", gpu)
    finally:
        distributed.shutdown_distributed()
    assert distributed._CONTROL_GROUP is None


def test_on_the_cpu_the_group_is_gloo_without_a_second_group(monkeypatch):
    fake = FakeDist(rank=1, world=2)
    monkeypatch.setattr(distributed, "dist", fake)
    monkeypatch.setenv("WORLD_SIZE", "2")
    ctx = init_distributed("cpu")
    try:
        assert ctx == DistContext(1, 2, torch.device("cpu"))
        assert fake.backend == "gloo" and fake.groups == [] and distributed.communication_device() is None
    finally:
        distributed.shutdown_distributed()


def test_ddp_gets_the_rank_gpu_and_cudnn_benchmarks(monkeypatch):
    built = {}

    def fake_ddp(model, device_ids=None):
        built["device_ids"] = device_ids
        return model

    monkeypatch.setattr(distributed, "DistributedDataParallel", fake_ddp)
    data_parallel(nn.Linear(2, 2), DistContext(1, 2, torch.device("cuda", 1)))
    assert built["device_ids"] == [1]
    data_parallel(nn.Linear(2, 2), DistContext(1, 2, torch.device("cpu")))
    assert built["device_ids"] is None
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_device(torch.device("cuda", 1))
    assert torch.backends.cudnn.benchmark is True


def test_all_reduce_copies_to_the_communication_device_and_back(monkeypatch):
    seen = {}
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "communication_device", lambda: torch.device("meta"))
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda tensor, op: seen.setdefault("device", tensor.device))
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device, **kw: torch.ones(self.shape, device=device))
    result = distributed.all_reduce_sum(torch.zeros(3))
    assert seen["device"] == torch.device("meta") and result.device == torch.device("cpu")


def test_a_checkpoints_gpu_state_goes_onto_the_ranks_own_device(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((4,), device.index, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state.tolist(), device)))
    state = rng_state(torch.device("cuda", 1))
    assert state["cuda"].tolist() == [1, 1, 1, 1]
    restore_rng_state(state, torch.device("cuda", 1))
    assert restored == [([1, 1, 1, 1], torch.device("cuda", 1))]
    # one state per visible device (a checkpoint written that way): the rank's own entry, or one line if missing
    restore_rng_state(state | {"cuda": [torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8)]},
                      torch.device("cuda", 1))
    assert restored[-1] == ([1, 1, 1, 1], torch.device("cuda", 1))
    with pytest.raises(UserError, match=r"GPU random states for 1 device\(s\), this process uses cuda:1"):
        restore_rng_state(state | {"cuda": [torch.zeros(4, dtype=torch.uint8)]}, torch.device("cuda", 1))


def test_stage1_batchnorm_is_synchronised_across_gpu_processes_only():
    """Conversion only (torch's SyncBatchNorm computes on GPUs): its statistics over the global batch stay unproven
    here; ``python -m bench.gpu_check`` runs it on a GPU."""
    from train_base import sync_batchnorm

    def net():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    synced, notices = sync_batchnorm(net(), DistContext(0, 2, torch.device("cuda", 0)), True)
    assert isinstance(synced[1], nn.SyncBatchNorm) and notices == []
    for ctx, enabled in ((DistContext(0, 2, torch.device("cuda", 0)), False), (DistContext(0, 1, torch.device("cuda", 0)), True)):
        kept, notices = sync_batchnorm(net(), ctx, enabled)
        assert type(kept[1]) is nn.BatchNorm2d and notices == []
    kept, notices = sync_batchnorm(net(), DistContext(0, 2, torch.device("cpu")), True)
    assert type(kept[1]) is nn.BatchNorm2d and notices == [
        "sync_bn: SyncBatchNorm runs on GPUs only; on cpu each of the 2 processes normalises over its own share of the "
        "batch"]


def test_a_gpu_evaluation_encodes_at_most_encode_batch_images_at_once():
    """On a device other than the CPU (here: meta, shapes only) images go through the backbone ``encode_batch`` at a
    time; on the CPU one at a time."""
    from model.backbone import build_backbone
    from model.mianet import MIANet

    with torch.device("meta"):
        model = MIANet(build_backbone("efficientnet_lite0"), torch.zeros(21, 8), ignore_label=255).eval()
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    encoded = model.encode(torch.zeros(7, 3, 33, 33, device="meta"), chunk=3)
    assert seen == [3, 3, 1] and encoded.mid.shape[0] == 7
    seen.clear()
    model.encode(torch.zeros(7, 3, 33, 33, device="meta"))
    assert seen == [7]
