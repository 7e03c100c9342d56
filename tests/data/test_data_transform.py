"""The paired transform: image/label stay aligned, test geometry, normalisation, seeded randomness."""
import cv2
import numpy as np
import pytest
import torch

from tests.support.reference_geometry import resized_val
from util.common.config import load_config
from util.common.errors import UserError
from util.data.transform import (IMAGENET_MEAN, IMAGENET_STD, RandomCrop, bbox_mask, binary_label, build_transform,
                            normalization_for)

COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.float32)


def pattern(height=70, width=90):
    """A label of stripes and blocks (ids 0..3) and an image whose colour encodes the id."""
    label = np.zeros((height, width), np.uint8)
    label[5:40, 10:50] = 1
    label[30:65, 45:85] = 2
    label[:, 60:66] = 3
    return COLOURS[label].astype(np.uint8), label


def decode(image: torch.Tensor, mean, std) -> np.ndarray:
    rgb = (image.permute(1, 2, 0).numpy() * np.array(std) + np.array(mean)) * 255
    return np.argmin(((rgb[:, :, None, :] - COLOURS[None, None]) ** 2).sum(-1), axis=-1)


@pytest.mark.parametrize("seed", range(12))
def test_train_transform_keeps_image_and_label_aligned(seed):
    cfg = load_config(None, {"train_size": 64, "scale_min": 0.7, "scale_max": 1.3, "rotate_min": -30.0, "rotate_max": 30.0})
    image, label = pattern()
    out_image, out_label = build_transform(cfg, train=True)(image, label, np.random.default_rng(seed))
    assert out_image.shape == (3, 64, 64) and out_label.shape == (64, 64)
    assert out_image.dtype == torch.float32 and out_label.dtype == torch.int64
    labels = out_label.numpy()
    valid = labels != 255
    # compare away from edges, where interpolation and blur mix colours
    interior = np.ones_like(valid)
    for value in np.unique(labels):
        region = (labels == value).astype(np.uint8)
        interior &= ~((cv2.dilate(region, np.ones((7, 7))) > 0) & (cv2.erode(region, np.ones((7, 7))) == 0))
    check = valid & interior
    assert check.sum() > 200
    assert (decode(out_image, IMAGENET_MEAN, IMAGENET_STD)[check] == labels[check]).mean() > 0.99


