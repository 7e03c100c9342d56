"""Every file a model needs, read here so that model/ only computes: the class-name vectors and ImageNet weights
a model is built with, a base learner's backbone for stage 2, and reference checkpoints converted to our format.

    build_mianet(cfg)            MIANet with cfg's word vectors (random backbone until a base learner or checkpoint)
    load_stage2_model(cfg, path) a stage-2 checkpoint as a ready model for test.py and predict.py, checked against cfg
    build_pspnet(cfg)            stage 1's PSPNet with the ImageNet starting weights cfg asks for
    load_base_learner(m, path)   stage 1's backbone (ours, BAM's or an official MIANet file) into MIANet ``m``
    import_checkpoint(...)       a reference MIANet/PSPNet file in our format (``python -m tools.checkpoint_import``)
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from model.backbone import build_backbone
from model.mianet import MIANet
from model.pspnet import PSPNet
from util.backbone_weights import initialise_backbone
from util.checkpoint import (BACKBONE_SOURCE, MODEL_CONFIG_KEYS, check_checkpoint_config, check_model_identity,
                              check_state_fits, load_checkpoint, load_model_state, read_checkpoint_file, run_identity,
                              save_atomic)
from util.checkpoint_layouts import backbone_state, check_kind, mianet_from_reference, pspnet_from_reference
from util.classes import class_names
from util.embeddings import default_embedding_file, load_class_embeddings
from util.errors import UserError


def build_mianet(cfg: Mapping[str, Any]) -> MIANet:
    """MIANet for ``cfg`` with the word vectors of ``cfg['embedding_file']`` (checked to be for the dataset's classes
    in id order); its backbone is random until :func:`load_base_learner` or a checkpoint load."""
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
    record = {CLASS_VECTORS: class_vectors_record(model)} if kind == "mianet" else {}
    return save_atomic({"model": model.state_dict(), "config": dict(cfg), "stage": "imported", "identity": identity,
                        "source": str(source), BACKBONE_SOURCE: f"imported reference {kind} checkpoint {source}",
                        **record}, out)
