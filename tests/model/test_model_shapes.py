"""MIANet end to end on CPU: stage and prior shapes per backbone and input size, train-mode losses, gradients,
frozen backbone BN, the GIM/HPM ablations and K-shot prototypes. Batch 1 and few ResNet forwards keep it fast."""
from typing import Any

import pytest
import torch

from model.mianet import MIANet
from util.common.config import load_config
from util.common.errors import UserError
from util.runs.weights import build_mianet, build_pspnet
from util.common.random_inputs import episode_tensors

TRAIN_KEYS = {"logits", "loss_main", "loss_aux", "loss_triplet", "loss"}


def build(backbone: str, dataset: str, **overrides: Any) -> MIANet:
    cfg = load_config(None, {"backbone": backbone, "dataset": dataset, "pretrained_backbone": False, **overrides})
    torch.manual_seed(0)
    return build_mianet(cfg)


def lite0(**overrides: Any) -> MIANet:
    return build("efficientnet_lite0", "synth", **overrides)


def episode(batch: int, shots: int, size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The benchmark's random episode as (query, supports, support masks, class ids, query label)."""
    tensors = episode_tensors(batch, shots, size, torch.device("cpu"), 255, seed=seed)
    return tuple(tensors[k] for k in ("query", "supports", "support_masks", "class_ids", "query_label"))


def record_shapes(model: MIANet) -> dict[str, Any]:
    """Shapes seen by the backbone (its five outputs, per call) and by the IFM (query features, prototype, priors;
    aux logits)."""
    seen: dict[str, Any] = {"layers": []}

    def after_backbone(module, args, out) -> None:
        seen["layers"].append([tuple(t.shape) for t in out])

    def before_ifm(module, args) -> None:
        seen.update(query_feat=tuple(args[0].shape), prototype=tuple(args[1].shape),
                    priors=[tuple(p.shape) for p in args[2]], prior_values=[p.detach() for p in args[2]])

    def after_ifm(module, args, out) -> None:
        seen["aux"] = [tuple(a.shape) for a in out[1]]

    model.backbone.register_forward_hook(after_backbone)
    model.ifm.register_forward_pre_hook(before_ifm)
    model.ifm.register_forward_hook(after_ifm)
    return seen


# (backbone, dataset, size, batch, shots, (channels, side) of layer0..4, query-feature side, bins)
SHAPE_CASES = [
    ("resnet50", "pascal", 473, 1, 1, [(128, 119), (256, 119), (512, 60), (1024, 60), (2048, 60)], 60, [60, 30, 15, 8]),
    ("resnet50", "coco", 641, 1, 1, [(128, 161), (256, 161), (512, 81), (1024, 81), (2048, 81)], 81, [81, 41, 21, 11]),
    ("resnet50_tv", "pascal", 473, 1, 1, [(64, 119), (256, 119), (512, 60), (1024, 60), (2048, 60)], 60, [60, 30, 15, 8]),
    ("vgg16_bn", "pascal", 473, 1, 1, [(64, 237), (128, 119), (256, 60), (512, 30), (512, 30)], 30, [60, 30, 15, 8]),
    ("efficientnet_lite0", "synth", 193, 1, 5, [(16, 97), (24, 49), (40, 25), (112, 25), (320, 25)], 25, [25, 13, 7, 4]),
    ("efficientnet_lite0", "synth", 321, 1, 1, [(16, 161), (24, 81), (40, 41), (112, 41), (320, 41)], 41, [41, 21, 11, 6]),
]


@pytest.mark.parametrize("backbone, dataset, size, batch, shots, layers, feat, bins", SHAPE_CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[4]}shot" for c in SHAPE_CASES])
def test_eval_shapes(backbone, dataset, size, batch, shots, layers, feat, bins):
    model = build(backbone, dataset).eval()
    seen = record_shapes(model)
    query, supports, masks, class_ids, _ = episode(batch, shots, size)
    with torch.no_grad():
        logits = model(query, supports, masks, class_ids)
    assert sum(call[0][0] for call in seen["layers"]) == batch * (1 + shots)  # query and supports, once each
    for call in seen["layers"]:
        assert [shape[1:] for shape in call] == [(c, side, side) for c, side in layers]
    assert seen["query_feat"] == (batch, 256, feat, feat)
    assert seen["prototype"] == (batch, 256)
    assert seen["priors"] == [(batch, 1, b, b) for b in bins]
    for prior in seen["prior_values"]:
        assert prior.min() >= 0 and prior.max() <= 1 + 1e-6
    assert logits.shape == (batch, 2, size, size)
    assert torch.isfinite(logits).all()


def test_train_mode_losses_gradients_and_frozen_backbone():
    model = lite0().train()
    assert not model.backbone.training and model.down_features.training and model.ifm.training
    stats = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    seen = record_shapes(model)
    query, supports, masks, class_ids, label = episode(2, 2, 97, seed=1)
    out = model(query, supports, masks, class_ids, label)

    assert set(out) == TRAIN_KEYS
    assert out["logits"].shape == (2, 2, 97, 97)
    assert seen["aux"] == [(2, 2, b, b) for b in (13, 7, 4, 2)]
    for key in TRAIN_KEYS - {"logits"}:
        assert out[key].shape == () and torch.isfinite(out[key])
    assert out["loss_triplet"] > 0
    assert torch.allclose(out["loss"], out["loss_main"] + model.aux_weight * out["loss_aux"] + out["loss_triplet"])

    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    trainable = {n: p for n, p in model.named_parameters() if not n.startswith("backbone.")}
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in trainable.values()}
    for name, parameter in trainable.items():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    for group in ("down_features.", "gig.", "lfg.", "ifm.init_merge.", "ifm.alpha_conv.", "ifm.beta_conv.",
                  "ifm.inner_cls.", "ifm.res1.", "ifm.res2.", "ifm.cls."):
        assert any(p.grad.abs().sum() > 0 for n, p in trainable.items() if n.startswith(group)), group
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, stats[key]), key