def test_same_generator_state_same_output_and_different_seeds_differ():
    cfg = load_config(None, {"train_size": 64})
    image, label = pattern()
    transform = build_transform(cfg, train=True)
    a = transform(image, label, np.random.default_rng(5))
    b = transform(image, label, np.random.default_rng(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    others = [transform(image, label, np.random.default_rng(s))[1] for s in range(6, 12)]
    assert any(not torch.equal(a[1], o) for o in others)


def test_test_geometry_resizes_longer_side_and_pads_top_left():
    cfg = load_config(None, {"val_size": 60})
    image, label = pattern(40, 80)
    out_image, out_label = build_transform(cfg, train=False)(image, label, np.random.default_rng(0))
    assert out_label.shape == (60, 60)
    assert (out_label[30:] == 255).all() and (out_label[:30] != 255).all()
    assert torch.allclose(out_image[:, 30:], torch.zeros(3, 30, 60), atol=1e-5)  # padding = the mean
    expected = cv2.resize(label, (60, 30), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(out_label[:30].numpy(), expected)


# (image height, width), test size -> the image's height and width inside the reference's square; 60 x 42: the
# shorter side 39.9 is truncated to 39, then floored to 32 (rounding would give 40)
REFERENCE_SIDES = {((37, 61), 57): (32, 56), ((61, 37), 57): (56, 32), ((57, 57), 57): (56, 56),
                   ((60, 42), 57): (56, 32), ((42, 60), 57): (32, 56), ((20, 30), 57): (32, 56),
                   ((333, 500), 473): (312, 472), ((70, 90), 64): (48, 64)}


@pytest.mark.parametrize("shape, size", list(REFERENCE_SIDES), ids=lambda v: "x".join(map(str, v)) if
                         isinstance(v, tuple) else str(v))
def test_reference_geometry_equals_the_transcribed_resized_val(shape, size):
    """test_geometry reference: the authors' resized_val (oracle: tests/support/reference_geometry.py): sides floored
    to a multiple of 8 (57 -> 56, 473 -> 472), image top-left on black (pixel 0 before normalisation), label on 255;
    an image smaller than the test size is enlarged as well."""
    cfg = load_config(None, {"val_size": size, "test_geometry": "reference", "backbone": "resnet50"})
    image, label = pattern(*shape)
    out_image, out_label = build_transform(cfg, train=False)(image, label, np.random.default_rng(0))
    expected_image, expected_label = resized_val(image, label, size, IMAGENET_MEAN, IMAGENET_STD)
    assert np.array_equal(out_label.numpy(), expected_label)
    assert np.allclose(out_image.numpy(), expected_image, rtol=0, atol=1e-5)
    new_h, new_w = REFERENCE_SIDES[shape, size]
    inside = np.zeros((size, size), bool)
    inside[:new_h, :new_w] = True
    assert (out_label.numpy()[~inside] == 255).all() and (out_label.numpy()[inside] != 255).all()
    black = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out_image[:, ~torch.from_numpy(inside)], black[:, None].expand(3, int((~inside).sum())),
                          atol=1e-5)


def test_reference_geometry_refuses_an_image_it_would_shrink_to_nothing():
    cfg = load_config(None, {"val_size": 57, "test_geometry": "reference"})
    image, label = pattern(500, 7)
    with pytest.raises(UserError, match="becomes 56x0 under test_geometry reference at size 57"):
        build_transform(cfg, train=False)(image, label, np.random.default_rng(0))
    with pytest.raises(UserError, match=r"'test_geometry' must be one of \['aligned', 'reference'\]"):
        build_transform(load_config(None, {"test_geometry": "stretched"}), train=False)


def test_normalization_by_backbone_and_override():
    cfg = load_config(None, {"backbone": "resnet50"})
    assert normalization_for(cfg) == (IMAGENET_MEAN, IMAGENET_STD)
    cfg = load_config(None, {"backbone": "efficientnet_lite0"})
    assert normalization_for(cfg) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    cfg = load_config(None, {"pixel_mean": [0.1, 0.2, 0.3], "pixel_std": [1.0, 1.0, 1.0]})
    assert normalization_for(cfg) == ((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    image = np.full((4, 4, 3), 255, np.uint8)
    out, _ = build_transform(cfg, train=False, size=4)(image, np.zeros((4, 4), np.uint8), np.random.default_rng(0))
    assert torch.allclose(out[:, 0, 0], torch.tensor([0.9, 0.8, 0.7]))


def test_foreground_anchored_crop_keeps_a_small_foreground():
    label = np.zeros((200, 200), np.uint8)
    label[150:170, 20:40] = 1
    image = np.zeros((200, 200, 3), np.float32)
    crop = RandomCrop(64, (0.0, 0.0, 0.0), 255, "foreground_anchor")
    kept = [(crop(image, label, np.random.default_rng(s))[1] == 1).sum() for s in range(20)]
    assert min(kept) >= 200  # at least half of the 400 foreground pixels every time


def test_binary_and_bbox_masks():
    label = np.array([[0, 3, 3, 255], [5, 0, 3, 0], [0, 0, 0, 255]], np.uint8)
    binary = binary_label(label, 3, 255)
    assert binary.tolist() == [[0, 1, 1, 255], [0, 0, 1, 0], [0, 0, 0, 255]]
    assert bbox_mask(binary, 255).tolist() == [[0, 1, 1, 255], [0, 1, 1, 0], [0, 0, 0, 255]]


# ---------------------------------------------------------------- the random augmentations, measured over seeds

SEEDS = range(80)
SCALE, ANGLE = (0.6, 1.4), 20.0


def bar_scene() -> tuple[np.ndarray, np.ndarray]:
    """A 90x120 noise image whose label holds a 16x48 horizontal bar (1) left of centre and a 255 band."""
    image = np.random.default_rng(0).uniform(0, 255, (90, 120, 3)).astype(np.uint8)
    label = np.zeros((90, 120), np.uint8)
    label[30:46, 15:63] = 1
    label[80:84, :] = 255
    return image, label


def bar_measures(label: np.ndarray) -> tuple[float, float, float]:
    """(area, orientation in degrees, centroid column) of the label's 1 pixels, from image moments."""
    moments = cv2.moments((label == 1).astype(np.uint8), binaryImage=True)
    angle = 0.5 * np.degrees(np.arctan2(2 * moments["mu11"], moments["mu20"] - moments["mu02"]))
    return moments["m00"], float(angle), moments["m10"] / moments["m00"]


@pytest.mark.parametrize("crop", ["uniform_retry", "foreground_anchor"])
def test_scale_rotation_and_flip_are_drawn_in_range_at_the_stated_rates(crop):
    """Output 170 px: the largest scaled image (126x168) fits, so the crop only pads (centred) and the whole
    augmented label is seen. Scale f multiplies the bar's area by f^2; rotation (p 0.5) turns it by up to 20
    degrees; the flip (p 0.5) moves it right of the centre."""
    cfg = load_config(None, {"train_size": 170, "scale_min": SCALE[0], "scale_max": SCALE[1], "rotate_min": -ANGLE,
                             "rotate_max": ANGLE, "train_crop": crop})
    transform = build_transform(cfg, train=True)
    image, label = bar_scene()
    area, angle, _ = bar_measures(label)
    assert abs(angle) < 1e-6
    ratios, angles, flipped = [], [], []
    for seed in SEEDS:
        _, out = transform(image, label, np.random.default_rng(seed))
        out = out.numpy()
        assert set(np.unique(out).tolist()) <= {0, 1, 255}  # labels are resampled, never interpolated
        out_area, out_angle, column = bar_measures(out)
        ratios.append(out_area / area)
        angles.append(abs(out_angle))
        flipped.append(column > out.shape[1] / 2)
    # nearest-neighbour resizing of a 16-pixel-high bar moves its area by a few percent around f^2
    assert SCALE[0] ** 2 * 0.9 <= min(ratios) and max(ratios) <= SCALE[1] ** 2 * 1.1
    assert min(ratios) < 0.6 and max(ratios) > 1.5  # scales from both ends of the range are drawn
    assert max(angles) <= ANGLE + 1.5 and max(angles) > 12
    assert 0.3 <= np.mean(np.array(angles) > 1.0) <= 0.7
    assert 0.3 <= np.mean(flipped) <= 0.7


@pytest.mark.parametrize("crop", ["uniform_retry", "foreground_anchor"])
def test_blur_changes_the_image_about_half_the_time(crop):
    """With scale 1, angle 0 and a 96 px image cropped at 96, every step but the blur and the flip is the
    identity: the output is the input or its mirror, exactly, unless blurred."""
    cfg = load_config(None, {"train_size": 96, "scale_min": 1.0, "scale_max": 1.0, "rotate_min": 0.0,
                             "rotate_max": 0.0, "train_crop": crop, "pixel_mean": [0.0, 0.0, 0.0],
                             "pixel_std": [1 / 255, 1 / 255, 1 / 255]})
    transform = build_transform(cfg, train=True)
    image = np.random.default_rng(1).uniform(0, 255, (96, 96, 3)).astype(np.uint8)
    label = np.zeros((96, 96), np.uint8)
    label[20:50, 10:40] = 1
    blurred = []
    for seed in SEEDS:
        out_image, out_label = transform(image, label, np.random.default_rng(seed))
        mirrored = not np.array_equal(out_label.numpy(), label)
        source = image[:, ::-1] if mirrored else image
        difference = np.abs(out_image.permute(1, 2, 0).numpy() - source).max()
        blurred.append(difference > 0.5)
    assert 0.3 <= np.mean(blurred) <= 0.7
