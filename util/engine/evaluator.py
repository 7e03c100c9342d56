"""The one evaluator: few-shot episodes (stage-2 validation and test.py) and base-class segmentation (stage-1 validation);
it also draws test.py's episode figures (``vis``) from the same predictions it scores.

Episodes are sharded over ranks without repeats and the integer counts are summed over ranks, so a
multi-process evaluation gives exactly the numbers of a single process.
"""
from __future__ import annotations

import statistics
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from model.mianet import EncodedImages, SupportSummary, stack_shots
from util.data.registry import benchmark, class_names, novel_classes
from util.data.transform import normalization_for
from util.dataset import Episode, EpisodeDataset, episode_collate
from util.common.distributed import DistContext, ShardSampler
from util.engine.metrics import (
    NEARLY_ALL,
    FewShotIoU,
    FiniteWatch,
    SemanticIoU,
    check_finite_logits,
    foreground_coverage,
    predict_on_label,
)
from util.common.runtime import autocast, to_device
from util.reports.figures import save_contact_sheet, save_sample_figure
from util.runs.checkpoint import MODEL_CONFIG_KEYS
from util.runs.guard import worker_signals

CONTACT_SHEET = "contact_sheet.png"
# feature_reuse: (support image, class) summaries kept per evaluation; ~34 KB each with ResNet-50 (256 + 4 x 2048
# float32), so at most ~0.28 GB, more than the pairs of a PASCAL or synth protocol (the least recently used go first)
SUPPORT_CACHE_ENTRIES = 8192
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
    model: nn.Module, batches: Iterable[dict], device: torch.device, ori_resize: bool, amp: str, encode_batch: int,
    watch: FiniteWatch | None = None,
) -> Iterator[tuple[dict, int, torch.Tensor, torch.Tensor]]:
    """``(batch, b, prediction, label)`` for every episode ``b`` of every batch: the binary prediction on the
    grid of the label it is scored against (``query_label_ori`` with ``ori_resize``, else ``query_label``); the batch
    on the device, with its classes also as ``class_ids`` and its original label sizes as ``sizes_ori`` (ints).

    A model with ``predict`` (MIANet) computes each episode alone (:meth:`model.mianet.MIANet.predict`), so the
    loader's batch size changes no prediction; other models get the whole batch. Non-finite logits stop it at once
    (:func:`check_finite_logits`), or, given ``watch``, when the caller checks it (no wait for the device per batch)."""
    net = model.module if isinstance(model, DistributedDataParallel) else model
    for batch in batches:
        sizes = batch["query_size_ori"].tolist() if "query_size_ori" in batch else None  # on the CPU, before the copy
        batch = to_device(batch, device) | {"class_ids": batch["class_id"].tolist(), "sizes_ori": sizes}
        with autocast(device, amp):
            if callable(getattr(net, "predict", None)):  # one episode at a time: the feature-reuse path's computation
                logits = torch.cat([net.predict(batch["query"][b:b + 1], batch["supports"][b], batch["support_masks"][b],
                                                batch["class_id"][b:b + 1], encode_batch)
                                    for b in range(len(batch["query"]))])
            else:
                logits = model(batch["query"], batch["supports"], batch["support_masks"], batch["class_id"])
        if watch is None:
            check_finite_logits(logits, amp, batch.get("query_path"))
        else:
            watch.add(logits, batch["query_path"])
        for b in range(logits.shape[0]):
            if ori_resize:
                h0, w0 = sizes[b]
                label = batch["query_label_ori"][b, :h0, :w0]
            else:
                label = batch["query_label"][b]
            yield batch, b, _predict(logits[b], label, ori_resize), label


def _predict(logits: torch.Tensor, label: torch.Tensor, ori_resize: bool) -> torch.Tensor:
    """The binary prediction of one episode's ``logits`` on the grid of the ``label`` it is scored against."""
    size = tuple(label.shape)
    return predict_on_label(logits, size, ori_size=size) if ori_resize else predict_on_label(logits, size)


