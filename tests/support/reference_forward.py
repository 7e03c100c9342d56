"""A plain, slow, literal transcription of the reference MIANet forward pass and losses (the oracle of the
fidelity tests), written from ``shared/reference/mianet-reference-behaviour.md``; used only by tests.

It calls nothing in ``model/`` except the backbone's five stages. Every other step is written out as the
reference does it: the real concatenations (``down_features``, ``init_merge``, ``alpha_conv``, ``res1``), every
class row through GIG, the HW x HW cosine matrix of every HPM level, one level and one shot at a time, the
per-sample triplet loop. Weights are read by their names in the reference checkpoints (``GIG.model.0.weight``,
``init_merge.0.0.weight``, ...), so a reference-layout state dict feeds it directly. Dropout is not
transcribed: compare training losses with every dropout of the model under test switched off.

The reference uses only the first support; for K shots this follows the K-shot rule docs/model.md states (each
shot runs the reference chain; prototypes and each level's priors are averaged over the shots, the query is
reweighted by the averaged prior, the triplet loss pools all shots' cells), so K = 1 is the reference itself.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

COSINE_EPS = 1e-7
PROTOTYPE_EPS = 0.0005
TRIPLET_MARGIN = 0.5
IGNORE = 255

# our parameter names -> the reference checkpoint's (the IFM modules sit at the reference's top level)
_OUR_PREFIXES = {"gig.": "GIG.", "lfg.": "LFG.", "ifm.": "", "backbone.": ""}


def reference_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our MIANet state dict under the reference checkpoint's parameter names."""
    renamed = {}
    for key, value in state.items():
        prefix = next((p for p in _OUR_PREFIXES if key.startswith(p)), "")
        renamed[(_OUR_PREFIXES[prefix] if prefix else "") + key[len(prefix):]] = value
    return renamed


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """The reference's resize: bilinear, align_corners=True (always called, even to the same size)."""
    if isinstance(size, int):
        size = (size, size)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def backbone_stages(backbone: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """layer0..layer4 outputs, one stage after the other, under no_grad (the backbone is frozen)."""
    outputs = []
    x = images
    with torch.no_grad():
        for index in range(5):
            x = getattr(backbone, f"layer{index}")(x)
            outputs.append(x)
    return outputs


def down_features(w: Mapping[str, torch.Tensor], layer3: torch.Tensor, layer2: torch.Tensor) -> torch.Tensor:
    """conv1x1(cat[layer3, layer2]) + ReLU; layer2 resized to layer3's size when they differ (VGG)."""
    if layer2.shape[-2:] != layer3.shape[-2:]:
        layer2 = resize(layer2, layer3.shape[-2:])
    return F.relu(F.conv2d(torch.cat([layer3, layer2], dim=1), w["down_features.0.weight"]))


def masked_average_pool(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(f * m) / (sum(m) + 0.0005) per channel: [B, C, h, w], [B, 1, h, w] -> [B, C]."""
    return (features * mask).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) + PROTOTYPE_EPS)


def gig_anchors(w: Mapping[str, torch.Tensor], word_vectors: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
    """Every class row through GIG: [C+1, D] word vectors and one prototype [256] -> anchors [C+1, 256]."""
    rows = []
    for row in range(word_vectors.shape[0]):
        x = torch.cat([word_vectors[row], prototype])
        x = F.leaky_relu(F.linear(x, w["GIG.model.0.weight"], w["GIG.model.0.bias"]), 0.2)
        rows.append(F.linear(x, w["GIG.model.3.weight"], w["GIG.model.3.bias"]))
    return torch.stack(rows)


def lfg(w: Mapping[str, torch.Tensor], support_feat: torch.Tensor) -> torch.Tensor:
    """conv3x3 s2 p0, ReLU, conv3x3 s2 p1, ReLU, conv3x3 s1 p1 (no biases)."""
    x = F.relu(F.conv2d(support_feat, w["LFG.0.weight"], stride=2, padding=0))
    x = F.relu(F.conv2d(x, w["LFG.2.weight"], stride=2, padding=1))
    return F.conv2d(x, w["LFG.4.weight"], stride=1, padding=1)


def cosine_prior(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """[h, w] prior of one sample: the full HW x HW cosine matrix (eps added to the product of norms), its mean
    over ALL support positions, min-max normalised over the query positions."""
    q = query.flatten(1)
    s = support.flatten(1)
    similarity = (q.t() @ s) / (q.norm(dim=0)[:, None] * s.norm(dim=0)[None, :] + COSINE_EPS)
    prior = similarity.mean(dim=1)
    prior = (prior - prior.min()) / (prior.max() - prior.min() + COSINE_EPS)
    return prior.view(query.shape[1:])


def hpm_priors(query_layer4: torch.Tensor, support_layer4: list[torch.Tensor], layer3_masks: list[torch.Tensor],
               bins: list[int]) -> list[torch.Tensor]:
    """The reference HPM of one sample ([1, C, h, w] each; one support and one layer3-size mask per shot):
    [1, 1, b, b] per bin."""
    main = query_layer4
    priors = []
    levels = list(bins)
    if main.shape[-1] < bins[0]:  # VGG: layer4 below the first bin
        size = bins[0]
        shot_priors = [cosine_prior(resize(main, size)[0], (resize(aux, size) * resize(mask, size))[0])
                       for aux, mask in zip(support_layer4, layer3_masks)]
        priors.append(torch.stack(shot_priors).mean(dim=0)[None, None])
        levels = levels[1:]
    masks = list(layer3_masks)
    for level, _ in enumerate(levels):
        size = main.shape[-2:]
        shot_priors = []
        for shot, aux in enumerate(support_layer4):
            aux_level = resize(aux, size)
            masks[shot] = resize(masks[shot], size)
            aux_level = aux_level * masks[shot]
            shot_priors.append(cosine_prior(main[0], aux_level[0]))
        prior = torch.stack(shot_priors).mean(dim=0)[None, None]
        priors.append(prior)
        main = main * prior
        if level + 1 < len(levels):
            main = F.adaptive_avg_pool2d(main, levels[level + 1])
    return priors


def ifm(w: Mapping[str, torch.Tensor], query_feat: torch.Tensor, general: torch.Tensor,
        priors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The reference fusion: (logits at query_feat's size, per-bin auxiliary logits)."""
    pyramid, aux_outputs = [], []
    previous = None
    for index, prior in enumerate(priors):
        size = prior.shape[-1]
        query_bin = F.adaptive_avg_pool2d(query_feat, size)
        prototype = general[:, :, None, None].expand(-1, -1, size, size)
        merge = F.relu(F.conv2d(torch.cat([query_bin, prototype, prior], dim=1), w[f"init_merge.{index}.0.weight"]))
        if index >= 1:
            previous_bin = resize(previous, size)
            merge = F.relu(F.conv2d(torch.cat([merge, previous_bin], dim=1), w[f"alpha_conv.{index - 1}.0.weight"])) + merge
        beta = F.relu(F.conv2d(merge, w[f"beta_conv.{index}.0.weight"], padding=1))
        beta = F.relu(F.conv2d(beta, w[f"beta_conv.{index}.2.weight"], padding=1))
        merge = beta + merge
        inner = F.relu(F.conv2d(merge, w[f"inner_cls.{index}.0.weight"], padding=1))
        aux_outputs.append(F.conv2d(inner, w[f"inner_cls.{index}.3.weight"], w[f"inner_cls.{index}.3.bias"]))
        merge = resize(merge, query_feat.shape[-2:])
        previous = merge
        pyramid.append(merge)
    fused = F.relu(F.conv2d(torch.cat(pyramid, dim=1), w["res1.0.weight"]))
    residual = F.relu(F.conv2d(fused, w["res2.0.weight"], padding=1))
    residual = F.relu(F.conv2d(residual, w["res2.2.weight"], padding=1))
    fused = residual + fused
    out = F.relu(F.conv2d(fused, w["cls.0.weight"], padding=1))
    return F.conv2d(out, w["cls.3.weight"], w["cls.3.bias"]), aux_outputs


def triplet_loss(anchors: torch.Tensor, local: list[torch.Tensor], cell_labels: list[torch.Tensor]) -> torch.Tensor:
    """Per sample: anchor [C], each shot's LFG grid [C, g, g] and its cell labels [g, g]; positives are cells labelled
    exactly 1. Hardest positive, mean negative (not re-normalised), margin 0.5; mean over the valid samples."""
    losses = []
    for anchor, grids, labels in zip(anchors, local, cell_labels):
        features = torch.cat([grid.flatten(1).t() for grid in grids])
        flat_labels = torch.cat([label.flatten() for label in labels])
        positives, negatives = features[flat_labels == 1], features[flat_labels != 1]
        if len(positives) == 0 or len(negatives) == 0:
            continue
        a = F.normalize(anchor, dim=0)
        d_pos = max(torch.norm(a - F.normalize(p, dim=0)) for p in positives)
        negative_mean = torch.stack([F.normalize(n, dim=0) for n in negatives]).mean(dim=0)
        d_neg = torch.norm(a - negative_mean)
        losses.append(torch.clamp(TRIPLET_MARGIN + d_pos - d_neg, min=0))
    if not losses:
        return anchors.new_zeros(())
    return torch.stack(losses).mean()


def reference_forward(backbone: nn.Module, w: Mapping[str, torch.Tensor], word_vectors: torch.Tensor,
                      query: torch.Tensor, supports: torch.Tensor, support_masks: torch.Tensor, class_ids: torch.Tensor,
                      bins: list[int], query_label: torch.Tensor | None = None) -> dict[str, object]:
    """The reference MIANet on a batch: ``logits`` [B, 2, H', W'], the per-sample ``priors``, and with
    ``query_label`` the losses ``loss_main``, ``loss_aux``, ``loss_triplet`` and ``loss`` (aux weight 1).

    The backbone runs as the caller left it (train-mode BN: the query batch and each shot's batch separately).
    """
    batch, shots = supports.shape[:2]
    height, width = query.shape[-2:]
    query_stages = backbone_stages(backbone, query)
    query_feat = down_features(w, query_stages[3], query_stages[2])
    shot_stages = [backbone_stages(backbone, supports[:, k]) for k in range(shots)]
    shot_feats = [down_features(w, stages[3], stages[2]) for stages in shot_stages]
    shot_masks = [resize((support_masks[:, k] == 1).to(query.dtype).unsqueeze(1), shot_feats[k].shape[-2:])
                  for k in range(shots)]
    prototypes = torch.stack([masked_average_pool(feat, mask) for feat, mask in zip(shot_feats, shot_masks)]).mean(dim=0)
    general = torch.stack([gig_anchors(w, word_vectors, prototypes[b])[int(class_ids[b])] for b in range(batch)])

    per_sample = [hpm_priors(query_stages[4][b:b + 1], [stages[4][b:b + 1] for stages in shot_stages],
                             [mask[b:b + 1] for mask in shot_masks], bins) for b in range(batch)]
    priors = [torch.cat([sample[level] for sample in per_sample]) for level in range(len(bins))]
    out, aux_outputs = ifm(w, query_feat, general, priors)
    out = resize(out, ((height - 1) // 8 * 8 + 1, (width - 1) // 8 * 8 + 1))
    result: dict[str, object] = {"logits": out, "priors": priors}
    if query_label is None:
        return result
    label = query_label.long()
    loss_main = F.cross_entropy(resize(out, label.shape[-2:]), label, ignore_index=IGNORE)
    loss_aux = torch.stack([F.cross_entropy(resize(aux, label.shape[-2:]), label, ignore_index=IGNORE)
                            for aux in aux_outputs]).mean()
    local = [lfg(w, feat) for feat in shot_feats]
    cells = [F.interpolate(mask, size=grid.shape[-2:], mode="nearest").long() for mask, grid in zip(shot_masks, local)]
    loss_triplet = triplet_loss(general, [[grid[b] for grid in local] for b in range(batch)],
                                [[cell[b, 0] for cell in cells] for b in range(batch)])
    result.update(loss_main=loss_main, loss_aux=loss_aux, loss_triplet=loss_triplet,
                  loss=loss_main + loss_aux + loss_triplet)
    return result
