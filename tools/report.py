"""Result tables from test.py's JSON (the tables: :mod:`util.reports.tables`).

``python -m tools.report exp/.../split0/.../test/results.json exp/.../split1/.../test/results.json ...``
prints mIoU and FB-IoU per fold and their mean (percentages, mean over seeds); with ``--chart`` it also
draws the per-class IoU bar chart of those folds next to the results (see :func:`util.reports.tables.chart_path`).
``python -m tools.report --results-path --config FILE [key value ...]`` prints where test.py writes
the results of that config (used by test.sh).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from util.common.config import load_config
from util.common.errors import cli_entry
from util.reports.tables import chart_path, format_fold_table, read_results
from util.runs.folders import results_path


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
            from util.reports.figures import save_per_class_bar_chart

            text += f"\nper-class IoU chart: {save_per_class_bar_chart(results, chart_path(args.items, results))}"
    print(text)
    return text


if __name__ == "__main__":
    main()
