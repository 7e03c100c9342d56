"""The synth ablation of MIANet's two modules on the demo's schedule: rows x training seeds, each stage 2 + test run
through train.py / test.py on the demo's stage 1, one record per run, and the tables made from the records.

    python -m bench.ablation                    # every row x seeds 123 124 125 -> docs/results/ablation/, then the
                                                # README and docs/results.md tables (resumable: run it again)
    python -m bench.ablation --rows both none --seeds 123 124
    python -m bench.ablation --results-dir /tmp/r --exp-root /tmp/e --seeds 1 2 --overrides max_iters 3 ...
    python -m bench.ablation --tables           # regenerate the README / docs tables from docs/results/ablation/
    python -m bench.ablation --show --results-dir DIR   # print the ablation table of a results folder
    python -m bench.ablation --compare [key value ...]  # demo.sh: the demo's test against the committed records

Rows (added to the demo's command): none (use_gim false use_hpm false), gim (use_hpm false), hpm (use_gim false),
both (nothing: the demo), both_prior1 (prior_scale 1). Runs go to <exp root>/<row>/seed<S>/ (its ablation.log
holds the entry points' output), records to <results dir>/<row>_seed<S>.json; one progress line per run.
The library: util/runs/ablation.py (runs, records), util/reports/ablation.py (tables, the demo's comparison).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from util.common.errors import UserError, cli_entry
from util.reports.ablation import (
    ablation_block,
    demo_comparison,
    read_records,
    read_stage1,
    write_pages,
)
from util.runs.ablation import (
    DEFAULT_SEEDS,
    EXP_ROOT,
    REPO,
    RESULTS_DIR,
    ROWS,
    Plan,
    parse_rows,
    run_plan,
)


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rows", nargs="+", default=[row.name for row in ROWS], help="rows to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS), help="training seeds")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help=f"records folder (default {RESULTS_DIR}, the committed one; relative paths are "
                             "relative to the repository)")
    parser.add_argument("--exp-root", type=Path, default=EXP_ROOT, help=f"run folders (default {EXP_ROOT})")
    parser.add_argument("--overrides", nargs="+", default=[],
                        help="key value pairs changing the demo's schedule for stage 1 and every run (needs "
                             "--results-dir and --exp-root of their own; stage 1 goes to <exp root>/stage1)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tables", action="store_true",
                      help=f"regenerate the README and docs/results.md tables from {RESULTS_DIR} and stop")
    mode.add_argument("--show", action="store_true", help="print the ablation table of --results-dir and stop")
    mode.add_argument("--compare", nargs="*", metavar="KEY_VALUE",
                      help="print the demo's test (the demo config with these overrides) against the committed records")
    args = parser.parse_args(argv)
    results_dir = REPO / args.results_dir
    committed = results_dir.resolve() == (REPO / RESULTS_DIR).resolve()
    if args.compare is not None:
        print("\n".join(demo_comparison(args.compare)))
        return
    if args.tables:
        if not committed:
            raise UserError(f"--tables writes the README and docs/results.md from {RESULTS_DIR}; to print the table of "
                            f"{args.results_dir} use --show")
        _write_tables()
        return
    if not args.show:
        plan = Plan(rows=parse_rows(args.rows), seeds=tuple(args.seeds), results_dir=args.results_dir,
                    exp_root=args.exp_root, overrides=tuple(args.overrides))
        run_plan(plan, report=lambda line: print(line, flush=True))
        if committed:
            _write_tables()
            return
    records = read_records(results_dir)
    print(ablation_block(records, read_stage1(results_dir, records)) if records else f"no records in {results_dir}")


def _write_tables() -> None:
    changed = write_pages()
    print(f"tables: {', '.join(str(p.relative_to(REPO)) for p in changed) or 'README.md and docs/results.md unchanged'}"
          + (" regenerated" if changed else ""))


if __name__ == "__main__":
    main()
