"""Tables generated from the ablation's records (:mod:`util.runs.ablation`), and the demo's comparison with them.

- :func:`render_pages` rewrites, between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``, the README's
  ``demo`` block (the ``both`` row: the demo's own seed and mean ± std over seeds, the every-object baseline, stage 1)
  and ``docs/results.md``'s ``ablation`` block (every row: mIoU and FB-IoU mean ± std, per-seed values, wall time,
  per-class IoU, and which differences between rows exceed the seed spread). Same records, same bytes.
- :func:`stale_pages` lists the pages whose committed text differs from what the records give (a test runs it).
- :func:`demo_comparison` is what ``bash demo.sh`` prints after its test: its run against the committed records of
  the same config.

Figures are percentages with two decimals; std is the sample standard deviation over training seeds (n - 1).
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from util.common.atomic import write_text_if_changed
from util.common.errors import UserError
from util.common.runtime import cpu_model
from util.reports.tables import read_results
from util.runs.ablation import (
    DEMO_CONFIG,
    REPO,
    RESULTS_DIR,
    ROWS,
    ROWS_BY_NAME,
    STAGE1_RECORD,
    demo_config,
    read_json,
    recorded_config,
)
from util.runs.folders import results_path

README = Path("README.md")
RESULTS_PAGE = Path("docs/results.md")
DEMO_BLOCK, ABLATION_BLOCK = "demo", "ablation"
ROW_KEYS = tuple(dict.fromkeys(key for row in ROWS for key in row.overrides[::2]))
"""The config keys rows differ in (use_gim, use_hpm, prior_scale)."""
RUN_KEYS = ("seed", "exp_dir")
"""The config keys runs of one row differ in."""
COMPARISONS = (
    ("both", "none", "GIM + HPM against neither"),
    ("gim", "none", "GIM alone against neither"),
    ("hpm", "none", "HPM alone against neither"),
    ("both", "hpm", "adding GIM to HPM"),
    ("both", "gim", "adding HPM to GIM"),
    ("both", "both_prior1", "prior_scale 100 (synth) against 1 (the reference)"),
)
"""Pairs of rows whose difference the ablation page judges: (row a, row b, what a - b measures)."""
MODULES = (("GIM", "HPM", ("gim", "none"), ("both", "hpm")), ("HPM", "GIM", ("hpm", "none"), ("both", "gim")))
"""Per module: its name, the other module's, and the pairs that add it alone and on top of the other module."""
SPREAD_RULE = ("a difference between two rows exceeds the seed spread when |mean a - mean b| > std a + std b "
               "(mIoU; rows with fewer than 2 seeds are not judged)")
NO_RESULTS = "No ablation results are committed yet: `python -m bench.ablation` makes them (docs/results.md)."