@torch.no_grad()
def evaluate_episodes(
    model: nn.Module, episodes: EpisodeDataset, ctx: DistContext, *, num_classes: int, ignore_label: int,
    batch_size: int = 1, ori_resize: bool = True, workers: int = 0, amp: str = "off", desc: str = "test",
    feature_reuse: bool = False, encode_batch: int | None = None,
) -> FewShotIoU:
    """Run ``model`` (eval mode) on every episode and return the scores, already reduced over ranks.

    ``ori_resize``: score against ``query_label_ori`` (original size, see :func:`predict_on_label`);
    otherwise against ``query_label`` on the network input grid. ``feature_reuse`` and ``encode_batch``: see
    :func:`evaluate_episode_sets`.
    """
    return evaluate_episode_sets(model, [episodes], ctx, num_classes=num_classes, ignore_label=ignore_label,
                                 batch_size=batch_size, ori_resize=ori_resize, workers=workers, amp=amp, desc=desc,
                                 feature_reuse=feature_reuse, encode_batch=encode_batch)[0]


@torch.no_grad()
def evaluate_episode_sets(
    model: nn.Module, episode_sets: list[EpisodeDataset], ctx: DistContext, *, num_classes: int, ignore_label: int,
    batch_size: int = 1, ori_resize: bool = True, workers: int = 0, amp: str = "off", desc: str = "test",
    feature_reuse: bool = False, encode_batch: int | None = None,
) -> list[FewShotIoU]:
    """:func:`evaluate_episodes` of each set (e.g. one per test seed), as one evaluation.

    ``feature_reuse`` with a model that splits into ``encode`` / ``summarize_supports`` / ``head`` (MIANet): each
    image is encoded once per query turn and each (support image, class) summarised once for all the sets
    (:func:`_evaluate_reusing_features`). Both paths compute every episode alone with the same calls (images
    encoded, supports summarised one at a time, the head on one episode: :meth:`model.mianet.MIANet.predict`), so on
    the CPU, where images are encoded one at a time, they give the same predictions and scores for any
    ``batch_size`` (``tests/engine/test_feature_reuse.py``); ``batch_size`` only groups the episodes the loader
    reads. ``encode_batch``: on a GPU, images are encoded at most this many at a time (None: all of an episode or
    a query turn at once); different groupings differ there at float-rounding level. Other models run per batch.
    """
    model.eval()
    net = model.module if isinstance(model, DistributedDataParallel) else model
    if feature_reuse and all(callable(getattr(net, name, None)) for name in ("encode", "summarize_supports", "head")):
        return _evaluate_reusing_features(net, episode_sets, ctx, num_classes=num_classes, ignore_label=ignore_label,
                                          ori_resize=ori_resize, workers=workers, amp=amp, desc=desc,
                                          encode_batch=encode_batch)
    results = []
    for episodes in episode_sets:
        scores = FewShotIoU(num_classes, ignore_label, baseline=True)
        loader = DataLoader(_WithOriginalSize(episodes), batch_size=batch_size, sampler=ShardSampler(len(episodes), ctx),
                            num_workers=workers, collate_fn=episode_collate(ignore_label),
                            worker_init_fn=worker_signals, pin_memory=ctx.device.type == "cuda")
        bar = tqdm(loader, desc=desc, disable=not ctx.is_main, dynamic_ncols=True, leave=False)
        watch = FiniteWatch(amp)
        for batch, b, pred, label in _episode_predictions(model, bar, ctx.device, ori_resize, amp, encode_batch, watch):
            scores.update(pred, label, batch["class_ids"][b])
            if "query_baseline_ori" not in batch:  # an episode set that does not say what the baseline predicts
                continue
            h0, w0 = batch["sizes_ori"][b]
            scores.baseline.update(batch["query_baseline_ori"][b, :h0, :w0], batch["query_label_ori"][b, :h0, :w0],
                                   batch["class_ids"][b])
        watch.check()
        scores.reduce()
        results.append(scores)
    return results


Image = tuple[str, str]  # (image, label) paths relative to data_root, as in the lists


@dataclass
class _QueryTurn:
    """The episodes of one query image (``(set, index, spec)``) and the images encoded for them: the query first,
    then supports whose summaries are not cached. ``summarize``: per encoded image, the classes whose support
    summaries are computed from it now; ``evict``: cache keys dropped once the episodes are done."""

    query: Image
    episodes: list[tuple[int, int, Episode]]
    summarize: dict[Image, list[int]] = field(default_factory=dict)
    evict: list[tuple[Image, int]] = field(default_factory=list)

    def images(self) -> list[Image]:
        return [self.query] + [image for image in self.summarize if image != self.query]


