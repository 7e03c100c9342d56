"""Test oracle: the authors' ``resized_val`` evaluation geometry (the test transform and the ``ori_resize`` scoring of
BAM's and MIANet's test loops), transcribed step by step in plain python and numpy. Slow on purpose; it shares no
code with util/data/transform.py or util/engine/metrics.py.

The reference, for an ``h x w`` image and test size L:
1. sides: if h >= w the height becomes L and the width ``int(w * (L / h))``, else the width L and the height
   ``int(h * (L / w))``; then each side that is not a multiple of 8 is floored to one (473 -> 472);
2. the image (float32 RGB 0..255) is resized bilinearly (OpenCV) and written into the top-left corner of an L x L
   canvas of zeros; the label (as float32) is resized nearest (OpenCV) into an L x L canvas of 255;
3. the canvas is normalised per channel: (value - 255 mean) / (255 std);
4. ``ori_resize``: the L x L output is resized bilinearly (align_corners) to M x M, M = max(h, w), and scored against
   the original label written into the top-left corner of an M x M canvas of 255 (255 counts nowhere); without it
   the L x L output is scored against the L x L label canvas of step 2.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

IGNORE = 255


def reference_sides(height: int, width: int, test_size: int) -> tuple[int, int]:
    """Step 1: the resized (height, width)."""
    if height >= width:
        ratio = test_size * 1.0 / height
        new_h, new_w = test_size, int(width * ratio)
    else:
        ratio = test_size * 1.0 / width
        new_h, new_w = int(height * ratio), test_size
    if new_h % 8 != 0:
        new_h = int(new_h / 8) * 8
    if new_w % 8 != 0:
        new_w = int(new_w / 8) * 8
    return new_h, new_w


def resized_val(image: np.ndarray, label: np.ndarray, test_size: int, mean, std) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-3: the network input ``[3, L, L]`` (float32) and the label ``[L, L]`` (int64) of an RGB image and its
    label (``mean``/``std`` in 0..1 units)."""
    new_h, new_w = reference_sides(label.shape[0], label.shape[1], test_size)
    small_image = cv2.resize(image.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    small_label = cv2.resize(label.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    canvas = np.zeros((test_size, test_size, 3))
    label_canvas = np.ones((test_size, test_size)) * IGNORE
    for y in range(new_h):
        for x in range(new_w):
            canvas[y, x, :] = small_image[y, x, :]
            label_canvas[y, x] = small_label[y, x]
    network_input = np.zeros((3, test_size, test_size), np.float32)
    for channel in range(3):
        network_input[channel] = (canvas[:, :, channel] - mean[channel] * 255) / (std[channel] * 255)
    return network_input, label_canvas.astype(np.int64)


def bilinear_align_corners(maps: np.ndarray, side: int) -> np.ndarray:
    """``maps [C, L, L]`` resized to ``[C, side, side]``: output pixel i reads the input at i (L - 1) / (side - 1),
    weighting its two neighbours on each axis (rows one at a time, columns at once)."""
    size = maps.shape[-1]
    scale = (size - 1) / (side - 1) if side > 1 else 0.0
    x = np.arange(side) * scale
    x0 = np.minimum(np.floor(x).astype(np.int64), size - 1)
    x1, wx = np.minimum(x0 + 1, size - 1), x - x0
    out = np.zeros((maps.shape[0], side, side))
    for i in range(side):
        y = i * scale
        y0 = min(int(math.floor(y)), size - 1)
        y1, wy = min(y0 + 1, size - 1), y - y0
        top = (1 - wx) * maps[:, y0, x0] + wx * maps[:, y0, x1]
        bottom = (1 - wx) * maps[:, y1, x0] + wx * maps[:, y1, x1]
        out[:, i, :] = (1 - wy) * top + wy * bottom
    return out


def scored_maps(logits: np.ndarray, label_canvas: np.ndarray, original_label: np.ndarray,
                ori_resize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Step 4: (the output maps ``[C, ., .]``, the label) the reference compares."""
    if not ori_resize:
        return logits, label_canvas
    height, width = original_label.shape
    side = max(height, width)
    target = np.ones((side, side), np.int64) * IGNORE
    target[:height, :width] = original_label
    return bilinear_align_corners(logits, side), target


def foreground_counts(foreground: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """Foreground (intersection, union) of a binary prediction against a {0, 1, 255} label, 255 counting nowhere."""
    scored = target != IGNORE
    truth = target == 1
    return int((foreground & truth & scored).sum()), int(((foreground | truth) & scored).sum())
