"""HPM, the hierarchical prior module: parameter-free query/support cosine priors at several scales.

The reference chain, per level of the bins (60, 30, 15, 8 at 473 px): the ORIGINAL support layer4 is resized
to the level's size and multiplied by the support mask, whose own chain of resizes starts from the mask at
layer3's size and is cumulative. The prior of a query position is the mean, over ALL support positions
(masked-out ones count as 0), of its cosine similarity with those masked features, min-max normalised over
the query positions. The query features are reweighted by the prior and pooled to the next level.

When layer4 is smaller than the first bin (VGG16-BN: 30 vs 60 at 473 px), the first prior is computed from
the query, the support and the mask all upsampled to the first bin; it does not reweight the query, and the
remaining levels start again from the original query layer4 and the layer3-size mask.

``mean_j cos(q, s_j) = q/|q| . mean_j s_j/|s_j|``, so the prior costs O(HW*C) instead of building the
HW x HW similarity matrix; neither unit-length copy of the features is materialised either. The support side
thus reduces to one direction per level (:func:`support_directions`), which an evaluation can compute once per
(support image, class) and reuse (:func:`priors_from_directions` takes it).

Both reductions run in float32 under autocast (:mod:`model.precision`), so directions and priors are float32 in
mixed precision too; float32 and float64 inputs are computed in their own type.
"""
from __future__ import annotations

import math

import torch

from model.precision import at_least_float32, autocast_off
from model.resize import average_pool, bilinear

EPS = 1e-7
NORM_EPS = 1e-12


def pyramid_bins(first: int, levels: int = 4) -> list[int]:
    """Bin sizes halving from ``first``: 60 -> [60, 30, 15, 8]; 81 -> [81, 41, 21, 11]."""
    return [math.ceil(first / 2 ** i) for i in range(levels)]


def weighted_sum(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_p weights[n, k, p] * features[n, :, p]`` over the positions p: [N, C, h, w], [N, K, h, w] -> [N, K, C].

    One batched matrix product on a view of ``features`` (no copy in NCHW or channels-last; einsum copies
    channels-last features first, which costs 30x more here).
    """
    return weights.flatten(2) @ features.flatten(2).transpose(1, 2)


def _mean_direction(support: torch.Tensor) -> torch.Tensor:
    """``mean_j s_j/|s_j|`` over the positions of ``support`` [N, C, h, w] -> [N, C], in float32 or wider (module
    docstring): a zero-norm position weighs 1e12 and contributes exactly 0; every product is at most 1 in size."""
    with autocast_off(support.device):
        support = at_least_float32(support)
        inverse_norm = torch.linalg.vector_norm(support, dim=1, keepdim=True).clamp_min(NORM_EPS).reciprocal()
        return weighted_sum(support, inverse_norm)[:, 0] / (support.shape[-2] * support.shape[-1])


def _normalised_priors(query: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Min-max normalised ``q/|q| . d_k`` [B, K, h, w] of ``query`` [B, C, h, w] for each direction of [B, K, C], in
    float32 or wider (module docstring): a zero-norm query position gets 0 before the normalisation."""
    with autocast_off(query.device):
        query, directions = at_least_float32(query), at_least_float32(directions)
        prior = (directions @ query.flatten(2)).view(*directions.shape[:2], *query.shape[-2:])
        prior = prior / torch.linalg.vector_norm(query, dim=1, keepdim=True).clamp_min(NORM_EPS)
        low = prior.flatten(2).amin(dim=2)[..., None, None]
        high = prior.flatten(2).amax(dim=2)[..., None, None]
        return (prior - low) / (high - low + EPS)


def cosine_prior(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Min-max normalised mean cosine prior [B, 1, h, w] of ``query`` [B, C, h, w] to ``support`` [B, C, hs, ws]."""
    return _normalised_priors(query, _mean_direction(support)[:, None])


def support_directions(support_layer4: torch.Tensor, support_masks: torch.Tensor, bins: list[int]) -> list[torch.Tensor]:
    """What the prior chain needs from one support: its mean unit direction [N, C] at every level (one per bin).

    support_layer4 [N, C, h, w]; support_masks [N, h3, w3], already resized (bilinear) to layer3's size. Each level
    resizes the ORIGINAL layer4 and multiplies it by the cumulative mask chain (module docstring). Depends on the
    support alone, so an evaluation can compute it once per (support image, class) and reuse it.
    """
    start_mask = support_masks.unsqueeze(1)
    directions = []
    levels = bins
    if support_layer4.shape[-1] < bins[0]:
        size = bins[0]
        directions.append(_mean_direction(bilinear(support_layer4, size) * bilinear(start_mask, size)))
        levels = bins[1:]
    mask = start_mask
    for size in levels:
        mask = bilinear(mask, size)
        directions.append(_mean_direction(bilinear(support_layer4, size) * mask))
    return directions


def priors_from_directions(query_layer4: torch.Tensor, directions: list[torch.Tensor], bins: list[int]) -> list[torch.Tensor]:
    """Priors [B, 1, b, b] for each bin ``b`` of ``query_layer4`` [B, C, h, w] given the K shots' directions
    [B, K, C] of every level (:func:`support_directions`): the K priors of a level are averaged, and the query is
    reweighted by that average and pooled to the next level."""
    main = query_layer4
    priors = []
    levels = bins
    if main.shape[-1] < bins[0]:
        priors.append(_normalised_priors(bilinear(main, bins[0]), directions[0]).mean(dim=1, keepdim=True))
        levels, directions = bins[1:], directions[1:]
    for level, (size, level_directions) in enumerate(zip(levels, directions)):
        prior = _normalised_priors(main, level_directions).mean(dim=1, keepdim=True)
        priors.append(prior)
        if level + 1 < len(levels):
            main = average_pool(main * prior, levels[level + 1])
    return priors


def hierarchical_priors(query_layer4: torch.Tensor, support_layer4: torch.Tensor, support_masks: torch.Tensor,
                        bins: list[int]) -> list[torch.Tensor]:
    """Priors [B, 1, b, b] for each bin ``b`` (module docstring: the reference chain).

    query_layer4 [B, C, h, w]; support_layer4 [B, K, C, h, w]; support_masks [B, K, h3, w3], the support masks
    already resized (bilinear) to layer3's size. Each shot keeps its own mask chain and resizes of its original
    layer4; the K priors of a level are averaged, and the query is reweighted by that average.
    """
    batch, shots = support_layer4.shape[:2]
    directions = support_directions(support_layer4.flatten(0, 1), support_masks.flatten(0, 1), bins)
    return priors_from_directions(query_layer4, [d.view(batch, shots, -1) for d in directions], bins)