def _plan_query_turns(episode_sets: list[EpisodeDataset], ctx: DistContext, capacity: int) -> list[_QueryTurn]:
    """This rank's episodes of every set grouped by query image (in order of first appearance), with the support
    summaries each turn computes and the least recently used ones it drops to keep at most ``capacity`` cached.

    An image is summarised for every class any of the rank's episodes needs from it, at the first turn that
    encodes it (as a query or as an uncached support), so most images are encoded once per query turn only.
    """
    turns: dict[Image, _QueryTurn] = {}
    needed: dict[Image, set[int]] = defaultdict(set)
    for number, episodes in enumerate(episode_sets):
        for index in ShardSampler(len(episodes), ctx):
            spec = episodes.episode(index)
            turns.setdefault(spec.query, _QueryTurn(spec.query, [])).episodes.append((number, index, spec))
            for support in spec.supports:
                needed[support].add(spec.class_id)
    cache: OrderedDict[tuple[Image, int], None] = OrderedDict()

    def schedule(turn: _QueryTurn, image: Image) -> None:
        missing = sorted(c for c in needed[image] if (image, c) not in cache)
        turn.summarize[image] = missing
        cache.update(((image, c), None) for c in missing)

    for turn in turns.values():
        if needed[turn.query]:
            schedule(turn, turn.query)
        for _, _, spec in turn.episodes:
            for support in spec.supports:
                if (support, spec.class_id) not in cache:
                    schedule(turn, support)
                cache.move_to_end((support, spec.class_id))
        while len(cache) > capacity:
            turn.evict.append(cache.popitem(last=False)[0])
    return list(turns.values())


class _QueryTurnImages(Dataset):
    """Loads the pixels of a query turn (in a DataLoader worker): the encoded images [N,3,S,S] (query first), the
    query's label per episode class (network grid and original size), the baseline's prediction for the query
    (original size) and the support masks to summarise."""

    def __init__(self, episodes: EpisodeDataset, turns: list[_QueryTurn]):
        self.episodes, self.turns = episodes, turns

    def __len__(self) -> int:
        return len(self.turns)

    def __getitem__(self, index: int) -> dict[str, Any]:
        turn = self.turns[index]
        rng = np.random.default_rng(0)  # the test transform draws nothing
        query_classes = sorted({spec.class_id for _, _, spec in turn.episodes})
        tensors, query_labels, support_masks = [], {}, {}
        for image in turn.images():
            rgb, classes = self.episodes.read(*image)
            if image == turn.query:
                query_baseline = torch.from_numpy(self.episodes.baseline_prediction(classes).astype(np.int64))
            tensor = None
            for class_id in query_classes if image == turn.query else ():
                tensor, label, binary = self.episodes.view(rgb, classes, class_id, rng, support=False)
                query_labels[class_id] = (label, torch.from_numpy(binary.astype(np.int64)))
            for class_id in turn.summarize.get(image, ()):
                tensor, mask, _ = self.episodes.view(rgb, classes, class_id, rng, support=True)
                support_masks[image, class_id] = mask
            tensors.append(tensor)
        return {"images": torch.stack(tensors), "query_labels": query_labels, "support_masks": support_masks,
                "query_baseline": query_baseline}


def _as_is(item: Any) -> Any:
    return item


