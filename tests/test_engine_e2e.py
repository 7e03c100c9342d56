"""End to end on a tiny synth set: stage 1 -> stage 2 -> test through the real entry points."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test as test_script
import train as train_script
import train_base as train_base_script
from tests.fixtures_engine import Crash, make_tiny_synth
from util.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "config" / "synth" / "efficientnet_lite0" / "split0.yaml")
TINY = ["train_size", "65", "val_size", "65", "base_train_size", "65", "base_val_size", "65",
        "train_episodes", "8", "val_episodes", "4", "test_episodes", "6",
        "batch_size", "2", "base_batch_size", "2", "pretrained_backbone", "false", "device", "cpu", "workers", "0",
        "test_seeds", "[5, 6]", "checkpoint_interval", "2", "print_freq", "1"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Data, lists and a finished stage 1 (2 iterations) shared by the tests of this module."""
    root = tmp_path_factory.mktemp("e2e")
    data_root, list_root = make_tiny_synth(root)
    args = ["--config", CONFIG, "data_root", str(data_root), "list_root", str(list_root),
            "base_exp_dir", str(root / "base"), *TINY]
    train_base_script.main([*args, "max_iters", "2"])
    return root, args


def test_stage1_stage2_test(tiny_runs):
    root, args = tiny_runs
    base = load_checkpoint(root / "base" / "best.pth")
    assert base["stage"] == "base" and base["iteration"] == 2 and "miou" in base["best"]["metrics"]
    assert (root / "base" / "config.yaml").is_file() and (root / "base" / "train_base.log").is_file()

    run = ["exp_dir", str(root / "meta"), "max_iters", "3"]
    train_script.main([*args, *run])
    assert load_checkpoint(root / "meta" / "last.pth")["iteration"] == 3
    results = test_script.main([*args, *run])
    saved = json.loads((root / "meta" / "test" / "results.json").read_text())
    assert saved == results
    assert [s["seed"] for s in saved["seeds"]] == [5, 6] and all(s["episodes"] == 6 for s in saved["seeds"])
    assert 0.0 <= saved["miou"]["mean"] <= 1.0 and 0.0 <= saved["fbiou"]["mean"] <= 1.0
    assert saved["protocol"]["weight"] == str(root / "meta" / "best.pth")
    assert (root / "meta" / "test" / "config.yaml").is_file()


def test_resume_after_crash_gives_the_same_weights_and_test_numbers(tiny_runs, monkeypatch):
    root, args = tiny_runs
    straight = ["exp_dir", str(root / "straight"), "max_iters", "5"]
    train_script.main([*args, *straight])

    build_job = train_script.build_job

    def crashing_build_job(cfg, ctx):
        job = build_job(cfg, ctx)
        step, calls = job.step, {"n": 0}

        def step_then_crash(net, batch):
            calls["n"] += 1
            if calls["n"] == 4:
                raise Crash("killed")
            return step(net, batch)

        job.step = step_then_crash
        return job

    resumed = ["exp_dir", str(root / "resumed"), "max_iters", "5"]
    monkeypatch.setattr(train_script, "build_job", crashing_build_job)
    with pytest.raises(Crash):
        train_script.main([*args, *resumed])
    monkeypatch.undo()
    assert load_checkpoint(root / "resumed" / "last.pth")["iteration"] == 2
    train_script.main([*args, *resumed, "resume", "auto"])

    a, b = load_checkpoint(root / "straight" / "last.pth"), load_checkpoint(root / "resumed" / "last.pth")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    first, second = test_script.main([*args, *straight]), test_script.main([*args, *resumed])
    assert first["seeds"] == second["seeds"]


def test_entry_points_report_user_errors_in_one_line(tiny_runs):
    _, args = tiny_runs
    done = subprocess.run([sys.executable, "test.py", *args, "shots", "5"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: override: unknown key 'shots'; did you mean 'shot'?"]
    done = subprocess.run([sys.executable, "test.py", *args, "weight", "/nonexistent/best.pth"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "checkpoint /nonexistent/best.pth not found" in done.stderr
