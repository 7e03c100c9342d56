"""The one paired image/label transform pipeline, used for queries, supports and stage-1 images alike.

Every step takes ``(image, label, rng)`` and returns ``(image, label)``: the image is float32 RGB in
0..255, the label uint8 class ids (config key ``ignore_label`` = ignore; 255 in VOC/COCO files). Randomness comes
only from the explicit ``numpy.random.Generator``, so a seeded generator reproduces the exact augmentation.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import cv2
import numpy as np
import torch

from util.common.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN_STD = (0.5, 0.5, 0.5)
TRAIN_CROPS = ("uniform_retry", "foreground_anchor")
TEST_GEOMETRIES = ("aligned", "reference")
REFERENCE_IMAGE_FILL = (0.0, 0.0, 0.0)  # the reference pads with pixel value 0 (black), before normalisation
REFERENCE_SIDE_MULTIPLE = 8
UNIFORM_RETRIES = 31           # the reference re-draws while its counter is <= 30: at most 31 more crops
UNIFORM_KEEP_FRACTION = 0.85
ANCHOR_RETRIES = 10
ANCHOR_KEEP_FRACTION = 0.5
BLUR_KERNEL = 5

Mapping = tuple[np.ndarray, np.ndarray]


def normalization_for(cfg) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` in 0..1 units: ``cfg.pixel_mean/pixel_std`` if set, else the backbone's own."""
    if cfg.pixel_mean or cfg.pixel_std:
        return tuple(float(v) for v in cfg.pixel_mean), tuple(float(v) for v in cfg.pixel_std)
    if str(cfg.backbone).startswith("efficientnet"):
        return HALF_MEAN_STD, HALF_MEAN_STD
    return IMAGENET_MEAN, IMAGENET_STD


class Step(Protocol):
    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Mapping: ...


class RandomScale:
    """Resize both by one factor drawn uniformly from ``[low, high]``."""

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def __call__(self, image, label, rng):
        factor = rng.uniform(self.low, self.high)
        height, width = label.shape
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
                cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))


class RandomRotate:
    """With probability ``p``, rotate about the centre by an angle in ``[low, high]`` degrees."""

    def __init__(self, low: float, high: float, image_fill: Sequence[float], label_fill: int, p: float = 0.5):
        self.low, self.high, self.p = low, high, p
        self.image_fill, self.label_fill = tuple(image_fill), label_fill

    def __call__(self, image, label, rng):
        if rng.random() >= self.p:
            return image, label
        angle = rng.uniform(self.low, self.high)
        height, width = label.shape
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        image = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=self.image_fill)
        label = cv2.warpAffine(label, matrix, (width, height), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=self.label_fill)
        return image, label


class RandomGaussianBlur:
    """With probability ``p``, blur the image (not the label) with a small Gaussian kernel."""

    def __init__(self, kernel: int = BLUR_KERNEL, p: float = 0.5):
        self.kernel, self.p = kernel, p

    def __call__(self, image, label, rng):
        if rng.random() >= self.p:
            return image, label
        return cv2.GaussianBlur(image, (self.kernel, self.kernel), 0), label