def _evaluate_reusing_features(
    net: nn.Module, episode_sets: list[EpisodeDataset], ctx: DistContext, *, num_classes: int, ignore_label: int,
    ori_resize: bool, workers: int, amp: str, desc: str, encode_batch: int | None,
) -> list[FewShotIoU]:
    """The ``feature_reuse`` path of :func:`evaluate_episode_sets`.

    Episodes run grouped by query image (:func:`_plan_query_turns`): the query's encoder maps live for its turn only;
    a (support image, class) pair is kept as its summary (prototype and HPM directions, ~34 KB with ResNet-50) in a
    cache of at most :data:`SUPPORT_CACHE_ENTRIES` entries. The loader's workers read each turn's images once; the main process
    encodes them. Every set must share the data settings (data_root, ann_type, val_size, test_geometry): the first set
    loads.
    """
    first = episode_sets[0]
    for episodes in episode_sets:
        if episodes.mode == "train":
            raise ValueError("feature reuse needs the test transform (EpisodeDataset mode 'val' or 'test'); training "
                             "augments")
        spec, first_spec = episodes.spec, first.spec
        if (episodes.root, spec.ann_type, spec.val_size, spec.test_geometry) != (
                first.root, first_spec.ann_type, first_spec.val_size, first_spec.test_geometry):
            raise ValueError("feature reuse needs episode sets with the same data_root, ann_type, val_size and "
                             "test_geometry")
    turns = _plan_query_turns(episode_sets, ctx, SUPPORT_CACHE_ENTRIES)
    loader = DataLoader(_QueryTurnImages(first, turns), batch_size=None, num_workers=workers, collate_fn=_as_is,
                        worker_init_fn=worker_signals, pin_memory=ctx.device.type == "cuda")
    scores = [FewShotIoU(num_classes, ignore_label, baseline=True) for _ in episode_sets]
    watch = FiniteWatch(amp)
    cache: dict[tuple[Image, int], SupportSummary] = {}
    bar = tqdm(zip(turns, loader), total=len(turns), desc=desc, disable=not ctx.is_main, dynamic_ncols=True, leave=False)
    for turn, loaded in bar:
        images = loaded["images"].to(ctx.device, non_blocking=True)
        size = tuple(images.shape[-2:])
        with autocast(ctx.device, amp):
            encoded = net.encode(images, encode_batch)
            for position, image in enumerate(turn.images()):
                for class_id in turn.summarize.get(image, ()):
                    mask = loaded["support_masks"][image, class_id].to(ctx.device, non_blocking=True)[None]
                    cache[image, class_id] = net.summarize_supports(
                        EncodedImages(encoded.mid[position:position + 1], encoded.layer4[position:position + 1]),
                        mask, size[0])
        query = EncodedImages(encoded.mid[:1], encoded.layer4[:1])
        query_baseline = loaded["query_baseline"].to(ctx.device, non_blocking=True)
        del encoded, images
        for number, _, spec in turn.episodes:
            summary = stack_shots([cache[support, spec.class_id] for support in spec.supports])
            with autocast(ctx.device, amp):
                logits = net.head(query, summary, torch.tensor([spec.class_id], device=ctx.device), size)
            watch.add(logits, [turn.query[0]])
            label, label_ori = (values.to(ctx.device, non_blocking=True) for values in loaded["query_labels"][spec.class_id])
            scored = label_ori if ori_resize else label
            scores[number].update(_predict(logits[0], scored, ori_resize), scored, spec.class_id)
            scores[number].baseline.update(query_baseline, label_ori, spec.class_id)
        for key in turn.evict:
            del cache[key]
    watch.check()
    for score in scores:
        score.reduce()
    return scores


@torch.no_grad()
def draw_episode_figures(model: nn.Module, episodes: EpisodeDataset, count: int, out_dir: Path,
                         cfg: Mapping[str, Any], device: torch.device) -> list[Path]:
    """Figures of the first ``count`` episodes, predicted and scored as :func:`evaluate_episodes` does, and
    their contact sheet, in ``out_dir`` (``episode_<i>.png`` of an earlier call are replaced).

    Returns the episode figures' paths; the contact sheet is ``out_dir / CONTACT_SHEET``.
    """
    model.eval()
    names = class_names(cfg["dataset"], cfg["list_root"])
    mean, std = normalization_for(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("episode_*.png"):
        stale.unlink()
    chosen = Subset(_WithOriginalSize(episodes), range(min(count, len(episodes))))
    loader = DataLoader(chosen, batch_size=cfg["test_batch_size"], num_workers=cfg["workers"],
                        collate_fn=episode_collate(cfg["ignore_label"]), worker_init_fn=worker_signals)
    paths: list[Path] = []
    for batch, b, pred, label in _episode_predictions(model, loader, device, cfg["ori_resize"], cfg["amp"],
                                                      cfg["encode_batch"]):
        class_name = names[batch["class_ids"][b] - 1]
        paths.append(save_sample_figure(out_dir / f"episode_{len(paths):04d}.png", batch, b, pred, label,
                                        mean, std, class_name))
    if paths:
        save_contact_sheet(paths, out_dir / CONTACT_SHEET)
    return paths


def baseline_name(dataset: str) -> str:
    """What the baseline next to every result predicts on ``dataset`` (:meth:`util.dataset.EpisodeDataset.baseline_prediction`),
    as reports name it."""
    return benchmark(dataset).baseline


@torch.no_grad()
def evaluate_semantic(
    model: nn.Module, dataset: Dataset, ctx: DistContext, *, num_classes: int, ignore_label: int, batch_size: int = 1,
    workers: int = 0, amp: str = "off", desc: str = "val",
) -> dict[str, float]:
    """Stage-1 validation: per-class IoU of ``model(image)`` over ``dataset``; mIoU over the classes 1..n-1."""
    model.eval()
    scores = SemanticIoU(num_classes, ignore_label)
    sampler = ShardSampler(len(dataset), ctx)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        worker_init_fn=worker_signals, pin_memory=ctx.device.type == "cuda")
    watch, numbers = FiniteWatch(amp), iter(sampler)
    for batch in tqdm(loader, desc=desc, disable=not ctx.is_main, dynamic_ncols=True, leave=False):
        batch = to_device(batch, ctx.device)
        with autocast(ctx.device, amp):
            logits = model(batch["image"])
        watch.add(logits, [f"validation image {next(numbers)}" for _ in range(len(logits))])
        for b in range(logits.shape[0]):
            label = batch["label"][b]
            scores.update(predict_on_label(logits[b], tuple(label.shape)), label)
    watch.check()
    scores.reduce()
    return {"miou": scores.miou(list(range(1, num_classes))), "miou_with_background": scores.miou()}


