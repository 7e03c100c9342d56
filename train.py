"""Stage 2: meta-train MIANet on base-class episodes (frozen backbone from stage 1), validating on novel classes.

Keeps ``best.pth`` (by validation mIoU) and ``last.pth`` in ``exp/<dataset>/split<k>/<backbone>/<shot>shot``
(COCO: ``exp/coco/<coco_split_style>/split<k>/...``; or ``exp_dir``). The base learner must have been trained for
this config (no novel class among its classes, same dataset, backbone and base-learner recipe); its path is part
of the identity every checkpoint records.
Usage: ``python train.py --config config/pascal/resnet50/split0.yaml shot 5 [key value ...]``
"""
from __future__ import annotations

from typing import Sequence

from model.mianet import min_train_size
from util.common.config import Config
from util.common.errors import UserError, cli_entry
from util.data.registry import class_names
from util.dataset import EpisodeDataset, episode_collate
from util.common.distributed import DistContext
from util.engine.evaluator import episode_scores_summary, evaluate_episodes
from util.engine.loop import Schedule, TrainJob, TrainResult, train_from_cli
from util.common.runtime import epoch_seed
from util.runs.checkpoint import check_base_learner, run_identity
from util.runs.folders import base_weight_path, meta_run_dir
from util.runs.weights import (
    CLASS_VECTORS,
    SOURCE_KEY,
    build_mianet,
    class_vectors_record,
    load_base_learner,
    recorded_source,
    source_notices,
)


def build_job(cfg: Config, ctx: DistContext) -> TrainJob:
    """Stage 2 as a :class:`TrainJob`: only ``model.trainable_parameters()`` are optimised; its checkpoints carry
    the base learner's record of where the backbone's weights came from."""
    if cfg.train_size < min_train_size(cfg.backbone):
        raise UserError(f"config key 'train_size' is {cfg.train_size}, below the {min_train_size(cfg.backbone)} px "
                        f"that MIANet with {cfg.backbone} needs to train (its triplet loss's local features); use "
                        f"train_size {min_train_size(cfg.backbone)} or more")
    base_weight = base_weight_path(cfg)
    if not base_weight.is_file():
        raise UserError(f"stage-1 checkpoint {base_weight} not found; run stage 1 first "
                        f"(python train_base.py with the same config) or set base_weight")
    check_base_learner(base_weight, cfg)
    model = build_mianet(cfg)
    load_base_learner(model, base_weight)
    source = recorded_source(base_weight)
    names = class_names(cfg.dataset, cfg.list_root)
    val_set = EpisodeDataset(cfg, "val", episodes=cfg.val_episodes, seed=cfg.seed)

    def validate(net) -> dict[str, float]:
        scores = evaluate_episodes(net, val_set, ctx, num_classes=len(names), ignore_label=cfg.ignore_label,
                                   batch_size=cfg.test_batch_size, ori_resize=cfg.ori_resize, workers=cfg.workers,
                                   amp=cfg.amp, desc="val novel classes", feature_reuse=cfg.feature_reuse,
                                   encode_batch=cfg.encode_batch)
        summary = episode_scores_summary(scores, names)
        return {"miou": summary["miou"], "fbiou": summary["fbiou"]}

    def step(net, batch):
        return net(batch["query"], batch["supports"], batch["support_masks"], batch["class_id"],
                   query_label=batch["query_label"])

    return TrainJob(
        stage="meta",
        model=model,
        parameters=list(model.trainable_parameters()),
        make_train_set=lambda epoch: EpisodeDataset(cfg, "train", seed=epoch_seed(cfg.seed, epoch)),
        step=step,
        run_dir=meta_run_dir(cfg),
        schedule=Schedule(cfg.epochs, cfg.batch_size, cfg.base_lr, cfg.max_iters, batch_key="batch_size"),
        identity=run_identity(cfg, "meta") | {"base_weight": str(base_weight)},
        validate=validate,
        collate=episode_collate(cfg.ignore_label),
        record={SOURCE_KEY: source, CLASS_VECTORS: class_vectors_record(model)},
        notices=source_notices(source),
    )


@cli_entry
def main(argv: Sequence[str] | None = None) -> TrainResult:
    return train_from_cli(argv, __doc__, build_job, batch_key="batch_size")


if __name__ == "__main__":
    main()
