"""Interrupted and repeated runs through the real entry points: kill -9 + resume, seeds, worker counts, NaN,
stop signals, two runs at once, the overwrite rule, train.sh's finished stages, non-finite outputs."""
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import test as test_script
import train as train_script
import train_base as train_base_script
from tests.support.engine import make_tiny_synth
from util.checkpoint import load_checkpoint, save_atomic
from util.image_io import read_label, write_label

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
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


# ---------------------------------------------------------------- stop signals, the lock, the overwrite rule, train.sh

SIGNAL_RUN = ["epochs", "2", "checkpoint_interval", "100"]  # 8 iterations; no periodic last.pth before the signal


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _final_error(stderr: str) -> str:
    """The one ``error: ...`` line a failed run ends with (after its progress lines), with no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in stderr and len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr
    return errors[0]


def _wait_for_log(path: Path, text: str, process: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and text in path.read_text()):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"no '{text}' in {path} after {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def signal_straight(stage1):
    root, args = stage1
    train_script.main([*args, *SIGNAL_RUN, "exp_dir", str(root / "signal_straight")])
    return root / "signal_straight"


@pytest.mark.parametrize("signum, workers, to_group", [
    (signal.SIGINT, "0", False),   # kill -INT <pid>
    (signal.SIGINT, "2", True),    # Ctrl-C in a terminal: the process and its DataLoader workers
    (signal.SIGTERM, "2", True),   # a scheduler stopping the job's process group
])
def test_a_signal_saves_last_pth_with_one_line_and_resume_ends_bitwise_equal(stage1, signal_straight, signum, workers,
                                                                             to_group):
    root, args = stage1
    run_dir = root / f"signal_{signal.Signals(signum).name}_{workers}"
    run = [*args, *SIGNAL_RUN, "workers", workers, "exp_dir", str(run_dir)]
    process = subprocess.Popen([sys.executable, "train.py", *run], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_log(run_dir / "train_meta.log", "iter 2/8", process)
        (os.killpg if to_group else os.kill)(process.pid, signum)
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum
    line = _final_error(stderr)
    stopped_at = load_checkpoint(run_dir / "last.pth")["iteration"]
    assert 2 <= stopped_at < 8
    assert line == (f"error: stopped by {signal.Signals(signum).name} at iteration {stopped_at}/8; {run_dir / 'last.pth'} "
                    "holds that state: run the same command with resume auto to continue (train.sh does)")

    done = subprocess.run([sys.executable, "train.py", *run, "resume", "auto"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {run_dir / 'last.pth'} at iteration {stopped_at}/8" in (run_dir / "train_meta.log").read_text()
    a, b = load_checkpoint(signal_straight / "last.pth"), load_checkpoint(run_dir / "last.pth")
    assert a["iteration"] == b["iteration"] == 8 and a["best"] == b["best"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_two_runs_into_one_folder_the_second_refuses(stage1):
    root, args = stage1
    run_dir = root / "twice"
    run = [*args, "exp_dir", str(run_dir), "max_iters", "4"]
    first, second = (subprocess.Popen([sys.executable, "train.py", *run], cwd=REPO, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True) for _ in range(2))
    outcomes = {p.pid: (p.communicate(timeout=600)[1], p.returncode) for p in (first, second)}
    winner = next(pid for pid, (_, code) in outcomes.items() if code == 0)
    loser = next(pid for pid, (_, code) in outcomes.items() if code != 0)
    assert outcomes[loser][1] == 2
    line = _final_error(outcomes[loser][0])
    assert line.startswith(f"error: run directory {run_dir} is in use by pid {winner} on {socket.gethostname()} (started ")
    assert line.endswith(f"; wait for that run to end, choose another exp_dir, or, if it is no longer running, "
                         f"delete {run_dir / 'run.lock'}")
    log = (run_dir / "train_meta.log").read_text()
    assert log.count("iter 1/4 ") == 1 and log.count("iter 4/4 ") == 1
    assert len(list((run_dir / "tb").iterdir())) == 1 and not (run_dir / "run.lock").exists()


def test_a_fresh_run_into_a_finished_folder_is_refused_and_changes_nothing(stage1, signal_straight):
    _, args = stage1
    before = {name: _sha(signal_straight / name) for name in ("best.pth", "last.pth", "config.yaml")}
    done = subprocess.run([sys.executable, "train.py", *args, "exp_dir", str(signal_straight), "max_iters", "1"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert _final_error(done.stderr).startswith(
        f"error: {signal_straight / 'best.pth'} holds another stage 2 run (finished, best mIoU ")
    assert _final_error(done.stderr).endswith("which this run would replace; keep it with resume auto, replace it with "
                                              "overwrite true or choose another exp_dir")
    assert {name: _sha(signal_straight / name) for name in before} == before


def test_train_sh_skips_an_imported_base_learner_and_finished_stages(stage1, tmp_path):
    root, args = stage1
    reference = tmp_path / "bam_pspnet.pth"  # the stage-1 weights in the reference's format, then imported
    torch.save({"state_dict": {f"module.{k}": v for k, v in load_checkpoint(root / "base" / "best.pth")["model"].items()}},
               reference)
    imported = tmp_path / "imported" / "best.pth"
    subprocess.run([sys.executable, "-m", "tools.checkpoint_import", "--config", CONFIG, "--pspnet", str(reference),
                    "--out", str(imported), *args[2:]], cwd=REPO, check=True, capture_output=True)
    imported_sha = _sha(imported)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    overrides = [*args[2:], "max_iters", "2"]

    first = subprocess.run(["bash", "train.sh", "synth", "0", "efficientnet_lite0", "1", *overrides,
                            "base_exp_dir", str(imported.parent), "exp_dir", str(tmp_path / "meta")],
                           cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == f"stage 1 done ({imported}), skipping"
    assert _sha(imported) == imported_sha and sorted(p.name for p in imported.parent.iterdir()) == ["best.pth"]
    stage2 = load_checkpoint(tmp_path / "meta" / "last.pth")
    assert stage2["finished"] and stage2["pretrained_backbone_source"] == f"imported reference pspnet checkpoint {reference}"

    # finished stages stay finished whatever stage-1 training options change (this one changes the iterations
    # per epoch) ...
    before = {p: _sha(p) for p in (root / "base" / "best.pth", tmp_path / "meta" / "best.pth")}
    again = subprocess.run(["bash", "train.sh", "synth", "0", "efficientnet_lite0", "1", *overrides,
                            "base_batch_size", "3", "exp_dir", str(tmp_path / "meta")],
                           cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"stage 1 done ({root / 'base' / 'best.pth'}), skipping"]
    assert again.stderr.strip().splitlines()[-1] == (f"stage 2 done ({tmp_path / 'meta' / 'best.pth'}), skipping; to "
                                                     "train it again: resume null overwrite true, or another exp_dir")
    assert {p: _sha(p) for p in before} == before

    # ... but an option that makes another base learner (what counts as background) is refused, not skipped past
    other = subprocess.run(["bash", "train.sh", "synth", "0", "efficientnet_lite0", "1", *overrides,
                            "novel_in_train", "keep_as_background", "exp_dir", str(tmp_path / "meta")],
                           cwd=REPO, env=env, capture_output=True, text=True)
    assert other.returncode == 2
    assert _final_error(other.stderr).startswith(f"error: {root / 'base' / 'best.pth'} holds another stage 1 run")
    assert "(this config: novel_in_train 'keep_as_background')" in _final_error(other.stderr)
    assert {p: _sha(p) for p in before} == before


def test_non_finite_logits_stop_test_and_predict_with_one_line(stage1, signal_straight, tmp_path):
    """Whatever the cause (here a NaN weight): no score and no mask, one line, exit 2."""
    root, args = stage1
    state = load_checkpoint(signal_straight / "best.pth")
    state["model"]["ifm.cls.3.bias"][0] = float("nan")
    weight = save_atomic(state, tmp_path / "nan.pth")
    done = subprocess.run([sys.executable, "test.py", *args, "weight", str(weight), "exp_dir", str(tmp_path / "run")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert re.fullmatch(r"error: the network's output for \S+\.jpg is not finite \(NaN/Inf\), so no score or mask is "
                        r"made from it; the weights give non-finite outputs on this input: check the checkpoint "
                        r"\(did its training diverge\?\)", _final_error(done.stderr))
    assert not (tmp_path / "run" / "test" / "results.json").exists()

    data_root = Path(args[args.index("data_root") + 1])
    image = data_root / "JPEGImages" / "val_00000.jpg"
    label = read_label(data_root / "SegmentationClassAug" / "val_00000.png")
    mask = tmp_path / "mask.png"
    write_label(mask, np.where((label > 0) & (label < 255), 255, 0))
    done = subprocess.run([sys.executable, "predict.py", "--config", CONFIG, "--weight", str(weight), "--support",
                           str(image), str(mask), "--query", str(image), "--out", str(tmp_path / "out.png"), *args[2:]],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert _final_error(done.stderr) == (
        f"error: the network's output for {image} is not finite (NaN/Inf), so no score or mask is made from it; the "
        "weights give non-finite outputs on this input: check the checkpoint (did its training diverge?)")
    assert not (tmp_path / "out.png").exists()