def episode_scores_summary(scores: FewShotIoU, names: tuple[str, ...]) -> dict[str, Any]:
    """JSON-ready numbers of one evaluation (fractions in 0..1); ``foreground``: how much of the scored pixels the
    predictions and the labels mark as foreground (:func:`util.engine.metrics.foreground_coverage`)."""
    return {
        "miou": scores.miou(),
        "fbiou": scores.fbiou(),
        "episodes": scores.episodes(),
        "class_iou": {names[c - 1]: iou for c, iou in scores.class_iou().items()},
        "foreground": scores.foreground_coverage(),
    }


def prediction_check(coverage: Mapping[str, float | int], episodes: int) -> dict[str, Any]:
    """``coverage`` (:func:`util.engine.metrics.foreground_coverage`) judged: ``degenerate`` is ``"all foreground"`` when the
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
                                "test_geometry", "test_batch_size", "coco_split_style", "min_class_pixels",
                                "episode_class", "amp")
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
            return EpisodeDataset(cfg, "test", episodes=cfg["test_episodes"], seed=seed)
    names = class_names(cfg["dataset"], cfg["list_root"])
    total_classes = len(names)
    novel = novel_classes(cfg["dataset"], cfg["split"], cfg["coco_split_style"])
    per_seed = []
    coverage = torch.zeros(5, dtype=torch.int64)
    seeds = list(cfg["test_seeds"])
    episode_sets = [make_episodes(seed) for seed in seeds]
    all_scores = evaluate_episode_sets(model, episode_sets, ctx, num_classes=total_classes,
                                       ignore_label=cfg["ignore_label"], batch_size=cfg["test_batch_size"],
                                       ori_resize=cfg["ori_resize"], workers=cfg["workers"], amp=cfg["amp"],
                                       feature_reuse=cfg["feature_reuse"], encode_batch=cfg["encode_batch"],
                                       desc=f"test seeds {' '.join(map(str, seeds))}")
    for seed, episodes, scores in zip(seeds, episode_sets, all_scores):
        baseline = scores.baseline
        coverage += scores.coverage
        entry = {"seed": seed, **episode_scores_summary(scores, names),
                 "classes_without_episodes": [names[c - 1] for c in novel if c not in scores.class_iou()],
                 "baseline": episode_scores_summary(baseline, names)}
        per_seed.append(entry)
        scored = f"over {len(novel) - len(entry['classes_without_episodes'])} of {len(novel)} classes"
        report(f"seed {seed}: mIoU {100 * entry['miou']:.2f} ({scored}) FB-IoU {100 * entry['fbiou']:.2f} "
               f"({entry['episodes']} episodes; {baseline_name(cfg['dataset'])} baseline mIoU {100 * entry['baseline']['miou']:.2f} "
               f"FB-IoU {100 * entry['baseline']['fbiou']:.2f})")
    return {
        "protocol": {**protocol_of(cfg), "novel_classes": [names[c - 1] for c in novel], "processes": ctx.world_size,
                     "baseline": baseline_name(cfg["dataset"])},
        "miou": _mean_std([s["miou"] for s in per_seed]),
        "fbiou": _mean_std([s["fbiou"] for s in per_seed]),
        "baseline": {"miou": _mean_std([s["baseline"]["miou"] for s in per_seed]),
                     "fbiou": _mean_std([s["baseline"]["fbiou"] for s in per_seed])},
        "prediction_check": prediction_check(foreground_coverage(coverage), sum(s["episodes"] for s in per_seed)),
        "seeds": per_seed,
    }
