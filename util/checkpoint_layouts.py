r"""The reference checkpoints' key layouts and their mapping onto ours: dicts of tensors in, dicts out.

Reference files are ``{'state_dict': ...}``, often with a ``module.`` prefix (DataParallel). A BAM PSPNet
stores its backbone twice (``layerN.*`` and ``encoder.N.*``); an official MIANet stores it twice too
(``layerN.*`` and ``pspnet.layerN.*``) plus the unused base-learner head (``pspnet.ppm/cls``).
Nothing here reads a file or imports model code; :mod:`util.model_io` reads the files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from util.errors import UserError

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
