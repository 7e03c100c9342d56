"""ImageNet files for stage 1: each backbone takes its own file (deep-base ResNet, torchvision VGG16-BN and ResNet-50),
from its default place or backbone_weight; a wrong file says which one to use; random weights are recorded."""
import re

import pytest
import torch
import torchvision

from model.backbone import build_backbone
from util.runs.weights import (IMAGENET_FILES, RANDOM, SEMSEG_MODELS, initialise_backbone, load_imagenet_file,
                                   recorded_source, source_notices)
from util.common.config import load_config
from util.common.errors import UserError
from util.runs.weights import build_pspnet


def _randomise_bn(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so a mis-mapped BN layer shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    return module.eval()


def _deep_base_file(depth: int, path) -> dict:
    """A PSPNet deep-base ImageNet file: our random backbone under the release's names (conv1..bn3, layerN, fc)."""
    ours = _randomise_bn(build_backbone(f"resnet{depth}"), depth).state_dict()
    stem = {"layer0.0": "conv1", "layer0.1": "bn1", "layer0.3": "conv2", "layer0.4": "bn2", "layer0.6": "conv3",
            "layer0.7": "bn3"}
    state = {}
    for key, value in ours.items():
        prefix = ".".join(key.split(".")[:2])
        state[key.replace(prefix, stem[prefix], 1) if prefix in stem else key] = value
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(state, path)
    return ours


def _torchvision_file(builder: str, path) -> torch.nn.Module:
    net = _randomise_bn(getattr(torchvision.models, builder)(weights=None), 7)
    torch.save(net.state_dict(), path)
    return net


def _cfg(backbone: str, **overrides):
    return load_config(None, {"dataset": "pascal", "backbone": backbone, **overrides})


def test_resnet50_tv_is_the_dilated_resnet_with_torchvisions_stem():
    backbone = build_backbone("resnet50_tv").eval()
    assert backbone.channels == [64, 256, 512, 1024, 2048]
    assert tuple(backbone.layer0[0].weight.shape) == (64, 3, 7, 7)
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 65, 65))
    assert [f.shape[1] for f in features] == backbone.channels
    assert [tuple(f.shape[-2:]) for f in features] == [(17, 17), (17, 17), (9, 9), (9, 9), (9, 9)]  # output stride 8
    deep = build_backbone("resnet50")
    layer3 = [(b.conv2.dilation, b.conv2.stride) for b in backbone.layer3]
    assert layer3 == [(b.conv2.dilation, b.conv2.stride) for b in deep.layer3] == [((2, 2), (1, 1))] * 6


def test_torchvision_resnet50_loads_into_resnet50_tv(tmp_path):
    net = _torchvision_file("resnet50", tmp_path / "resnet50_tv.pth")
    backbone = build_backbone("resnet50_tv")
    assert initialise_backbone(backbone, _cfg("resnet50_tv", backbone_weight=str(tmp_path / "resnet50_tv.pth"))) \
        == f"imagenet {tmp_path / 'resnet50_tv.pth'}"
    backbone.eval()
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net.maxpool(net.relu(net.bn1(net.conv1(image))))
        got = backbone.layer0(image)
        assert torch.equal(got, expected)
        for ours, theirs in ((backbone.layer1, net.layer1), (backbone.layer2, net.layer2)):  # not dilated yet
            got, expected = ours(got), theirs(expected)
            assert torch.equal(got, expected)
    theirs = net.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in backbone.state_dict().items() if key.startswith("layer4"))


def test_torchvision_vgg16_bn_loads_stage_by_stage(tmp_path):
    net = _torchvision_file("vgg16_bn", tmp_path / "vgg16_bn.pth")
    backbone = build_backbone("vgg16_bn")
    load_imagenet_file(backbone, tmp_path / "vgg16_bn.pth")
    backbone.eval()
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(backbone.layer1(backbone.layer0(image)), net.features[:14](image))


def test_deep_base_file_loads_into_resnet50_with_its_stem_names(tmp_path):
    ours = _deep_base_file(50, tmp_path / "resnet50_v2.pth")
    backbone = build_backbone("resnet50")
    load_imagenet_file(backbone, tmp_path / "resnet50_v2.pth")
    assert all(torch.equal(value, ours[key]) for key, value in backbone.state_dict().items())


def test_the_default_place_is_used_and_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "initmodel").mkdir()
    net = _torchvision_file("vgg16_bn", tmp_path / "initmodel" / "vgg16_bn.pth")
    model, source = build_pspnet(_cfg("vgg16_bn"))
    assert source == "imagenet initmodel/vgg16_bn.pth"
    assert torch.equal(model.backbone.layer4[0].weight, net.features[34].weight)
    random, random_source = build_pspnet(_cfg("vgg16_bn", pretrained_backbone=False))
    assert random_source == RANDOM
    assert source_notices(RANDOM)[-1].startswith("WARNING: the backbone started from RANDOM weights")
    assert len(source_notices("imagenet initmodel/vgg16_bn.pth")) == 1


