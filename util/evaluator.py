"""The one evaluator: few-shot episodes (stage-2 validation and test.py) and base-class segmentation (stage-1 validation);
it also draws test.py's episode figures (``vis``) from the same predictions it scores.

Episodes are sharded over ranks without repeats and the integer counts are summed over ranks, so a
multi-process evaluation gives exactly the numbers of a single process.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from util.checkpoint import MODEL_CONFIG_KEYS
from util.classes import class_names, novel_classes
from util.dataset import EpisodeDataset, episode_collate
from util.image_io import read_label
from util.distributed import DistContext, ShardSampler
from util.metrics import (NEARLY_ALL, FewShotIoU, SemanticIoU, check_finite_logits, foreground_coverage,
                          predict_on_label)
from util.runguard import worker_signals
from util.runtime import autocast, to_device
from util.transform import normalization_for
from util.visualize import save_contact_sheet, save_sample_figure

CONTACT_SHEET = "contact_sheet.png"
DEGENERATE_MEANING = {
    "all foreground": "the model marks (nearly) every pixel as the object whatever the support, so it has not learned "
                      "to segment (an untrained or random-weight backbone, or a diverged run); its IoU then only "
                      "measures how much of each image the target covers",
    "all background": "the model marks (nearly) nothing as the object, so it has not learned to segment (an untrained "
                      "or diverged run); its IoU is near 0",
}


class _WithOriginalSize(Dataset):
    """Adds ``query_size_ori`` (h0, w0) to each episode before collation pads the original labels."""

    def __init__(self, episodes: Dataset):
        self.episodes = episodes

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.episodes[index])
        item["query_size_ori"] = torch.tensor(item["query_label_ori"].shape, dtype=torch.int64)
        return item


def _episode_predictions(
    model: nn.Module, batches: Iterable[dict], device: torch.device, ori_resize: bool, amp: str,
) -> Iterator[tuple[dict, int, torch.Tensor, torch.Tensor]]:
    """``(batch, b, prediction, label)`` for every episode ``b`` of every batch: the binary prediction on the
    grid of the label it is scored against (``query_label_ori`` with ``ori_resize``, else ``query_label``)."""
    for batch in batches:
        batch = to_device(batch, device)
        with autocast(device, amp):
            logits = model(batch["query"], batch["supports"], batch["support_masks"], batch["class_id"])
        check_finite_logits(logits, amp, batch.get("query_path"))
        for b in range(logits.shape[0]):
            if ori_resize:
                h0, w0 = batch["query_size_ori"][b].tolist()
                label = batch["query_label_ori"][b, :h0, :w0]
                pred = predict_on_label(logits[b], (h0, w0), ori_size=(h0, w0))
            else:
                label = batch["query_label"][b]
                pred = predict_on_label(logits[b], tuple(label.shape))
            yield batch, b, pred, label


@torch.no_grad()
def evaluate_episodes(
    model: nn.Module, episodes: Dataset, ctx: DistContext, *, num_classes: int, ignore_label: int, batch_size: int = 1,
    ori_resize: bool = True, workers: int = 0, amp: str = "off", desc: str = "test",
) -> FewShotIoU:
    """Run ``model`` (eval mode) on every episode and return the scores, already reduced over ranks.

    ``ori_resize``: score against ``query_label_ori`` (original size, see :func:`predict_on_label`);
    otherwise against ``query_label`` on the network input grid.
    """
    model.eval()
    scores = FewShotIoU(num_classes, ignore_label)
    loader = DataLoader(_WithOriginalSize(episodes), batch_size=batch_size, sampler=ShardSampler(len(episodes), ctx),
                        num_workers=workers, collate_fn=episode_collate(ignore_label), worker_init_fn=worker_signals)
    bar = tqdm(loader, desc=desc, disable=not ctx.is_main, dynamic_ncols=True, leave=False)
    for batch, b, pred, label in _episode_predictions(model, bar, ctx.device, ori_resize, amp):
        scores.update(pred, label, int(batch["class_id"][b]))
    scores.reduce()
    return scores


@torch.no_grad()
def draw_episode_figures(model: nn.Module, episodes: EpisodeDataset, count: int, out_dir: Path,
                         cfg: Mapping[str, Any], device: torch.device) -> list[Path]:
    """Figures of the first ``count`` episodes, predicted and scored as :func:`evaluate_episodes` does, and
    their contact sheet, in ``out_dir`` (``episode_<i>.png`` of an earlier call are replaced).

    Returns the episode figures' paths; the contact sheet is ``out_dir / CONTACT_SHEET``.
    """
    model.eval()
    names = class_names(cfg["dataset"])
    mean, std = normalization_for(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("episode_*.png"):
        stale.unlink()
    chosen = Subset(_WithOriginalSize(episodes), range(min(count, len(episodes))))
    loader = DataLoader(chosen, batch_size=cfg["test_batch_size"], num_workers=cfg["workers"],
                        collate_fn=episode_collate(cfg["ignore_label"]), worker_init_fn=worker_signals)
    paths: list[Path] = []
    for batch, b, pred, label in _episode_predictions(model, loader, device, cfg["ori_resize"], cfg["amp"]):
        class_name = names[int(batch["class_id"][b]) - 1]
        paths.append(save_sample_figure(out_dir / f"episode_{len(paths):04d}.png", batch, b, pred, label,
                                        mean, std, class_name))
    if paths:
        save_contact_sheet(paths, out_dir / CONTACT_SHEET)
    return paths


def every_object_baseline(episodes: EpisodeDataset, data_root: str | Path, ctx: DistContext, num_classes: int,
                          ignore_label: int) -> FewShotIoU:
    """Scores of predicting every labelled object pixel as foreground, from the episodes' query label files.

    Episode specs hold paths relative to ``data_root`` (absolute paths pass through unchanged).
    Scored at the original size (as ``ori_resize``); a model that does not beat this has not learned
    to pick the episode's class among the objects in the image.
    """
    scores = FewShotIoU(num_classes, ignore_label)
    for index in ShardSampler(len(episodes), ctx):
        spec = episodes.episode(index)
        semantic = torch.from_numpy(read_label(Path(data_root) / spec.query[1]).astype(np.int64))
        label = torch.where(semantic == ignore_label, ignore_label, (semantic == spec.class_id).long())
        pred = ((semantic != 0) & (semantic != ignore_label)).long()
        scores.update(pred, label, spec.class_id)
    scores.reduce()
    return scores


@torch.no_grad()
def evaluate_semantic(
    model: nn.Module, dataset: Dataset, ctx: DistContext, *, num_classes: int, ignore_label: int, batch_size: int = 1,
    workers: int = 0, amp: str = "off", desc: str = "val",
) -> dict[str, float]:
    """Stage-1 validation: per-class IoU of ``model(image)`` over ``dataset``; mIoU over the classes 1..n-1."""
    model.eval()
    scores = SemanticIoU(num_classes, ignore_label)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), ctx), num_workers=workers,
                        worker_init_fn=worker_signals)
    for batch in tqdm(loader, desc=desc, disable=not ctx.is_main, dynamic_ncols=True, leave=False):
        batch = to_device(batch, ctx.device)
        with autocast(ctx.device, amp):
            logits = model(batch["image"])
        check_finite_logits(logits, amp)
        for b in range(logits.shape[0]):
            label = batch["label"][b]
            scores.update(predict_on_label(logits[b], tuple(label.shape)), label)
    scores.reduce()
    return {"miou": scores.miou(list(range(1, num_classes))), "miou_with_background": scores.miou()}


def episode_scores_summary(scores: FewShotIoU, names: tuple[str, ...]) -> dict[str, Any]:
    """JSON-ready numbers of one evaluation (fractions in 0..1); ``foreground``: how much of the scored pixels the
    predictions and the labels mark as foreground (:func:`util.metrics.foreground_coverage`)."""
    return {
        "miou": scores.miou(),
        "fbiou": scores.fbiou(),
        "episodes": scores.episodes(),
        "class_iou": {names[c - 1]: iou for c, iou in scores.class_iou().items()},
        "foreground": scores.foreground_coverage(),
    }


def prediction_check(coverage: Mapping[str, float | int], episodes: int) -> dict[str, Any]:
    """``coverage`` (:func:`util.metrics.foreground_coverage`) judged: ``degenerate`` is ``"all foreground"`` when the
    predictions cover at least :data:`NEARLY_ALL` of the scored pixels, ``"all background"`` when they cover at most
    1 - :data:`NEARLY_ALL`, else None; ``meaning`` says in one sentence what that means."""
    share = coverage["predicted"]
    verdict = "all foreground" if share >= NEARLY_ALL else "all background" if share <= 1 - NEARLY_ALL else None
    return {**coverage, "episodes": episodes, "degenerate": verdict, "meaning": DEGENERATE_MEANING.get(verdict)}


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}


def protocol_of(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that define a test's numbers, recorded with them."""
    keys = MODEL_CONFIG_KEYS + ("split", "shot", "ann_type", "test_seeds", "test_episodes", "ori_resize", "val_size",
                                "test_batch_size", "coco_split_style", "min_class_pixels", "episode_class", "amp")
    return {key: cfg[key] for key in keys}


