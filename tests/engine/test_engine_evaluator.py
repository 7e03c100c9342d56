"""The evaluator on real synth episodes: ori_resize scoring by hand, the every-object baseline, JSON, tables."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from tests.support.reference_geometry import foreground_counts, resized_val, scored_maps
from util.common.config import load_config
from util.dataset import EpisodeDataset
from util.common.distributed import DistContext
from util.engine.evaluator import evaluate_episodes, protocol_of, run_protocol
from util.data.image_io import read_image, read_label
from util.reports.tables import MAX_EMPTY_ROWS, NO_EPISODES, format_fold_table, format_run_table
from util.data.transform import normalization_for

CPU = DistContext(0, 1, torch.device("cpu"))


@pytest.fixture(scope="module")
def synth_cfg(tiny_synth):
    data_root, list_root = tiny_synth
    return load_config(None, {"dataset": "synth", "data_root": str(data_root), "list_root": str(list_root),
                              "val_size": 57, "test_episodes": 10, "test_seeds": [3, 4], "backbone": "efficientnet_lite0",
                              "workers": 0, "device": "cpu"})


class EverythingForeground(nn.Module):
    """Logits that say foreground everywhere, at the output size (S - 1) / 8 + 1 ... upsampled like MIANet's."""

    def forward(self, query, supports, support_masks, class_ids):
        size = query.shape[-1]
        return torch.stack([torch.zeros(query.shape[0], size, size), torch.ones(query.shape[0], size, size)], 1)


def _by_hand(episodes: EpisodeDataset, data_root: str, predict) -> dict[int, tuple[int, int]]:
    """Foreground (I, U) per class computed with numpy from the original label files."""
    counts: dict[int, list[int]] = {}
    for i in range(len(episodes)):
        spec = episodes.episode(i)
        semantic = read_label(f"{data_root}/{spec.query[1]}")
        valid = semantic != 255
        gt = (semantic == spec.class_id) & valid
        pred = predict(semantic) & valid
        entry = counts.setdefault(spec.class_id, [0, 0])
        entry[0] += int((gt & pred).sum())
        entry[1] += int((gt | pred).sum())
    return {c: tuple(v) for c, v in counts.items()}


@pytest.mark.parametrize("batch_size", [1, 3])
def test_all_foreground_scores_match_hand_counts_at_original_size(synth_cfg, batch_size):
    episodes = EpisodeDataset(synth_cfg, "val", episodes=7, seed=5)
    scores = evaluate_episodes(EverythingForeground(), episodes, CPU, num_classes=20, ignore_label=255,
                               batch_size=batch_size, ori_resize=True)
    expected = _by_hand(episodes, synth_cfg.data_root, lambda semantic: np.ones(semantic.shape, bool))
    assert {c: (int(scores.per_class[c, 0]), int(scores.per_class[c, 1])) for c in expected} == expected
    assert scores.episodes() == 7


