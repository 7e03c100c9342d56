"""Segmentation scores: intersection/union counts accumulated over images or episodes, reduced over ranks.

Few-shot scores (the PFENet/BAM definitions, see the FSS protocol):
- mIoU: per episode class, foreground intersections and unions summed over that class's episodes,
  IoU = sum I / sum U, then the mean over the classes that had episodes.
- FB-IoU: background and foreground intersections and unions summed over all episodes, IoU of each,
  averaged.
Pixels labelled ``ignore_index`` (config key ``ignore_label``, passed by the caller) count nowhere. Counts are int64, so sums are exact.
Episode scores also count how much of the scored pixels the predictions and the labels mark as foreground,
so that a model predicting (nearly) everything or nothing as the object is noticed (:data:`NEARLY_ALL`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from util.common.errors import UserError
from util.common.distributed import all_reduce_sum

NEARLY_ALL = 0.98
"""A prediction covering at least this share of the scored pixels as foreground is "(nearly) all foreground";
one covering at least this share as background is "(nearly) all background"."""


def intersection_union(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class intersection and union pixel counts (int64 ``[num_classes]``) of two label maps."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    valid = label != ignore_index
    pred = pred[valid].long()
    label = label[valid].long()
    inter = torch.bincount(pred[pred == label], minlength=num_classes)[:num_classes]
    area_pred = torch.bincount(pred, minlength=num_classes)[:num_classes]
    area_label = torch.bincount(label, minlength=num_classes)[:num_classes]
    return inter, area_pred + area_label - inter


def predict_on_label(logits: torch.Tensor, label_size: tuple[int, int], ori_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Class map of one sample's ``logits [n, h, w]`` on the grid of the label it is scored against.

    ``ori_size=None``: the label is the network input's grid (``label_size``); logits are resized to it.
    ``ori_size=(h0, w0)`` (ori_resize): the input was the original image resized and placed top-left on a square,
    so the logits are resized to the square of side ``max(h0, w0)`` and its top-left ``h0 x w0`` corner is the
    prediction for the original label: the reference's mapping (its output resized onto the original label padded
    to that square), for both test geometries. With ``test_geometry: aligned`` the image fills the input square's
    top-left ``(h0, w0) / max(h0, w0)``, so the prediction lands on it; with ``reference`` it fills less (sides
    floored to a multiple of 8), and this mapping stretches the output over it as the reference does.
    Resizing is bilinear with ``align_corners=True`` (the PFENet family).
    """
    if ori_size is None:
        size = label_size
    else:
        side = max(ori_size)
        size = (side, side)
    resized = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=True)[0]
    pred = resized.argmax(0)
    if ori_size is not None:
        pred = pred[: ori_size[0], : ori_size[1]]
    return pred


def _not_finite(where: str, amp: str) -> UserError:
    fix = (f"it ran under amp {amp}: set amp off and run again" if amp != "off" else
           "the weights give non-finite outputs on this input: check the checkpoint (did its training diverge?)")
    return UserError(f"the network's output {where} is not finite (NaN/Inf), so no score or mask is made from it; {fix}")


def check_finite_logits(logits: torch.Tensor, amp: str, names: Sequence[str] | None = None) -> None:
    """UserError if a sample of ``logits [B, ...]`` holds NaN/Inf: no score or mask is ever made from them.

    ``names`` (one per sample, e.g. the query paths) say which input it was; ``amp`` is the autocast mode used.
    """
    finite = torch.isfinite(logits.flatten(1)).all(1)
    if bool(finite.all()):
        return
    first = int(torch.nonzero(~finite)[0])
    raise _not_finite(f"for {names[first]}" if names else f"for sample {first} of an evaluation batch", amp)


class FiniteWatch:
    """:func:`check_finite_logits` for a whole evaluation without waiting for the device at every batch: :meth:`add`
    keeps, on the device, the first sample whose logits are not finite; :meth:`check` (before any score is read)
    raises the same one-line error naming it."""

    def __init__(self, amp: str):
        self.amp, self.names = amp, []
        self.first: torch.Tensor | None = None

    def add(self, logits: torch.Tensor, names: Sequence[str]) -> None:
        finite = torch.isfinite(logits.flatten(1)).all(1)
        numbers = torch.arange(len(self.names), len(self.names) + len(names), device=logits.device)
        first = torch.where(finite, torch.iinfo(torch.int64).max, numbers).min()
        self.first = first if self.first is None else torch.minimum(self.first, first)
        self.names.extend(names)

    def check(self) -> None:
        if self.first is not None and (first := int(self.first)) < len(self.names):
            raise _not_finite(f"for {self.names[first]}", self.amp)