class RandomHorizontalFlip:
    """With probability ``p``, mirror both left-right."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, label, rng):
        if rng.random() >= self.p:
            return image, label
        return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])


def _pad(image: np.ndarray, label: np.ndarray, top: int, bottom: int, left: int, right: int,
         image_fill: Sequence[float], label_fill: int) -> Mapping:
    if top == bottom == left == right == 0:
        return image, label
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=tuple(image_fill))
    label = cv2.copyMakeBorder(label, top, bottom, left, right, cv2.BORDER_CONSTANT, value=label_fill)
    return image, label


class RandomCrop:
    """Pad (centred, mean/ignore) to at least ``size``, then crop ``size x size``; ``rule`` picks the place.

    ``uniform_retry`` (the reference, BAM's ``Crop``): the target is label value 1 (the episode's
    class; in stage 1 the fold's first base class, as the reference runs the same crop there). A
    uniform place is drawn; while it keeps less than 85% of the target, a new uniform place is drawn,
    at most ``UNIFORM_RETRIES`` times, and the last one is used.

    ``foreground_anchor``: the foreground is every label value other than 0 and the ignore label.
    The first place is uniform; if it keeps less than half of the foreground, up to ``ANCHOR_RETRIES``
    more places are drawn around a random foreground pixel until one does; otherwise the best place
    tried is used.
    """

    def __init__(self, size: int, image_fill: Sequence[float], ignore_label: int, rule: str = "uniform_retry"):
        if rule not in TRAIN_CROPS:
            raise ValueError(f"crop rule must be one of {TRAIN_CROPS}, got {rule!r}")
        self.size, self.image_fill, self.ignore_label, self.rule = size, tuple(image_fill), ignore_label, rule

    def _place(self, rng: np.random.Generator, height: int, width: int, anchor: tuple[int, int] | None) -> tuple[int, int]:
        if anchor is None:
            return int(rng.integers(0, height - self.size + 1)), int(rng.integers(0, width - self.size + 1))
        y, x = anchor
        top_range = (max(0, y - self.size + 1), min(y, height - self.size))
        left_range = (max(0, x - self.size + 1), min(x, width - self.size))
        return int(rng.integers(top_range[0], top_range[1] + 1)), int(rng.integers(left_range[0], left_range[1] + 1))

    def _kept(self, integral: np.ndarray, top: int, left: int) -> int:
        bottom, right = top + self.size, left + self.size
        return int(integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left])

    def _uniform_retry(self, label: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        height, width = label.shape
        integral = cv2.integral((label == 1).astype(np.uint8))
        total = int(integral[-1, -1])
        top, left = self._place(rng, height, width, None)
        for _ in range(UNIFORM_RETRIES):
            if self._kept(integral, top, left) >= UNIFORM_KEEP_FRACTION * total:
                break
            top, left = self._place(rng, height, width, None)
        return top, left

    def _foreground_anchor(self, label: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        height, width = label.shape
        foreground = (label != 0) & (label != self.ignore_label)
        integral = cv2.integral(foreground.astype(np.uint8))
        total = int(integral[-1, -1])
        points, anchor = None, None
        best, best_kept = (0, 0), -1
        for attempt in range(ANCHOR_RETRIES + 1):
            if attempt and total:
                points = np.argwhere(foreground) if points is None else points
                anchor = tuple(points[int(rng.integers(len(points)))])
            top, left = self._place(rng, height, width, anchor)
            kept = self._kept(integral, top, left)
            if kept > best_kept:
                best, best_kept = (top, left), kept
            if kept >= ANCHOR_KEEP_FRACTION * total:
                break
        return best

    def __call__(self, image, label, rng):
        height, width = label.shape
        pad_h, pad_w = max(self.size - height, 0), max(self.size - width, 0)
        image, label = _pad(image, label, pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2,
                            self.image_fill, self.ignore_label)
        place = self._uniform_retry if self.rule == "uniform_retry" else self._foreground_anchor
        top, left = place(label, rng)
        return (image[top:top + self.size, left:left + self.size],
                label[top:top + self.size, left:left + self.size])


class ResizePad:
    """Test geometry ``aligned``: resize (bilinear; label nearest) so that the longer side is exactly ``size`` and the
    shorter one is rounded, place the image top-left on a ``size`` square padded with ``image_fill`` (the mean) and
    the label padded with ``ignore_label``."""

    def __init__(self, size: int, image_fill: Sequence[float], ignore_label: int):
        self.size, self.image_fill, self.ignore_label = size, tuple(image_fill), ignore_label

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of an ``height x width`` image before padding."""
        scale = self.size / max(height, width)
        return min(self.size, max(1, round(height * scale))), min(self.size, max(1, round(width * scale)))

    def __call__(self, image, label, rng):
        height, width = label.shape
        new_h, new_w = self.resized_size(height, width)
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        return _pad(image, label, 0, self.size - new_h, 0, self.size - new_w, self.image_fill, self.ignore_label)


class ReferenceResizePad(ResizePad):
    """Test geometry ``reference``: the authors' ``resized_val`` (the test transform of BAM's and MIANet's shipped
    configs). The longer side becomes ``size`` and the shorter ``int(side * size / longer)`` (truncated), then each
    is floored to a multiple of 8 (473 -> 472); the image (bilinear) is placed top-left on a ``size`` square of pixel
    value 0, black before normalisation, and the label (nearest) on one of ``ignore_label``."""

    def __init__(self, size: int, ignore_label: int):
        super().__init__(size, REFERENCE_IMAGE_FILL, ignore_label)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        if height >= width:
            new_h, new_w = self.size, int(width * (self.size / height))
        else:
            new_h, new_w = int(height * (self.size / width)), self.size
        new_h, new_w = (new_h // REFERENCE_SIDE_MULTIPLE * REFERENCE_SIDE_MULTIPLE,
                        new_w // REFERENCE_SIDE_MULTIPLE * REFERENCE_SIDE_MULTIPLE)
        if not (new_h and new_w):
            raise UserError(f"an image of {height}x{width} px becomes {new_h}x{new_w} under test_geometry reference at "
                            f"size {self.size} (each side floored to a multiple of {REFERENCE_SIDE_MULTIPLE}); use "
                            "test_geometry aligned for so elongated an image")
        return new_h, new_w


class PairedTransform:
    """Apply ``steps`` to an image/label pair, then normalise to ``[3,S,S]`` float32 / ``[S,S]`` int64 tensors."""

    def __init__(self, steps: Sequence[Step], mean: Sequence[float], std: Sequence[float]):
        self.steps = list(steps)
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.std = np.asarray(std, dtype=np.float32) * 255.0

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        image = image.astype(np.float32)
        for step in self.steps:
            image, label = step(image, label, rng)
        image = np.array(image, dtype=np.float32)  # own contiguous copy, normalised in place
        image -= self.mean
        image /= self.std
        return (torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                torch.from_numpy(label.astype(np.int64)))


def build_transform(cfg, train: bool, size: int | None = None, stage: str = "meta") -> PairedTransform:
    """The training augmentation (scale, rotate, blur, flip, crop) or the test geometry (resize, pad: ``test_geometry``
    ``aligned`` :class:`ResizePad` or ``reference`` :class:`ReferenceResizePad`), with the settings of ``cfg`` (a
    :class:`util.dataset.DataSpec` or a config: the same keys).

    ``stage="base"`` takes stage 1's sizes and scale range (``base_train_size``, ``base_val_size``,
    ``base_scale_min/max``); ``"meta"`` those of the episodes. ``size`` overrides the size.
    """
    if stage not in ("meta", "base"):
        raise ValueError(f"stage must be 'meta' or 'base', got {stage!r}")
    if cfg.train_crop not in TRAIN_CROPS:
        raise UserError(f"config key 'train_crop' must be one of {list(TRAIN_CROPS)}, got {cfg.train_crop!r}")
    if cfg.test_geometry not in TEST_GEOMETRIES:
        raise UserError(f"config key 'test_geometry' must be one of {list(TEST_GEOMETRIES)}, got {cfg.test_geometry!r}")
    base = stage == "base"
    mean, std = normalization_for(cfg)
    fill = tuple(255.0 * m for m in mean)
    ignore = cfg.ignore_label
    if train:
        size = size or (cfg.base_train_size if base else cfg.train_size)
        scale = (cfg.base_scale_min, cfg.base_scale_max) if base else (cfg.scale_min, cfg.scale_max)
        steps: list[Step] = [
            RandomScale(*scale),
            RandomRotate(cfg.rotate_min, cfg.rotate_max, fill, ignore),
            RandomGaussianBlur(),
            RandomHorizontalFlip(),
            RandomCrop(size, fill, ignore, cfg.train_crop),
        ]
    else:
        size = size or (cfg.base_val_size if base else cfg.val_size)
        steps = [ResizePad(size, fill, ignore) if cfg.test_geometry == "aligned" else ReferenceResizePad(size, ignore)]
    return PairedTransform(steps, mean, std)


def bbox_mask(binary: np.ndarray, ignore_label: int) -> np.ndarray:
    """Weak support annotation: the bounding box of the foreground (value 1) filled with 1, ignore kept outside."""
    out = np.where(binary == ignore_label, ignore_label, 0).astype(np.uint8)
    ys, xs = np.nonzero(binary == 1)
    if len(ys):
        out[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = 1
    return out


def binary_label(label: np.ndarray, class_id: int, ignore_label: int) -> np.ndarray:
    """``class_id`` -> 1, ignore kept, everything else -> 0."""
    out = (label == class_id).astype(np.uint8)
    out[label == ignore_label] = ignore_label
    return out
