"""MIANet and PSPNet forward, losses and backward on the ``meta`` device: built under ``torch.device("meta")``, fed meta
inputs, run outside that context. A tensor a forward creates on a fixed device (``torch.zeros(n)``, a CPU constant)
meets the meta tensors with a device error here, as it would meet CUDA tensors on a GPU; a value read back to the
host (``.item()``, ``bool(tensor)``) fails here too (a GPU would synchronise there). Meta tensors have shapes and
no data, so these tests are instant at any size; they check placement and shapes, not numbers."""
from __future__ import annotations

import pytest
import torch

from model.backbone import build_backbone
from model.hpm import pyramid_bins
from model.mianet import MIANet
from model.pspnet import PSPNet

META = torch.device("meta")
WORD_DIM, CLASSES = 50, 20


def meta_mianet(backbone: str, **options) -> MIANet:
    with META:
        return MIANet(build_backbone(backbone), torch.randn(CLASSES + 1, WORD_DIM), ignore_label=255, **options)


def meta_episode(batch: int, shots: int, size: int) -> dict[str, torch.Tensor]:
    return {"query": torch.empty(batch, 3, size, size, device=META),
            "supports": torch.empty(batch, shots, 3, size, size, device=META),
            "support_masks": torch.empty(batch, shots, size, size, dtype=torch.long, device=META),
            "class_ids": torch.empty(batch, dtype=torch.long, device=META),
            "query_label": torch.empty(batch, size, size, dtype=torch.long, device=META)}


def assert_meta_gradients(model: torch.nn.Module) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.device == META for p in trainable)


SIZE = 65  # ResNet-50 layer4 9 x 9 (bins 9, 5, 3, 2); VGG16-BN layer4 5 x 5, below bins[0] (its first-bin branch)
OPTIONS = {  # (use_gim, use_hpm, freeze_backbone_bn); backbone BN in train mode takes another encoding path
    "gim+hpm": (True, True, True), "gim+hpm-train_bn": (True, True, False), "hpm": (False, True, True),
    "gim": (True, False, True), "neither": (False, False, True),
}


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16_bn"])
@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("use_gim, use_hpm, freeze_backbone_bn", OPTIONS.values(), ids=OPTIONS.keys())
def test_mianet_train_and_eval_run_on_meta(backbone, shots, use_gim, use_hpm, freeze_backbone_bn):
    model = meta_mianet(backbone, use_gim=use_gim, use_hpm=use_hpm, freeze_backbone_bn=freeze_backbone_bn)
    data = meta_episode(2, shots, SIZE)
    out = model.train()(data["query"], data["supports"], data["support_masks"], data["class_ids"], data["query_label"])
    assert set(out) == {"logits", "loss_main", "loss_aux", "loss_triplet", "loss"}
    assert out["logits"].shape == (2, 2, SIZE, SIZE) and all(v.device == META for v in out.values())
    out["loss"].backward()
    assert_meta_gradients(model)
    with torch.no_grad():
        logits = model.eval()(data["query"], data["supports"], data["support_masks"], data["class_ids"])
    assert logits.shape == (2, 2, SIZE, SIZE) and logits.device == META


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16_bn"])
@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("use_hpm", [True, False], ids=["hpm", "no_hpm"])
def test_encode_summarize_supports_and_head_run_on_meta(backbone, shots, use_hpm):
    """The split an evaluation with feature reuse calls: encode every image, summarise each support, head per episode."""
    model = meta_mianet(backbone, use_hpm=use_hpm).eval()
    data = meta_episode(2, shots, SIZE)
    with torch.no_grad():
        query = model.encode(data["query"])
        supports = model.encode(data["supports"].flatten(0, 1))
        summary = model.summarize_supports(supports, data["support_masks"].flatten(0, 1), SIZE)
        assert summary.prototype.shape == (2 * shots, 256)
        assert len(summary.directions) == (len(pyramid_bins((SIZE - 1) // 8 + 1)) if use_hpm else 0)
        per_episode = type(summary)(summary.prototype.view(2, shots, -1),
                                    [d.view(2, shots, -1) for d in summary.directions])
        logits = model.head(query, per_episode, data["class_ids"], (SIZE, SIZE))
    assert logits.shape == (2, 2, SIZE, SIZE) and logits.device == META


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16_bn"])
def test_pspnet_train_and_eval_run_on_meta(backbone):
    with META:
        model = PSPNet(build_backbone(backbone), num_classes=16, ignore_label=255)
    data = meta_episode(2, 1, SIZE)
    out = model.train()(data["query"], data["query_label"])
    assert set(out) == {"loss"} and out["loss"].device == META  # the loss only: its upsampled logits are never all built
    out["loss"].backward()
    assert_meta_gradients(model)
    with torch.no_grad():
        assert model.eval()(data["query"]).shape == (2, 16, SIZE, SIZE)


def test_a_cpu_tensor_made_inside_a_forward_fails_on_meta(monkeypatch):
    """The premise of this file: a constant created on the CPU inside the forward stops the meta run."""
    model = meta_mianet("vgg16_bn").eval()
    data = meta_episode(1, 1, SIZE)
    monkeypatch.setattr("model.mianet.PROTOTYPE_EPS", torch.full((1, 1), 5e-4))
    with pytest.raises(RuntimeError, match="device"), torch.no_grad():
        model(data["query"], data["supports"], data["support_masks"], data["class_ids"])
