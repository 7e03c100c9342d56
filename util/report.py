"""Result tables from test.py's JSON: per-seed class IoU of one run, and the paper-style fold table.

``python -m util.report exp/.../split0/.../test/results.json exp/.../split1/.../test/results.json ...``
prints mIoU and FB-IoU per fold and their mean (percentages, mean over seeds); with ``--chart`` it also
draws the per-class IoU bar chart of those folds next to the results (see :func:`chart_path`).
``python -m util.report --results-path --config FILE [key value ...]`` prints where test.py writes
the results of that config (used by test.sh).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from util.checkpoint import meta_run_dir
from util.config import load_config
from util.errors import UserError, cli_entry

RESULTS_FILE = "results.json"


def results_path(cfg: Mapping[str, Any]) -> Path:
    """Where test.py writes the results of ``cfg``: ``<stage-2 run dir>/test/results.json``."""
    return meta_run_dir(cfg) / "test" / RESULTS_FILE


def _pct(stats: Mapping[str, float]) -> str:
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def format_run_table(results: Mapping[str, Any]) -> str:
    """Per-class IoU for every seed, then mIoU / FB-IoU per seed and mean ± std over seeds (percent)."""
    seeds = results["seeds"]
    names = list(seeds[0]["class_iou"])
    width = max(len(n) for n in names + ["FB-IoU", "every-object mIoU"]) + 2
    lines = ["".ljust(width) + "".join(f"seed {s['seed']}".rjust(12) for s in seeds) + "mean ± std".rjust(16)]

    def row(label: str, values: list[float], stats: Mapping[str, float] | None = None) -> str:
        tail = _pct(stats).rjust(16) if stats else ""
        return label.ljust(width) + "".join(f"{100 * v:12.2f}" for v in values) + tail

    for name in names:
        lines.append(row(name, [s["class_iou"].get(name, float("nan")) for s in seeds]))
    lines.append(row("mIoU", [s["miou"] for s in seeds], results["miou"]))
    lines.append(row("FB-IoU", [s["fbiou"] for s in seeds], results["fbiou"]))
    lines.append(row("every-object mIoU", [s["baseline"]["miou"] for s in seeds], results["baseline"]["miou"]))
    lines.append(row("every-object FB-IoU", [s["baseline"]["fbiou"] for s in seeds], results["baseline"]["fbiou"]))
    return "\n".join(lines)


def format_fold_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The paper-style table: mIoU and FB-IoU (mean over seeds) per fold and their mean over folds."""
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
    for key, label in (("miou", "every-object mIoU"), ("fbiou", "every-object FB-IoU")):
        values = [100 * r["baseline"][key]["mean"] for r in by_fold]
        lines.append(label.ljust(width) + "".join(f"{v:9.2f}" for v in values) + f"{sum(values) / len(values):9.2f}")
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


@cli_entry
def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Print the fold table of test.py result files.")
    parser.add_argument("--results-path", action="store_true",
                        help="print the results file of --config and the key value overrides instead")
    parser.add_argument("--config", default=None)
    parser.add_argument("--chart", action="store_true",
                        help="also draw the per-class IoU bar chart in the folder holding the result files")
    parser.add_argument("items", nargs="+", help="results.json files, one per fold (or overrides)")
    args = parser.parse_args(argv)
    if args.results_path:
        text = str(results_path(load_config(args.config, args.items)))
    else:
        results = [read_results(p) for p in args.items]
        text = format_fold_table(results)
        if args.chart:
            # imported here so that ``--results-path`` (called once per fold by test.sh) does not load matplotlib
            from util.visualize import save_per_class_bar_chart

            text += f"\nper-class IoU chart: {save_per_class_bar_chart(results, chart_path(args.items, results))}"
    print(text)
    return text


if __name__ == "__main__":
    main()
