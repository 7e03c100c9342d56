"""Result tables from test.py's JSON: per-seed class IoU of one run, and the paper-style fold table.

Command line: ``python -m tools.report`` (:mod:`tools.report`), the fold table and chart of result files, and
where test.py writes a config's results (used by test.sh).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from util.common.errors import UserError, first_few
from util.engine.metrics import NEARLY_ALL
from util.runs.weights import RANDOM_WARNING, SOURCE_KEY, is_random

RESULTS_FILE = "results.json"
NO_EPISODES = "no episodes"
MAX_EMPTY_ROWS = 10
"""Up to this many classes without episodes in any seed keep a row each in the run table; more share one line."""
SHOWN_NAMES = 5


def _pct(stats: Mapping[str, float]) -> str:
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def novel_class_names(results: Mapping[str, Any]) -> list[str]:
    """Every novel class of a result, those without episodes included (results before ``novel_classes`` was
    recorded: the classes that had episodes)."""
    seeds = results["seeds"]
    return list(results["protocol"].get("novel_classes") or dict.fromkeys(n for s in seeds for n in s["class_iou"]))


def classes_scored(results: Mapping[str, Any]) -> str:
    """``"over N of M classes"`` (``N1-N2`` when seeds differ) when some novel class had no episodes, else ``""``."""
    names = novel_class_names(results)
    counts = sorted({sum(name in seed["class_iou"] for name in names) for seed in results["seeds"]})
    if counts == [len(names)]:
        return ""
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"over {span} of {len(names)} classes"


def result_notes(results: Mapping[str, Any]) -> list[str]:
    """Lines that qualify a result: classes without episodes, where the predictions put the foreground, and loud
    warnings when the backbone started from random weights or the predictions are (nearly) all one class."""
    lines = []
    missing = list(dict.fromkeys(name for seed in results["seeds"] for name in seed.get("classes_without_episodes", [])))
    if missing:
        lines.append(f"mIoU {classes_scored(results)}: {len(missing)} class(es) had no test episodes in some or all "
                     f"seeds ({first_few(missing, SHOWN_NAMES)}; fewer than shot + 1 images, or too few episodes)")
    check = results.get("prediction_check")
    if check:
        lines.append(f"predicted foreground: {100 * check['predicted']:.1f}% of the scored pixels (labels: "
                     f"{100 * check['labelled']:.1f}%); episodes with (nearly) all foreground: "
                     f"{check['episodes_all_foreground']}, all background: {check['episodes_all_background']} of "
                     f"{check['episodes']} (>= {100 * NEARLY_ALL:.0f}% of an episode's scored pixels)")
        if check["degenerate"]:
            lines.append(f"WARNING: the predictions are (nearly) {check['degenerate']}: {check['meaning']}")
    if is_random(results["protocol"].get(SOURCE_KEY)):
        lines.append(RANDOM_WARNING)
    return lines


def format_run_table(results: Mapping[str, Any]) -> str:
    """Per-class IoU for every seed (``no episodes`` where a class had none), then mIoU / FB-IoU per seed and mean ±
    std over seeds (percent), then :func:`result_notes`. More than :data:`MAX_EMPTY_ROWS` classes without episodes in
    any seed share one line (their count and the first few names) instead of a row each."""
    seeds = results["seeds"]
    names = novel_class_names(results)
    empty = [name for name in names if all(name not in s["class_iou"] for s in seeds)]
    if len(empty) > MAX_EMPTY_ROWS:
        names = [name for name in names if name not in set(empty)]
    scored = classes_scored(results)
    miou_label = f"mIoU ({scored})" if scored else "mIoU"
    width = max(len(n) for n in names + ["FB-IoU", "every-object mIoU", miou_label]) + 2
    lines = ["".ljust(width) + "".join(f"seed {s['seed']}".rjust(12) for s in seeds) + "mean ± std".rjust(16)]

    def row(label: str, values: list[float | None], stats: Mapping[str, float] | None = None) -> str:
        tail = _pct(stats).rjust(16) if stats else ""
        cells = "".join(NO_EPISODES.rjust(12) if v is None else f"{100 * v:12.2f}" for v in values)
        return label.ljust(width) + cells + tail

    for name in names:
        lines.append(row(name, [s["class_iou"].get(name) for s in seeds]))
    if len(empty) > MAX_EMPTY_ROWS:
        lines.append(f"{NO_EPISODES} in any seed: {len(empty)} classes ({first_few(empty, SHOWN_NAMES)})")
    lines.append(row(miou_label, [s["miou"] for s in seeds], results["miou"]))
    lines.append(row("FB-IoU", [s["fbiou"] for s in seeds], results["fbiou"]))
    kind = results["protocol"].get("baseline", "every-object")
    lines.append(row(f"{kind} mIoU", [s["baseline"]["miou"] for s in seeds], results["baseline"]["miou"]))
    lines.append(row(f"{kind} FB-IoU", [s["baseline"]["fbiou"] for s in seeds], results["baseline"]["fbiou"]))
    return "\n".join(lines + result_notes(results))


def format_fold_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The paper-style table: mIoU and FB-IoU (mean over seeds) per fold and their mean over folds, then each fold's
    warnings and classes without episodes (:func:`result_notes`)."""
    by_fold = sorted(results, key=lambda r: r["protocol"]["split"])
    folds = [r["protocol"]["split"] for r in by_fold]
    if len(set(folds)) != len(folds):
        raise UserError(f"the result files hold folds {folds}; give one result file per fold")
    first = by_fold[0]["protocol"]
    header = (f"{first['dataset']} {first['backbone']} {first['shot']}-shot, "
              f"{len(first['test_seeds'])} seed(s) x {first['test_episodes']} episodes")
    width = len("every-object FB-IoU") + 2
    lines = [header, "".ljust(width) + "".join(f"fold{f}".rjust(9) for f in folds) + "mean".rjust(9)]
    for key, label in (("miou", "mIoU"), ("fbiou", "FB-IoU")):
        values = [100 * r[key]["mean"] for r in by_fold]
        lines.append(label.ljust(width) + "".join(f"{v:9.2f}" for v in values) + f"{sum(values) / len(values):9.2f}")
    kind = first.get("baseline", "every-object")
    for key, label in (("miou", f"{kind} mIoU"), ("fbiou", f"{kind} FB-IoU")):
        values = [100 * r["baseline"][key]["mean"] for r in by_fold]
        lines.append(label.ljust(width) + "".join(f"{v:9.2f}" for v in values) + f"{sum(values) / len(values):9.2f}")
    for result in by_fold:
        lines += [f"fold {result['protocol']['split']}: {note}" for note in result_notes(result)
                  if not note.startswith("predicted foreground")]
    return "\n".join(lines)


def chart_path(paths: Sequence[str | Path], results: Sequence[Mapping[str, Any]]) -> Path:
    """Where ``--chart`` writes the per-class IoU chart of ``results`` (read from ``paths``): the deepest folder
    holding every result file, e.g. ``exp/pascal`` for all folds of the default layout or the run's ``test/``
    for one fold, as ``per_class_iou_<dataset>_<backbone>_<shot>shot.png``."""
    folder = Path(os.path.commonpath([Path(p).absolute().parent for p in paths]))
    protocol = results[0]["protocol"]
    return folder / f"per_class_iou_{protocol['dataset']}_{protocol['backbone']}_{protocol['shot']}shot.png"


def read_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"result file {path} not found; run test.py for that fold first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"result file {path} is not valid JSON ({err.msg}); re-run test.py") from None
    except UnicodeDecodeError:
        raise UserError(f"result file {path} is not a text (JSON) file; re-run test.py") from None
