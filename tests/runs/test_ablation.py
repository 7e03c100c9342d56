"""The synth ablation (util/runs/ablation.py, util/reports/ablation.py): runs through stand-in entry points
(tests/support/ablation.py), resuming, refusals, the generated tables against figures computed here from the
stand-in's formula, the committed pages against the committed records, and the demo's comparison. One slow test
runs a tiny real ablation through train_base.py, train.py and test.py."""
from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.support.ablation import BASELINE_FBIOU, BASELINE_MIOU, EXIT_VARIABLE, fake_class_iou, fake_miou
from tests.support.engine import make_tiny_synth
from util.runs.ablation import (DEMO_CONFIG, REPO, RESULTS_DIR, ROWS_BY_NAME, STAGE1_RECORD, TIME_FILE, Plan, RunFailed,
                           check_plan, run_plan)
from util.reports.ablation import (ABLATION_BLOCK, DEMO_BLOCK, README, RESULTS_PAGE, RowSummary, baseline_verdict,
                                   demo_comparison, module_verdicts, render_pages, replace_block, stale_pages,
                                   write_pages)
from util.common.config import load_config
from util.common.runtime import cpu_model
from util.common.errors import UserError

SCHEDULE = ("max_iters", "2")


def fake_plan(tmp_path: Path, rows=("none", "both"), seeds=(1, 2), overrides=SCHEDULE, **changes) -> Plan:
    """A plan whose entry points are the stand-in (tests/support/ablation.py), logging its calls in calls.jsonl."""
    calls = tmp_path / "calls.jsonl"
    entry = ("-m", "tests.support.ablation")
    return Plan(rows=tuple(ROWS_BY_NAME[r] for r in rows), seeds=seeds, results_dir=tmp_path / "results",
                exp_root=tmp_path / "exp", overrides=overrides,
                entry_points={name: (*entry, name, str(calls)) for name in ("train_base", "train", "test")},
                **changes)


def calls(tmp_path: Path) -> list[dict]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def run(plan: Plan) -> list[str]:
    lines: list[str] = []
    run_plan(plan, report=lines.append)
    return lines


def run_config(plan: Plan, row: str, seed: int):
    return load_config(REPO / DEMO_CONFIG, plan.run_overrides(ROWS_BY_NAME[row], seed))


# ---------------------------------------------------------------- runs


def test_every_run_is_recorded_once_and_a_second_call_runs_nothing(tmp_path):
    plan = fake_plan(tmp_path)
    lines = run(plan)
    assert lines[0].startswith("stage 1: trained in ")
    progress = lines[1:]
    assert [line.split(":")[0] for line in progress] == ["[1/4] none seed 1", "[2/4] none seed 2", "[3/4] both seed 1",
                                                          "[4/4] both seed 2"]
    assert all(": done in " in line for line in progress)
    entries = [c["entry"] for c in calls(tmp_path)]
    assert entries == ["train_base"] + ["train", "test"] * 4  # one stage 1, shared
    stage1 = calls(tmp_path)[0]["argv"]
    assert stage1[-4:] == ["base_exp_dir", str(tmp_path / "exp" / "stage1"), "resume", "auto"]

    record = json.loads((tmp_path / "results" / "none_seed2.json").read_text())
    cfg = run_config(plan, "none", 2)
    assert record["row"] == "none" and record["seed"] == 2 and record["row_overrides"] == ["use_gim", "false",
                                                                                            "use_hpm", "false"]
    assert record["config"]["use_gim"] is False and record["config"]["seed"] == 2 and "resume" not in record["config"]
    assert record["results"]["miou"]["mean"] == pytest.approx(fake_miou(cfg))
    assert record["results"] == json.loads((tmp_path / "exp" / "none" / "seed2" / "test" / "results.json").read_text())
    assert record["commands"][0].startswith("python -m tests.support.ablation train ")
    assert record["commands"][0].endswith(f"seed 2 exp_dir {tmp_path / 'exp' / 'none' / 'seed2'} resume auto")
    assert record["wall_time_s"]["stage2"] >= 0 and record["cpu_model"] and record["code_version"]
    assert record["torch_threads"] == torch.get_num_threads()  # what the entry points inherited

    before = {p.name: p.read_bytes() for p in (tmp_path / "results").iterdir()}
    again = run(plan)
    assert len(again) == 4 and all(": skipped, recorded in " in line for line in again)
    assert len(calls(tmp_path)) == 9
    assert {p.name: p.read_bytes() for p in (tmp_path / "results").iterdir()} == before