def hand_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean over the pixels not labelled 255 of -log softmax(logits)[label], written out."""
    valid = label != 255
    log_norm = logits.exp().sum(dim=1).log()
    picked = torch.where(label == 1, logits[:, 1], logits[:, 0])
    return (log_norm - picked)[valid].mean()


def test_training_losses_are_cross_entropy_of_the_query_label_with_255_ignored():
    """loss_main on the logits (65 px in, 65 px out: no resize), loss_aux the mean over the pyramid levels of the
    same loss on each auxiliary output resized to the label (bilinear, align_corners), against a hand-made label
    with foreground, background and 255."""
    model = lite0().train()
    aux_outputs: list = []
    model.ifm.register_forward_hook(lambda module, args, out: aux_outputs.extend(out[1]))
    query, supports, masks, class_ids, _ = episode(2, 1, 65, seed=7)
    label = torch.zeros(2, 65, 65, dtype=torch.long)
    label[0, 10:40, 5:30] = 1
    label[1, 30:, 20:] = 1
    label[:, 25:29, :] = 255
    label[1, :, :3] = 255
    out = model(query, supports, masks, class_ids, label)
    logits = out["logits"].detach()
    assert logits.shape == (2, 2, 65, 65)
    expected_main = hand_cross_entropy(logits, label)
    swapped = torch.where(label == 255, 255, 1 - label)
    assert abs(float(hand_cross_entropy(logits, swapped) - expected_main)) > 1e-3  # the label's sense shows
    assert float(out["loss_main"].detach()) == pytest.approx(float(expected_main), rel=1e-5)
    assert len(aux_outputs) == 4
    resized = [torch.nn.functional.interpolate(aux.detach(), size=(65, 65), mode="bilinear", align_corners=True)
               for aux in aux_outputs]
    expected_aux = sum(hand_cross_entropy(r, label) for r in resized) / 4
    assert float(out["loss_aux"].detach()) == pytest.approx(float(expected_aux), rel=1e-5)


# every dropout outside the backbone and its rate (mianet-reference-behaviour.md: down_features Dropout2d(0.5); GIG
# Dropout(0.2), Dropout(0.3); IFM inner_cls and cls Dropout2d(0.1); the PSPNet classifier Dropout(0.1))
REFERENCE_DROPOUTS = {
    "down_features.2": ("Dropout2d", 0.5), "gig.model.2": ("Dropout", 0.2), "gig.model.4": ("Dropout", 0.3),
    **{f"ifm.inner_cls.{level}.2": ("Dropout2d", 0.1) for level in range(4)}, "ifm.cls.2": ("Dropout2d", 0.1),
}
REFERENCE_PSPNET_DROPOUTS = {"cls.3": ("Dropout2d", 0.1)}


def dropouts(model: torch.nn.Module) -> dict[str, tuple[str, float]]:
    return {name: (type(module).__name__, module.p) for name, module in model.named_modules()
            if isinstance(module, torch.nn.modules.dropout._DropoutNd) and not name.startswith("backbone.")}


def test_dropouts_are_the_references_and_down_features_dropout_reaches_query_and_supports():
    model = lite0().train()
    assert dropouts(model) == REFERENCE_DROPOUTS
    cfg = load_config(None, {"backbone": "efficientnet_lite0", "dataset": "synth", "pretrained_backbone": False})
    assert dropouts(build_pspnet(cfg)[0]) == REFERENCE_PSPNET_DROPOUTS
    batches = []
    model.down_features[2].register_forward_hook(lambda module, args, out: batches.append(len(args[0])))
    query, supports, masks, class_ids, label = episode(2, 3, 97, seed=1)
    model(query, supports, masks, class_ids, label)
    assert sorted(batches) == [2, 6]  # the 2 queries' features and the 2 x 3 supports'


def test_backbone_bn_statistics_move_only_without_freeze():
    model = lite0(freeze_backbone_bn=False).train()
    assert model.backbone.training
    before = model.backbone.layer0[1].running_mean.clone()
    query, supports, masks, class_ids, label = episode(1, 1, 65, seed=2)
    out = model(query, supports, masks, class_ids, label)
    assert torch.isfinite(out["loss"])
    assert not torch.equal(model.backbone.layer0[1].running_mean, before)
    assert all(p.grad is None for p in model.backbone.parameters())
    model.eval()
    assert not model.backbone.training


def test_fresh_model_already_has_frozen_backbone_bn():
    model = lite0()
    assert model.training
    assert not model.backbone.training


def test_without_gim_there_is_no_gig_lfg_and_no_triplet_loss():
    model = lite0(use_gim=False).train()
    assert not hasattr(model, "gig") and not hasattr(model, "lfg")
    assert not any(k.startswith(("gig.", "lfg.")) for k in model.state_dict())
    query, supports, masks, class_ids, label = episode(1, 2, 65, seed=3)
    out = model(query, supports, masks, class_ids, label)
    assert out["loss_triplet"].item() == 0.0
    assert torch.allclose(out["loss"], out["loss_main"] + out["loss_aux"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.trainable_parameters())


def test_without_hpm_priors_are_zero_and_both_modes_run():
    model = lite0(use_hpm=False).eval()
    seen = record_shapes(model)
    query, supports, masks, class_ids, label = episode(1, 1, 65, seed=4)
    with torch.no_grad():
        logits = model(query, supports, masks, class_ids)
    assert logits.shape == (1, 2, 65, 65) and torch.isfinite(logits).all()
    assert seen["priors"] == [(1, 1, b, b) for b in (9, 5, 3, 2)]
    assert all(torch.equal(p, torch.zeros_like(p)) for p in seen["prior_values"])
    out = model.train()(query, supports, masks, class_ids, label)
    assert set(out) == TRAIN_KEYS and torch.isfinite(out["loss"])


def test_prior_scale_multiplies_the_prior_the_ifm_reads():
    """Scaling the prior input by s equals scaling the prior column of every init_merge weight by s; the HPM's
    own chain (query features reweighted by the unscaled prior) is untouched."""
    scaled, reference = lite0(prior_scale=20.0).eval(), lite0().eval()
    seen_scaled, seen_reference = record_shapes(scaled), record_shapes(reference)
    with torch.no_grad():
        for merge in reference.ifm.init_merge:
            merge[0].weight[:, -1] *= 20.0
        query, supports, masks, class_ids, _ = episode(1, 1, 65, seed=6)
        out_scaled = scaled(query, supports, masks, class_ids)
        out_reference = reference(query, supports, masks, class_ids)
    assert all(torch.allclose(a, 20.0 * b) for a, b in zip(seen_scaled["prior_values"], seen_reference["prior_values"]))
    assert max(p.max().item() for p in seen_scaled["prior_values"]) == pytest.approx(20.0, rel=1e-4)
    assert torch.allclose(out_scaled, out_reference, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(lite0().eval()(query, supports, masks, class_ids), out_scaled, atol=1e-3)


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_prior_scale_must_be_positive(scale):
    with pytest.raises(UserError, match=rf"override: key 'prior_scale' must be > 0, got {scale}"):
        lite0(prior_scale=scale)
    cfg = load_config(None, {"backbone": "efficientnet_lite0", "dataset": "synth", "pretrained_backbone": False})
    with pytest.raises(UserError, match="config key 'prior_scale' must be a number > 0"):  # a config made in code
        build_mianet(cfg | {"prior_scale": scale})


def test_k_shot_identical_supports_equal_one_shot_and_eval_is_deterministic():
    model = lite0().eval()
    query, supports, masks, class_ids, _ = episode(1, 2, 65, seed=5)
    first = supports[:, :1], masks[:, :1]
    with torch.no_grad():
        one = model(query, *first, class_ids)
        again = model(query, *first, class_ids)
        same = model(query, first[0].expand(-1, 3, -1, -1, -1), first[1].expand(-1, 3, -1, -1), class_ids)
        two = model(query, supports, masks, class_ids)
        ignore_as_zero = model(query, first[0], first[1].masked_fill(first[1] == 255, 0), class_ids)
        other_class = model(query, *first, class_ids + 4)
    assert torch.equal(one, again)
    assert torch.allclose(same, one, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ignore_as_zero, one, atol=1e-5, rtol=1e-5)  # only label == 1 is foreground
    assert not torch.allclose(two, one, atol=1e-3)  # the second (different) support is used
    assert not torch.allclose(other_class, one, atol=1e-4)  # the class-name vector reaches the output
