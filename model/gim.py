"""GIM, the general information module: class-name vector + instance prototype -> general class prototype.

- GIG (general information generator): an MLP over ``cat(word vector, instance prototype)``.
- LFG (local feature generator): strided convs turning support features into a coarse grid of local features.
- Triplet loss: pulls the general prototype towards the support's foreground local features and away from
  the mean of its background ones.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.precision import at_least_float32
from model.reduction import LossMean, batch_mean


class GeneralInformationGenerator(nn.Module):
    """GIG: ``Linear(D+C->128), LeakyReLU(0.2), Dropout(0.2), Linear(128->C), Dropout(0.3)``."""

    def __init__(self, word_dim: int, channels: int = 256, hidden: int = 128) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(word_dim + channels, hidden), nn.LeakyReLU(0.2), nn.Dropout(0.2),
            nn.Linear(hidden, channels), nn.Dropout(0.3),
        )
        for layer in self.model:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.constant_(layer.bias, 0.01)

    def forward(self, word_vectors: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
        """General prototypes [B, C] from each episode's class vector [B, D] and instance prototype [B, C].

        The reference evaluates every class row and keeps the episode's; the layers act row-wise, so
        evaluating only the episode's row gives the same result (checked against the reference oracle, which
        runs every row: ``tests/model/test_model_reference.py``).
        """
        return self.model(torch.cat([word_vectors, prototype], dim=1))


def local_feature_generator(channels: int = 256) -> nn.Sequential:
    """LFG: conv3x3 s2 p0, ReLU, conv3x3 s2 p1, ReLU, conv3x3 s1 p1 (no biases); 60x60 -> 15x15."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, stride=2, padding=0, bias=False), nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False), nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False),
    )


def triplet_loss(anchors: torch.Tensor, local_features: torch.Tensor, masks: torch.Tensor,
                 margin: float = 0.5, mean: LossMean = batch_mean) -> torch.Tensor:
    """Hardest-positive / mean-negative triplet loss, vectorised over the batch.

    anchors [B, C]; local_features [B, N, C] (all shots' grid cells); masks [B, N], 1 = foreground cell,
    anything else a negative. Per sample: ``max(0, margin + max_j |a - f+_j| - |a - mean_j f-_j|)`` with
    ``a`` and every ``f`` L2-normalised (the negative mean is not re-normalised); averaged over the samples
    that have both positives and negatives (``mean``: :func:`model.reduction.batch_mean`), 0 if none has. Computed
    in float32 or wider (:mod:`model.precision`: a float16 norm clamped at 1e-12 is clamped at 0).
    """
    anchor = F.normalize(at_least_float32(anchors), dim=1)
    features = F.normalize(at_least_float32(local_features), dim=2)
    positive = masks == 1
    negative = ~positive
    distances = torch.linalg.vector_norm(anchor[:, None, :] - features, dim=2)
    hardest_positive = distances.masked_fill(~positive, float("-inf")).amax(dim=1)
    negative_count = negative.sum(dim=1)
    negative_mean = (features * negative[..., None]).sum(dim=1) / negative_count.clamp_min(1)[:, None]
    negative_distance = torch.linalg.vector_norm(anchor - negative_mean, dim=1)
    valid = positive.any(dim=1) & negative.any(dim=1)
    losses = F.relu(margin + hardest_positive - negative_distance)
    losses = torch.where(valid, losses, torch.zeros_like(losses))
    return mean(losses.sum(), valid.sum())