@dataclass(frozen=True)
class RowSummary:
    """The runs of one row: per-seed figures (fractions) and their statistics."""

    name: str
    seeds: tuple[int, ...]
    miou: tuple[float, ...]
    fbiou: tuple[float, ...]
    class_iou: dict[str, float | None]
    wall: tuple[float, ...]

    @property
    def judged(self) -> bool:
        return len(self.seeds) >= 2


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` (``mean (1 seed)`` for one value), ``scale`` x the values."""
    mean = f"{scale * statistics.fmean(values):.{digits}f}"
    if len(values) < 2:
        return f"{mean} (1 seed)"
    return f"{mean} ± {scale * statistics.stdev(values):.{digits}f}"


# ---------------------------------------------------------------- records


def _shared_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What every run of an ablation shares: the recorded config without the rows' switches and the run's seed and
    folder."""
    return {k: v for k, v in recorded_config(config).items() if k not in ROW_KEYS + RUN_KEYS}


def read_records(results_dir: Path) -> list[dict[str, Any]]:
    """Every run record in ``results_dir`` (``<row>_seed<S>.json``), in row order then seed; they must share every
    setting but the row's switches and the run's seed and folder."""
    records = []
    for path in sorted(results_dir.glob("*_seed*.json")):
        record = read_json(path)
        if record is None or not {"row", "seed", "config", "results"} <= record.keys():
            raise UserError(f"{path} is not an ablation record (row, seed, config, results); remove it or rerun "
                            "python -m bench.ablation")
        if record["row"] not in ROWS_BY_NAME or path.name != f"{record['row']}_seed{record['seed']}.json":
            raise UserError(f"{path} holds row {record['row']!r} seed {record['seed']!r}, which its name does not "
                            f"say or which is not a row ({', '.join(ROWS_BY_NAME)})")
        records.append(record)
    order = [row.name for row in ROWS]
    records.sort(key=lambda r: (order.index(r["row"]), r["seed"]))
    shared = [_shared_settings(r["config"]) for r in records]
    for record, settings in zip(records, shared):
        if settings != shared[0]:
            differing = sorted(k for k in settings.keys() | shared[0].keys() if settings.get(k) != shared[0].get(k))
            raise UserError(f"{results_dir}: {record['row']}_seed{record['seed']}.json and "
                            f"{records[0]['row']}_seed{records[0]['seed']}.json were made with different settings "
                            f"({', '.join(differing)}); keep one schedule per results folder")
    return records


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, RowSummary]:
    """Row name -> :class:`RowSummary`, in row order. A run's figure is its mean over test seeds; a class's IoU is
    averaged over the test seeds that had episodes of it, then over training seeds."""
    summaries = {}
    for row in ROWS:
        runs = [r for r in records if r["row"] == row.name]
        if not runs:
            continue
        names = list(runs[0]["results"]["protocol"]["novel_classes"])
        class_iou: dict[str, float | None] = {}
        for name in names:
            per_run = [statistics.fmean(v) for v in
                       ([s["class_iou"][name] for s in r["results"]["seeds"] if s["class_iou"].get(name) is not None]
                        for r in runs) if v]
            class_iou[name] = statistics.fmean(per_run) if per_run else None
        walls = tuple(r["wall_time_s"]["stage2"] + r["wall_time_s"]["test"] for r in runs if r.get("wall_time_s"))
        summaries[row.name] = RowSummary(row.name, tuple(r["seed"] for r in runs),
                                         tuple(r["results"]["miou"]["mean"] for r in runs),
                                         tuple(r["results"]["fbiou"]["mean"] for r in runs), class_iou, walls)
    return summaries


def baseline(records: Sequence[Mapping[str, Any]]) -> tuple[float, float, dict[str, float | None]]:
    """The every-object baseline's mIoU, FB-IoU and per-class IoU (means over test seeds). It depends on the
    episodes only, so every record must give the same; records that do not were tested on other episodes."""
    def of(record: Mapping[str, Any]) -> tuple[float, float, dict[str, float | None]]:
        seeds = record["results"]["seeds"]
        names = record["results"]["protocol"]["novel_classes"]
        per_class = {}
        for name in names:
            values = [s["baseline"]["class_iou"][name] for s in seeds
                      if s["baseline"]["class_iou"].get(name) is not None]
            per_class[name] = statistics.fmean(values) if values else None
        return record["results"]["baseline"]["miou"]["mean"], record["results"]["baseline"]["fbiou"]["mean"], per_class

    first = of(records[0])
    for record in records[1:]:
        if of(record) != first:
            raise UserError(f"records {records[0]['row']}_seed{records[0]['seed']}.json and "
                            f"{record['row']}_seed{record['seed']}.json give different every-object baselines: they "
                            "were tested on different episodes")
    return first


def _distinct(records: Sequence[Mapping[str, Any]], key: str) -> str:
    return ", ".join(sorted({"not recorded" if r.get(key) is None else str(r[key]) for r in records}))


def _threads(threads: int | None) -> str:
    """A record's ``torch_threads`` as a table says it."""
    return "torch threads not recorded" if threads is None else f"{threads} torch thread{'s' * (threads != 1)}"


# ---------------------------------------------------------------- the blocks


def judgement(a: RowSummary, b: RowSummary) -> tuple[float, float | None, bool | None]:
    """mean a - mean b (mIoU), the spread std a + std b, and whether the difference exceeds it (None: a row has
    fewer than 2 seeds)."""
    difference = statistics.fmean(a.miou) - statistics.fmean(b.miou)
    if not (a.judged and b.judged):
        return difference, None, None
    spread = statistics.stdev(a.miou) + statistics.stdev(b.miou)
    return difference, spread, abs(difference) > spread


def _effect(a: RowSummary, b: RowSummary) -> str:
    """What adding the switch that makes row a from row b does, as judged against the seed spread."""
    difference, _, exceeds = judgement(a, b)
    if not exceeds:
        return "no difference beyond the seed spread"
    return f"{'helps' if difference > 0 else 'hurts'} beyond the seed spread"


def module_verdicts(rows: Mapping[str, RowSummary]) -> list[str]:
    """One line per module whose four rows have >= 2 seeds each: what it does alone and added to the other
    module."""
    lines = []
    for module, other, alone, added in MODULES:
        if not all(name in rows and rows[name].judged for name in (*alone, *added)):
            continue
        by_itself, on_top = _effect(rows[alone[0]], rows[alone[1]]), _effect(rows[added[0]], rows[added[1]])
        if by_itself == on_top:
            lines.append(f"- {module}: {by_itself}, alone and added to {other}.")
        else:
            lines.append(f"- {module}: alone, {by_itself}; added to {other}, {on_top}.")
    return lines


def baseline_verdict(rows: Mapping[str, RowSummary], base_miou: float) -> str:
    """Which rows beat the every-object baseline's mIoU with every training seed, and which do not."""
    above = [f"`{name}`" for name, row in rows.items() if min(row.miou) > base_miou]
    rest = [f"`{name}`" for name, row in rows.items() if min(row.miou) <= base_miou]
    return (f"Above the every-object baseline ({_pct(base_miou)} mIoU) with every training seed: "
            f"{', '.join(above) or 'none'}. Not above it with every seed: {', '.join(rest) or 'none'}.")


def _not_the_demo(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """A closing line when the records were not made with the demo's config, naming the keys that differ."""
    ours, demo = _shared_settings(records[0]["config"]), _shared_settings(demo_config())
    differing = sorted(k for k in ours.keys() | demo.keys() if ours.get(k) != demo.get(k))
    return ["", f"These runs are not the demo's config: they differ from it in {', '.join(differing)}."] if differing \
        else []


def ablation_block(records: Sequence[Mapping[str, Any]], stage1: Mapping[str, Any] | None) -> str:
    """The ablation page's generated text (``docs/results.md``)."""
    if not records:
        return NO_RESULTS
    rows = summarise(records)
    base_miou, base_fbiou, base_class = baseline(records)
    protocol = records[0]["results"]["protocol"]
    stage1_text = ""
    if stage1 and stage1.get("base_class_miou") is not None:
        stage1_text = f" (base-class mIoU {_pct(stage1['base_class_miou'])})"
    lines = [
        f"{protocol['dataset']} fold {protocol['split']}, {protocol['shot']}-shot, {protocol['backbone']}, "
        f"`{DEMO_CONFIG}`; test: {len(protocol['test_seeds'])} x {protocol['test_episodes']} episodes (test seeds "
        f"{', '.join(map(str, protocol['test_seeds']))}). Every run trains "
        f"stage 2 from one shared stage 1{stage1_text}. mIoU and FB-IoU in %, mean ± sample std over the training "
        f"seeds. CPU: {_distinct(records, 'cpu_model')}; torch threads per run: "
        f"{_distinct(records, 'torch_threads')}; code: {_distinct(records, 'code_version')}.",
        "",
        "| row | added to the demo's command | mIoU | FB-IoU | per training seed: mIoU / FB-IoU | stage 2 + test, s |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        added = f"`{' '.join(ROWS_BY_NAME[name].overrides)}`" if ROWS_BY_NAME[name].overrides else "(nothing)"
        per_seed = ", ".join(f"{s}: {_pct(m)} / {_pct(f)}" for s, m, f in zip(row.seeds, row.miou, row.fbiou))
        wall = _mean_std(row.wall, 1.0, 0) if row.wall else "not measured"
        lines.append(f"| {ROWS_BY_NAME[name].label} | {added} | {_mean_std(row.miou)} | {_mean_std(row.fbiou)} | "
                     f"{per_seed} | {wall} |")
    lines.append(f"| every-object baseline (predict every labelled object; same episodes) | | {_pct(base_miou)} | "
                 f"{_pct(base_fbiou)} | | |")
    names = list(protocol["novel_classes"])
    lines += ["", "Per-class IoU (%, mean over training seeds):", "",
              "| row | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def cells(values: Mapping[str, float | None]) -> str:
        return " | ".join("no episodes" if values[n] is None else _pct(values[n]) for n in names)

    for name, row in rows.items():
        lines.append(f"| {ROWS_BY_NAME[name].label} | {cells(row.class_iou)} |")
    lines.append(f"| every-object baseline | {cells(base_class)} |")
    lines += ["", f"Rule: {SPREAD_RULE}.", ""]
    exceed, within = [], []
    for a, b, what in COMPARISONS:
        if a not in rows or b not in rows:
            continue
        difference, spread, exceeds = judgement(rows[a], rows[b])
        head = f"- {what} (`{a}` - `{b}`): {100 * difference:+.2f} mIoU"
        if exceeds is None:
            lines.append(f"{head}; not judged (fewer than 2 seeds).")
            continue
        (exceed if exceeds else within).append(f"`{a}` - `{b}`")
        verdict = "exceeds" if exceeds else "is within"
        lines.append(f"{head}, spread {100 * spread:.2f}: {verdict} the seed spread.")
    if exceed or within:
        lines += ["", f"Exceed the seed spread: {', '.join(exceed) or 'none'}. "
                      f"Within it: {', '.join(within) or 'none'}."]
    verdicts = module_verdicts(rows)
    if verdicts:
        lines += ["", "So, on this schedule:", "", *verdicts]
    lines += ["", baseline_verdict(rows, base_miou)]
    example = next((r for r in records if r["row"] == "both"), records[0])
    if example.get("commands"):
        lines += ["", f"The commands of a run, e.g. `{example['row']}` seed {example['seed']} (each record holds its "
                      "own):", "", "```bash", *example["commands"], "```"]
    return "\n".join(lines + _not_the_demo(records))


def demo_block(records: Sequence[Mapping[str, Any]], stage1: Mapping[str, Any] | None) -> str:
    """The README's generated text: the ``both`` row (the demo), its seed-123 run, the baseline, stage 1."""
    rows = summarise(records) if records else {}
    if "both" not in rows:
        return NO_RESULTS
    both = rows["both"]
    base_miou, base_fbiou, _ = baseline(records)
    runs = {r["seed"]: r for r in records if r["row"] == "both"}
    demo_seed = demo_config()["seed"]
    protocol = records[0]["results"]["protocol"]
    lines = [f"| `bash demo.sh` (synth fold {protocol['split']}, {protocol['shot']}-shot, "
             f"{protocol['test_episodes']} test episodes) | mIoU | FB-IoU |", "|---|---|---|"]
    if demo_seed in runs:
        results = runs[demo_seed]["results"]
        lines.append(f"| MIANet (GIM + HPM), training seed {demo_seed} (the demo's seed) | "
                     f"{_pct(results['miou']['mean'])} | {_pct(results['fbiou']['mean'])} |")
    lines.append(f"| MIANet (GIM + HPM), mean ± std over training seeds {', '.join(map(str, both.seeds))} | "
                 f"{_mean_std(both.miou)} | {_mean_std(both.fbiou)} |")
    lines.append(f"| every-object baseline (predict every labelled object; same episodes) | {_pct(base_miou)} | "
                 f"{_pct(base_fbiou)} |")
    facts = []
    if stage1 and stage1.get("base_class_miou") is not None:
        took = "" if stage1.get("wall_time_s") is None else \
            f", {stage1['wall_time_s']:.0f} s ({_threads(stage1.get('torch_threads'))})"
        facts.append(f"stage 1: base-class mIoU {_pct(stage1['base_class_miou'])}{took}")
    wall = runs.get(demo_seed, {}).get("wall_time_s")
    if wall:
        facts.append(f"stage 2 + test of the seed-{demo_seed} run: {wall['stage2'] + wall['test']:.0f} s "
                     f"({_threads(runs[demo_seed].get('torch_threads'))})")
    facts.append(f"CPU: {_distinct([r for r in records if r['row'] == 'both'], 'cpu_model')}")
    text = "; ".join(facts)
    lines += ["", f"{text[0].upper()}{text[1:]}. Every ablation row: docs/results.md."]
    return "\n".join(lines + _not_the_demo(records))


# ---------------------------------------------------------------- pages


def replace_block(text: str, name: str, block: str, where: str | Path) -> str:
    """``text`` with the lines between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` replaced by
    ``block``; each marker must occur once, on its own line, in that order."""
    start, end = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"
    found = [len(re.findall(f"^{re.escape(marker)}$", text, flags=re.M)) for marker in (start, end)]
    if found != [1, 1] or text.index(start) > text.index(end):
        raise UserError(f"{where}: needs one line '{start}' followed by one line '{end}' (found {found[0]} and "
                        f"{found[1]}); put them back around the generated block")
    head, rest = text.split(start + "\n", 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}\n{end}{tail}"


def read_stage1(results_dir: Path, records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The stage-1 record of ``results_dir``, which must have the runs' settings (None when there is none)."""
    stage1 = read_json(results_dir / STAGE1_RECORD)
    if stage1 is not None and records and "config" in stage1 and \
            _shared_settings(stage1["config"]) != _shared_settings(records[0]["config"]):
        raise UserError(f"{results_dir / STAGE1_RECORD} was made with other settings than the run records; remove "
                        "it or make the records again")
    return stage1


