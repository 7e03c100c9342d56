"""Every file a model needs, read here so that model/ only computes: the class-name vectors and ImageNet weights
a model is built with, a base learner's backbone for stage 2, and reference checkpoints converted to our format.

    build_mianet(cfg)            MIANet with cfg's word vectors (random backbone until a base learner or checkpoint)
    build_pspnet(cfg)            stage 1's PSPNet with the ImageNet starting weights cfg asks for
    load_base_learner(m, path)   stage 1's backbone (ours, BAM's or an official MIANet file) into MIANet ``m``
    import_checkpoint(...)       a reference MIANet/PSPNet file in our format (``python -m tools.checkpoint_import``)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from model.backbone import build_backbone
from model.mianet import MIANet
from model.pspnet import PSPNet
from util.backbone_weights import initialise_backbone
from util.checkpoint import (BACKBONE_SOURCE, check_state_fits, load_model_state, read_checkpoint_file, run_identity,
                              save_atomic)
from util.checkpoint_layouts import backbone_state, check_kind, mianet_from_reference, pspnet_from_reference
from util.classes import class_names
from util.embeddings import load_class_embeddings
from util.errors import UserError


def build_mianet(cfg: Mapping[str, Any]) -> MIANet:
    """MIANet for ``cfg`` with the word vectors of ``cfg['embedding_file']`` (checked to be for the dataset's classes
    in id order); its backbone is random until :func:`load_base_learner` or a checkpoint load."""
    names = class_names(cfg["dataset"], cfg["list_root"])
    return MIANet.from_config(cfg, load_class_embeddings(cfg["embedding_file"], cfg["dataset"], names))


def build_pspnet(cfg: Mapping[str, Any]) -> PSPNet:
    """The base learner of ``cfg``'s fold, its backbone initialised as ``cfg`` says (ImageNet file or random)."""
    backbone = build_backbone(cfg["backbone"])
    source = initialise_backbone(backbone, cfg)
    return PSPNet.from_config(cfg, backbone, backbone_source=source)


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


def import_checkpoint(source: str | Path, kind: str, cfg: Mapping, out: str | Path) -> Path:
    """Convert a reference ``kind`` ('mianet' | 'pspnet') checkpoint into our format for ``cfg`` and save it to ``out``.

    The result loads strictly into ``build_mianet(cfg)`` / ``build_pspnet(cfg)`` (``test.py weight``,
    ``base_weight``); every reference key must find its place and every shape must agree. Its identity (dataset,
    fold, split style, classes, ...) is recorded from ``cfg``: give the config the reference model was trained for.
    """
    state = read_state_dict(source)
    check_kind(state, kind, source)
    if kind == "mianet":
        model: nn.Module = build_mianet(cfg)
        state = mianet_from_reference(state)
    else:
        model = build_pspnet(cfg | {"pretrained_backbone": False, "backbone_weight": None})
        state = pspnet_from_reference(state)
    load_model_state(model, state, source)
    identity = run_identity(cfg, "meta" if kind == "mianet" else "base")
    return save_atomic({"model": model.state_dict(), "config": dict(cfg), "stage": "imported", "identity": identity,
                        "source": str(source), BACKBONE_SOURCE: f"imported reference {kind} checkpoint {source}"}, out)
