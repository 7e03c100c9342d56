"""Stage 1: train the PSPNet base learner of one fold on its base classes.

Writes ``initmodel/<dataset>/split<k>/<backbone>/{best,last}.pth`` (COCO: ``initmodel/coco/<coco_split_style>/split<k>/...``;
or ``base_exp_dir``), where stage 2 looks. Each checkpoint records its identity (dataset, fold, split style, classes...).
Usage: ``python train_base.py --config config/pascal/resnet50/split0.yaml [key value ...]``
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from util.common.config import Config
from util.common.errors import UserError, cli_entry
from util.data.registry import base_classes
from util.dataset import BaseClassDataset
from util.common.distributed import DistContext
from util.engine.evaluator import evaluate_semantic
from util.engine.loop import Schedule, TrainJob, TrainResult, train_from_cli
from util.common.runtime import epoch_seed
from util.runs.checkpoint import run_identity
from util.runs.folders import base_run_dir
from util.runs.weights import SOURCE_KEY, build_pspnet, source_notices

MIN_IMAGES_PER_PROCESS = 2


def sync_batchnorm(model: nn.Module, ctx: DistContext, enabled: bool) -> tuple[nn.Module, list[str]]:
    """``model`` with every BatchNorm a SyncBatchNorm when ``enabled`` and the run has more than one process on GPUs
    (statistics over the global batch, as BAM's base learner); elsewhere unchanged, with a notice when more than one
    process normalises its own share (torch's SyncBatchNorm runs on GPUs only)."""
    if not enabled or ctx.world_size == 1:
        return model, []
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model), []
    return model, [f"sync_bn: SyncBatchNorm runs on GPUs only; on {ctx.device.type} each of the {ctx.world_size} "
                   "processes normalises over its own share of the batch"]


def build_job(cfg: Config, ctx: DistContext) -> TrainJob:
    """Stage 1 as a :class:`TrainJob`: PSPNet over base classes, validated by base-class mIoU.

    Two SGD groups as in BAM: the backbone at ``base_learner_lr``, PPM + classifier at ``base_head_lr_mult``
    times it; the run stops early after ``base_stop_patience`` epochs without a better validation mIoU. With more
    than one process on GPUs and ``sync_bn`` (default), BatchNorm layers normalise over the global batch
    (SyncBatchNorm, as BAM's base learner).
    Its checkpoints record where the backbone's starting weights came from (ImageNet file, or random).
    """
    if cfg.base_batch_size // ctx.world_size < MIN_IMAGES_PER_PROCESS:
        raise UserError(f"config key 'base_batch_size' ({cfg.base_batch_size}) gives each of the {ctx.world_size} "
                        f"process(es) {cfg.base_batch_size // ctx.world_size} image(s); stage 1 needs at least "
                        f"{MIN_IMAGES_PER_PROCESS} per process (the pyramid pooling's 1 x 1 BatchNorm normalises over "
                        "a process's images)")
    model, source = build_pspnet(cfg)
    model, synced = sync_batchnorm(model, ctx, cfg.sync_bn)
    notices = source_notices(source) + synced
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
        schedule=Schedule(cfg.base_epochs, cfg.base_batch_size, cfg.base_learner_lr, cfg.max_iters,
                          batch_key="base_batch_size"),
        identity=run_identity(cfg, "base"),
        validate=validate,
        stop_patience=cfg.base_stop_patience,
        record={SOURCE_KEY: source},
        notices=notices,
    )


@cli_entry
def main(argv: Sequence[str] | None = None) -> TrainResult:
    return train_from_cli(argv, __doc__, build_job, batch_key="base_batch_size")


if __name__ == "__main__":
    main()
