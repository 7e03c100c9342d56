"""Pictures of episodes and results: overlays, one figure per episode, a contact sheet, the per-class IoU chart.

Drawing only: every function takes numpy arrays or tensors (or test.py's result dicts) and writes a PNG.
Colours: support masks and ground truth in sky blue, predictions in magenta (with the ground truth
outlined in sky blue), ignored pixels (label 255) whitened, everything else dimmed grey. Figures use
matplotlib's Agg canvas directly (no pyplot, no global backend switch), so they work headless.
test.py (``vis N``) draws episode figures through ``util.engine.evaluator.draw_episode_figures``;
``python -m tools.report --chart`` draws the per-class IoU chart.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from util.common.atomic import write_output
from util.common.errors import UserError
from util.data.image_io import IGNORE_ID, image_size
from util.data.transform import ResizePad
from util.engine.metrics import intersection_union
from util.reports.tables import NO_EPISODES, classes_scored, novel_class_names

MASK_COLOUR = (0, 190, 255)        # support masks and ground truth (sky blue)
PRED_COLOUR = (255, 40, 180)       # predictions (magenta)
IGNORE_COLOUR = (255, 255, 255)    # label 255 (object borders, padding)
ALPHA = 0.5
BACKGROUND_BRIGHTNESS = 0.75      # everything outside the mask: grey, dimmed by this factor
FOLD_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7")  # Okabe-Ito: readable for colour-blind readers
BASELINE_COLOUR = "#999999"
NO_EPISODES_COLOUR = "#D55E00"    # the "no episodes" label where a class's bars would be (Okabe-Ito vermillion)
PANEL_HEIGHT = 240                 # pixels of every image panel in an episode figure
MAX_BARS = 80                      # the per-class chart draws a bar pair per class up to this many classes (COCO's 80)
SHOWN_EXTREMES = 15                # beyond it: the best and the worst this many classes, and a histogram of all
HISTOGRAM_BINS = 20
SUMMARY_SIZE = (14.0, 6.4)         # inches (x DPI = pixels) of that chart, whatever the number of classes
DPI = 100
WRITABLE = "free disk space or choose a writable output folder"
SHEET_GAP = 10

ArrayLike = np.ndarray | torch.Tensor


@dataclass
class EpisodePictures:
    """One episode as displayable arrays: uint8 RGB images and their {0, 1, 255} masks, padding removed."""

    supports_rgb: list[np.ndarray]
    support_masks: list[np.ndarray]
    query_rgb: np.ndarray
    query_gt: np.ndarray


def _numpy(array: ArrayLike) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def to_rgb(image: ArrayLike, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the dataset normalisation: ``[3, H, W]`` float (``(x/255 - mean) / std``) -> uint8 RGB ``[H, W, 3]``."""
    chw = _numpy(image).astype(np.float32)
    if chw.ndim != 3 or chw.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] image, got shape {chw.shape}")
    rgb = (chw.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)) * 255.0
    return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255), dtype=np.uint8)


def content_size(original_hw: tuple[int, int], size: int) -> tuple[int, int]:
    """``(h, w)`` of the top-left region that an ``original_hw`` image fills after the test resize-and-pad to ``size``."""
    height, width = (int(v) for v in original_hw)
    zeros = np.zeros((height, width), np.uint8)
    _, placed = ResizePad(size, (0,), IGNORE_ID)(zeros, zeros, None)
    rows, cols = np.nonzero(placed != IGNORE_ID)
    return int(rows.max()) + 1, int(cols.max()) + 1


