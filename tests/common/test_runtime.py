"""Device resolution, seeding, autocast/GradScaler choice, the epoch seed, the data order of the sampler."""
import random

import numpy as np
import pytest
import torch

from util.common.distributed import DistContext, EpochSampler, ShardSampler
from util.common.errors import UserError
from util.common.runtime import autocast, epoch_seed, grad_scaler, resolve_device, seed_everything


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(UserError, match="'device'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_seeding_is_reproducible():
    seed_everything(11)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(11)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_amp_modes():
    cpu = torch.device("cpu")
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "off"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast(cpu, "fp16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    assert not grad_scaler(cpu, "bf16").is_enabled()
    assert grad_scaler(cpu, "fp16").is_enabled()
    if torch.cuda.is_available():
        assert grad_scaler(torch.device("cuda"), "fp16").is_enabled()
    with pytest.raises(UserError, match="'amp' must be one of off, bf16, fp16"):
        autocast(cpu, "fp8")
    with pytest.raises(UserError, match="'amp' is bf16, but torch .* has no autocast for device 'meta'; use amp off"):
        autocast(torch.device("meta"), "bf16")


def indices(sampler: EpochSampler) -> list[int]:
    keys = list(sampler)
    assert {epoch for epoch, _ in keys} <= {sampler.epoch}
    return [index for _, index in keys]


def test_epoch_order_is_a_pure_function_of_seed_and_epoch_and_skips_resume():
    one = DistContext(0, 1, torch.device("cpu"))
    order = indices(EpochSampler(10, epoch=3, seed=5, ctx=one))
    assert sorted(order) == list(range(10))
    assert indices(EpochSampler(10, epoch=3, seed=5, ctx=one)) == order
    assert indices(EpochSampler(10, epoch=4, seed=5, ctx=one)) != order
    assert indices(EpochSampler(10, epoch=3, seed=5, ctx=one, skip=4)) == order[4:]
    reused = EpochSampler(10, epoch=0, seed=5, ctx=one)
    reused.set_epoch(3, 10, skip=4)  # one sampler serves every epoch of a run
    assert list(reused) == [(3, index) for index in order[4:]]
    shards = [indices(EpochSampler(10, 3, 5, DistContext(r, 3, torch.device("cpu")))) for r in range(3)]
    assert all(len(s) == 3 for s in shards) and len(set(sum(shards, []))) == 9
    # the global batch: batch i of one process holds the indices of batch i of every rank together (batch 2 = 2 x 1)
    two = [indices(EpochSampler(10, 3, 5, DistContext(r, 2, torch.device("cpu")))) for r in range(2)]
    assert [sorted([two[0][i], two[1][i]]) for i in range(5)] == [sorted(order[2 * i:2 * i + 2]) for i in range(5)]
    assert epoch_seed(5, 3) == epoch_seed(5, 3) != epoch_seed(5, 4)


def test_shard_sampler_covers_every_index_once():
    shards = [list(ShardSampler(7, DistContext(r, 2, torch.device("cpu")))) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(7))