class TopLeftTriangle(nn.Module):
    """Foreground score ``t - (u + v) / 2`` over the network input's normalised coordinates u (column), v (row) in
    [0, 1]: linear, so its bilinear resize is exact and the foreground of any resize is a triangle at the top left."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, query, supports, support_masks, class_ids):
        size = query.shape[-1]
        ramp = torch.linspace(0, 1, size)
        score = self.threshold - (ramp[:, None] + ramp[None, :]) / 2
        return torch.stack([torch.zeros(size, size), score]).expand(query.shape[0], -1, -1, -1)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_spatially_varying_prediction_on_non_square_images_matches_hand_counts(synth_cfg, batch_size):
    """ori_resize maps the L x L square (L = the longer side) onto the original: original pixel (i, j) is
    foreground iff (i + j) / (L - 1) < 2t. Squashing the square onto h0 x w0 instead would use i / (h0 - 1) +
    j / (w0 - 1), which differs on every non-square image."""
    threshold = 0.2917  # 2t(L - 1) stays >= 0.007 away from an integer for every L in 100..400: no pixel on the edge
    episodes = EpisodeDataset(synth_cfg, "val", episodes=7, seed=5)
    shapes = {read_label(f"{synth_cfg.data_root}/{episodes.episode(i).query[1]}").shape for i in range(len(episodes))}
    assert any(h != w for h, w in shapes)

    def triangle(semantic: np.ndarray) -> np.ndarray:
        height, width = semantic.shape
        side = max(height, width)
        return np.add.outer(np.arange(height), np.arange(width)) < 2 * threshold * (side - 1)

    scores = evaluate_episodes(TopLeftTriangle(threshold), episodes, CPU, num_classes=20, ignore_label=255,
                               batch_size=batch_size, ori_resize=True)
    expected = _by_hand(episodes, synth_cfg.data_root, triangle)
    assert {c: (int(scores.per_class[c, 0]), int(scores.per_class[c, 1])) for c in expected} == expected
    assert any(0 < inter < union for inter, union in expected.values())


class Brightness(nn.Module):
    """Foreground score = the query's channel mean (normalised) minus ``OFFSET``: where the image's content and the
    padding land on the input decides the prediction."""

    OFFSET = 0.4

    def forward(self, query, supports, support_masks, class_ids):
        score = query.mean(1) - self.OFFSET
        return torch.stack([torch.zeros_like(score), score], 1)


def _transcribed_reference_counts(episodes: EpisodeDataset, cfg, ori_resize: bool) -> tuple[dict, float]:
    """Per class (I, U) of :class:`Brightness` under the reference's resized_val geometry and scoring, from the label
    and image files through the transcription in tests/support/reference_geometry.py; and the smallest |score| met."""
    mean, std = normalization_for(cfg)
    counts: dict[int, list[int]] = {}
    margin = float("inf")
    for i in range(len(episodes)):
        spec = episodes.episode(i)
        semantic = read_label(f"{cfg.data_root}/{spec.query[1]}")
        binary = np.where(semantic == 255, 255, (semantic == spec.class_id).astype(np.int64))
        network_input, label_canvas = resized_val(read_image(f"{cfg.data_root}/{spec.query[0]}"), binary,
                                                  cfg.val_size, mean, std)
        score = network_input.astype(np.float64).mean(0) - Brightness.OFFSET
        maps, target = scored_maps(np.stack([np.zeros_like(score), score]), label_canvas, binary, ori_resize)
        margin = min(margin, float(np.abs(maps[1] - maps[0]).min()))
        inter, union = foreground_counts(maps[1] > maps[0], target)
        entry = counts.setdefault(spec.class_id, [0, 0])
        entry[0] += inter
        entry[1] += union
    return {c: tuple(v) for c, v in counts.items()}, margin


@pytest.mark.parametrize("ori_resize", [True, False], ids=["ori_resize", "input-grid"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_reference_geometry_scores_equal_the_transcribed_reference_evaluation(synth_cfg, batch_size, ori_resize):
    """test_geometry reference on non-square synth images at val_size 57 (content 56 px and less, black padding): the
    counts of the authors' resized_val transform and ori_resize stretch, transcribed; aligned gives other counts."""
    cfg = synth_cfg.copy()
    cfg.test_geometry = "reference"
    episodes = EpisodeDataset(cfg, "val", episodes=7, seed=5)
    expected, margin = _transcribed_reference_counts(episodes, cfg, ori_resize)
    assert margin > 1e-5  # no pixel near the decision boundary (float32 vs float64 differ by ~1e-6): none can flip
    scores = evaluate_episodes(Brightness(), episodes, CPU, num_classes=20, ignore_label=255, batch_size=batch_size,
                               ori_resize=ori_resize)
    assert {c: (int(scores.per_class[c, 0]), int(scores.per_class[c, 1])) for c in expected} == expected
    aligned = evaluate_episodes(Brightness(), EpisodeDataset(synth_cfg, "val", episodes=7, seed=5), CPU, num_classes=20,
                                ignore_label=255, batch_size=batch_size, ori_resize=ori_resize)
    assert not torch.equal(aligned.per_class, scores.per_class)
    assert protocol_of(cfg)["test_geometry"] == "reference"  # results.json records it


