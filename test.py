"""Evaluate a stage-2 checkpoint on novel-class episodes with the config's protocol.

``test_seeds`` x ``test_episodes`` episodes, ``ori_resize``, ``test_batch_size``; prints per-class IoU,
mIoU and FB-IoU per seed and mean ± std over seeds, then what qualifies them (classes without episodes,
predictions that are (nearly) all foreground or background, a backbone trained from random weights), and
writes ``<run dir>/test/results.json`` (the numbers, the resolved protocol, the checkpoint tested and the base
learner it was trained from) and ``<run dir>/test/config.yaml``. A checkpoint trained under another identity
than the config's (dataset, fold, COCO split style, classes, ``novel_in_train``, ``base_images``, backbone; not
the shot), a stage-1 base learner, and an ``embedding_file`` holding other class vectors than the checkpoint was
trained with are refused, before any work; so is an output folder that cannot be written, and a second test.py
on the same run folder while one runs (the folder's lock); a fold that was never trained stops with the train.sh
command to run first. Results are written atomically (a full disk keeps the previous file). ``vis N``
also draws the first N episodes of the first seed (supports, truth, prediction, IoU) and their contact sheet to
``<run dir>/test/vis/``.
Usage: ``python test.py --config config/pascal/resnet50/split0.yaml [weight PATH] [vis N] [key value ...]``
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from util.common.atomic import check_writable, write_output
from util.common.cli import config_from_cli
from util.common.errors import cli_entry
from util.dataset import EpisodeDataset
from util.common.distributed import init_distributed, shutdown_distributed
from util.engine.evaluator import CONTACT_SHEET, draw_episode_figures, run_protocol
from util.common.runtime import check_amp, seed_everything
from util.reports.tables import format_run_table
from util.runs.checkpoint import describe_identity, recorded_identity
from util.runs.folders import results_path, stage2_weight
from util.runs.guard import run_dir_lock
from util.runs.log import RunLog
from util.runs.weights import (
    CLASS_VECTORS,
    SOURCE_KEY,
    class_vectors_record,
    embedding_path,
    load_stage2_model,
    source_in,
)

VIS_DIR = "vis"
WRITABLE = "free disk space or choose a writable exp_dir (test.py writes <exp_dir>/test/)"


@cli_entry
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cfg = config_from_cli(argv, __doc__)
    ctx = init_distributed(cfg.device)
    try:
        check_amp(cfg.amp, ctx.device)
        seed_everything(cfg.seed)
        weight = stage2_weight(cfg)
        model, state = load_stage2_model(cfg, weight, ctx.device)
        identity = recorded_identity(state)
        out_path = results_path(cfg)
        out_dir = out_path.parent
        if ctx.is_main:
            check_writable(out_path, WRITABLE)
        with run_dir_lock(out_dir, ctx, "exp_dir"):
            log = RunLog(out_dir, "test", enabled=ctx.is_main, tensorboard=False)
            try:
                log.info(f"testing {weight} on {cfg.dataset} fold {cfg.split} {cfg.shot}-shot, device {ctx.device}; "
                         f"it was trained as: {describe_identity(identity)}")
                results = run_protocol(model, cfg, ctx, report=log.info)
                results["protocol"] |= {"weight": str(weight), "base_weight": identity.get("base_weight"),
                                        "trained_shot": identity.get("shot"), SOURCE_KEY: source_in(state, weight),
                                        "embedding_file": str(embedding_path(cfg)),
                                        CLASS_VECTORS: class_vectors_record(model)}
                if ctx.is_main:
                    cfg.save(out_dir / "config.yaml")
                    write_output(out_path, (json.dumps(results, indent=2) + "\n").encode(), WRITABLE)
                    log.info(format_run_table(results))
                    log.info(f"results: {out_path}")
                    if cfg.vis:
                        seed = cfg.test_seeds[0]
                        episodes = EpisodeDataset(cfg, "test", episodes=cfg.test_episodes, seed=seed)
                        figures = draw_episode_figures(model, episodes, cfg.vis, out_dir / VIS_DIR, cfg, ctx.device)
                        log.info(f"episode figures (the first {len(figures)} of seed {seed}): {out_dir / VIS_DIR}/ "
                                 f"(episode_*.png, {CONTACT_SHEET})")
            finally:
                log.close()
        return results
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
