r"""Import reference checkpoints: official MIANet models and BAM-format PSPNet base learners, into our format.

The key layouts are :mod:`util.checkpoint_layouts`; the conversion is :func:`util.model_io.import_checkpoint`.
Examples:

    python -m tools.checkpoint_import --config config/pascal/resnet50/split0.yaml \
        --mianet train_epoch_xx.pth --out exp/pascal/split0/resnet50/1shot/best.pth
    python -m tools.checkpoint_import --config config/pascal/resnet50/split0.yaml \
        --pspnet PSPNet_res50/best.pth --out initmodel/pascal/split0/resnet50/best.pth
"""
from __future__ import annotations

import argparse
from typing import Sequence

from util.config import load_config
from util.errors import cli_entry
from util.model_io import import_checkpoint


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
