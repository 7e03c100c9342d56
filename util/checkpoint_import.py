r"""Import reference checkpoints: official MIANet models and BAM-format PSPNet base learners.

Reference files are ``{'state_dict': ...}``, often with a ``module.`` prefix (DataParallel). A BAM PSPNet
stores its backbone twice (``layerN.*`` and ``encoder.N.*``); an official MIANet stores it twice too
(``layerN.*`` and ``pspnet.layerN.*``) plus the unused base-learner head (``pspnet.ppm/cls``).
Examples:

    python -m util.checkpoint_import --config config/pascal/resnet50/split0.yaml \
        --mianet train_epoch_xx.pth --out exp/pascal/split0/resnet50/1shot/best.pth
    python -m util.checkpoint_import --config config/pascal/resnet50/split0.yaml \
        --pspnet PSPNet_res50/best.pth --out initmodel/pascal/split0/resnet50/best.pth
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from util.checkpoint import (BACKBONE_SOURCE, check_state_fits, load_model_state, read_checkpoint_file, run_identity,
                              save_atomic)
from util.errors import UserError, cli_entry

# Reference MIANet top-level modules -> ours.
_MIANET_RENAMES = {"GIG.": "gig.", "LFG.": "lfg.", "down_features.": "down_features."}
_IFM_MODULES = ("init_merge.", "alpha_conv.", "beta_conv.", "inner_cls.", "res1.", "res2.", "cls.")
_BACKBONE_STAGES = tuple(f"layer{i}." for i in range(5))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat parameter dict of any checkpoint file (ours: ``model``; reference: ``state_dict``), no ``module.``."""
    state = read_checkpoint_file(path)
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} holds no parameter dict ('model' or 'state_dict'); it is not a model checkpoint")
    return {key.removeprefix("module."): value for key, value in state.items()}


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


def _is_reference_mianet(state: Mapping[str, torch.Tensor]) -> bool:
    return any(key.startswith(("GIG.", "init_merge.", "pspnet.")) for key in state)


_MIANET_MARKS = ("GIG.", "gig.", "init_merge.", "ifm.", "pspnet.", "down_features.")


def _check_kind(state: Mapping[str, torch.Tensor], kind: str, source: str | Path) -> None:
    """Refuse a MIANet file given as a PSPNet base learner and the other way round, naming the right option."""
    mianet = next((key for key in state if key.startswith(_MIANET_MARKS)), None)
    if kind == "pspnet" and mianet is not None:
        raise UserError(f"checkpoint {source} is a MIANet (it holds {mianet}), not a PSPNet base learner; "
                        "import it with --mianet")
    pspnet = next((key for key in state if key.startswith("ppm.")), None)
    if kind == "mianet" and mianet is None and pspnet is not None:
        raise UserError(f"checkpoint {source} is a PSPNet base learner (it holds {pspnet} and no GIG or IFM), not a "
                        "MIANet; import it with --pspnet")


def base_learner_backbone_state(path: str | Path, backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone weights held by a stage-1 checkpoint (ours or BAM's) or a MIANet checkpoint, checked
    key by key against ``backbone``; a mismatch is a :class:`UserError` naming the keys."""
    state = read_state_dict(path)
    if _is_reference_mianet(state):
        state = mianet_from_reference(state)
    elif not any(key.startswith("backbone.") for key in state):
        state = pspnet_from_reference(state)
    backbone_state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone_state:
        raise UserError(f"checkpoint {path} holds no backbone weights; give a stage-1 (PSPNet) or MIANet checkpoint")
    check_state_fits(backbone.state_dict(), backbone_state, path)
    return backbone_state


def import_checkpoint(source: str | Path, kind: str, cfg: Mapping, out: str | Path) -> Path:
    """Convert a reference ``kind`` ('mianet' | 'pspnet') checkpoint into our format for ``cfg`` and save it to ``out``.

    The result loads strictly into ``MIANet.from_config(cfg)`` / ``PSPNet.from_config(cfg)`` (``test.py weight``,
    ``base_weight``); every reference key must find its place and every shape must agree. Its identity (dataset,
    fold, split style, classes, ...) is recorded from ``cfg``: give the config the reference model was trained for.
    """
    from model.mianet import MIANet
    from model.pspnet import PSPNet

    state = read_state_dict(source)
    _check_kind(state, kind, source)
    if kind == "mianet":
        model: nn.Module = MIANet.from_config(cfg)
        state = mianet_from_reference(state)
    else:
        model = PSPNet.from_config(cfg | {"pretrained_backbone": False, "backbone_weight": None})
        state = pspnet_from_reference(state)
    load_model_state(model, state, source)
    identity = run_identity(cfg, "meta" if kind == "mianet" else "base")
    return save_atomic({"model": model.state_dict(), "config": dict(cfg), "stage": "imported", "identity": identity,
                        "source": str(source), BACKBONE_SOURCE: f"imported reference {kind} checkpoint {source}"}, out)


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the config the imported model will be used with")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--mianet", help="an official MIANet checkpoint")
    group.add_argument("--pspnet", help="a BAM/MIANet-format PSPNet base-learner checkpoint")
    parser.add_argument("--out", required=True, help="where to write the converted checkpoint")
    parser.add_argument("overrides", nargs="*", help="config overrides: key value ...")
    args = parser.parse_args(argv)
    from util.config import load_config

    cfg = load_config(args.config, args.overrides)
    kind, source = ("mianet", args.mianet) if args.mianet else ("pspnet", args.pspnet)
    out = import_checkpoint(source, kind, cfg, args.out)
    print(f"imported {kind} checkpoint {source} -> {out}")


if __name__ == "__main__":
    main()