def test_a_finished_run_without_its_record_is_recorded_without_running(tmp_path):
    plan = fake_plan(tmp_path, rows=("gim",), seeds=(3,))
    run(plan)
    record = tmp_path / "results" / "gim_seed3.json"
    kept = json.loads(record.read_text())
    record.unlink()
    lines = run(plan)
    assert lines == [f"[1/1] gim seed 3: recorded from the finished run in {tmp_path / 'exp' / 'gim' / 'seed3'} "
                     f"(mIoU {100 * kept['results']['miou']['mean']:.2f}, FB-IoU "
                     f"{100 * kept['results']['fbiou']['mean']:.2f})"]
    assert [c["entry"] for c in calls(tmp_path)] == ["train_base", "train", "test"]
    again = json.loads(record.read_text())
    assert again["results"] == kept["results"]
    assert kept["torch_threads"] == torch.get_num_threads() and again["torch_threads"] is None  # not run by this call


def test_an_interrupted_run_stops_the_plan_and_continues_on_the_next_call(tmp_path, monkeypatch):
    plan = fake_plan(tmp_path, rows=("hpm",), seeds=(1, 2))
    monkeypatch.setenv(EXIT_VARIABLE, "train:130")
    lines: list[str] = []
    with pytest.raises(RunFailed) as stopped:
        run_plan(plan, report=lines.append)
    assert stopped.value.exit_code == 130 and "[1/2] hpm seed 1" in str(stopped.value)
    assert lines[0].startswith("stage 1: trained in ") and lines[1].startswith("[1/2] hpm seed 1: FAILED after ")
    assert not (tmp_path / "results" / "hpm_seed1.json").exists()
    assert [c["entry"] for c in calls(tmp_path)] == ["train_base", "train"]  # the plan stopped at the failure
    first = json.loads((tmp_path / "exp" / "hpm" / "seed1" / TIME_FILE).read_text())
    assert first["complete"] and first["stage2"] > 0 and first["test"] == 0

    monkeypatch.delenv(EXIT_VARIABLE)
    lines = run(plan)
    assert [c["entry"] for c in calls(tmp_path)][2:] == ["train_base", "train", "test", "train", "test"]
    record = json.loads((tmp_path / "results" / "hpm_seed1.json").read_text())
    assert record["wall_time_s"]["stage2"] > first["stage2"]  # both sessions count
    assert all(": done in " in line for line in lines[1:])


def test_a_record_is_found_whatever_folder_its_run_was_made_in(tmp_path):
    plan = fake_plan(tmp_path, rows=("gim",), seeds=(1,), overrides=(*SCHEDULE, "base_exp_dir", str(tmp_path / "s1")))
    run(plan)
    lines = run(replace(plan, exp_root=tmp_path / "elsewhere"))  # the same stage 1, another run folder
    assert len(lines) == 1 and ": skipped, recorded in " in lines[0]
    assert len(calls(tmp_path)) == 3


def test_a_run_folder_trained_outside_the_runner_has_no_wall_time(tmp_path):
    plan = fake_plan(tmp_path, rows=("both",), seeds=(1,))
    run_dir = tmp_path / "exp" / "both" / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "last.pth").write_bytes(b"")  # a run already under way: the runner did not see all of it
    run(plan)
    assert json.loads((tmp_path / "results" / "both_seed1.json").read_text())["wall_time_s"] is None


def test_a_record_of_another_config_is_refused_and_kept(tmp_path):
    plan = fake_plan(tmp_path, rows=("both",), seeds=(1,))
    run(plan)
    path = tmp_path / "results" / "both_seed1.json"
    record = json.loads(path.read_text())
    record["config"]["prior_scale"] = 1.0
    path.write_text(json.dumps(record))
    kept = path.read_bytes()
    with pytest.raises(UserError, match=r"both_seed1.json was made with another config: prior_scale 1.0 \(now 100.0\)"):
        run(plan)
    assert path.read_bytes() == kept


def test_a_run_folder_of_another_config_is_refused_before_anything_runs(tmp_path):
    plan = fake_plan(tmp_path, rows=("both",), seeds=(1,))
    run_dir = tmp_path / "exp" / "both" / "seed1"
    load_config(REPO / DEMO_CONFIG, [*plan.run_overrides(ROWS_BY_NAME["both"], 1), "epochs", "3"]).save(
        run_dir / "config.yaml")
    with pytest.raises(UserError, match=r"holds a stage-2 run of another config \(epochs 3 \(now 2\)\)"):
        run(plan)
    assert calls(tmp_path) == []