def episode_pictures(sample: Mapping[str, Any], mean: Sequence[float], std: Sequence[float],
                     index: int | None = None) -> EpisodePictures:
    """Displayable images of a test episode from ``EpisodeDataset`` (``index=None``) or of episode ``index``
    of a collated batch; the padding of the test geometry is cropped when the original sizes are known
    (query: ``query_size_ori`` or ``query_label_ori``; supports: the header of ``support_paths``)."""
    def item(key: str) -> Any:
        return sample[key] if index is None else sample[key][index]

    query, supports, masks = item("query"), item("supports"), item("support_masks")
    size = int(query.shape[-1])
    if "query_size_ori" in sample:
        query_hw = tuple(int(v) for v in _numpy(item("query_size_ori")))
    elif "query_label_ori" in sample and index is None:
        query_hw = tuple(sample["query_label_ori"].shape)
    else:
        query_hw = None
    support_paths = item("support_paths") if "support_paths" in sample else [None] * len(supports)

    def crop(rgb: np.ndarray, label: np.ndarray, original_hw) -> tuple[np.ndarray, np.ndarray]:
        if original_hw is None:
            return rgb, label
        height, width = content_size(original_hw, size)
        return rgb[:height, :width], label[:height, :width]

    supports_rgb, support_masks = [], []
    for support, mask, path in zip(supports, masks, support_paths):
        rgb, label = crop(to_rgb(support, mean, std), _numpy(mask), image_size(path) if path else None)
        supports_rgb.append(rgb)
        support_masks.append(label)
    query_rgb, query_gt = crop(to_rgb(query, mean, std), _numpy(item("query_label")), query_hw)
    return EpisodePictures(supports_rgb, support_masks, query_rgb, query_gt)


def foreground_iou(pred: ArrayLike, label: ArrayLike) -> float:
    """Foreground IoU of one binary prediction against a {0, 1, 255} label; NaN if both are empty."""
    inter, union = intersection_union(torch.as_tensor(_numpy(pred)).long(), torch.as_tensor(_numpy(label)).long(), 2,
                                      IGNORE_ID)
    return float(inter[1]) / float(union[1]) if int(union[1]) else math.nan


def _line_width(shape: tuple[int, ...]) -> int:
    return max(1, round(max(shape[:2]) / 160))


def overlay_mask(rgb: ArrayLike, mask: ArrayLike, colour: tuple[int, int, int] = MASK_COLOUR, alpha: float = ALPHA,
                 outline: ArrayLike | None = None, outline_colour: tuple[int, int, int] = MASK_COLOUR) -> np.ndarray:
    """``rgb`` with ``mask == 1`` tinted in ``colour`` and outlined, ``mask == 255`` whitened and the rest shown
    in dimmed grey (so the mask stands out whatever the scene's colours); optionally the foreground of a
    second mask ``outline`` drawn as a contour only (e.g. the ground truth on a prediction)."""
    image = _numpy(rgb).astype(np.uint8)
    labels = _numpy(mask)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"mask {labels.shape} and image {image.shape[:2]} differ in size")
    out = image.astype(np.float32)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
    foreground, ignored = labels == 1, labels == IGNORE_ID
    out = np.where(foreground[..., None], out, BACKGROUND_BRIGHTNESS * grey)
    for region, tint in ((foreground, colour), (ignored, IGNORE_COLOUR)):
        out[region] = (1 - alpha) * out[region] + alpha * np.asarray(tint, np.float32)
    out = np.ascontiguousarray(np.clip(np.rint(out), 0, 255), dtype=np.uint8)
    width = _line_width(image.shape)
    for contour_mask, contour_colour in ((foreground, colour), (None if outline is None else _numpy(outline) == 1, outline_colour)):
        if contour_mask is None:
            continue
        contours, _ = cv2.findContours(contour_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in contour_colour), width)
    return out


