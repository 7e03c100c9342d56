"""MIANet (Yang et al., CVPR 2023): frozen base-learner backbone + GIM + HPM + IFM.

K-shot (the reference silently uses only the first support): the instance prototype is the mean of
the K masked-average prototypes, the general prototype is generated from it, the HPM prior of every
level is the mean of the K per-shot priors, and the triplet loss sees the local features of all shots.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.backbone import LAYER3_STRIDE, Backbone, build_backbone, cpu_layout
from model.gim import GeneralInformationGenerator, local_feature_generator, triplet_loss
from model.hpm import (
    priors_from_directions,
    pyramid_bins,
    support_directions,
    weighted_sum,
)
from model.ifm import InformationFusion
from model.precision import at_least_float32, autocast_off
from model.reduction import LossMean, batch_mean
from model.resize import bilinear

PROTOTYPE_EPS = 5e-4
LFG_MIN_CELLS = 3  # the LFG's first convolution (3x3, stride 2, no padding) needs a layer3 map of at least 3 x 3


def min_train_size(backbone: str) -> int:
    """The smallest training crop MIANet can train on with ``backbone``: the triplet loss's local features need a
    layer3 map of at least 3 x 3."""
    return (LFG_MIN_CELLS - 1) * LAYER3_STRIDE.get(backbone, 8) + 1


def masked_average(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-channel ``sum(f * m) / (sum(m) + 5e-4)``: features [N, C, h, w], masks [N, 1, h, w] -> [N, C], in float32
    or wider (:mod:`model.precision`; a float16 sum over 60x60 positions passes 65504 at a mean feature of 18)."""
    with autocast_off(features.device):
        features, masks = at_least_float32(features), at_least_float32(masks)
        return weighted_sum(features, masks)[:, 0] / (masks.sum(dim=(2, 3)) + PROTOTYPE_EPS)


class DownFeatures(nn.Sequential):
    """``ReLU(Conv1x1(cat(layer3, layer2)))`` computed as two convolutions on the weight's halves, so the
    concatenation is never built (checked against the reference's concatenation, ``tests/model/test_model_reference.py``). The children are the reference's ``down_features`` (0 conv, 1 ReLU,
    2 Dropout2d) so its checkpoints import unchanged; the caller applies the dropout (``self[2]``).
    """

    def forward(self, layer3: torch.Tensor, layer2: torch.Tensor) -> torch.Tensor:
        layer2 = bilinear(layer2, layer3.shape[-2:])
        weight3, weight2 = self[0].weight.split([layer3.shape[1], layer2.shape[1]], dim=1)
        return (F.conv2d(layer3, weight3) + F.conv2d(layer2, weight2)).relu_()


