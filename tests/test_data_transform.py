"""The paired transform: image/label stay aligned, test geometry, normalisation, seeded randomness."""
import cv2
import numpy as np
import pytest
import torch

from util.config import load_config
from util.transform import (IMAGENET_MEAN, IMAGENET_STD, RandomCrop, bbox_mask, binary_label, build_transform,
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
    binary = binary_label(label, 3)
    assert binary.tolist() == [[0, 1, 1, 255], [0, 0, 1, 0], [0, 0, 0, 255]]
    assert bbox_mask(binary).tolist() == [[0, 1, 1, 255], [0, 1, 1, 0], [0, 0, 0, 255]]
