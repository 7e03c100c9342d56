"""IFM, the information fusion module: a PFENet-style multi-scale merge of query features, the general
prototype and the HPM priors that predicts the foreground/background mask.

Parameter names follow the reference (``init_merge``, ``alpha_conv``, ``beta_conv``, ``inner_cls``,
``res1``, ``res2``, ``cls``) so its checkpoints import 1:1.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.resize import average_pool, bilinear


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

        As in the reference, each level's merged features are resized to the query features' size, and the
        next level reads that resized map resized again to its own bin. The concatenations of the reference
        are not built: the prototype's share of ``init_merge`` is a per-sample bias (a 1x1 conv of a constant
        map), and each level's share of ``res1`` (a 1x1 conv, linear) is applied before the bilinear upsampling
        (linear), with which it commutes. Both are checked against a literal transcription of the reference
        (``tests/support/reference_forward.py``).
        """
        size = query_feat.shape[-2:]
        channels = query_feat.shape[1]
        res1_weights = self.res1[0].weight.split(channels, dim=1)
        fused, previous, aux_logits = None, None, []
        for level, prior in enumerate(priors):
            bin_size = prior.shape[-1]
            merge = self._init_merge(level, average_pool(query_feat, bin_size), prototype, prior)
            if previous is not None:
                merge = self.alpha_conv[level - 1](torch.cat([merge, bilinear(previous, bin_size)], dim=1)) + merge
            merge = self.beta_conv[level](merge) + merge
            if aux:
                aux_logits.append(self.inner_cls[level](merge))
            if level + 1 < len(priors):
                previous = bilinear(merge, size)
            share = bilinear(F.conv2d(merge, res1_weights[level]), size)
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
