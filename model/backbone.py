"""Backbones split into layer0..layer4 at output stride 8 (16 for VGG), as the PSPNet family uses them.

- ResNet-50/101 with the PSPNet "deep base" stem (three 3x3 convs) and dilated layer3 (2) / layer4 (4),
  built from torchvision's Bottleneck blocks: the backbone of MIANet, BAM and PFENet.
- ``resnet50_tv`` (not the paper's): the same dilated ResNet-50 with torchvision's stem (one 7x7 conv), so
  torchvision's ImageNet weights fit it, as HSNet uses them.
- VGG16-BN: torchvision's ``features`` cut into five stages (pools with ceil_mode).
- EfficientNet-Lite0: timm's ``tf_efficientnet_lite0`` with output stride 8.

Everything here builds and computes; ImageNet weight files are read by :mod:`util.runs.weights`.
"""
from __future__ import annotations

import timm
import torch
import torch.nn as nn
from torchvision.models import resnet
from torchvision.models.vgg import cfgs, make_layers


BACKBONES = ("resnet50", "resnet101", "vgg16_bn", "efficientnet_lite0", "resnet50_tv")
LAYER3_STRIDE = {"vgg16_bn": 16}
"""Input pixels per layer3 position where it is not 8 (the dilated ResNets and EfficientNet-Lite0)."""


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


def _dilated_resnet(depth: int, deep_stem: bool) -> Backbone:
    """ResNet-``depth`` with layer3/layer4 dilated 2/4 in every block (output stride 8); the stem is PSPNet's deep base
    (three 3x3 convs, 128 channels, named ``resnet<depth>``) or torchvision's 7x7 conv (``resnet<depth>_tv``)."""
    blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    net = resnet.ResNet(resnet.Bottleneck, blocks)

    def conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    if deep_stem:
        stem = nn.Sequential(*conv_bn_relu(3, 64, 2), *conv_bn_relu(64, 64, 1), *conv_bn_relu(64, 128, 1),
                             nn.MaxPool2d(3, stride=2, padding=1))
        first = net.layer1[0]
        first.conv1 = nn.Conv2d(128, 64, 1, bias=False)
        first.downsample[0] = nn.Conv2d(128, 256, 1, bias=False)
    else:
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
        for block in layer:
            block.conv2.dilation, block.conv2.padding, block.conv2.stride = (dilation, dilation), (dilation, dilation), (1, 1)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
    name = f"resnet{depth}" if deep_stem else f"resnet{depth}_tv"
    return Backbone(name, [stem, net.layer1, net.layer2, net.layer3, net.layer4],
                    [128 if deep_stem else 64, 256, 512, 1024, 2048])


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
    builders = {"resnet50": lambda: _dilated_resnet(50, deep_stem=True),
                "resnet101": lambda: _dilated_resnet(101, deep_stem=True),
                "resnet50_tv": lambda: _dilated_resnet(50, deep_stem=False),
                "vgg16_bn": _vgg16_bn, "efficientnet_lite0": _efficientnet_lite0}
    if name not in builders:
        raise ValueError(f"backbone '{name}' is unknown; use one of {', '.join(BACKBONES)}")
    return builders[name]()
