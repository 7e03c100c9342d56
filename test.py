"""Evaluate a stage-2 checkpoint on novel-class episodes with the config's protocol.

``test_seeds`` x ``test_episodes`` episodes, ``ori_resize``, ``test_batch_size``; prints per-class IoU,
mIoU and FB-IoU per seed and mean ± std over seeds, then what qualifies them (classes without episodes,
predictions that are (nearly) all foreground or background, a backbone trained from random weights), and
writes ``<run dir>/test/results.json`` (the numbers, the resolved protocol, the checkpoint tested and the base
learner it was trained from) and ``<run dir>/test/config.yaml``. A checkpoint trained under another identity
than the config's (dataset, fold, COCO split style, classes, ``novel_in_train``, ``base_images``, backbone; not
the shot) is refused; a fold that was never trained stops with the train.sh command to run first. ``vis N``
also draws the first N episodes of the first seed (supports, truth, prediction, IoU) and their contact sheet to
``<run dir>/test/vis/``.
Usage: ``python test.py --config config/pascal/resnet50/split0.yaml [weight PATH] [vis N] [key value ...]``
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from util.atomic import write_bytes_atomic
from util.backbone_weights import SOURCE_KEY, source_in
from util.checkpoint import (MODEL_CONFIG_KEYS, check_checkpoint_config, check_model_identity, describe_identity,
                              load_checkpoint, load_model_state, stage2_weight)
from util.cli import config_from_cli
from util.dataset import EpisodeDataset
from util.distributed import init_distributed, shutdown_distributed
from util.errors import cli_entry
from util.evaluator import CONTACT_SHEET, draw_episode_figures, run_protocol
from util.model_io import build_mianet
from util.report import format_run_table, results_path
from util.runlog import RunLog
from util.runtime import check_amp, seed_everything

VIS_DIR = "vis"


@cli_entry
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cfg = config_from_cli(argv, __doc__)
    ctx = init_distributed(cfg.device)
    try:
        check_amp(cfg.amp, ctx.device)
        seed_everything(cfg.seed)
        weight = stage2_weight(cfg)
        state = load_checkpoint(weight)
        check_checkpoint_config(state, cfg, weight, MODEL_CONFIG_KEYS)
        identity = check_model_identity(state, cfg, weight)
        model = build_mianet(cfg)
        load_model_state(model, state["model"], weight)
        model.to(ctx.device)
        out_path = results_path(cfg)
        out_dir = out_path.parent
        log = RunLog(out_dir, "test", enabled=ctx.is_main, tensorboard=False)
        try:
            log.info(f"testing {weight} on {cfg.dataset} fold {cfg.split} {cfg.shot}-shot, device {ctx.device}; "
                     f"it was trained as: {describe_identity(identity)}")
            results = run_protocol(model, cfg, ctx, report=log.info)
            results["protocol"]["weight"] = str(weight)
            results["protocol"]["base_weight"] = identity.get("base_weight")
            results["protocol"]["trained_shot"] = identity.get("shot")
            results["protocol"][SOURCE_KEY] = source_in(state, weight)
            if ctx.is_main:
                cfg.save(out_dir / "config.yaml")
                write_bytes_atomic(out_path, json.dumps(results, indent=2).encode())
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