def render_pages(results_dir: Path = REPO / RESULTS_DIR, repo: Path = REPO) -> dict[Path, str]:
    """Page -> its text with the blocks generated from the records in ``results_dir``."""
    records = read_records(results_dir)
    stage1 = read_stage1(results_dir, records)
    pages = {}
    for page, name, block in ((README, DEMO_BLOCK, demo_block(records, stage1)),
                              (RESULTS_PAGE, ABLATION_BLOCK, ablation_block(records, stage1))):
        path = repo / page
        pages[path] = replace_block(path.read_text(), name, block, page)
    return pages


def write_pages(results_dir: Path = REPO / RESULTS_DIR, repo: Path = REPO) -> list[Path]:
    """Regenerate the pages' blocks; the pages that changed."""
    return [path for path, text in render_pages(results_dir, repo).items() if write_text_if_changed(path, text)]


def stale_pages(results_dir: Path = REPO / RESULTS_DIR, repo: Path = REPO) -> list[Path]:
    """The pages whose text differs from what the records in ``results_dir`` give."""
    return [path for path, text in render_pages(results_dir, repo).items() if path.read_text() != text]


# ---------------------------------------------------------------- the demo's comparison


def training_iterations(cfg: Mapping[str, Any]) -> int | None:
    """Stage 2's iterations under ``cfg`` (one process), when the config fixes the epoch size."""
    if not cfg["train_episodes"]:
        return None
    total = cfg["epochs"] * (cfg["train_episodes"] // cfg["batch_size"])
    return min(total, cfg["max_iters"]) if cfg["max_iters"] else total


def demo_comparison(overrides: Sequence[str] = (), results_dir: Path = REPO / RESULTS_DIR) -> list[str]:
    """What ``bash demo.sh [key value ...]`` prints after its test: its mIoU / FB-IoU, the committed record of the
    same config and seed, the mean ± std of that config over seeds, and what to expect on another CPU."""
    cfg = demo_config(overrides)
    results = read_results(REPO / results_path(cfg))
    own = (f"this run (training seed {cfg['seed']}): {_pct(results['miou']['mean'])} mIoU, "
           f"{_pct(results['fbiou']['mean'])} FB-IoU (every-object baseline "
           f"{_pct(results['baseline']['miou']['mean'])} / {_pct(results['baseline']['fbiou']['mean'])})")
    records = read_records(results_dir)

    def settings(config: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in recorded_config(config).items() if k not in RUN_KEYS}

    same = [r for r in records if settings(r["config"]) == settings(cfg)]
    if not same:
        return [own, f"no committed record of this config in {RESULTS_DIR} (it holds the demo schedule's rows: "
                     f"{', '.join(dict.fromkeys(r['row'] for r in records)) or 'none yet'}); nothing to compare with"]
    row = summarise(same)[same[0]["row"]]
    lines = [own]
    twin = next((r for r in same if r["seed"] == cfg["seed"]), None)
    if twin is not None:
        theirs = twin["results"]
        lines.append(f"committed `{twin['row']}` row, seed {twin['seed']} ({twin.get('cpu_model')}, "
                     f"{_threads(twin.get('torch_threads'))}, code {twin.get('code_version')}): "
                     f"{_pct(theirs['miou']['mean'])} mIoU, {_pct(theirs['fbiou']['mean'])} FB-IoU; this run differs by "
                     f"{100 * (results['miou']['mean'] - theirs['miou']['mean']):+.2f} / "
                     f"{100 * (results['fbiou']['mean'] - theirs['fbiou']['mean']):+.2f}")
    lines.append(f"committed `{twin['row'] if twin else same[0]['row']}` row over training seeds "
                 f"{', '.join(map(str, row.seeds))}: {_mean_std(row.miou)} mIoU, {_mean_std(row.fbiou)} FB-IoU")
    iterations = training_iterations(cfg)
    spread = f"the seed spread (± {100 * statistics.stdev(row.miou):.2f} mIoU)" if row.judged else "the seed spread"
    here = (cpu_model(), torch.get_num_threads())
    committed = {(str(r.get("cpu_model")), r.get("torch_threads")) for r in same}
    if committed == {here}:
        lines.append(f"what to expect: this CPU model ({here[0]}) and thread count ({here[1]}) are the committed "
                     "runs': a run repeated with the same thread count on one machine gives the same bits, so with "
                     "the library versions of requirements.txt expect the committed figure itself")
        return lines
    conditions = "; ".join(sorted(f"{cpu}, {_threads(threads)}" for cpu, threads in committed))
    lines.append(f"what to expect: this run had {here[0]}, {_threads(here[1])}; the committed runs "
                 f"had {conditions}. Another CPU or thread count sums floats in another order, and training "
                 f"{iterations or 'the'} iterations amplifies that, so expect a difference of the order of {spread}, "
                 "not bitwise equality")
    return lines
