"""The two resizes model/ uses, shared by every module: bilinear with ``align_corners=True`` (the PFENet family's
choice for feature maps, masks and logits) and adaptive average pooling. Both return the input itself when it
already has the requested size (both are then the identity).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Size = int | tuple[int, int]


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def bilinear(x: torch.Tensor, size: Size) -> torch.Tensor:
    """``x`` [N, C, h, w] resized bilinearly (``align_corners=True``) to ``size`` (an int means a square)."""
    size = _pair(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def average_pool(x: torch.Tensor, size: Size) -> torch.Tensor:
    """``x`` [N, C, h, w] adaptive-average-pooled to ``size`` (an int means a square)."""
    size = _pair(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.adaptive_avg_pool2d(x, size)