def test_the_plan_refuses_what_it_sets_itself_and_schedules_aimed_at_the_committed_records(tmp_path):
    with pytest.raises(UserError, match="--overrides sets seed"):
        check_plan(fake_plan(tmp_path, overrides=("seed", "5")))
    with pytest.raises(UserError, match="key value pairs"):
        check_plan(fake_plan(tmp_path, overrides=("max_iters",)))
    with pytest.raises(UserError, match="--results-dir and --exp-root"):
        check_plan(replace(fake_plan(tmp_path), results_dir=RESULTS_DIR))
    with pytest.raises(UserError, match="unknown key 'max_iter'"):
        check_plan(fake_plan(tmp_path, overrides=("max_iter", "2")))
    demo = Plan()  # the committed plan: the demo's stage 1, no schedule change
    assert demo.stage1_overrides() == () and demo.run_overrides(ROWS_BY_NAME["gim"], 124) == [
        "shot", "1", "use_hpm", "false", "seed", "124", "exp_dir", "exp/ablation/gim/seed124"]
    check_plan(demo)


# ---------------------------------------------------------------- tables


def pages_repo(tmp_path: Path) -> Path:
    """A folder with the README and docs/results.md (their real text) to regenerate."""
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    shutil.copy(REPO / README, repo / README)
    shutil.copy(REPO / RESULTS_PAGE, repo / RESULTS_PAGE)
    return repo


def block(text: str, name: str) -> str:
    return text.split(f"<!-- generated:{name} -->\n", 1)[1].split(f"<!-- /generated:{name} -->", 1)[0]


def sample_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@pytest.fixture(scope="module")
def fake_records(tmp_path_factory) -> tuple[Path, Plan]:
    """Records of every row x seeds 123, 124, 125 made by the stand-in entry points, and a stage-1 record."""
    tmp_path = tmp_path_factory.mktemp("ablation")
    plan = fake_plan(tmp_path, rows=tuple(ROWS_BY_NAME), seeds=(123, 124, 125))
    run(plan)
    (plan.results_dir / STAGE1_RECORD).write_text(json.dumps({"base_class_miou": 0.5207, "wall_time_s": 262.4}))
    return plan.results_dir, plan


def test_the_tables_hold_the_figures_of_the_records(fake_records, tmp_path):
    results_dir, plan = fake_records
    repo = pages_repo(tmp_path)
    pages = render_pages(results_dir, repo)
    ablation = block(pages[repo / RESULTS_PAGE], ABLATION_BLOCK)
    seeds = (123, 124, 125)
    for row in ROWS_BY_NAME:
        miou = [100 * fake_miou(run_config(plan, row, s)) for s in seeds]
        fbiou = [m + 20 for m in miou]
        lines = [line for line in ablation.splitlines() if line.startswith(f"| {ROWS_BY_NAME[row].label} | ")]
        assert len(lines) == 2  # the figures, the per-class IoU
        line, classes = lines
        assert f"| {sum(miou) / 3:.2f} ± {sample_std(miou):.2f} | {sum(fbiou) / 3:.2f} ± {sample_std(fbiou):.2f} |" \
            in line
        assert ", ".join(f"{s}: {m:.2f} / {f:.2f}" for s, m, f in zip(seeds, miou, fbiou)) in line
        per_class = [sum(100 * fake_class_iou(run_config(plan, row, s), i) for s in seeds) / 3 for i in range(5)]
        assert classes == f"| {ROWS_BY_NAME[row].label} | " + " | ".join(f"{v:.2f}" for v in per_class) + " |"
    assert f"| every-object baseline (predict every labelled object; same episodes) | | {100 * BASELINE_MIOU:.2f} | " \
           f"{100 * BASELINE_FBIOU:.2f} | | |" in ablation
    assert "one shared stage 1 (base-class mIoU 52.07)" in ablation
    assert "These runs are not the demo's config: they differ from it in base_exp_dir, max_iters." in ablation
    # the stand-in gives GIM +10, HPM +20 and prior_scale 1 -5 mIoU; the seeds add 4, 5, 6 (std 1 per row)
    spread = 2 * sample_std([100 * 0.01 * (s % 7) for s in seeds])
    assert f"- GIM alone against neither (`gim` - `none`): +10.00 mIoU, spread {spread:.2f}: exceeds the seed " \
           "spread." in ablation
    assert f"- adding GIM to HPM (`both` - `hpm`): +10.00 mIoU, spread {spread:.2f}: exceeds" in ablation
    assert f"- prior_scale 100 (synth) against 1 (the reference) (`both` - `both_prior1`): +5.00 mIoU, spread " \
           f"{spread:.2f}: exceeds" in ablation
    assert "So, on this schedule:\n\n- GIM: helps beyond the seed spread, alone and added to HPM.\n" \
           "- HPM: helps beyond the seed spread, alone and added to GIM.\n" in ablation
    assert "Above the every-object baseline (25.00 mIoU) with every training seed: `none`, `gim`, `hpm`, `both`, " \
           "`both_prior1`. Not above it with every seed: none." in ablation

    readme = block(pages[repo / README], DEMO_BLOCK)
    both = [100 * fake_miou(run_config(plan, "both", s)) for s in seeds]
    assert f"| MIANet (GIM + HPM), training seed 123 (the demo's seed) | {both[0]:.2f} | {both[0] + 20:.2f} |" \
        in readme
    assert f"| MIANet (GIM + HPM), mean ± std over training seeds 123, 124, 125 | {sum(both) / 3:.2f} ± " \
           f"{sample_std(both):.2f} |" in readme
    threads = torch.get_num_threads()
    assert re.search(r"Stage 1: base-class mIoU 52\.07, 262 s \(torch threads not recorded\); stage 2 \+ test of the "
                     rf"seed-123 run: \d+ s \({threads} torch threads?\)", readme)
    assert f"; torch threads per run: {threads}; code: " in ablation
    assert readme.endswith("These runs are not the demo's config: they differ from it in base_exp_dir, max_iters.\n")


