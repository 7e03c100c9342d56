"""Pictures: overlays, episode figures (K = 1 and 5), the contact sheet, the per-class IoU chart, and their
wiring: test.py ``vis N`` (through the evaluator), ``tools.report --chart`` and test.sh."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import test as test_script
from tools.report import main as report_main
from util.runs.checkpoint import save_atomic
from util.common.config import load_config
from util.dataset import EpisodeDataset
from util.engine.evaluator import CONTACT_SHEET, draw_episode_figures
from util.data.image_io import image_size
from tools.make_lists import make_lists
from tools.make_synth import make_synth
from util.runs.weights import build_mianet
from util.data.transform import ResizePad, build_transform, normalization_for
from util.reports.figures import (ALPHA, BACKGROUND_BRIGHTNESS, BASELINE_COLOUR, DPI, FOLD_COLOURS, IGNORE_COLOUR, MASK_COLOUR,
                            MAX_BARS, NO_EPISODES_COLOUR, PANEL_HEIGHT, PRED_COLOUR, SUMMARY_SIZE, add_title,
                            best_and_worst, class_scores, content_size, episode_pictures, foreground_iou, overlay_mask,
                            save_contact_sheet, save_episode_figure, save_per_class_bar_chart, save_sample_figure,
                            to_rgb)

REPO = Path(__file__).resolve().parents[2]
SYNTH_CONFIG = "config/synth/efficientnet_lite0/split0.yaml"
MARGIN, TITLE_AND_CAPTION = 8, 34 + 24   # the layout of util.reports.figures.save_panels


def read_png(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def count_colour(image: np.ndarray, colour, tolerance: int = 6) -> int:
    return int((np.abs(image.astype(int) - np.asarray(colour, int)) <= tolerance).all(axis=2).sum())


def hex_rgb(code: str) -> tuple[int, int, int]:
    return tuple(int(code[i:i + 2], 16) for i in (1, 3, 5))


def blended(colour, base: float = 0.0) -> np.ndarray:
    return np.rint((1 - ALPHA) * base + ALPHA * np.asarray(colour, float))


def square_episode(shots: int, side: int = 60):
    """Black supports with a centred square mask; a grey query whose truth is its left half."""
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 1
    supports = [np.zeros((side, side, 3), np.uint8) for _ in range(shots)]
    query = np.full((side, side, 3), 120, np.uint8)
    truth = np.zeros((side, side), np.uint8)
    truth[:, : side // 2] = 1
    return supports, [mask] * shots, query, truth


def test_to_rgb_inverts_the_dataset_normalisation():
    cfg = load_config(None, {"backbone": "resnet50"})
    rgb = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    tensor, _ = build_transform(cfg, train=False, size=32)(rgb, np.zeros((32, 32), np.uint8), np.random.default_rng(0))
    assert np.abs(to_rgb(tensor, *normalization_for(cfg)).astype(int) - rgb).max() <= 1
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        to_rgb(torch.zeros(4, 8, 8), *normalization_for(cfg))


@pytest.mark.parametrize("hw", [(161, 209), (240, 100), (97, 97), (5, 400)])
def test_content_size_is_the_unpadded_region_of_the_test_geometry(hw):
    image = np.full((*hw, 3), 7, np.uint8)
    placed, _ = ResizePad(97, (0, 0, 0), 255)(image, np.zeros(hw, np.uint8), None)
    height, width = content_size(hw, 97)
    assert (placed[:height, :width] == 7).all()
    assert max(height, width) == 97
    assert not (placed[height:] == 7).any() and not (placed[:, width:] == 7).any()


def test_overlay_tints_the_mask_whitens_ignore_and_dims_the_rest():
    image = np.full((40, 40, 3), 100, np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1
    mask[0:4, :] = 255
    out = overlay_mask(image, mask)
    assert (out[15:25, 15:25] == blended(MASK_COLOUR, 100)).all()                        # inside, away from the outline
    assert (out[35, 35] == np.rint(BACKGROUND_BRIGHTNESS * 100)).all()                    # background: grey, dimmed
    assert (out[1, 20] == blended(IGNORE_COLOUR, BACKGROUND_BRIGHTNESS * 100)).all()      # ignore: whitened
    assert count_colour(out, MASK_COLOUR, 0) > 40                                         # the outline
    truth = np.zeros((40, 40), np.uint8)
    truth[:, :5] = 1
    with_outline = overlay_mask(image, mask, PRED_COLOUR, outline=truth)
    assert count_colour(with_outline, PRED_COLOUR, 0) > 40 and count_colour(with_outline, MASK_COLOUR, 0) > 20
    with pytest.raises(ValueError, match="differ in size"):
        overlay_mask(image, mask[:20])


@pytest.mark.parametrize("width", [37, 400, 1800])
def test_a_title_band_sits_above_the_image_and_says_its_text(width):
    image = np.random.default_rng(0).integers(0, 256, (60, width, 3), dtype=np.uint8)
    titled = add_title(image, "dog, 5-shot: 12.5% foreground")
    band = titled.shape[0] - 60
    assert 10 < band < 100 and np.array_equal(titled[band:, :width], image)
    assert (titled[band:, width:] == 255).all()  # a narrow image gets a wider, white canvas for its title
    text = titled[:band].min(axis=2) < 100
    assert text.sum() > 100 and (titled[0] == 255).all() and (titled[:band].std(axis=2) == 0).all()  # black on white
    assert titled.shape[1] == width if width > 300 else text[:, width:].any()  # the title runs past a narrow image
    assert not np.array_equal(add_title(image, "cat, 5-shot: 12.5% foreground")[:band], titled[:band])


def test_episode_figure_shows_every_support_and_the_prediction(tmp_path):
    sizes, counts = {}, {}
    for shots in (1, 5):
        supports, masks, query, truth = square_episode(shots)
        pred = np.zeros_like(truth)
        pred[:30, :] = 1
        path = save_episode_figure(tmp_path / f"k{shots}.png", supports, masks, query, truth, pred,
                                   foreground_iou(pred, truth), "red circle")
        image = read_png(path)
        sizes[shots] = image.shape
        counts[shots] = count_colour(image, blended(MASK_COLOUR)), count_colour(image, blended(PRED_COLOUR, 120))
        assert image.std() > 20
    # panels are PANEL_HEIGHT high, square images are PANEL_HEIGHT wide plus an 8 px margin: 4 more supports
    assert sizes[5][0] == sizes[1][0] > PANEL_HEIGHT
    assert sizes[5][1] - sizes[1][1] == 4 * (PANEL_HEIGHT + 8)
    # the support mask tint shows once per support (mask area = a quarter of each panel)
    quarter = (PANEL_HEIGHT // 2) ** 2
    assert 0.8 * quarter < counts[1][0] < 1.2 * quarter
    assert 0.8 * 5 * quarter < counts[5][0] < 1.2 * 5 * quarter
    # the prediction (top half of the query, minus the outline of the truth) is tinted magenta
    assert counts[1][1] > 0.3 * PANEL_HEIGHT ** 2


def test_episode_figure_rejects_mismatched_inputs(tmp_path):
    supports, masks, query, truth = square_episode(2)
    with pytest.raises(ValueError, match="one mask per support"):
        save_episode_figure(tmp_path / "x.png", supports, masks[:1], query, truth, truth, 1.0, "c")
    with pytest.raises(ValueError, match="differ in size"):
        save_episode_figure(tmp_path / "x.png", supports, masks, query, truth, truth[:10], 1.0, "c")


def test_foreground_iou_of_one_episode():
    label = torch.tensor([[1, 1, 0, 255]])
    assert foreground_iou(torch.tensor([[1, 0, 1, 1]]), label) == pytest.approx(1 / 3)
    assert math.isnan(foreground_iou(torch.zeros(1, 4), torch.zeros(1, 4)))


@pytest.fixture(scope="module")
def synth_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("vis_synth")
    make_synth(root / "synth", num_train=40, num_val=40, seed=0, workers=1)   # enough val images for 5-shot
    make_lists("synth", root / "synth", root / "lists", workers=1)
    return load_config(SYNTH_CONFIG, {"data_root": str(root / "synth"), "list_root": str(root / "lists"),
                                      "val_size": 97, "workers": 0, "device": "cpu"})


@pytest.mark.filterwarnings("ignore:.*eligible image")
def test_figures_of_dataset_samples_and_a_batch(synth_cfg, tmp_path):
    dataset = EpisodeDataset(synth_cfg, "val", episodes=3)
    mean, std = normalization_for(synth_cfg)
    figures = []
    for index in range(3):
        sample = dataset[index]
        pictures = episode_pictures(sample, mean, std)
        truth = sample["query_label_ori"]
        assert pictures.query_rgb.shape[:2] == content_size(tuple(truth.shape), 97)
        assert pictures.query_gt.shape == pictures.query_rgb.shape[:2]
        assert 97 in pictures.query_rgb.shape and 97 in pictures.supports_rgb[0].shape
        assert pictures.supports_rgb[0].shape[:2] == pictures.support_masks[0].shape
        assert (pictures.support_masks[0] == 1).any()        # the class is in the support, padding is cropped away
        assert not (pictures.query_gt == 255).all(axis=1).any()
        figures.append(save_sample_figure(tmp_path / f"episode_{index}.png", sample, None, truth, truth, mean, std,
                                          "red circle"))
    # scored on the network grid (ori_resize false): label and prediction are cropped like the query
    sample = dataset[0]
    assert sample["query_label_ori"].shape[0] != sample["query_label_ori"].shape[1]   # padding exists to crop
    grid_label = sample["query_label"]
    grid_figure = read_png(save_sample_figure(tmp_path / "grid.png", sample, None, grid_label.clamp(max=1), grid_label,
                                              mean, std, "red circle"))
    original_figure = read_png(figures[0])
    assert grid_figure.shape[0] == original_figure.shape[0]
    assert abs(grid_figure.shape[1] - original_figure.shape[1]) <= 8    # same aspect up to rounding; uncropped = square
    # the same episode taken from a collated batch with query_size_ori (as in the evaluator)
    from util.dataset import collate_episodes
    batch = collate_episodes([dataset[0], dataset[1]], 255)
    batch["query_size_ori"] = torch.tensor([list(dataset[i]["query_label_ori"].shape) for i in range(2)])
    from_batch = episode_pictures(batch, mean, std, index=1)
    single = episode_pictures(dataset[1], mean, std)
    assert np.array_equal(from_batch.query_rgb, single.query_rgb)
    assert np.array_equal(from_batch.support_masks[0], single.support_masks[0])

    sheet = read_png(save_contact_sheet(figures, tmp_path / "sheet.png", columns=2))
    tiles = [read_png(p) for p in figures]
    assert sheet.shape[0] == 3 * 10 + tiles[0].shape[0] + max(t.shape[0] for t in tiles[2:])
    assert sheet.shape[1] == 3 * 10 + 2 * max(t.shape[1] for t in tiles)
    assert np.array_equal(sheet[10:10 + tiles[0].shape[0], 10:10 + tiles[0].shape[1]], tiles[0])


def fold_results(fold: int, names: list[str], iou: float, seeds: int = 2) -> dict:
    entries = [{"seed": s, "miou": iou, "fbiou": 0.6, "episodes": 10, "class_iou": {n: iou for n in names},
                "baseline": {"miou": 0.2, "fbiou": 0.4, "episodes": 10, "class_iou": {n: 0.2 for n in names}}}
               for s in range(seeds)]
    return {"protocol": {"dataset": "synth", "split": fold, "shot": 1, "backbone": "efficientnet_lite0",
                         "test_seeds": list(range(seeds)), "test_episodes": 10, "novel_classes": names},
            "miou": {"mean": iou, "std": 0.0}, "fbiou": {"mean": 0.6, "std": 0.0},
            "baseline": {"miou": {"mean": 0.2, "std": 0.0}, "fbiou": {"mean": 0.4, "std": 0.0}}, "seeds": entries}


def test_per_class_bar_chart_heights_follow_the_scores(tmp_path):
    names = ["red circle", "green square", "blue triangle"]
    high = read_png(save_per_class_bar_chart([fold_results(0, names, 0.8)], tmp_path / "high.png"))
    low = read_png(save_per_class_bar_chart([fold_results(0, names, 0.4)], tmp_path / "low.png"))
    assert high.shape == low.shape
    fold0 = hex_rgb(FOLD_COLOURS[0])
    ratio = count_colour(high, fold0, 2) / count_colour(low, fold0, 2)
    assert 1.7 < ratio < 2.2
    baseline_high, baseline_low = (count_colour(chart, hex_rgb(BASELINE_COLOUR), 2) for chart in (high, low))
    assert baseline_low > 0 and baseline_high == pytest.approx(baseline_low, rel=0.01)   # the baseline did not change


def test_a_class_without_episodes_keeps_its_place_in_the_chart(tmp_path):
    names = [f"class {i}" for i in range(12)]
    gap = fold_results(0, names, 0.5)
    for entry in gap["seeds"]:
        for scores in (entry, entry["baseline"]):
            del scores["class_iou"]["class 11"]
        entry["classes_without_episodes"] = ["class 11"]
    charts = {name: read_png(save_per_class_bar_chart([results], tmp_path / f"{name}.png")) for name, results in
              (("full", fold_results(0, names, 0.5)), ("gap", gap), ("eleven", fold_results(0, names[:11], 0.5)))}
    assert charts["gap"].shape == charts["full"].shape and charts["eleven"].shape[1] < charts["full"].shape[1]
    fold0 = hex_rgb(FOLD_COLOURS[0])
    assert count_colour(charts["gap"], fold0, 2) / count_colour(charts["full"], fold0, 2) == pytest.approx(11 / 12, abs=0.02)
    note = hex_rgb(NO_EPISODES_COLOUR)  # the "no episodes" label drawn where the bars would be
    assert count_colour(charts["gap"], note, 10) > 20 and count_colour(charts["full"], note, 10) == 0


def varied_results(fold: int, ious: dict[str, float], missing: tuple[str, ...] = ()) -> dict:
    """One fold's results with its own IoU per class (the same in both seeds); ``missing`` classes had no episodes."""
    results = fold_results(fold, list(ious), 0.5)
    for entry in results["seeds"]:
        entry["class_iou"] = {n: v for n, v in ious.items() if n not in missing}
        entry["baseline"]["class_iou"] = {n: v / 2 for n, v in ious.items() if n not in missing}
        entry["classes_without_episodes"] = list(missing)
    return results