class SemanticIoU:
    """Per-class intersection/union accumulated over images (stage-1 validation, FB-IoU). The counts stay on the
    predictions' device until :meth:`reduce` (an update never waits for the device)."""

    def __init__(self, num_classes: int, ignore_index: int):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.inter = torch.zeros(num_classes, dtype=torch.int64)
        self.union = torch.zeros(num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        if pred.shape != label.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
        valid = (label != self.ignore_index).flatten()
        n = self.num_classes
        # the confusion matrix of the valid pixels, by index_add (a bincount would read its size from the device)
        cells = (label.flatten().long().clamp(0, n - 1) * n + pred.flatten().long().clamp(0, n - 1))
        confusion = torch.zeros(n * n, dtype=torch.int64, device=pred.device).index_add_(0, cells, valid.long())
        confusion = confusion.view(n, n)
        inter = confusion.diagonal()
        self.inter = self.inter.to(pred.device) + inter
        self.union = self.union.to(pred.device) + confusion.sum(0) + confusion.sum(1) - inter

    def reduce(self) -> None:
        """Sum the counts over all ranks (in place), onto the CPU."""
        self.inter = all_reduce_sum(self.inter).cpu()
        self.union = all_reduce_sum(self.union).cpu()

    def iou(self) -> torch.Tensor:
        """IoU per class (float64); NaN for a class that never occurred in prediction or label."""
        return self.inter.double().cpu() / self.union.double().cpu()

    def miou(self, classes: list[int] | None = None) -> float:
        """Mean IoU over ``classes`` (default all) that occurred."""
        iou = self.iou() if classes is None else self.iou()[classes]
        return float(iou[~iou.isnan()].mean()) if (~iou.isnan()).any() else float("nan")


class FewShotIoU:
    """Episode scores: per-class foreground IoU (mIoU) and FB-IoU, accumulated over episodes on the predictions'
    device (an update never waits for the device; :meth:`reduce` brings the counts to the CPU)."""

    def __init__(self, num_classes: int, ignore_index: int, baseline: bool = False):
        self.ignore_index = ignore_index
        # the same scores of the baseline's predictions (:meth:`util.dataset.EpisodeDataset.baseline_prediction`)
        self.baseline = FewShotIoU(num_classes, ignore_index) if baseline else None
        # rows: class id 0..num_classes; columns: foreground intersection, union, episode count
        self.per_class = torch.zeros(num_classes + 1, 3, dtype=torch.int64)
        self.fb = SemanticIoU(2, ignore_index)
        # scored pixels, predicted foreground, labelled foreground; episodes predicted (nearly) all fg / all bg
        self.coverage = torch.zeros(5, dtype=torch.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor, class_id: int) -> None:
        """Add one episode: binary ``pred`` and ``label`` ({0, 1, ignore}) of the same shape."""
        if pred.shape != label.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
        valid = label != self.ignore_index
        predicted, labelled = (pred == 1) & valid, (label == 1) & valid
        scored, foreground, target = valid.sum(), predicted.sum(), labelled.sum()
        inter_fg, union_fg = (predicted & labelled).sum(), (predicted | labelled).sum()
        inter_bg = (~predicted & ~labelled & valid).sum()
        union_bg = scored - inter_fg
        device = pred.device
        self.fb.inter = self.fb.inter.to(device) + torch.stack([inter_bg, inter_fg])
        self.fb.union = self.fb.union.to(device) + torch.stack([union_bg, union_fg])
        self.per_class = self.per_class.to(device)
        self.per_class[class_id] += torch.stack([inter_fg, union_fg, torch.ones_like(inter_fg)])
        nonempty = scored > 0
        self.coverage = self.coverage.to(device) + torch.stack([
            scored, foreground, target, (foreground >= NEARLY_ALL * scored) & nonempty,
            (scored - foreground >= NEARLY_ALL * scored) & nonempty]).long()

    def reduce(self) -> None:
        """Sum the counts over all ranks (in place), onto the CPU."""
        self.per_class = all_reduce_sum(self.per_class).cpu()
        self.coverage = all_reduce_sum(self.coverage).cpu()
        self.fb.reduce()
        if self.baseline is not None:
            self.baseline.reduce()

    def episodes(self) -> int:
        return int(self.per_class[:, 2].sum())

    def class_iou(self) -> dict[int, float]:
        """Foreground IoU of every class that had at least one episode."""
        per_class = self.per_class.cpu()
        seen = torch.nonzero(per_class[:, 2]).flatten().tolist()
        return {c: _ratio(int(per_class[c, 0]), int(per_class[c, 1])) for c in seen}

    def miou(self) -> float:
        ious = list(self.class_iou().values())
        return sum(ious) / len(ious) if ious else float("nan")

    def fbiou(self) -> float:
        return float(self.fb.iou().nanmean())

    def foreground_coverage(self) -> dict[str, float | int]:
        """See :func:`foreground_coverage`."""
        return foreground_coverage(self.coverage.cpu())


def foreground_coverage(counts: torch.Tensor) -> dict[str, float | int]:
    """How much the predictions and the labels mark as foreground, from :attr:`FewShotIoU.coverage` counts (of one
    evaluation, or summed over several): shares of the scored pixels (all episodes pooled), and the episodes whose
    prediction is (nearly) all foreground / all background (:data:`NEARLY_ALL`)."""
    scored, predicted, labelled, all_foreground, all_background = counts.tolist()
    return {"predicted": predicted / scored if scored else 0.0, "labelled": labelled / scored if scored else 0.0,
            "episodes_all_foreground": all_foreground, "episodes_all_background": all_background}


def _ratio(inter: int, union: int) -> float:
    """IoU of summed counts; an empty union scores 0 (as I / (U + eps) in the PFENet family)."""
    return inter / union if union else 0.0