def test_a_difference_within_the_seed_spread_is_called_so(fake_records, tmp_path):
    results_dir, plan = fake_records
    folder = tmp_path / "results"
    shutil.copytree(results_dir, folder)
    for seed, value in ((123, 0.68), (124, 0.60), (125, 0.64)):  # `hpm` 1 below `both`, std 4
        path = folder / f"hpm_seed{seed}.json"
        record = json.loads(path.read_text())
        record["results"]["miou"]["mean"] = value
        path.write_text(json.dumps(record))
    ablation = block(render_pages(folder, pages_repo(tmp_path))[tmp_path / "repo" / RESULTS_PAGE], ABLATION_BLOCK)
    both = [fake_miou(run_config(plan, "both", s)) for s in (123, 124, 125)]
    difference = 100 * (sum(both) / 3 - (0.68 + 0.60 + 0.64) / 3)
    spread = 100 * (sample_std(both) + sample_std([0.68, 0.60, 0.64]))
    assert abs(difference) < spread
    assert f"- adding GIM to HPM (`both` - `hpm`): {difference:+.2f} mIoU, spread {spread:.2f}: is within the seed " \
           "spread." in ablation
    assert "Within it: `both` - `hpm`." in ablation


def test_the_generated_text_depends_on_the_records_only(fake_records, tmp_path):
    results_dir, _ = fake_records
    repo = pages_repo(tmp_path)
    first = render_pages(results_dir, repo)
    reversed_copy = tmp_path / "copy"
    reversed_copy.mkdir()
    for path in sorted(results_dir.iterdir(), reverse=True):  # other creation order, other folder
        shutil.copy(path, reversed_copy / path.name)
    assert render_pages(reversed_copy, repo) == first
    record = json.loads((results_dir / "both_seed123.json").read_text())  # seeds in numeric order, not by file name
    record["seed"] = record["config"]["seed"] = 99
    (reversed_copy / "both_seed99.json").write_text(json.dumps(record))
    ablation = block(render_pages(reversed_copy, repo)[repo / RESULTS_PAGE], ABLATION_BLOCK)
    assert "| MIANet: GIM + HPM (the demo) | (nothing) | " in ablation
    assert ablation.split("| MIANet: GIM + HPM (the demo) | (nothing) | ")[1].split(" | ")[2].startswith("99: ")
    text = (repo / README).read_text()
    outside = text.split("<!-- generated:demo -->")[0], text.split("<!-- /generated:demo -->")[1]
    new = first[repo / README]
    assert new.startswith(outside[0]) and new.endswith(outside[1])