@pytest.mark.parametrize("ori_resize", [True, False])
def test_every_object_baseline_matches_hand_counts(synth_cfg, ori_resize):
    """The baseline is scored at the original size from the labels the evaluation read, whatever grid the model is
    scored on (the feature-reuse path's baseline equals this one: tests/engine/test_feature_reuse.py)."""
    episodes = EpisodeDataset(synth_cfg, "val", episodes=7, seed=5)
    scores = evaluate_episodes(EverythingForeground(), episodes, CPU, num_classes=20, ignore_label=255,
                               ori_resize=ori_resize).baseline
    expected = _by_hand(episodes, synth_cfg.data_root, lambda semantic: (semantic != 0) & (semantic != 255))
    assert {c: (int(scores.per_class[c, 0]), int(scores.per_class[c, 1])) for c in expected} == expected
    assert 0 < scores.miou() <= 1


def test_protocol_json_and_tables(synth_cfg):
    lines = []
    results = run_protocol(EverythingForeground(), synth_cfg, CPU, report=lines.append)
    assert [s["seed"] for s in results["seeds"]] == [3, 4] and len(lines) == 2
    assert results["protocol"]["test_episodes"] == 10 and results["protocol"]["ori_resize"] is True
    assert results["protocol"]["test_geometry"] == "aligned"
    assert results["protocol"]["novel_classes"] == ["red circle", "green square", "blue triangle", "yellow star",
                                                    "purple circle"]
    mious = [s["miou"] for s in results["seeds"]]
    assert results["miou"]["mean"] == pytest.approx(np.mean(mious))
    assert results["miou"]["std"] == pytest.approx(np.std(mious))
    assert json.loads(json.dumps(results)) == results
    again = run_protocol(EverythingForeground(), synth_cfg, CPU, report=lines.append)
    assert again == results
    table = format_run_table(results)
    assert "seed 3" in table and "mIoU" in table and "every-object mIoU" in table
    other_fold = json.loads(json.dumps(results))
    other_fold["protocol"]["split"] = 1
    fold_table = format_fold_table([other_fold, results])
    header, mean_row = fold_table.splitlines()[1], fold_table.splitlines()[2]
    assert header.split() == ["fold0", "fold1", "mean"]
    assert mean_row.split()[-1] == f"{100 * results['miou']['mean']:.2f}"


class LeftShare(nn.Module):
    """Foreground on the left ``share`` of the network input's columns, whatever the episode (0: none, 1: all)."""

    def __init__(self, share: float):
        super().__init__()
        self.share = share

    def forward(self, query, supports, support_masks, class_ids):
        size = query.shape[-1]
        score = torch.full((query.shape[0], size, size), -1.0)
        score[..., : round(self.share * size)] = 1.0
        return torch.stack([torch.zeros_like(score), score], 1)


@pytest.mark.parametrize("share, verdict", [(1.0, "all foreground"), (0.0, "all background"), (0.5, None)])
def test_predictions_that_are_nearly_all_one_class_are_reported(synth_cfg, share, verdict):
    results = run_protocol(LeftShare(share), synth_cfg, CPU, report=lambda line: None)
    check = results["prediction_check"]
    assert check["degenerate"] == verdict and check["episodes"] == 20
    assert (check["meaning"] is None) == (verdict is None)
    scored = labelled = 0
    for seed in synth_cfg.test_seeds:  # the labels' share of foreground, counted here from the label files
        episodes = EpisodeDataset(synth_cfg, "val", episodes=synth_cfg.test_episodes, seed=seed)
        for index in range(len(episodes)):
            spec = episodes.episode(index)
            semantic = read_label(f"{synth_cfg.data_root}/{spec.query[1]}")
            scored += int((semantic != 255).sum())
            labelled += int((semantic == spec.class_id).sum())
    assert check["labelled"] == pytest.approx(labelled / scored, abs=1e-12)
    if verdict is not None:
        assert check["predicted"] == share
        assert (check["episodes_all_foreground"], check["episodes_all_background"]) == ((20, 0) if share else (0, 20))
    else:
        assert check["episodes_all_foreground"] == check["episodes_all_background"] == 0
    table = format_run_table(results)
    assert f"predicted foreground: {100 * check['predicted']:.1f}% of the scored pixels" in table
    assert (f"WARNING: the predictions are (nearly) {verdict}: the model marks" in table) == (verdict is not None)


