"""Float32 islands under autocast.

The model's reductions over positions (the masked-average prototype, HPM's directions and priors, the triplet
loss's normalisations) run in float32 (float64 stays float64) whatever autocast is active: their sums over
thousands of positions, their 1/norm weights and their 1e-12 clamps do not fit float16 (range 6e-8..65504), and
autocast's per-device op lists differ (on CPU ``vector_norm`` runs in float16, so ``clamp_min(1e-12)`` is 0; on CUDA
it runs in float32, but the matmul that follows casts its 1e12 weights to float16 inf). In float32 and float64
these helpers are the identity, so unmixed runs compute exactly what they computed without them.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is in a narrower float type (float16, bfloat16); itself otherwise."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def autocast_off(device: torch.device) -> ContextManager:
    """A context with autocast disabled for ``device``'s type (a no-op for types without autocast, e.g. meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
