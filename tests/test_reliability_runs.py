"""Interrupted and repeated runs through the real entry points: kill -9 + resume, seeds, worker counts, NaN."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import test as test_script
import train as train_script
import train_base as train_base_script
from tests.fixtures_engine import make_tiny_synth
from util.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "config" / "synth" / "efficientnet_lite0" / "split0.yaml")
TINY = ["train_size", "65", "val_size", "65", "base_train_size", "65", "base_val_size", "65",
        "train_episodes", "8", "val_episodes", "4", "test_episodes", "6",
        "batch_size", "2", "base_batch_size", "2", "pretrained_backbone", "false", "device", "cpu", "workers", "0",
        "test_seeds", "[5, 6]", "print_freq", "1"]
KILL_RUN = ["epochs", "4", "checkpoint_interval", "1"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """Tiny synth data and a finished 2-iteration stage 1, shared by this module's tests."""
    root = tmp_path_factory.mktemp("runs")
    data_root, list_root = make_tiny_synth(root)
    args = ["--config", CONFIG, "data_root", str(data_root), "list_root", str(list_root),
            "base_exp_dir", str(root / "base"), *TINY]
    train_base_script.main([*args, "max_iters", "2"])
    return root, args


def _wait_for_checkpoint(path: Path, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def test_kill_9_mid_stage2_then_resume_auto_ends_like_an_uninterrupted_run(stage1):
    root, args = stage1
    killed = [*args, *KILL_RUN, "exp_dir", str(root / "killed")]
    process = subprocess.Popen([sys.executable, "train.py", *killed], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint(root / "killed" / "last.pth", process)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    interrupted_at = load_checkpoint(root / "killed" / "last.pth")["iteration"]
    assert 0 < interrupted_at < 16

    done = subprocess.run([sys.executable, "train.py", *killed, "resume", "auto"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    log = (root / "killed" / "train_meta.log").read_text()
    assert f"resumed from {root / 'killed' / 'last.pth'} at iteration {interrupted_at}/16" in log

    straight = [*args, *KILL_RUN, "exp_dir", str(root / "straight")]
    train_script.main(straight)
    a = load_checkpoint(root / "straight" / "last.pth")
    b = load_checkpoint(root / "killed" / "last.pth")
    assert a["iteration"] == b["iteration"] == 16
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["best"] == b["best"]
    assert test_script.main(straight)["seeds"] == test_script.main(killed)["seeds"]


def test_same_seed_twice_and_other_worker_counts_give_identical_json(stage1):
    root, args = stage1
    run = [*args, "exp_dir", str(root / "repeat"), "max_iters", "2"]
    train_script.main(run)
    results = root / "repeat" / "test" / "results.json"
    test_script.main(run)
    first = results.read_text()
    test_script.main(run)
    assert results.read_text() == first
    test_script.main([*run, "workers", "2"])
    again = json.loads(results.read_text())
    reference = json.loads(first)
    assert again["seeds"] == reference["seeds"] and again["miou"] == reference["miou"]


def test_nan_loss_stops_stage2_with_one_line_and_keeps_the_last_good_checkpoint(stage1):
    root, args = stage1
    run = [*args, "exp_dir", str(root / "diverged"), "max_iters", "8", "checkpoint_interval", "1", "base_lr", "1e30"]
    done = subprocess.run([sys.executable, "train.py", *run], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and done.stderr.rstrip().endswith(errors[0])
    assert "loss became" in errors[0] or "weights stopped being finite" in errors[0]
    assert f"({root / 'diverged' / 'last.pth'}) is intact" in errors[0]
    kept = load_checkpoint(root / "diverged" / "last.pth")
    assert 1 <= kept["iteration"] < 8
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
