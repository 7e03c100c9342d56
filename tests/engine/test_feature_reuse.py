"""``feature_reuse``: the evaluation that encodes each image once per query turn and summarises each (support image,
class) once gives the per-episode path's logits (within 1e-6 on CPU) and exactly its scores and results.json.

Random MIANets (float32, non-trivial BatchNorm statistics) on a tiny synth set at small sizes; the episodes repeat
images as queries and supports, and many query images hold several classes, so a cache keyed without the class or
query maps kept past their turn give other logits.
"""
from __future__ import annotations


import pytest
import torch

import util.engine.evaluator as evaluator
from model.mianet import SupportSummary
from tests.model.test_model_reference import build
from util.common.config import Config, load_config
from util.dataset import EpisodeDataset, collate_episodes
from util.common.distributed import DistContext
from util.engine.evaluator import _plan_query_turns, evaluate_episode_sets, run_protocol

CPU = DistContext(0, 1, torch.device("cpu"))
SIZE = {"efficientnet_lite0": 57, "resnet50": 49}
LOGIT_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def synth(tiny_synth):
    return tiny_synth


def config(synth, backbone: str, shot: int, **overrides):
    data_root, list_root = synth
    values = {"dataset": "synth", "data_root": str(data_root), "list_root": str(list_root), "backbone": backbone,
              "val_size": SIZE[backbone], "shot": shot, "test_episodes": 12, "test_seeds": [3, 4], "workers": 0,
              "device": "cpu"}
    return load_config(None, {**values, **overrides})


def model(backbone: str):
    net, _ = build(backbone, seed=1, dtype=torch.float32)
    return net.eval()


def record_predictions(monkeypatch) -> list:
    """Every model-scored episode's (label, prediction), in the order scored."""
    seen: list = []
    original = evaluator._predict

    def predict(logits, label, ori_resize):
        pred = original(logits, label, ori_resize)
        seen.append((tuple(label.shape), label.numpy().tobytes(), pred.numpy().tobytes()))
        return pred

    monkeypatch.setattr(evaluator, "_predict", predict)
    return seen


def both_paths(net, cfg, monkeypatch):
    """run_protocol's output and the sorted per-episode predictions, per-episode path then feature reuse."""
    out = []
    for reuse in (False, True):
        seen = record_predictions(monkeypatch)
        results = run_protocol(net, Config({**cfg, "feature_reuse": reuse}), CPU,
                               report=lambda line: None)
        out.append((results, sorted(seen)))
    return out


BACKBONES = ["efficientnet_lite0", pytest.param("resnet50", marks=pytest.mark.slow)]
"""ResNet-50 (minutes on 2 CPU cores) runs with the slow tests."""


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("shot", [1, 5])
def test_encode_summarize_head_give_the_forward_logits_on_real_episodes(synth, backbone, shot):
    """Each image encoded alone, each support summarised alone, the head on a batch of 3 episodes: the logits of
    ``model(query, supports, masks, classes)`` on the same batch."""
    cfg = config(synth, backbone, shot)
    net = model(backbone)
    episodes = EpisodeDataset(cfg, "val", episodes=3, seed=5)
    batch = collate_episodes([episodes[i] for i in range(3)], 255)
    with torch.no_grad():
        expected = net(batch["query"], batch["supports"], batch["support_masks"], batch["class_id"])
        size = batch["query"].shape[-1]
        query = net.encode(batch["query"])
        shots = [[net.summarize_supports(net.encode(image[None]), mask[None], size)
                  for image, mask in zip(images, masks)]
                 for images, masks in zip(batch["supports"], batch["support_masks"])]
        summary = SupportSummary(
            torch.stack([torch.cat([s.prototype for s in row]) for row in shots]),
            [torch.stack([torch.cat([s.directions[level] for s in row]) for row in shots]) for level in range(4)])
        got = net.head(query, summary, batch["class_id"], (size, size))
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= LOGIT_TOLERANCE
    # a support summarised with another episode's class mask gives other logits
    wrong = SupportSummary(summary.prototype.roll(1, dims=0), [d.roll(1, dims=0) for d in summary.directions])
    assert float((net.head(query, wrong, batch["class_id"], (size, size)) - expected).abs().max()) > 1e-3


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("shot", [1, 5])
def test_results_json_is_identical_with_and_without_feature_reuse(synth, backbone, shot, monkeypatch):
    cfg = config(synth, backbone, shot)
    (plain, plain_predictions), (reused, reused_predictions) = both_paths(model(backbone), cfg, monkeypatch)
    assert plain == reused
    assert plain_predictions == reused_predictions
    assert len(plain_predictions) == 2 * cfg.test_episodes
    # the predictions depend on the episode's support (else the comparison could not tell a wrong summary)
    assert len({p[2] for p in plain_predictions}) > len({p[:2] for p in plain_predictions})