def run_protocol(
    model: nn.Module, cfg: Mapping[str, Any], ctx: DistContext,
    make_episodes: Callable[[int], EpisodeDataset] | None = None, report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``cfg.test_episodes`` novel-class episodes for every seed of ``cfg.test_seeds``.

    Returns per-seed per-class IoU, mIoU and FB-IoU, their mean and (population) std over seeds, the
    same for the "predict every object" baseline, and the resolved protocol. A novel class without episodes
    in a seed is listed in that seed's ``classes_without_episodes`` (the mIoU averages the others);
    ``prediction_check`` says whether the predictions over all seeds are (nearly) all foreground or all
    background (:func:`prediction_check`). ``report`` gets one line per seed.
    """
    if make_episodes is None:
        def make_episodes(seed: int) -> EpisodeDataset:
            return EpisodeDataset(cfg, "val", episodes=cfg["test_episodes"], seed=seed)
    names = class_names(cfg["dataset"])
    total_classes = len(names)
    novel = novel_classes(cfg["dataset"], cfg["split"], cfg["coco_split_style"])
    per_seed = []
    coverage = torch.zeros(5, dtype=torch.int64)
    for seed in cfg["test_seeds"]:
        episodes = make_episodes(seed)
        scores = evaluate_episodes(model, episodes, ctx, num_classes=total_classes, ignore_label=cfg["ignore_label"],
                                   batch_size=cfg["test_batch_size"],
                                   ori_resize=cfg["ori_resize"], workers=cfg["workers"], amp=cfg["amp"],
                                   desc=f"test seed {seed}")
        baseline = every_object_baseline(episodes, cfg["data_root"], ctx, total_classes, cfg["ignore_label"])
        coverage += scores.coverage
        entry = {"seed": seed, **episode_scores_summary(scores, names),
                 "classes_without_episodes": [names[c - 1] for c in novel if c not in scores.class_iou()],
                 "baseline": episode_scores_summary(baseline, names)}
        per_seed.append(entry)
        scored = f"over {len(novel) - len(entry['classes_without_episodes'])} of {len(novel)} classes"
        report(f"seed {seed}: mIoU {100 * entry['miou']:.2f} ({scored}) FB-IoU {100 * entry['fbiou']:.2f} "
               f"({entry['episodes']} episodes; every-object baseline mIoU {100 * entry['baseline']['miou']:.2f} "
               f"FB-IoU {100 * entry['baseline']['fbiou']:.2f})")
    return {
        "protocol": {**protocol_of(cfg), "novel_classes": [names[c - 1] for c in novel], "processes": ctx.world_size},
        "miou": _mean_std([s["miou"] for s in per_seed]),
        "fbiou": _mean_std([s["fbiou"] for s in per_seed]),
        "baseline": {"miou": _mean_std([s["baseline"]["miou"] for s in per_seed]),
                     "fbiou": _mean_std([s["baseline"]["fbiou"] for s in per_seed])},
        "prediction_check": prediction_check(foreground_coverage(coverage), sum(s["episodes"] for s in per_seed)),
        "seeds": per_seed,
    }