@pytest.mark.parametrize("backbone, wanted, unwanted", [
    ("resnet50", ["initmodel/resnet50_v2.pth is not there", "resnet50_v2.pth of the semseg release", SEMSEG_MODELS,
                  "pretrained_backbone false"], ["vgg16_bn", "resnet101_v2"]),
    ("resnet101", ["initmodel/resnet101_v2.pth is not there", SEMSEG_MODELS], ["resnet50_v2"]),
    ("vgg16_bn", ["initmodel/vgg16_bn.pth is not there", "torchvision.models.vgg16_bn(weights='IMAGENET1K_V1')"],
     ["resnet", "semseg"]),
    ("resnet50_tv", ["initmodel/resnet50_tv.pth is not there", "torchvision.models.resnet50(weights='IMAGENET1K_V1')"],
     ["semseg", "vgg"]),
])
def test_a_missing_file_says_what_to_put_where(tmp_path, monkeypatch, backbone, wanted, unwanted):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        build_pspnet(_cfg(backbone))
    message = str(info.value)
    assert all(text in message for text in wanted), message
    assert not any(text in message for text in unwanted), message
    assert "\n" not in message


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagenet")
    _deep_base_file(50, folder / "resnet50_v2.pth")
    _deep_base_file(101, folder / "resnet101_v2.pth")
    _torchvision_file("resnet50", folder / "resnet50-0676ba61.pth")
    _torchvision_file("vgg16_bn", folder / "vgg16_bn.pth")
    return folder


@pytest.mark.parametrize("backbone, file, wanted, unwanted", [
    ("resnet50", "resnet50-0676ba61.pth", ["torchvision ResNet (one 7x7 stem convolution)", "three 3x3 stem",
                                           "resnet50_v2.pth of the semseg release", "resnet50_tv"], ["vgg"]),
    ("resnet50_tv", "resnet50_v2.pth", ["PSPNet deep-base ResNet (three 3x3 stem convolutions)", "7x7 stem",
                                        "use backbone resnet50", "torchvision.models.resnet50("], ["vgg"]),
    ("resnet50", "resnet101_v2.pth", ["do not fit resnet50", "left over (e.g. layer3.6.", "resnet50_v2.pth"],
     ["deep-base resnet101_v2"]),
    ("vgg16_bn", "resnet50_v2.pth", ["not VGG16-BN's", "torchvision.models.vgg16_bn(weights='IMAGENET1K_V1')"],
     ["resnet50_v2.pth of", "semseg"]),
    ("resnet50", "vgg16_bn.pth", ["VGG 'features.N' tensors, so they are not a ResNet's", "resnet50_v2.pth"],
     ["torchvision.models"]),
])
def test_a_wrong_file_says_why_and_which_file_to_use(files, backbone, file, wanted, unwanted):
    with pytest.raises(UserError) as info:
        load_imagenet_file(build_backbone(backbone), files / file)
    message = str(info.value)
    assert all(text in message for text in wanted), message
    assert not any(text in message for text in unwanted), message


@pytest.mark.parametrize("backbone", ["vgg16_bn", "resnet50_tv"])
def test_the_torchvision_command_in_the_advice_saves_a_file_that_loads(tmp_path, monkeypatch, backbone):
    """The one-line command the errors and the README give, run with the download replaced by a random init."""
    command = IMAGENET_FILES[backbone].origin.split("saved with: ", 1)[1]
    code = re.fullmatch(r'python -c "(.*)"', command).group(1)
    builder = re.search(r"torchvision\.models\.(\w+)\(", code).group(1)
    assert "IMAGENET1K_V1" in torchvision.models.get_model_weights(builder).__members__
    real = getattr(torchvision.models, builder)

    def offline(weights):
        assert weights == "IMAGENET1K_V1"
        return real(weights=None)

    monkeypatch.setattr(torchvision.models, builder, offline)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "initmodel").mkdir()
    exec(code, {})
    assert initialise_backbone(build_backbone(backbone), _cfg(backbone)) == f"imagenet {IMAGENET_FILES[backbone].default}"


def test_recorded_source_of_ours_a_reference_file_and_an_old_checkpoint(tmp_path):
    torch.save({"model": {}, "pretrained_backbone_source": RANDOM}, tmp_path / "ours.pth")
    torch.save({"state_dict": {}}, tmp_path / "bam.pth")
    torch.save({"model": {}}, tmp_path / "old.pth")
    assert recorded_source(tmp_path / "ours.pth") == RANDOM
    assert recorded_source(tmp_path / "bam.pth") == f"reference checkpoint {tmp_path / 'bam.pth'}"
    assert recorded_source(tmp_path / "old.pth") == f"unknown (not recorded in {tmp_path / 'old.pth'})"
