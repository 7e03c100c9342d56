"""IFM, the information fusion module: a PFENet-style multi-scale merge of query features, the general
prototype and the HPM priors that predicts the foreground/background mask.

Parameter names follow the reference (``init_merge``, ``alpha_conv``, ``beta_conv``, ``inner_cls``,
``res1``, ``res2``, ``cls``) so its checkpoints import 1:1.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_relu(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.ReLU(inplace=True)]


def _classifier(channels: int, classes: int = 2) -> nn.Sequential:
    return nn.Sequential(*_conv_relu(channels, channels, 3), nn.Dropout2d(0.1), nn.Conv2d(channels, classes, 1))


class InformationFusion(nn.Module):
    """Fuses per-bin ``[query features, prototype, prior]`` coarse-to-fine and classifies.

    forward(query_feat [B,C,h,w], prototype [B,C], priors [B,1,b,b] per bin) -> (logits [B,2,h,w],
    per-bin auxiliary logits [B,2,b,b], or [] with ``aux=False``).
    """

    def __init__(self, channels: int = 256, levels: int = 4) -> None:
        super().__init__()
        self.init_merge = nn.ModuleList(nn.Sequential(*_conv_relu(channels * 2 + 1, channels, 1)) for _ in range(levels))
        self.alpha_conv = nn.ModuleList(nn.Sequential(*_conv_relu(channels * 2, channels, 1)) for _ in range(levels - 1))
        self.beta_conv = nn.ModuleList(
            nn.Sequential(*_conv_relu(channels, channels, 3), *_conv_relu(channels, channels, 3)) for _ in range(levels)
        )
        self.inner_cls = nn.ModuleList(_classifier(channels) for _ in range(levels))
        self.res1 = nn.Sequential(*_conv_relu(channels * levels, channels, 1))
        self.res2 = nn.Sequential(*_conv_relu(channels, channels, 3), *_conv_relu(channels, channels, 3))
        self.cls = _classifier(channels)

    def forward(self, query_feat: torch.Tensor, prototype: torch.Tensor, priors: list[torch.Tensor],
                aux: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``aux=False`` skips the per-bin auxiliary classifiers (they only feed the training loss) and returns [].

        Same function as the concatenations of the reference, computed without building them: the
        prototype's share of ``init_merge`` is a per-sample bias (a 1x1 conv of a constant map), and
        ``res1`` (a 1x1 conv) is applied to each bin before upsampling, which commutes with it.
        """
        size = query_feat.shape[-2:]
        channels = query_feat.shape[1]
        res1_weights = self.res1[0].weight.split(channels, dim=1)
        fused, previous, aux_logits = None, None, []
        for level, prior in enumerate(priors):
            bin_size = prior.shape[-1]
            query_bin = _resize(query_feat, (bin_size, bin_size), F.adaptive_avg_pool2d)
            merge = self._init_merge(level, query_bin, prototype, prior)
            if previous is not None:
                previous = _resize(previous, (bin_size, bin_size), _bilinear)
                merge = self.alpha_conv[level - 1](torch.cat([merge, previous], dim=1)) + merge
            merge = self.beta_conv[level](merge) + merge
            previous = merge
            if aux:
                aux_logits.append(self.inner_cls[level](merge))
            share = _resize(F.conv2d(merge, res1_weights[level]), size, _bilinear)
            fused = share if fused is None else fused + share
        fused = fused.relu_()
        fused = self.res2(fused) + fused
        return self.cls(fused), aux_logits

    def _init_merge(self, level: int, query_bin: torch.Tensor, prototype: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """``init_merge[level]`` of ``cat(query_bin, prototype broadcast, prior)``."""
        weight = self.init_merge[level][0].weight[:, :, 0, 0]
        channels = query_bin.shape[1]
        query_weight, prototype_weight, prior_weight = weight.split([channels, channels, 1], dim=1)
        bias = torch.addcmul((prototype @ prototype_weight.T)[:, :, None, None], prior_weight[None, :, :, None], prior)
        return (F.conv2d(query_bin, query_weight[:, :, None, None]) + bias).relu_()


def _bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _resize(x: torch.Tensor, size: tuple[int, int],
            resize: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]) -> torch.Tensor:
    """``resize(x, size)``, or ``x`` itself when it already has that size (both resizes are then the identity)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else resize(x, size)
