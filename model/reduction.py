"""How a loss summed over a batch becomes the mean the optimiser sees.

A model's ``loss_mean(total, count)`` divides the summed loss by the number of terms (pixels, samples) of its batch
(:func:`batch_mean`). Under DDP the engine replaces it with the mean over the GLOBAL batch
(``util.common.distributed.global_mean``), so that the gradients DDP averages over the processes are those of one process
holding the whole batch, whatever the share of ignored pixels in each process's part.
"""
from __future__ import annotations

from typing import Callable

import torch

LossMean = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count`` (0 when nothing counted: a batch whose every pixel is ignored adds nothing)."""
    return total / count.clamp_min(1)
