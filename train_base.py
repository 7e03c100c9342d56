"""Stage 1: train the PSPNet base learner of one fold on its base classes.

Writes ``initmodel/<dataset>/split<k>/<backbone>/{best,last}.pth`` (COCO: ``initmodel/coco/<coco_split_style>/split<k>/...``;
or ``base_exp_dir``), where stage 2 looks. Each checkpoint records its identity (dataset, fold, split style, classes...).
Usage: ``python train_base.py --config config/pascal/resnet50/split0.yaml [key value ...]``
"""
from __future__ import annotations

from typing import Sequence

from util.backbone_weights import SOURCE_KEY, source_notices
from util.checkpoint import base_run_dir, run_identity
from util.classes import base_classes
from util.config import Config
from util.dataset import BaseClassDataset
from util.distributed import DistContext
from util.engine import Schedule, TrainJob, TrainResult, train_from_cli
from util.errors import cli_entry
from util.evaluator import evaluate_semantic
from util.model_io import build_pspnet
from util.runtime import epoch_seed


def build_job(cfg: Config, ctx: DistContext) -> TrainJob:
    """Stage 1 as a :class:`TrainJob`: PSPNet over base classes, validated by base-class mIoU.

    Two SGD groups as in BAM: the backbone at ``base_learner_lr``, PPM + classifier at ``base_head_lr_mult``
    times it; the run stops early after ``base_stop_patience`` epochs without a better validation mIoU.
    Its checkpoints record where the backbone's starting weights came from (ImageNet file, or random).
    """
    model = build_pspnet(cfg)
    num_classes = len(base_classes(cfg.dataset, cfg.split, cfg.coco_split_style)) + 1
    val_set = BaseClassDataset(cfg, "val")

    def validate(net) -> dict[str, float]:
        return evaluate_semantic(net, val_set, ctx, num_classes=num_classes, ignore_label=val_set.ignore_index,
                                 batch_size=cfg.test_batch_size,
                                 workers=cfg.workers, amp=cfg.amp, desc="val base classes")

    return TrainJob(
        stage="base",
        model=model,
        parameters=model.parameter_groups(cfg.base_learner_lr, cfg.base_head_lr_mult),
        make_train_set=lambda epoch: BaseClassDataset(cfg, "train", seed=epoch_seed(cfg.seed, epoch)),
        step=lambda net, batch: net(batch["image"], batch["label"]),
        run_dir=base_run_dir(cfg),
        schedule=Schedule(cfg.base_epochs, cfg.base_batch_size, cfg.base_learner_lr, cfg.max_iters),
        identity=run_identity(cfg, "base"),
        validate=validate,
        stop_patience=cfg.base_stop_patience,
        record={SOURCE_KEY: model.backbone_source},
        notices=source_notices(model.backbone_source),
    )


@cli_entry
def main(argv: Sequence[str] | None = None) -> TrainResult:
    return train_from_cli(argv, __doc__, build_job)


if __name__ == "__main__":
    main()