def test_many_classes_get_a_fixed_size_chart_of_the_best_and_worst_beside_a_histogram(tmp_path):
    names = [f"class {i:03d}" for i in range(240)]
    ious = {name: ((37 * i) % 240) / 240 for i, name in enumerate(names)}  # all different, not in name order
    best, worst = best_and_worst(class_scores(varied_results(0, ious, missing=(names[5],))), 15)
    ranked = sorted((n for n in names if n != names[5]), key=lambda n: -ious[n])  # the oracle: sorted by hand
    assert [c.name for c in best] == ranked[:15] and [c.name for c in worst] == ranked[-15:]
    assert [c.mean for c in best] == [ious[n] for n in ranked[:15]] and all(c.fold == 0 for c in best + worst)
    few = best_and_worst(class_scores(varied_results(0, {n: ious[n] for n in names[:20]})), 15)
    assert len(few[0]) == 15 and len(few[1]) == 5 and not {c.name for c in few[0]} & {c.name for c in few[1]}

    charts = {
        "fss": varied_results(0, ious), "gap": varied_results(0, ious, missing=tuple(names[::7])),
        "low": varied_results(0, {n: v / 2 for n, v in ious.items()}),
    }
    drawn = {key: read_png(save_per_class_bar_chart([results], tmp_path / f"{key}.png")) for key, results in charts.items()}
    two_folds = read_png(save_per_class_bar_chart([varied_results(0, ious), varied_results(1, ious)], tmp_path / "2.png"))
    size = (round(SUMMARY_SIZE[1] * DPI), round(SUMMARY_SIZE[0] * DPI), 3)
    assert all(chart.shape == size for chart in [*drawn.values(), two_folds])  # whatever the number of classes
    fold0 = hex_rgb(FOLD_COLOURS[0])
    assert count_colour(drawn["fss"], fold0, 2) > 1.3 * count_colour(drawn["low"], fold0, 2)  # longer bars
    assert count_colour(two_folds, hex_rgb(FOLD_COLOURS[1]), 2) > 0
    note = hex_rgb(NO_EPISODES_COLOUR)
    assert count_colour(drawn["gap"], note, 10) > 20 and count_colour(drawn["fss"], note, 10) == 0
    # up to MAX_BARS classes (COCO's 80 over four folds) the chart keeps a bar pair per class and grows with them
    bars = read_png(save_per_class_bar_chart([varied_results(0, {n: ious[n] for n in names[:MAX_BARS]})],
                                             tmp_path / "bars.png"))
    assert bars.shape[0] == round(4.6 * DPI) and bars.shape[1] == round((1.6 + 0.42 * MAX_BARS + 0.3) * DPI)