def add_title(rgb: ArrayLike, title: str) -> np.ndarray:
    """``rgb`` below a white band holding ``title`` in black; the font grows with the image's width, and the
    canvas widens (white on the right) when the title is wider than a narrow image."""
    image = _numpy(rgb).astype(np.uint8)
    height, width = image.shape[:2]
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, float(np.clip(width / 900, 0.45, 1.5))
    thickness = 1 if scale < 1 else 2
    (text_width, text_height), baseline = cv2.getTextSize(title, font, scale, thickness)
    margin = max(4, text_height // 2)
    band = text_height + baseline + 2 * margin
    canvas = np.full((band + height, max(width, text_width + 2 * margin), 3), 255, np.uint8)
    canvas[band:, :width] = image
    cv2.putText(canvas, title, (margin, margin + text_height), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return canvas


def png_bytes(rgb: ArrayLike) -> bytes:
    """An RGB uint8 image ``[H, W, 3]`` as the bytes of a PNG file."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(_numpy(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("OpenCV could not encode the image as PNG")
    return data.tobytes()


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return write_output(path, buffer.getvalue(), WRITABLE)


def save_panels(path: str | Path, panels: Sequence[tuple[np.ndarray, str]], title: str) -> Path:
    """One row of images (each ``PANEL_HEIGHT`` px high, its own aspect ratio) with a caption each and a title."""
    margin, title_h, caption_h = 8, 34, 24
    widths = [max(1, round(PANEL_HEIGHT * image.shape[1] / image.shape[0])) for image, _ in panels]
    width = margin + sum(w + margin for w in widths)
    height = title_h + caption_h + PANEL_HEIGHT + margin
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    figure.text(0.5, 1 - (title_h / 2) / height, title, ha="center", va="center", fontsize=12, weight="bold")
    left = margin
    for (image, caption), panel_w in zip(panels, widths):
        axes = figure.add_axes((left / width, margin / height, panel_w / width, PANEL_HEIGHT / height))
        axes.imshow(image, interpolation="antialiased", aspect="auto")
        axes.set_axis_off()
        figure.text((left + panel_w / 2) / width, (margin + PANEL_HEIGHT + caption_h / 2) / height, caption,
                    ha="center", va="center", fontsize=9)
        left += panel_w + margin
    return _save(figure, Path(path))


def save_episode_figure(path: str | Path, supports_rgb: Sequence[ArrayLike], support_masks: Sequence[ArrayLike],
                        query_rgb: ArrayLike, query_gt: ArrayLike, query_pred: ArrayLike, iou: float | None,
                        class_name: str) -> Path:
    """The episode figure: every support with its mask, the query with the ground truth, the query with
    the prediction (ground truth outlined); class and IoU in the title. ``query_gt`` and ``query_pred``
    share one size; ``query_rgb`` is resized to it if it differs (e.g. network grid vs original size)."""
    if len(supports_rgb) != len(support_masks) or not supports_rgb:
        raise ValueError(f"need one mask per support image, got {len(supports_rgb)} images and {len(support_masks)} masks")
    gt, pred = _numpy(query_gt), _numpy(query_pred)
    if gt.shape != pred.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    query = _numpy(query_rgb).astype(np.uint8)
    if query.shape[:2] != gt.shape:
        query = cv2.resize(query, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
    shots = len(supports_rgb)
    panels = [(overlay_mask(rgb, mask), f"support {k + 1}/{shots}" if shots > 1 else "support")
              for k, (rgb, mask) in enumerate(zip(supports_rgb, support_masks))]
    panels.append((overlay_mask(query, gt), "query: ground truth"))
    panels.append((overlay_mask(query, pred, PRED_COLOUR, outline=gt), "query: prediction (outline: truth)"))
    score = "IoU n/a" if iou is None or math.isnan(iou) else f"IoU {100 * iou:.1f}%"
    return save_panels(path, panels, f"{class_name}  ·  {shots}-shot  ·  {score}")


def save_sample_figure(path: str | Path, sample: Mapping[str, Any], index: int | None, query_pred: ArrayLike,
                       query_gt: ArrayLike, mean: Sequence[float], std: Sequence[float], class_name: str) -> Path:
    """:func:`save_episode_figure` for a dataset sample (``index=None``) or entry ``index`` of a collated batch,
    with a prediction and the label it is scored against: the original-size label (``ori_resize``) or the
    network-grid label (then both are cropped to the image's unpadded region). The IoU is computed here."""
    pictures = episode_pictures(sample, mean, std, index)
    gt, pred = _numpy(query_gt), _numpy(query_pred)
    iou = foreground_iou(pred, gt)
    grid = tuple(sample["query"].shape[-2:])
    if gt.shape == grid and pictures.query_gt.shape != grid:
        height, width = pictures.query_gt.shape
        gt, pred = gt[:height, :width], pred[:height, :width]
    return save_episode_figure(path, pictures.supports_rgb, pictures.support_masks, pictures.query_rgb,
                               gt, pred, iou, class_name)


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"{path}: cannot read the figure; is it a PNG/JPEG written by util.reports.figures?")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def save_contact_sheet(paths: Sequence[str | Path], out: str | Path, columns: int = 2, max_tile_width: int = 1400) -> Path:
    """Tile figures row by row, ``columns`` per row, left-aligned on white at their own size (figures wider
    than ``max_tile_width`` px are scaled down to it)."""
    if not paths:
        raise ValueError("no figures to put on the contact sheet")
    tiles = []
    for path in paths:
        image = _read_rgb(Path(path))
        if image.shape[1] > max_tile_width:
            height = max(1, round(image.shape[0] * max_tile_width / image.shape[1]))
            image = cv2.resize(image, (max_tile_width, height), interpolation=cv2.INTER_AREA)
        tiles.append(image)
    columns = max(1, min(columns, len(tiles)))
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    cell_width = max(t.shape[1] for t in tiles)
    row_heights = [max(t.shape[0] for t in row) for row in rows]
    sheet = np.full((SHEET_GAP + sum(h + SHEET_GAP for h in row_heights),
                     SHEET_GAP + columns * (cell_width + SHEET_GAP), 3), 255, np.uint8)
    top = SHEET_GAP
    for row, row_height in zip(rows, row_heights):
        left = SHEET_GAP
        for tile in row:
            sheet[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
            left += cell_width + SHEET_GAP
        top += row_height + SHEET_GAP
    return write_output(Path(out), png_bytes(sheet), WRITABLE)


def _class_means(seeds: Sequence[Mapping[str, Any]], names: Sequence[str], baseline: bool) -> tuple[list[float], list[float]]:
    """Mean and (population) std over seeds of each class's IoU (seeds without episodes of a class skipped)."""
    means, stds = [], []
    for name in names:
        values = [(s["baseline"] if baseline else s)["class_iou"][name] for s in seeds
                  if name in (s["baseline"] if baseline else s)["class_iou"]]
        means.append(float(np.mean(values)) if values else math.nan)
        stds.append(float(np.std(values)) if values else math.nan)
    return means, stds


@dataclass(frozen=True)
class ClassScore:
    """One class of a fold in the per-class chart: IoU mean and std over seeds and the baseline's mean (NaN: no
    episodes)."""

    name: str
    fold: int
    mean: float
    std: float
    baseline: float


def class_scores(result: Mapping[str, Any]) -> list[ClassScore]:
    """Every novel class of one fold's result, in the result's class order."""
    seeds, names, fold = result["seeds"], novel_class_names(result), int(result["protocol"]["split"])
    (means, stds), (base_means, _) = _class_means(seeds, names, False), _class_means(seeds, names, True)
    return [ClassScore(*row) for row in zip(names, [fold] * len(names), means, stds, base_means)]


def best_and_worst(scores: Sequence[ClassScore], count: int) -> tuple[list[ClassScore], list[ClassScore]]:
    """The ``count`` classes with the highest mean IoU (best first) and the ``count`` with the lowest (worst last);
    classes without episodes are left out, and a class is in one list only."""
    ranked = sorted((c for c in scores if not math.isnan(c.mean)), key=lambda c: (-c.mean, c.fold, c.name))
    return ranked[:count], ranked[max(count, len(ranked) - count):]


def _fold_colour(fold: int) -> str:
    return FOLD_COLOURS[fold % len(FOLD_COLOURS)]


def _fold_handles(folds: Sequence[Mapping[str, Any]]) -> list[Patch]:
    """Legend entries: each fold's colour and mIoU (over how many classes, when some had no episodes), the baseline."""
    handles = []
    for result in folds:
        scored = classes_scored(result)
        handles.append(Patch(color=_fold_colour(int(result["protocol"]["split"])),
                             label=f"fold {result['protocol']['split']}: mIoU {100 * result['miou']['mean']:.1f}"
                                   + (f" ({scored})" if scored else "")))
    handles.append(Patch(color=BASELINE_COLOUR, label=f"{folds[0]['protocol'].get('baseline', 'every-object')} baseline"))
    return handles


def _title(figure: Figure, protocol: Mapping[str, Any], what: str) -> None:
    seeds = protocol["test_seeds"]
    spread = ", error bars: std over seeds" if len(seeds) > 1 else ""
    figure.suptitle(f"{protocol['dataset']} {protocol['backbone']} {protocol['shot']}-shot: {what} "
                    f"({len(seeds)} seed(s) x {protocol['test_episodes']} episodes{spread})", fontsize=11)


def _bar_chart(folds: Sequence[Mapping[str, Any]], per_fold: list[list[ClassScore]]) -> Figure:
    """Every class of every fold side by side (width grows with the classes), fold mIoU as dashed lines."""
    classes_total = sum(len(scores) for scores in per_fold)
    figure = Figure(figsize=(max(6.0, 1.6 + 0.42 * classes_total + 0.3 * len(folds)), 4.6), dpi=DPI)
    axes = figure.add_axes((0.9 / figure.get_figwidth(), 0.3, 1 - 1.1 / figure.get_figwidth(), 0.58))
    x, ticks, labels = 0.0, [], []
    for result, scores in zip(folds, per_fold):
        colour = _fold_colour(int(result["protocol"]["split"]))
        xs = x + np.arange(len(scores))
        errors = [c.std for c in scores] if len(result["seeds"]) > 1 else None
        axes.bar(xs - 0.19, [100 * c.mean for c in scores], 0.38, color=colour,
                 yerr=None if errors is None else 100 * np.asarray(errors), capsize=2)
        axes.bar(xs + 0.19, [100 * c.baseline for c in scores], 0.38, color=BASELINE_COLOUR)
        for position, score in zip(xs, scores):
            if math.isnan(score.mean):
                axes.text(position, 2, NO_EPISODES, rotation=90, ha="center", va="bottom", fontsize=9,
                          color=NO_EPISODES_COLOUR)
        axes.hlines(100 * result["miou"]["mean"], xs[0] - 0.45, xs[-1] + 0.45, colors=colour, linestyles="dashed",
                    linewidth=1.2)
        ticks.extend(xs.tolist())
        labels.extend(c.name for c in scores)
        x += len(scores) + 0.6
    axes.set_xticks(ticks, labels, rotation=45, ha="right", fontsize=9)
    axes.set_xlim(-0.7, ticks[-1] + 0.7)
    axes.set_ylim(0, 100)
    axes.set_ylabel("IoU (%)")
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    handles = _fold_handles(folds)
    axes.legend(handles=handles, fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=len(handles), frameon=False)
    _title(figure, folds[0]["protocol"], "per-class IoU")
    return figure


def _ranked_bars(axes, shown: Sequence[ClassScore], seeds: int, title: str) -> None:
    """Horizontal bars of ``shown`` (first on top): IoU in the fold's colour (its value written on it), the baseline
    in grey below it."""
    ys = np.arange(len(shown))
    bars = axes.barh(ys - 0.2, [100 * c.mean for c in shown], 0.4, color=[_fold_colour(c.fold) for c in shown],
                     xerr=[100 * c.std for c in shown] if seeds > 1 else None, capsize=2)
    axes.bar_label(bars, [f"{100 * c.mean:.1f}" for c in shown], label_type="center", fontsize=7, color="white")
    axes.barh(ys + 0.2, [100 * c.baseline for c in shown], 0.4, color=BASELINE_COLOUR)
    axes.set_yticks(ys, [c.name for c in shown], fontsize=8)
    axes.set_ylim(len(shown) - 0.5, -0.5)
    axes.set_xlim(0, 100)
    axes.set_xlabel("IoU (%)", fontsize=9)
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    axes.set_axisbelow(True)


def _summary_chart(folds: Sequence[Mapping[str, Any]], per_fold: list[list[ClassScore]]) -> Figure:
    """A fixed-size chart for many classes: the best and the worst :data:`SHOWN_EXTREMES` classes as sorted bars and
    a histogram of every class's IoU (stacked by fold; the baseline's as a grey outline; fold mIoU dashed)."""
    scores = [c for fold in per_fold for c in fold]
    best, worst = best_and_worst(scores, SHOWN_EXTREMES)
    seeds = max(len(result["seeds"]) for result in folds)
    width, height = SUMMARY_SIZE
    figure = Figure(figsize=(width, height), dpi=DPI)
    top = 1 - 1.05 / height
    _ranked_bars(figure.add_axes((0.13, 0.09, 0.2, top - 0.09)), best, seeds, f"best {len(best)}")
    if worst:
        _ranked_bars(figure.add_axes((0.47, 0.09, 0.2, top - 0.09)), worst, seeds, f"worst {len(worst)}")
    axes = figure.add_axes((0.73, 0.09, 0.25, top - 0.09))
    bins = np.linspace(0, 100, HISTOGRAM_BINS + 1)
    for_folds = [[100 * c.mean for c in fold if not math.isnan(c.mean)] for fold in per_fold]
    axes.hist(for_folds, bins, stacked=True, color=[_fold_colour(int(r["protocol"]["split"])) for r in folds])
    axes.hist([100 * c.baseline for c in scores if not math.isnan(c.baseline)], bins, histtype="step",
              color=BASELINE_COLOUR, linewidth=1.5)
    for result in folds:
        axes.axvline(100 * result["miou"]["mean"], color=_fold_colour(int(result["protocol"]["split"])),
                     linestyle="dashed", linewidth=1.2)
    empty = sum(1 for c in scores if math.isnan(c.mean))
    if empty:
        axes.text(0.98, 0.98, f"{empty} classes: {NO_EPISODES}", transform=axes.transAxes, ha="right", va="top",
                  fontsize=9, color=NO_EPISODES_COLOUR)
    axes.set_xlim(0, 100)
    axes.set_xlabel("IoU (%)", fontsize=9)
    axes.set_ylabel("classes", fontsize=9)
    axes.set_title(f"all {len(scores) - empty} classes with episodes", fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    handles = _fold_handles(folds)
    figure.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.42 / height),
                  ncols=len(handles), frameon=False)
    _title(figure, folds[0]["protocol"], f"class IoU of {len(scores)} classes")
    return figure


def save_per_class_bar_chart(results: Sequence[Mapping[str, Any]], out: str | Path) -> Path:
    """Per-class IoU (percent, mean ± std over seeds) of one or more folds' test results (test.py's
    ``results.json`` dicts), next to the every-object baseline of the same episodes, with each fold's mIoU
    as a dashed line. Up to :data:`MAX_BARS` classes: a bar pair per class, a class without episodes keeping its
    place, marked "no episodes" (the legend then says how many classes the fold's mIoU averages). More classes
    (FSS-1000's 240): a chart of fixed size, the best and worst classes as sorted bars beside a histogram of all."""
    if not results:
        raise ValueError("no results to chart")
    folds = sorted(results, key=lambda r: r["protocol"]["split"])
    per_fold = [class_scores(result) for result in folds]
    many = sum(len(scores) for scores in per_fold) > MAX_BARS
    return _save(_summary_chart(folds, per_fold) if many else _bar_chart(folds, per_fold), Path(out))