def test_each_image_goes_through_the_backbone_once_per_query_turn(synth):
    """Passes: one per query turn plus one per support image first needed before its query turn (or never a query)."""
    cfg = config(synth, "efficientnet_lite0", 5, test_episodes=40)
    net = model("efficientnet_lite0")
    passes = []
    net.backbone.register_forward_hook(lambda module, args, out: passes.append(args[0].shape[0]))
    sets = [EpisodeDataset(cfg, "val", seed=seed) for seed in (3, 4)]
    turns = _plan_query_turns(sets, CPU, capacity=10_000)
    evaluate_episode_sets(net, sets, CPU, num_classes=20, ignore_label=255, feature_reuse=True)
    distinct = {spec.query for s in sets for i in range(len(s)) for spec in [s.episode(i)]}
    distinct |= {image for s in sets for i in range(len(s)) for image in s.episode(i).supports}
    assert sum(passes) == sum(len(turn.images()) for turn in turns)
    assert len(turns) <= sum(passes) <= len(turns) + len(distinct)
    assert sum(passes) * 3 < 80 * 6  # the per-episode path: 80 episodes x (1 + 5) images


@pytest.mark.parametrize("options", [
    {"test_batch_size": 3}, {"ann_type": "bbox"}, {"ori_resize": False}, {"workers": 2},
    {"test_geometry": "reference"}, {"test_geometry": "reference", "ori_resize": False},
], ids=["batch3", "bbox", "input-grid", "workers", "reference-geometry", "reference-geometry-input-grid"])
def test_identical_results_with_batches_bbox_input_grid_scoring_and_workers(synth, options, monkeypatch):
    cfg = config(synth, "efficientnet_lite0", 2, **options)
    (plain, plain_predictions), (reused, reused_predictions) = both_paths(model("efficientnet_lite0"), cfg, monkeypatch)
    assert plain == reused
    assert plain_predictions == reused_predictions


def test_a_tiny_cache_evicts_and_recomputes_with_the_same_scores(synth, monkeypatch):
    """Capacity 1: summaries are dropped after every turn and recomputed (more passes, same numbers)."""
    cfg = config(synth, "efficientnet_lite0", 2)
    net = model("efficientnet_lite0")
    sets = [EpisodeDataset(cfg, "val", seed=seed) for seed in cfg.test_seeds]
    roomy = evaluate_episode_sets(net, sets, CPU, num_classes=20, ignore_label=255, feature_reuse=True)
    turns = _plan_query_turns(sets, CPU, capacity=1)
    assert sum(len(turn.evict) for turn in turns) > 0
    monkeypatch.setattr(evaluator, "SUPPORT_CACHE_ENTRIES", 1)
    tiny = evaluate_episode_sets(net, sets, CPU, num_classes=20, ignore_label=255, feature_reuse=True)
    for a, b in zip(roomy, tiny):
        assert torch.equal(a.per_class, b.per_class) and torch.equal(a.coverage, b.coverage)


def test_ranks_shards_add_up_to_the_single_process_scores(synth):
    """Two ranks (each its shard, each its own plan and cache) sum to the one-process counts."""
    cfg = config(synth, "efficientnet_lite0", 1)
    net = model("efficientnet_lite0")
    sets = [EpisodeDataset(cfg, "val", seed=seed) for seed in cfg.test_seeds]
    whole = evaluate_episode_sets(net, sets, CPU, num_classes=20, ignore_label=255, feature_reuse=True)
    ranks = [evaluate_episode_sets(net, sets, DistContext(rank, 2, torch.device("cpu")), num_classes=20, ignore_label=255,
                                   feature_reuse=True) for rank in (0, 1)]
    for number, scores in enumerate(whole):
        assert torch.equal(scores.per_class, ranks[0][number].per_class + ranks[1][number].per_class)
        assert torch.equal(scores.coverage, ranks[0][number].coverage + ranks[1][number].coverage)
