"""IFM, the information fusion module: a PFENet-style multi-scale merge of query features, the general
prototype and the HPM priors that predicts the foreground/background mask.

Parameter names follow the reference (``init_merge``, ``alpha_conv``, ``beta_conv``, ``inner_cls``,
``res1``, ``res2``, ``cls``) so its checkpoints import 1:1.
"""
from __future__ import annotations

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
    per-bin auxiliary logits [B,2,b,b]).
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

    def forward(self, query_feat: torch.Tensor, prototype: torch.Tensor,
                priors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        size = query_feat.shape[-2:]
        merged, aux_logits = [], []
        previous = None
        for level, prior in enumerate(priors):
            bin_size = prior.shape[-1]
            query_bin = F.adaptive_avg_pool2d(query_feat, bin_size)
            prototype_bin = prototype[:, :, None, None].expand(-1, -1, bin_size, bin_size)
            merge = self.init_merge[level](torch.cat([query_bin, prototype_bin, prior], dim=1))
            if previous is not None:
                previous = F.interpolate(previous, size=(bin_size, bin_size), mode="bilinear", align_corners=True)
                merge = self.alpha_conv[level - 1](torch.cat([merge, previous], dim=1)) + merge
            merge = self.beta_conv[level](merge) + merge
            previous = merge
            aux_logits.append(self.inner_cls[level](merge))
            merged.append(F.interpolate(merge, size=size, mode="bilinear", align_corners=True))
        fused = self.res1(torch.cat(merged, dim=1))
        fused = self.res2(fused) + fused
        return self.cls(fused), aux_logits