def test_a_committed_page_that_disagrees_with_its_records_is_found(fake_records, tmp_path):
    results_dir, _ = fake_records
    repo = pages_repo(tmp_path)
    folder = tmp_path / "results"
    shutil.copytree(results_dir, folder)
    assert sorted(stale_pages(folder, repo)) == sorted([repo / README, repo / RESULTS_PAGE])
    assert sorted(write_pages(folder, repo)) == sorted([repo / README, repo / RESULTS_PAGE])
    assert stale_pages(folder, repo) == [] and write_pages(folder, repo) == []
    path = folder / "both_seed124.json"  # a value edited without regenerating: both pages hold the both row
    record = json.loads(path.read_text())
    record["results"]["fbiou"]["mean"] += 0.001
    path.write_text(json.dumps(record))
    assert sorted(stale_pages(folder, repo)) == sorted([repo / README, repo / RESULTS_PAGE])
    path = folder / "none_seed123.json"  # a row only the docs page shows
    write_pages(folder, repo)
    record = json.loads(path.read_text())
    record["results"]["seeds"][0]["class_iou"]["red circle"] = 0.9
    path.write_text(json.dumps(record))
    assert stale_pages(folder, repo) == [repo / RESULTS_PAGE]


def test_the_committed_pages_agree_with_the_committed_records():
    """README.md and docs/results.md hold exactly what `python -m bench.ablation --tables` writes."""
    assert stale_pages() == [], "run: python -m bench.ablation --tables"


def test_markers_must_be_there_once_and_in_order():
    text = "a\n<!-- generated:x -->\nold\n<!-- /generated:x -->\nb\n"
    assert replace_block(text, "x", "new", "page") == "a\n<!-- generated:x -->\nnew\n<!-- /generated:x -->\nb\n"
    for broken in ("a\nold\n<!-- /generated:x -->\n", text + "<!-- generated:x -->\n",
                   "<!-- /generated:x -->\n<!-- generated:x -->\n"):
        with pytest.raises(UserError, match="page: needs one line '<!-- generated:x -->'"):
            replace_block(broken, "x", "new", "page")


def test_records_of_different_schedules_are_not_mixed(fake_records, tmp_path):
    results_dir, _ = fake_records
    folder = tmp_path / "results"
    shutil.copytree(results_dir, folder)
    path = folder / "gim_seed124.json"
    record = json.loads(path.read_text())
    record["config"]["epochs"] = 3
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"gim_seed124.json and none_seed123.json were made with different settings "
                                        r"\(epochs\)"):
        render_pages(folder, pages_repo(tmp_path))


def summary(name: str, *miou: float) -> RowSummary:
    return RowSummary(name, tuple(range(len(miou))), miou, miou, {}, ())


def test_module_verdicts_say_what_each_module_does_alone_and_on_top_of_the_other():
    rows = {"none": summary("none", 0.47, 0.48, 0.47), "gim": summary("gim", 0.47, 0.47, 0.48),
            "hpm": summary("hpm", 0.62, 0.61, 0.63), "both": summary("both", 0.58, 0.58, 0.59)}
    assert module_verdicts(rows) == ["- GIM: alone, no difference beyond the seed spread; added to HPM, hurts beyond "
                                     "the seed spread.",
                                     "- HPM: helps beyond the seed spread, alone and added to GIM."]
    rows["both"] = summary("both", 0.61, 0.63, 0.62)
    assert module_verdicts(rows)[0] == "- GIM: no difference beyond the seed spread, alone and added to HPM."
    rows["hpm"] = summary("hpm", 0.62)  # one seed: HPM and GIM each have a row that cannot be judged
    assert module_verdicts(rows) == []
    assert baseline_verdict({"none": summary("none", 0.47, 0.53), "both": summary("both", 0.55, 0.6)}, 0.5) == \
        "Above the every-object baseline (50.00 mIoU) with every training seed: `both`. Not above it with every " \
        "seed: `none`."


def test_a_stage1_record_of_other_settings_is_refused(fake_records, tmp_path):
    results_dir, _ = fake_records
    folder = tmp_path / "results"
    shutil.copytree(results_dir, folder)
    config = json.loads((folder / "none_seed123.json").read_text())["config"]
    (folder / STAGE1_RECORD).write_text(json.dumps({"base_class_miou": 0.5, "config": config}))
    repo = pages_repo(tmp_path)
    render_pages(folder, repo)  # the runs' settings: accepted
    (folder / STAGE1_RECORD).write_text(json.dumps({"base_class_miou": 0.5, "config": {**config, "base_epochs": 2}}))
    with pytest.raises(UserError, match="stage1.json was made with other settings than the run records"):
        render_pages(folder, repo)