def _join(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` along the batch, without a copy for a single tensor."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _bins(image_size: int) -> list[int]:
    """HPM's bins for an input of height ``image_size`` (the first is layer3's size)."""
    return pyramid_bins((image_size - 1) // 8 + 1)


def _small_masks(masks: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``masks`` [N,H,W] as foreground (== 1) weights [N,1,h,w] resized (bilinear) to ``features``' size, in
    ``features``' type or float32 if that is narrower (the same weights, and triplet cells, under autocast)."""
    weights = (masks == 1).to(torch.promote_types(features.dtype, torch.float32))
    return bilinear(weights.unsqueeze(1), features.shape[-2:])


class EncodedImages(NamedTuple):
    """:meth:`MIANet.encode` of N images: ``mid`` = down_features(layer3, layer2) before its dropout [N, reduce_dim,
    h, w]; ``layer4`` [N, C4, h4, w4]."""

    mid: torch.Tensor
    layer4: torch.Tensor


class SupportSummary(NamedTuple):
    """What the head reads from supports (:meth:`MIANet.summarize_supports`): the masked-average ``prototype``
    [..., reduce_dim] and the HPM ``directions`` [..., C4], one per level ([] without HPM)."""

    prototype: torch.Tensor
    directions: list[torch.Tensor]


def stack_shots(shots: list[SupportSummary]) -> SupportSummary:
    """The K summaries [1, C] of one episode's supports as the head's input [1, K, C]."""
    return SupportSummary(torch.cat([shot.prototype for shot in shots])[None],
                          [torch.cat([shot.directions[level] for shot in shots])[None]
                           for level in range(len(shots[0].directions))])


class MIANet(nn.Module):
    """Few-shot segmenter; see :meth:`forward` for the interface.

    ``word_vectors`` [num_classes + 1, D]: row ``c`` is class id ``c``. Row 0 (background in the
    reference files) is replaced by zeros and means "class unknown": the general prototype is then
    generated from the instance prototype alone (used by ``predict.py`` without ``--class-name``).

    ``prior_scale`` multiplies the HPM priors where the IFM reads them (1 = the reference). The priors lie
    in [0, 1] and enter the IFM as one channel beside 256 feature channels; a larger scale makes the
    prior's share of the first fusion layer comparable from the first iteration (docs/model.md, "What it does that the reference does not").
    """

    def __init__(self, backbone: Backbone, word_vectors: torch.Tensor, *, reduce_dim: int = 256, use_gim: bool = True,
                 use_hpm: bool = True, prior_scale: float = 1.0, freeze_backbone_bn: bool = True,
                 triplet_margin: float = 0.5, aux_weight: float = 1.0, zoom_factor: int = 8,
                 ignore_label: int) -> None:
        super().__init__()
        if not prior_scale > 0:
            raise ValueError(f"prior_scale must be a number > 0 (1 = the reference), got {prior_scale!r}")
        self.backbone = backbone.requires_grad_(False)
        self.down_features = DownFeatures(
            nn.Conv2d(backbone.channels[2] + backbone.channels[3], reduce_dim, 1, bias=False),
            nn.ReLU(inplace=True), nn.Dropout2d(0.5),
        )
        vectors = word_vectors.detach().float().clone()
        vectors[0] = 0
        self.register_buffer("word_vectors", vectors, persistent=False)
        self.use_gim, self.use_hpm, self.prior_scale = use_gim, use_hpm, prior_scale
        if use_gim:
            self.gig = GeneralInformationGenerator(vectors.shape[1], reduce_dim)
            self.lfg = local_feature_generator(reduce_dim)
        self.ifm = InformationFusion(reduce_dim)
        self.freeze_backbone_bn = freeze_backbone_bn
        self.triplet_margin, self.aux_weight = triplet_margin, aux_weight
        self.zoom_factor, self.ignore_label = zoom_factor, ignore_label
        self.loss_mean: LossMean = batch_mean  # the engine sets the global-batch mean under DDP (model/reduction.py)
        self.train()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], word_vectors: torch.Tensor) -> "MIANet":
        """Build from a config and its class-name vectors (:func:`util.runs.weights.build_mianet` reads them); the
        backbone is random until a base learner's or a checkpoint's state dict is loaded."""
        return cls(
            build_backbone(cfg["backbone"]), word_vectors,
            reduce_dim=cfg["reduce_dim"], use_gim=cfg["use_gim"], use_hpm=cfg["use_hpm"], prior_scale=cfg["prior_scale"],
            freeze_backbone_bn=cfg["freeze_backbone_bn"], triplet_margin=cfg["triplet_margin"],
            aux_weight=cfg["aux_weight"], zoom_factor=cfg["zoom_factor"], ignore_label=cfg["ignore_label"],
        )

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Everything but the backbone: down_features, GIG, LFG and IFM."""
        return (p for name, p in self.named_parameters() if not name.startswith("backbone."))

    def train(self, mode: bool = True) -> "MIANet":
        super().train(mode)
        if self.freeze_backbone_bn:
            self.backbone.eval()
        return self

    def encode(self, images: torch.Tensor, chunk: int | None = None) -> EncodedImages:
        """The per-image features the head reads, for ``images`` [N,3,H,W]: ``down_features`` of layer3+layer2
        (before its dropout) and layer4. Every image goes through the backbone once.

        In eval mode this is a pure function of each image, so an evaluation may compute it once per image and
        reuse it (:mod:`util.engine.evaluator`, ``feature_reuse``). Backbone BN in train mode (``freeze_backbone_bn:
        false``) makes an image's features depend on its batch: use :meth:`forward`, which batches as the
        reference does. Frozen BN: on CPU one channels-last image at a time, measured 15-30% faster than one NCHW
        batch (ResNet-50 at 473 and 641 px, 2 cores: smaller working set per layer, no layout reorder per
        convolution), and the same computation whatever else is in the batch; elsewhere batches of at most
        ``chunk`` images (all at once if None), which bounds the memory an evaluation needs.
        """
        with torch.no_grad():
            groups = images.split(1 if images.device.type == "cpu" else chunk or len(images))
            features = [self.backbone(cpu_layout(group))[2:] for group in groups]
        return self._encoded(features)

    def _encoded(self, features: list[tuple[torch.Tensor, ...]]) -> EncodedImages:
        mid = _join([self.down_features(layer3, layer2) for layer2, layer3, _ in features])
        return EncodedImages(mid, _join([layer4 for _, _, layer4 in features]))

    def _encode_episodes(self, query: torch.Tensor, supports: torch.Tensor) -> EncodedImages:
        """:meth:`encode` of the query batch followed by the flattened supports: [B + B*K, ...] each; with the
        backbone BN in train mode, the query batch and each shot's batch go through separately, as in the reference,
        so each group has its own batch statistics."""
        if not self.backbone.training:
            return self.encode(torch.cat([query, supports.flatten(0, 1)]))
        with torch.no_grad():
            shots = [self.backbone(cpu_layout(supports[:, k]))[2:] for k in range(supports.shape[1])]
            features = [self.backbone(cpu_layout(query))[2:],
                        [torch.stack(layer, dim=1).flatten(0, 1) for layer in zip(*shots)]]
        return self._encoded(features)

    def _summarize(self, support_feat: torch.Tensor, support_layer4: torch.Tensor, small_masks: torch.Tensor,
                   bins: list[int]) -> SupportSummary:
        directions = support_directions(support_layer4, small_masks[:, 0], bins) if self.use_hpm else []
        return SupportSummary(masked_average(support_feat, small_masks), directions)

    def summarize_supports(self, encoded: EncodedImages, masks: torch.Tensor, image_size: int) -> SupportSummary:
        """What the head needs from each support of :meth:`encode`'s ``encoded`` [N, ...] with its mask ``masks``
        [N,H,W] (1 = the class; 0 and 255 = not) at input height ``image_size``: the masked-average prototype
        and the HPM directions (:func:`model.hpm.support_directions`), [N, C] each. In eval mode a pure function
        of the (image, mask) pair."""
        support_feat = self.down_features[2](encoded.mid)
        small_masks = _small_masks(masks, support_feat)
        return self._summarize(support_feat, encoded.layer4, small_masks, _bins(image_size))

    @torch.no_grad()
    def predict(self, query: torch.Tensor, supports: torch.Tensor, support_masks: torch.Tensor, class_id: torch.Tensor,
                chunk: int | None = None) -> torch.Tensor:
        """Eval-mode logits [1,2,H',W'] of ONE episode (``query`` [1,3,H,W], ``supports`` [K,3,H,W], ``support_masks``
        [K,H,W], ``class_id`` [1]) as every inference path computes them (evaluation with and without feature reuse,
        predict.py): the query and the supports encoded (:meth:`encode`), each support summarised alone
        (:meth:`summarize_supports`), then :meth:`head` on this episode alone. An episode's logits thus never depend
        on which other episodes share its loader batch or which supports an evaluation cached."""
        size = query.shape[-2:]
        encoded = self.encode(torch.cat([query, supports]), chunk)
        shots = [self.summarize_supports(EncodedImages(encoded.mid[k:k + 1], encoded.layer4[k:k + 1]),
                                         support_masks[k - 1:k], size[0]) for k in range(1, len(encoded.mid))]
        return self.head(EncodedImages(encoded.mid[:1], encoded.layer4[:1]), stack_shots(shots), class_id, size)

    def head(self, query: EncodedImages, supports: SupportSummary, class_ids: torch.Tensor,
             image_size: tuple[int, int]) -> torch.Tensor:
        """Logits [B,2,H',W'] (see :meth:`forward`) from the encoded query batch [B, ...] (:meth:`encode`), the K
        shots' summaries [B, K, C] (:meth:`summarize_supports`) and the classes [B]; ``image_size`` (H, W) is the
        input's."""
        return self._head(query, supports, class_ids, image_size)[0]

    def _head(self, query: EncodedImages, supports: SupportSummary, class_ids: torch.Tensor,
              image_size: tuple[int, int]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """:meth:`head`'s logits, the per-bin auxiliary logits (train mode; else []) and the general prototype."""
        height, width = image_size
        query_feat = self.down_features[2](query.mid)
        prototype = supports.prototype.mean(dim=1)
        general = self.gig(self.word_vectors[class_ids], prototype) if self.use_gim else prototype
        bins = _bins(height)
        if self.use_hpm:
            priors = priors_from_directions(query.layer4, supports.directions, bins)
            if self.prior_scale != 1:
                priors = [prior * self.prior_scale for prior in priors]
        else:
            priors = [query_feat.new_zeros(query_feat.shape[0], 1, b, b) for b in bins]
        logits, aux_logits = self.ifm(query_feat, general, priors, aux=self.training)
        logits = logits.contiguous()
        if self.zoom_factor != 1:
            logits = bilinear(logits, ((height - 1) // 8 * self.zoom_factor + 1, (width - 1) // 8 * self.zoom_factor + 1))
        return logits, aux_logits, general

    def forward(self, query: torch.Tensor, supports: torch.Tensor, support_masks: torch.Tensor, class_ids: torch.Tensor,
                query_label: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Segment ``query`` [B,3,H,W] given ``supports`` [B,K,3,H,W] with ``support_masks`` [B,K,H,W]
        (1 = the class; 0 and 255 = not) of class ``class_ids`` [B].

        Returns logits [B,2,H',W'] (H' = (H-1)//8*zoom+1); in train mode with ``query_label`` [B,H,W] a dict
        with ``logits``, ``loss_main``, ``loss_aux``, ``loss_triplet`` and their weighted sum ``loss``; each is a mean
        over the batch's non-ignored pixels (triplet: its valid samples) taken by ``loss_mean``.
        Built on :meth:`encode`, :meth:`summarize_supports` and :meth:`head`.
        """
        batch, shots = supports.shape[:2]
        height, width = query.shape[-2:]
        encoded = self._encode_episodes(query, supports)
        dropout = self.down_features[2]
        support_feat = dropout(encoded.mid[batch:])
        # the support masks at layer3's size: for the prototype, HPM and the triplet loss's cell labels
        small_masks = _small_masks(support_masks.flatten(0, 1), support_feat)
        summary = self._summarize(support_feat, encoded.layer4[batch:], small_masks, _bins(height))
        per_episode = SupportSummary(summary.prototype.view(batch, shots, -1),
                                     [d.view(batch, shots, -1) for d in summary.directions])
        logits, aux_logits, general = self._head(EncodedImages(encoded.mid[:batch], encoded.layer4[:batch]), per_episode,
                                       class_ids, (height, width))
        if not self.training or query_label is None:
            return logits

        label = query_label.long()
        pixels = (label != self.ignore_label).sum()

        def pixel_mean(scores: torch.Tensor) -> torch.Tensor:
            total = F.cross_entropy(bilinear(scores, label.shape[-2:]), label, ignore_index=self.ignore_label,
                                    reduction="sum")
            return self.loss_mean(total, pixels)

        loss_main = pixel_mean(logits)
        loss_aux = torch.stack([pixel_mean(aux) for aux in aux_logits]).mean()
        if self.use_gim:
            local = self.lfg(support_feat)
            # the reference's cell labels: the layer3-size mask sampled nearest and truncated, so 1 only where it is exactly 1
            cell_masks = F.interpolate(small_masks, size=local.shape[-2:], mode="nearest").long()
            local = local.reshape(batch, shots, local.shape[1], -1).transpose(2, 3).flatten(1, 2)
            loss_triplet = triplet_loss(general, local, cell_masks.view(batch, -1), self.triplet_margin, self.loss_mean)
        else:
            loss_triplet = loss_main.new_zeros(())
        loss = loss_main + self.aux_weight * loss_aux + loss_triplet
        return {"logits": logits, "loss_main": loss_main, "loss_aux": loss_aux, "loss_triplet": loss_triplet, "loss": loss}
