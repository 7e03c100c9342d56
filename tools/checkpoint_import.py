r"""Import reference checkpoints: official MIANet models and BAM-format PSPNet base learners, into our format.

The key layouts are in :mod:`util.runs.weights`; :func:`import_checkpoint` converts a file. Examples:

    python -m tools.checkpoint_import --config config/pascal/resnet50/split0.yaml \
        --mianet train_epoch_xx.pth --out exp/pascal/split0/resnet50/1shot/best.pth
    python -m tools.checkpoint_import --config config/pascal/resnet50/split0.yaml \
        --pspnet PSPNet_res50/best.pth --out initmodel/pascal/split0/resnet50/best.pth
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping, Sequence

from torch import nn

from util.common.config import load_config
from util.common.errors import cli_entry
from util.runs.checkpoint import (
    BACKBONE_SOURCE,
    load_model_state,
    run_identity,
    save_atomic,
)
from util.runs.weights import (
    CLASS_VECTORS,
    build_mianet,
    build_pspnet,
    check_kind,
    class_vectors_record,
    mianet_from_reference,
    pspnet_from_reference,
    read_state_dict,
)


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
        model, _ = build_pspnet(cfg | {"pretrained_backbone": False, "backbone_weight": None})
        state = pspnet_from_reference(state)
    load_model_state(model, state, source)
    identity = run_identity(cfg, "meta" if kind == "mianet" else "base")
    record = {CLASS_VECTORS: class_vectors_record(model)} if kind == "mianet" else {}
    return save_atomic({"model": model.state_dict(), "config": dict(cfg), "stage": "imported", "identity": identity,
                        "source": str(source), BACKBONE_SOURCE: f"imported reference {kind} checkpoint {source}",
                        **record}, out)



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
    cfg = load_config(args.config, args.overrides)
    kind, source = ("mianet", args.mianet) if args.mianet else ("pspnet", args.pspnet)
    out = import_checkpoint(source, kind, cfg, args.out)
    print(f"imported {kind} checkpoint {source} -> {out}")


if __name__ == "__main__":
    main()