# ---------------------------------------------------------------- the demo's comparison


def test_the_demo_compares_its_run_with_the_record_of_its_seed_and_the_spread(fake_records, tmp_path, monkeypatch):
    results_dir, plan = fake_records
    own = tmp_path / "demo"
    overrides = [*SCHEDULE, *plan.stage1_overrides(), "exp_dir", str(own)]
    cfg = load_config(REPO / DEMO_CONFIG, ["shot", "1", *overrides])
    committed = json.loads((results_dir / "both_seed123.json").read_text())["results"]
    results = json.loads(json.dumps(committed))
    results["miou"]["mean"] += 0.0042
    (own / "test").mkdir(parents=True)
    (own / "test" / "results.json").write_text(json.dumps(results))
    lines = demo_comparison(overrides, results_dir)
    both = [100 * fake_miou(run_config(plan, "both", s)) for s in (123, 124, 125)]
    assert lines[0].startswith(f"this run (training seed 123): {100 * results['miou']['mean']:.2f} mIoU")
    assert lines[1].startswith("committed `both` row, seed 123 (")
    assert lines[1].endswith(f"{100 * committed['miou']['mean']:.2f} mIoU, {100 * committed['fbiou']['mean']:.2f} "
                             "FB-IoU; this run differs by +0.42 / +0.00")
    assert lines[2] == (f"committed `both` row over training seeds 123, 124, 125: {sum(both) / 3:.2f} ± "
                        f"{sample_std(both):.2f} mIoU, {sum(both) / 3 + 20:.2f} ± {sample_std(both):.2f} FB-IoU")
    threads = torch.get_num_threads()
    assert f"({cpu_model()}, {threads} torch thread" in lines[1]
    assert lines[3].startswith(f"what to expect: this CPU model ({cpu_model()}) and thread count ({threads}) are the "
                               "committed runs'") and lines[3].endswith("expect the committed figure itself")

    monkeypatch.setattr("util.reports.ablation.torch.get_num_threads", lambda: threads + 1)
    lines = demo_comparison(overrides, results_dir)
    iterations = min(cfg.epochs * cfg.train_episodes // cfg.batch_size, 2)
    assert lines[3].startswith(f"what to expect: this run had {cpu_model()}, {threads + 1} torch threads; the "
                               f"committed runs had {cpu_model()}, {threads} torch thread")
    assert f"training {iterations} iterations" in lines[3]
    assert f"of the order of the seed spread (± {sample_std(both):.2f} mIoU)" in lines[3]

    other = [*overrides[:-2], "use_gim", "false", "prior_scale", "3", "exp_dir", str(own)]
    (own / "test" / "results.json").write_text(json.dumps(results))
    assert "no committed record of this config" in demo_comparison(other, results_dir)[1]


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_tiny_real_ablation_runs_and_resumes(tmp_path):
    data_root, list_root = make_tiny_synth(tmp_path / "data")
    tiny = ("data_root", str(data_root), "list_root", str(list_root), "train_size", "65", "val_size", "65",
            "base_train_size", "65", "base_val_size", "65", "train_episodes", "8", "val_episodes", "4",
            "test_episodes", "6", "batch_size", "2", "base_batch_size", "2", "pretrained_backbone", "false",
            "device", "cpu", "max_iters", "2", "base_val_images", "4")
    plan = Plan(rows=(ROWS_BY_NAME["none"],), seeds=(7,), results_dir=tmp_path / "results", exp_root=tmp_path / "exp",
                overrides=tiny)
    lines = run(plan)
    assert lines[0].startswith("stage 1: trained in ") and lines[1].startswith("[1/1] none seed 7: done in ")
    record = json.loads((tmp_path / "results" / "none_seed7.json").read_text())
    assert record["results"]["protocol"]["use_gim"] is False and record["results"]["protocol"]["test_episodes"] == 6
    assert record["results"]["protocol"]["base_weight"] == str(tmp_path / "exp" / "stage1" / "best.pth")
    assert json.loads((tmp_path / "results" / STAGE1_RECORD).read_text())["iteration"] == 2
    assert run(plan) == [f"[1/1] none seed 7: skipped, recorded in {tmp_path / 'results' / 'none_seed7.json'} "
                         f"({lines[1].split('(', 1)[1]}"]