def test_a_class_without_episodes_stays_in_the_table_and_the_miou_says_over_how_many(synth_cfg):
    cfg = synth_cfg.copy()
    cfg.test_episodes = 1
    lines = []
    results = run_protocol(EverythingForeground(), cfg, CPU, report=lines.append)
    novel = results["protocol"]["novel_classes"]
    for seed, line in zip(results["seeds"], lines):
        assert len(seed["class_iou"]) == 1 and seed["episodes"] == 1
        assert sorted(seed["classes_without_episodes"]) == sorted(set(novel) - set(seed["class_iou"]))
        assert "(over 1 of 5 classes)" in line
    table = format_run_table(results).splitlines()
    missing = next(name for name in novel if all(name not in s["class_iou"] for s in results["seeds"]))
    rows = [row for row in table if row.startswith(missing)]
    assert len(rows) == 1 and rows[0].count("no episodes") == 2  # the class keeps its row, one cell per seed
    assert any(row.startswith("mIoU (over 1 of 5 classes)") for row in table)
    assert any(row.startswith("mIoU over 1 of 5 classes: ") and missing in row for row in table)
    fold_table = format_fold_table([results])
    assert "fold 0: mIoU over 1 of 5 classes: " in fold_table


def short_run(scored: list[str], empty: list[str]) -> dict:
    """test.py's results of two seeds in which ``empty`` classes had no episodes (a short run of many classes)."""
    seeds = [{"seed": seed, "miou": 0.5, "fbiou": 0.6, "episodes": 4, "classes_without_episodes": empty,
              "class_iou": {name: 0.5 for name in scored},
              "baseline": {"miou": 0.2, "fbiou": 0.4, "class_iou": {name: 0.2 for name in scored}}} for seed in (3, 4)]
    stats = {"mean": 0.5, "std": 0.0}
    return {"protocol": {"novel_classes": scored + empty, "baseline": "whole-image"}, "seeds": seeds, "miou": stats,
            "fbiou": stats, "baseline": {"miou": stats, "fbiou": stats}}


def test_many_classes_without_episodes_share_one_line_of_the_table():
    scored, empty = ["bus", "zebra", "acorn"], [f"class {i:03d}" for i in range(MAX_EMPTY_ROWS + 1)]
    table = format_run_table(short_run(scored, empty)).splitlines()
    assert not any(row.startswith("class ") for row in table)
    assert sum(NO_EPISODES in row for row in table) == 1 and [row.split()[0] for row in table[1:4]] == scored
    assert table[4] == (f"{NO_EPISODES} in any seed: {len(empty)} classes (class 000, class 001, class 002, class 003, "
                        f"class 004 and {len(empty) - 5} more)")
    assert table[5].startswith(f"mIoU (over 3 of {3 + len(empty)} classes)")
    assert table[-1] == (f"mIoU over 3 of {3 + len(empty)} classes: {len(empty)} class(es) had no test episodes in "
                         "some or all seeds (class 000, class 001, class 002, class 003, class 004 and 6 more; fewer "
                         "than shot + 1 images, or too few episodes)")
    few = format_run_table(short_run(scored, empty[:MAX_EMPTY_ROWS])).splitlines()  # up to MAX_EMPTY_ROWS: a row each
    rows = [row for row in few if row.startswith("class ")]
    assert len(rows) == MAX_EMPTY_ROWS and all(row.count(NO_EPISODES) == 2 for row in rows)


def test_classes_scored_spans_the_seeds():
    from util.reports.tables import classes_scored

    seeds = [{"class_iou": {"a": 0.5, "b": 0.1}}, {"class_iou": {"a": 0.5}}]
    assert classes_scored({"protocol": {"novel_classes": ["a", "b", "c"]}, "seeds": seeds}) == "over 1-2 of 3 classes"
    assert classes_scored({"protocol": {"novel_classes": ["a", "b"]}, "seeds": seeds[:1]}) == ""
