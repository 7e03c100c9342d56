"""HPM, the hierarchical prior module: parameter-free query/support cosine priors at several scales.

At each level the prior of a query position is the mean, over ALL support positions (masked-out ones
count as 0), of its cosine similarity with the masked support layer4 features, min-max normalised over
the query positions. The query features are reweighted by the prior and pooled to the next level.

``mean_j cos(q, s_j) = q/|q| . mean_j s_j/|s_j|``, so the prior costs O(HW*C) instead of building the
HW x HW similarity matrix; neither unit-length copy of the features is materialised either.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-7
NORM_EPS = 1e-12


def pyramid_bins(first: int, levels: int = 4) -> list[int]:
    """Bin sizes halving from ``first``: 60 -> [60, 30, 15, 8]; 81 -> [81, 41, 21, 11]."""
    return [math.ceil(first / 2 ** i) for i in range(levels)]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)


def weighted_sum(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_p weights[n, k, p] * features[n, :, p]`` over the positions p: [N, C, h, w], [N, K, h, w] -> [N, K, C].

    One batched matrix product on a view of ``features`` (no copy in NCHW or channels-last; einsum copies
    channels-last features first, which costs 30x more here).
    """
    return weights.flatten(2) @ features.flatten(2).transpose(1, 2)


def _mean_direction(support: torch.Tensor) -> torch.Tensor:
    """``mean_j s_j/|s_j|`` over the positions of ``support`` [N, C, h, w] -> [N, C]."""
    inverse_norm = torch.linalg.vector_norm(support, dim=1, keepdim=True).clamp_min(NORM_EPS).reciprocal()
    return weighted_sum(support, inverse_norm)[:, 0] / (support.shape[-2] * support.shape[-1])


def _normalised_priors(query: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Min-max normalised ``q/|q| . d_k`` [B, K, h, w] of ``query`` [B, C, h, w] for each direction of [B, K, C]."""
    prior = (directions @ query.flatten(2)).view(*directions.shape[:2], *query.shape[-2:])
    prior = prior / torch.linalg.vector_norm(query, dim=1, keepdim=True).clamp_min(NORM_EPS)
    low = prior.flatten(2).amin(dim=2)[..., None, None]
    high = prior.flatten(2).amax(dim=2)[..., None, None]
    return (prior - low) / (high - low + EPS)


def cosine_prior(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Min-max normalised mean cosine prior [B, 1, h, w] of ``query`` [B, C, h, w] to ``support`` [B, C, hs, ws]."""
    return _normalised_priors(query, _mean_direction(support)[:, None])


def hierarchical_priors(query_layer4: torch.Tensor, support_layer4: torch.Tensor, support_masks: torch.Tensor,
                        bins: list[int]) -> list[torch.Tensor]:
    """Priors [B, 1, b, b] for each bin ``b``.

    query_layer4 [B, C, h, w]; support_layer4 [B, K, C, hs, ws]; support_masks [B, K, H, W] in {0, 1}.
    Each shot keeps its own chain of resized support features and masks; the K priors of a level are
    averaged. The query chain is reweighted by that average and pooled to the next bin.
    """
    batch, shots = support_layer4.shape[:2]
    main = _resize(query_layer4, bins[0])
    aux = support_layer4.flatten(0, 1)
    mask = support_masks.flatten(0, 1).unsqueeze(1).float()
    priors = []
    for level, size in enumerate(bins):
        mask = _resize(mask, size)
        aux = _resize(aux, size) * mask
        directions = _mean_direction(aux).view(batch, shots, -1)
        prior = _normalised_priors(main, directions).mean(dim=1, keepdim=True)
        priors.append(prior)
        if level + 1 < len(bins):
            main = F.adaptive_avg_pool2d(main * prior, bins[level + 1])
    return priors