def test_report_chart_of_several_folds_goes_next_to_the_results(tmp_path, capsys):
    paths = []
    for fold in (1, 0):
        path = tmp_path / "exp" / "synth" / f"split{fold}" / "efficientnet_lite0" / "1shot" / "test" / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(fold_results(fold, [f"class {fold}-{i}" for i in range(5)], 0.5 + 0.1 * fold)))
        paths.append(str(path))
    text = report_main(["--chart", *paths])
    chart_file = tmp_path / "exp" / "synth" / "per_class_iou_synth_efficientnet_lite0_1shot.png"
    assert text.splitlines()[-1] == f"per-class IoU chart: {chart_file}" and "fold0" in text.splitlines()[1]
    assert text in capsys.readouterr().out
    chart = read_png(chart_file)
    one_fold_text = report_main(["--chart", paths[1]])
    one_fold = read_png(Path(paths[1]).parent / "per_class_iou_synth_efficientnet_lite0_1shot.png")
    assert one_fold_text.endswith(str(Path(paths[1]).parent / "per_class_iou_synth_efficientnet_lite0_1shot.png"))
    assert chart.shape[1] > one_fold.shape[1] and chart.shape[0] == one_fold.shape[0] == round(4.6 * DPI)
    assert count_colour(chart, hex_rgb(FOLD_COLOURS[0]), 2) > 0 and count_colour(chart, hex_rgb(FOLD_COLOURS[1]), 2) > 0
    assert count_colour(one_fold, hex_rgb(FOLD_COLOURS[1]), 2) == 0


