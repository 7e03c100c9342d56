"""Mixed precision on CPU: HPM priors, the prototype, the triplet loss and MIANet's logits and losses under float16
autocast are finite and close to float32 on inputs with masked-out (zero-norm) support positions, an all-zero
support mask, tiny-norm support and query positions and zero query positions; float16 features as autocast's
convolutions deliver them. The float32 path itself is checked against the float64 oracle
(``test_model_reference.py``, ``test_model_hpm_gim.py``); here float32 is the reference.

Tolerances, with the worst case measured on these inputs in brackets: HPM priors (in [0, 1]) 5e-3 with float32
masks, as the model passes them (8.1e-4), 3e-2 with float16 masks, whose resize chain then runs in float16
(1.2e-2); logits 1e-2 x max |logit| in float16 (1.1e-3), 5e-2 in bfloat16 (6.0e-3); losses 1e-3 relative (1.4e-4).
"""
from __future__ import annotations

import pytest
import torch

from model.gim import triplet_loss
from model.hpm import hierarchical_priors, pyramid_bins
from model.mianet import masked_average
from tests.model.test_model_hpm_gim import box_masks, relu_features
from tests.model.test_model_shapes import build, episode

PRIOR_TOLERANCE = {torch.float32: 5e-3, torch.float16: 3e-2}  # by the masks' type
LOGIT_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}  # by the autocast type, x max |logit|
LOSS_TOLERANCE = 1e-3


def fp16_autocast():
    return torch.autocast("cpu", dtype=torch.float16)


def hard_hpm_inputs(layer4: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float16 query [2, 24, s, s] and supports [2, 2, 24, s, s], float32 masks [2, 2, s, s]: box masks with empty
    regions, shot 1 of sample 1 all zero, mask values down to 1e-6 at a box edge; support positions of norm ~1e-4
    (float16 subnormals) inside the boxes; query positions of norm 0 and ~1e-4."""
    query = relu_features(2, 24, layer4, layer4, seed=21)
    supports = relu_features(2, 2, 24, layer4, layer4, seed=22)
    masks = torch.nn.functional.interpolate(box_masks(2, 2, 89), size=(layer4, layer4), mode="bilinear",
                                            align_corners=True)
    masks[0, 0, 0, :3] = torch.tensor([1e-6, 1e-5, 1e-4])
    supports[:, :, :, 1:3, 1:4] *= 1e-5
    query[:, :, 0, :2] = 0
    query[:, :, 1, :2] *= 1e-5
    return query.half(), supports.half(), masks


@pytest.mark.parametrize("layer4", [12, 6], ids=["layer4_12", "layer4_6"])  # 6: VGG-like, layer4 below bins[0]
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.float16], ids=["float32_masks", "float16_masks"])
def test_hpm_priors_under_fp16_autocast_are_finite_and_close_to_float32(layer4, mask_dtype):
    bins = pyramid_bins(12)
    query, supports, masks = hard_hpm_inputs(layer4)
    assert (supports.float().flatten(3).norm(dim=2) < 1e-3).any()  # tiny-norm support positions exist
    with fp16_autocast():
        priors = hierarchical_priors(query, supports, masks.to(mask_dtype), bins)
    expected = hierarchical_priors(query.float(), supports.float(), masks.to(mask_dtype).float(), bins)
    assert [p.dtype for p in priors] == [torch.float32] * len(bins)
    for got, want in zip(priors, expected):
        assert torch.isfinite(got).all()
        assert float((got - want).abs().max()) <= PRIOR_TOLERANCE[mask_dtype]


def test_masked_average_under_fp16_autocast_does_not_overflow():
    """A float16 sum of 64 x 64 features of 100 is 409600 (float16 max 65504); the average itself is 100."""
    features = torch.full((1, 3, 64, 64), 100.0, dtype=torch.float16)
    masks = torch.ones(1, 1, 64, 64)
    with fp16_autocast():
        prototype = masked_average(features, masks)
    assert torch.allclose(prototype, torch.full((1, 3), 100.0), rtol=1e-6)


def test_triplet_loss_on_float16_features_with_a_zero_cell_is_finite_and_close_to_float32():
    generator = torch.Generator().manual_seed(23)
    anchors = torch.randn(2, 16, generator=generator).half()
    features = torch.randn(2, 9, 16, generator=generator).half()
    features[0, 4] = 0  # a zero local feature (a negative)
    features[1, 0] = 0  # a zero local feature (a positive)
    masks = torch.tensor([[1, 1, 0, 0, 0, 255, 0, 0, 0], [1, 0, 1, 0, 0, 0, 0, 0, 0]])
    with fp16_autocast():
        loss = triplet_loss(anchors, features, masks)
    expected = triplet_loss(anchors.float(), features.float(), masks)
    assert torch.isfinite(loss) and float(expected) > 0
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def hard_episode() -> tuple[torch.Tensor, ...]:
    """2 shots at 49 px: the first support mask a box with background and 255 around it, the second all zero. (On a
    CPU without float16 arithmetic, float16 convolutions run PyTorch's reference kernels: slow, and slowest for
    EfficientNet-Lite0's dilated depthwise ones, so the models here are VGG16-BN and ResNet-50.)"""
    query, supports, masks, class_ids, label = episode(1, 2, 49, seed=24)
    masks[0, 1] = 0
    return query, supports, masks, class_ids, label


@pytest.mark.parametrize("backbone, amp", [("vgg16_bn", torch.float16), ("vgg16_bn", torch.bfloat16),
                                           ("resnet50", torch.float16)], ids=["vgg16_bn-fp16", "vgg16_bn-bf16", "resnet50-fp16"])
def test_mianet_logits_under_autocast_are_finite_and_close_to_float32(backbone, amp):
    model = build(backbone, "pascal").eval()
    query, supports, masks, class_ids, _ = hard_episode()
    with torch.no_grad():
        expected = model(query, supports, masks, class_ids)
        with torch.autocast("cpu", dtype=amp):
            logits = model(query, supports, masks, class_ids)
    assert torch.isfinite(logits).all()
    scale = float(expected.abs().max())
    assert float((logits.float() - expected).abs().max()) <= LOGIT_TOLERANCE[amp] * scale


def test_mianet_training_losses_and_gradients_under_fp16_autocast_are_finite_and_close_to_float32():
    """Every dropout off, so both passes compute the same function."""
    model = build("resnet50", "pascal").train()  # VGG's 49 px LFG grid is one cell: no triplet loss
    for module in model.modules():
        if isinstance(module, (torch.nn.Dropout, torch.nn.Dropout2d)):
            module.p = 0.0
    query, supports, masks, class_ids, label = hard_episode()
    with torch.no_grad():
        expected = model(query, supports, masks, class_ids, label)
    with fp16_autocast():
        out = model(query, supports, masks, class_ids, label)
    assert float(expected["loss_triplet"]) > 0
    for key in ("loss_main", "loss_aux", "loss_triplet", "loss"):
        assert torch.isfinite(out[key])
        assert float(out[key].detach()) == pytest.approx(float(expected[key]), rel=LOSS_TOLERANCE)
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.trainable_parameters())
