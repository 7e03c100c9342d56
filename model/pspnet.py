"""Stage 1: the PSPNet base learner (pyramid pooling over layer4 + classifier) for a fold's base classes.

Its backbone becomes MIANet's frozen encoder in stage 2. Parameter names follow the BAM/MIANet
base-learner layout (``ppm.features.<bin>.{1,2}``, ``cls.{0,1,4}``) so reference checkpoints import 1:1.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model.backbone import Backbone, cpu_layout
from model.reduction import LossMean, batch_mean
from model.resize import bilinear

LOSS_CHUNK_BYTES = 512 * 2 ** 20
"""The stage-1 loss upsamples at most this many bytes of float32 logits at a time (one image at least): one image of
FSS-1000's 521 classes at 417 px is 345 MiB, a batch of 12 of PASCAL's 16 classes 127 MiB and of COCO's 61 classes
486 MiB (one chunk each)."""


def _summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return F.cross_entropy(bilinear(logits, labels.shape[-2:]), labels, ignore_index=ignore_index, reduction="sum")


def upsampled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                            chunk_bytes: int = LOSS_CHUNK_BYTES, mean: LossMean = batch_mean) -> torch.Tensor:
    """``F.cross_entropy(bilinear(logits, labels' size), labels, ignore_index=ignore_index)``: the mean over the
    batch's non-ignored pixels (``mean``: :func:`model.reduction.batch_mean`, 0 if there are none), with its gradient,
    without the upsampled logits of the whole batch alive at once when they exceed ``chunk_bytes`` (float32).

    The batch is then cut into chunks of images of at most ``chunk_bytes`` (at least one image); each chunk's summed
    cross-entropy runs under ``torch.utils.checkpoint``, which keeps none of its upsampled maps for backward and
    recomputes them one chunk at a time there. A batch that fits in one chunk takes the plain form.
    """
    labels = labels.long()
    batch, size = logits.shape[0], labels.shape[-2:]
    per_image = logits.shape[1] * size[0] * size[1] * 4
    images = max(1, chunk_bytes // per_image)
    pixels = (labels != ignore_index).sum()
    if images >= batch:
        return mean(F.cross_entropy(bilinear(logits, size), labels, ignore_index=ignore_index, reduction="sum"), pixels)
    total = sum(checkpoint(_summed_cross_entropy, logits[start:start + images], labels[start:start + images],
                           ignore_index, use_reentrant=False, preserve_rng_state=False)
                for start in range(0, batch, images))
    return mean(total, pixels)


class PyramidPooling(nn.Module):
    """PPM: average-pool to each bin, 1x1 conv to ``channels/len(bins)`` + BN + ReLU, upsample, concat with input."""

    def __init__(self, channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        reduced = channels // len(bins)
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(channels, reduced, 1, bias=False),
                          nn.BatchNorm2d(reduced), nn.ReLU(inplace=True))
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [bilinear(f(x), size) for f in self.features]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(nn.Module):
    """Backbone + PPM + classifier; ``forward(images, labels=None)``: logits, or ``{loss}`` with labels.

    ``loss_chunk_bytes``: the training loss's budget for upsampled logits (:func:`upsampled_cross_entropy`).
    """

    def __init__(self, backbone: Backbone, num_classes: int, ignore_label: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        channels = backbone.channels[4]
        self.ppm = PyramidPooling(channels)
        self.cls = nn.Sequential(
            nn.Conv2d(channels * 2, 512, 3, padding=1, bias=False), nn.BatchNorm2d(512), nn.ReLU(inplace=True),
            nn.Dropout2d(dropout), nn.Conv2d(512, num_classes, 1),
        )
        self.ignore_label = ignore_label
        self.loss_chunk_bytes = LOSS_CHUNK_BYTES
        self.loss_mean: LossMean = batch_mean  # the engine sets the global-batch mean under DDP (model/reduction.py)

    def parameter_groups(self, lr: float, head_lr_mult: float) -> list[dict[str, Any]]:
        """SGD groups as BAM's base learner has them: the backbone at ``lr``, PPM + classifier at ``lr * head_lr_mult``."""
        head = [*self.ppm.parameters(), *self.cls.parameters()]
        return [{"params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": lr},
                {"params": [p for p in head if p.requires_grad], "lr": lr * head_lr_mult}]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Per-class logits at the input size; with ``labels`` (train) instead only the cross-entropy ``loss`` of the
        logits upsampled to the labels (:func:`upsampled_cross_entropy`: the batch's upsampled logits are never all
        alive at once when they are large, e.g. FSS-1000's 521 classes)."""
        layer4 = self.backbone(cpu_layout(images))[4]
        logits = self.cls(self.ppm(layer4))
        if labels is None:
            return bilinear(logits, images.shape[-2:])
        return {"loss": upsampled_cross_entropy(logits, labels, self.ignore_label, self.loss_chunk_bytes, self.loss_mean)}