# ---------------------------------------------------------------- test.py vis N and test.sh

class LeftHalfNet(nn.Module):
    """Foreground on the left half of the network input, whatever the episode (``foreground=False``: nowhere)."""

    def __init__(self, foreground: bool = True):
        super().__init__()
        self.foreground = foreground

    def forward(self, query, supports, support_masks, class_ids):
        size = query.shape[-1]
        score = torch.full((query.shape[0], size, size), -1.0)
        if self.foreground:
            score[..., : size // 2] = 1.0
        return torch.stack([torch.zeros_like(score), score], 1)


@pytest.mark.filterwarnings("ignore:.*eligible image")
def test_episode_figures_of_a_5_shot_test(synth_cfg, tmp_path):
    cfg = synth_cfg.copy()
    cfg.shot = 5
    episodes = EpisodeDataset(cfg, "val", episodes=3, seed=3)
    out_dir = tmp_path / "vis"
    out_dir.mkdir()
    (out_dir / "episode_0007.png").write_bytes(b"an earlier run's figure")
    paths = draw_episode_figures(LeftHalfNet(), episodes, 2, out_dir, cfg, torch.device("cpu"))
    assert paths == [out_dir / f"episode_{i:04d}.png" for i in range(2)]
    assert sorted(out_dir.iterdir()) == sorted([*paths, out_dir / CONTACT_SHEET])
    # the same episodes with an empty prediction: only the prediction panel (and the IoU in the title) differ
    empty = draw_episode_figures(LeftHalfNet(False), episodes, 2, tmp_path / "empty", cfg, torch.device("cpu"))
    panel_rows = slice(TITLE_AND_CAPTION + 2, TITLE_AND_CAPTION + PANEL_HEIGHT - 2)
    for index, (path, empty_path) in enumerate(zip(paths, empty)):
        figure = read_png(path)
        spec = episodes.episode(index)
        # 5 support panels and 2 query panels, each PANEL_HEIGHT high at its image's aspect (padding cropped)
        support_hw = [content_size(image_size(Path(cfg.data_root) / image), 97) for image, _ in spec.supports]
        query_h, query_w = image_size(Path(cfg.data_root) / spec.query[0])
        widths = [round(PANEL_HEIGHT * w / h) for h, w in support_hw] + 2 * [round(PANEL_HEIGHT * query_w / query_h)]
        assert figure.shape == (TITLE_AND_CAPTION + PANEL_HEIGHT + MARGIN, MARGIN + sum(w + MARGIN for w in widths), 3)
        assert figure.std() > 30
        changed = (np.abs(figure.astype(int) - read_png(empty_path).astype(int)).sum(axis=2) > 40)[panel_rows]
        first_column = figure.shape[1] - MARGIN - widths[-1]
        assert not changed[:, : first_column - 2].any()
        # the prediction, the left half of the square network input, is tinted on the original image's grid
        expected = min(query_w, max(query_h, query_w) / 2) / query_w
        assert changed[:, first_column + 2: -MARGIN - 2].mean() == pytest.approx(expected, abs=0.03)
    # the contact sheet: both figures side by side, scaled down to 1400 px wide (5-shot figures are wider)
    tiles = [read_png(p).shape[:2] for p in paths]
    assert all(width > 1400 for _, width in tiles)
    sheet = read_png(out_dir / CONTACT_SHEET)
    assert sheet.shape == (2 * 10 + max(round(h * 1400 / w) for h, w in tiles), 3 * 10 + 2 * 1400, 3)


@pytest.mark.filterwarnings("ignore:.*eligible image")
def test_test_py_vis_with_a_5_shot_mianet_and_the_report_chart(synth_cfg, tmp_path):
    torch.manual_seed(0)
    cfg = load_config(SYNTH_CONFIG, {"pretrained_backbone": False})
    weight = save_atomic({"model": build_mianet(cfg).state_dict(), "config": dict(cfg)}, tmp_path / "random.pth")
    run_dir = tmp_path / "run"
    results = test_script.main(["--config", SYNTH_CONFIG, "data_root", synth_cfg.data_root, "list_root",
                                synth_cfg.list_root, "weight", str(weight), "exp_dir", str(run_dir), "shot", "5",
                                "val_size", "65", "test_episodes", "1", "test_seeds", "[4]", "vis", "3",
                                "pretrained_backbone", "false", "device", "cpu", "workers", "0"])
    # vis 3 of 1 test episode: that one drawn, with 5 support panels
    vis_dir = run_dir / "test" / "vis"
    assert sorted(p.name for p in vis_dir.iterdir()) == [CONTACT_SHEET, "episode_0000.png"]
    figure = read_png(vis_dir / "episode_0000.png")
    assert figure.shape[0] == TITLE_AND_CAPTION + PANEL_HEIGHT + MARGIN
    assert figure.shape[1] > 7 * (0.6 * PANEL_HEIGHT + MARGIN) and figure.std() > 30
    assert count_colour(figure, MASK_COLOUR, 0) > 100     # support mask and ground truth outlines
    assert f"episode figures (the first 1 of seed 4): {vis_dir}/" in (run_dir / "test" / "test.log").read_text()
    results_file = run_dir / "test" / "results.json"
    assert json.loads(results_file.read_text()) == results
    text = report_main(["--chart", str(results_file)])
    chart = run_dir / "test" / "per_class_iou_synth_efficientnet_lite0_5shot.png"
    assert text.splitlines()[-1] == f"per-class IoU chart: {chart}"
    assert count_colour(read_png(chart), hex_rgb(FOLD_COLOURS[0]), 2) > 0


def test_test_sh_all_folds_ends_with_the_table_and_the_chart(tmp_path):
    """test.sh in a copy of the repository layout (config/, util/, model/, tools/ linked) with the four folds' results
    written beforehand where test.py writes them. A stand-in ``python`` on PATH records the test.py calls and hands
    every other call to the real interpreter, so the real ``tools.report`` finds the files (--results-path), prints
    the fold table and draws the chart."""
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copy(REPO / "test.sh", work)
    for folder in ("config", "util", "model", "tools"):
        (work / folder).symlink_to(REPO / folder)
    for fold in range(4):
        results = fold_results(fold, [f"class {fold}-{i}" for i in range(5)], 0.3 + 0.1 * fold)
        results["protocol"]["shot"] = 5
        path = work / "exp" / "synth" / f"split{fold}" / "efficientnet_lite0" / "5shot" / "test" / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(results))
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(f'#!/usr/bin/env bash\nif [ "$1" = test.py ]; then echo "$*" >> "$CALLS"; exit 0; fi\n'
                    f'exec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "CALLS": str(calls), "HOME": str(tmp_path),
           "MPLCONFIGDIR": str(tmp_path / "matplotlib")}
    done = subprocess.run(["bash", "test.sh", "synth", "all", "efficientnet_lite0", "5", "vis", "4"], cwd=work, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    configs = [f"config/synth/efficientnet_lite0/split{k}.yaml" for k in range(4)]
    assert calls.read_text().splitlines() == [f"test.py --config {c} shot 5 vis 4" for c in configs]
    lines = done.stdout.splitlines()
    assert lines[0] == "synth efficientnet_lite0 5-shot, 2 seed(s) x 10 episodes"
    assert lines[1].split() == ["fold0", "fold1", "fold2", "fold3", "mean"]
    assert lines[2].split() == ["mIoU", "30.00", "40.00", "50.00", "60.00", "45.00"]
    chart = work / "exp" / "synth" / "per_class_iou_synth_efficientnet_lite0_5shot.png"
    assert lines[-1] == f"per-class IoU chart: {chart}"
    assert count_colour(read_png(chart), hex_rgb(FOLD_COLOURS[3]), 2) > 0


def test_negative_vis_is_a_user_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        test_script.main(["--config", SYNTH_CONFIG, "vis", "-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: override: key 'vis' must be >= 0, got -1"
