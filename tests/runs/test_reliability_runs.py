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
from tests.support.engine import make_tiny_synth, wait_for_log
from util.runs.checkpoint import load_checkpoint, save_atomic
from util.data.image_io import read_label, write_label

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
        wait_for_log(run_dir / "train_meta.log", "iter 2/8", process)
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


# ---------------------------------------------------------------- a resume keeps the run's settings; SIGHUP; train.sh


@pytest.fixture(scope="module")
def interrupted(stage1):
    """A stage-2 run stopped by SIGTERM mid-epoch (last.pth at iteration 2 of 8), trained with its own copy of the
    class vectors, and the copy's path."""
    root, args = stage1
    vectors = root / "vectors" / "synth_glove50.npy"
    vectors.parent.mkdir()
    vectors.write_bytes((REPO / "embeddings" / "synth_glove50.npy").read_bytes())
    run_dir = root / "interrupted"
    run = [*args, *SIGNAL_RUN, "exp_dir", str(run_dir), "embedding_file", str(vectors), "prior_scale", "100"]
    process = subprocess.Popen([sys.executable, "train.py", *run], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wait_for_log(run_dir / "train_meta.log", "iter 2/8", process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=600)
    assert process.returncode == 128 + signal.SIGTERM
    return run_dir, run, vectors


@pytest.mark.parametrize("change, shown", [
    (["prior_scale", "1"], "prior_scale 100.0 (now 1.0)"),
    (["base_lr", "0.5"], "base_lr 0.05 (now 0.5)"),
    (["use_gim", "false"], "use_gim True (now False)"),
    (["batch_size", "4"], "batch_size 2 (now 4)"),
], ids=["prior_scale", "base_lr", "use_gim", "batch_size"])
def test_a_resume_under_other_settings_is_refused_before_anything_is_written(interrupted, change, shown):
    run_dir, run, _ = interrupted
    before = {name: _sha(run_dir / name) for name in ("last.pth", "config.yaml", "train_meta.log")}
    done = subprocess.run([sys.executable, "train.py", *run, "resume", "auto", *change], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert _final_error(done.stderr) == (
        f"error: {run_dir / 'last.pth'} is a run trained with {shown}, which it cannot continue under: continuing needs "
        "the values it was trained with; run it with those, or start over with resume null overwrite true (or another "
        "exp_dir)")
    assert {name: _sha(run_dir / name) for name in before} == before


def test_a_resume_with_other_class_vectors_in_the_same_file_is_refused(interrupted):
    run_dir, run, vectors = interrupted
    original = vectors.read_bytes()
    table = np.load(vectors)
    np.save(vectors, table[[0, *range(table.shape[0] - 1, 0, -1)]])  # rows shuffled: same file, same shape
    try:
        done = subprocess.run([sys.executable, "train.py", *run, "resume", "auto"], cwd=REPO, capture_output=True,
                              text=True)
    finally:
        vectors.write_bytes(original)
    assert done.returncode == 2
    line = _final_error(done.stderr)
    assert line.startswith(f"error: {run_dir / 'last.pth'} is a run trained with class_vectors {{'rows': 21, "
                           "'dim': 50, 'sha256': '") and "(now {'rows': 21, 'dim': 50, 'sha256': '" in line


def test_allowed_changes_continue_the_run(interrupted):
    run_dir, run, _ = interrupted
    done = subprocess.run([sys.executable, "train.py", *run, "resume", "auto", "workers", "1", "print_freq", "3",
                           "checkpoint_interval", "5"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run_dir / "last.pth")["finished"]
    assert "resumed from" in (run_dir / "train_meta.log").read_text()


def test_test_py_refuses_other_class_vectors_and_records_the_ones_it_used(stage1, signal_straight, tmp_path):
    _, args = stage1
    run = [*args, "weight", str(signal_straight / "best.pth"), "exp_dir", str(tmp_path / "run")]
    committed = REPO / "embeddings" / "synth_glove50.npy"
    shuffled = tmp_path / "shuffled.npy"
    table = np.load(committed)
    np.save(shuffled, table[[0, *range(table.shape[0] - 1, 0, -1)]])  # same shape, rows in another order
    refused = subprocess.run([sys.executable, "test.py", *run, "embedding_file", str(shuffled)], cwd=REPO,
                             capture_output=True, text=True)
    assert refused.returncode == 2
    assert _final_error(refused.stderr).startswith(
        f"error: checkpoint {signal_straight / 'best.pth'} was trained with other class vectors than {shuffled} holds")
    assert not (tmp_path / "run").exists()
    done = subprocess.run([sys.executable, "test.py", *run], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    protocol = json.loads((tmp_path / "run" / "test" / "results.json").read_text())["protocol"]
    assert protocol["embedding_file"] == str(committed)
    assert protocol["class_vectors"] == load_checkpoint(signal_straight / "best.pth")["class_vectors"]


def test_sighup_saves_like_sigterm_and_the_run_resumes_bitwise(stage1, signal_straight):
    root, args = stage1
    run_dir = root / "hangup"
    run = [*args, *SIGNAL_RUN, "exp_dir", str(run_dir)]
    process = subprocess.Popen([sys.executable, "train.py", *run], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wait_for_log(run_dir / "train_meta.log", "iter 2/8", process)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 128 + signal.SIGHUP
    stopped_at = load_checkpoint(run_dir / "last.pth")["iteration"]
    assert _final_error(stderr).startswith(f"error: stopped by SIGHUP at iteration {stopped_at}/8;")
    done = subprocess.run([sys.executable, "train.py", *run, "resume", "auto"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = load_checkpoint(signal_straight / "last.pth"), load_checkpoint(run_dir / "last.pth")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_sigterm_to_train_sh_reaches_train_py_and_leaves_no_process_behind(stage1, tmp_path):
    root, args = stage1
    run_dir = tmp_path / "meta"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    script = subprocess.Popen(["bash", "train.sh", "synth", "0", "efficientnet_lite0", "1", *args[2:], *SIGNAL_RUN,
                               "exp_dir", str(run_dir)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    wait_for_log(run_dir / "train_meta.log", "iter 2/8", script)
    script.send_signal(signal.SIGTERM)  # the shell only, as `kill <pid>` or a closed session would
    _, stderr = script.communicate(timeout=600)
    assert script.returncode == 128 + signal.SIGTERM
    stopped_at = load_checkpoint(run_dir / "last.pth")["iteration"]
    assert _final_error(stderr).startswith(f"error: stopped by SIGTERM at iteration {stopped_at}/8;")
    assert not (run_dir / "run.lock").exists()  # train.py ended: its lock is gone
    orphans = subprocess.run(["pgrep", "-f", f"exp_dir {run_dir}"], capture_output=True, text=True).stdout.split()
    assert orphans == []
    again = subprocess.run(["bash", "train.sh", "synth", "0", "efficientnet_lite0", "1", *args[2:], *SIGNAL_RUN,
                            "exp_dir", str(run_dir)], cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resumed from {run_dir / 'last.pth'} at iteration {stopped_at}/8" in (run_dir / "train_meta.log").read_text()


# ---------------------------------------------------------------- test.py and predict.py outputs


def test_a_full_disk_while_writing_results_keeps_the_previous_results(stage1, signal_straight, tmp_path):
    _, args = stage1
    run = [*args, "weight", str(signal_straight / "best.pth"), "exp_dir", str(tmp_path / "run")]
    first = subprocess.run([sys.executable, "test.py", *run], cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    results = tmp_path / "run" / "test" / "results.json"
    before = results.read_bytes()
    # a file-size limit below the results' size: writing it fails as on a full disk (Python ignores SIGXFSZ)
    limit = len(before) // 1024
    full = subprocess.run(["bash", "-c", f'ulimit -f {limit}; exec "$@"', "bash", sys.executable, "test.py", *run,
                           "test_seeds", "[7, 8]"], cwd=REPO, capture_output=True, text=True)
    assert full.returncode == 2
    assert _final_error(full.stderr).startswith(f"error: cannot write {results} (File too large) (the previous file is "
                                                "intact); free disk space or choose a writable exp_dir")
    assert results.read_bytes() == before
    assert [p.name for p in results.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_second_test_py_on_the_same_run_folder_is_refused_while_one_runs(stage1, signal_straight, tmp_path):
    _, args = stage1
    run = [*args, "weight", str(signal_straight / "best.pth"), "exp_dir", str(tmp_path / "run")]
    first = subprocess.Popen([sys.executable, "test.py", *run, "test_episodes", "400"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint(tmp_path / "run" / "test" / "run.lock", first)
        second = subprocess.run([sys.executable, "test.py", *run], cwd=REPO, capture_output=True, text=True)
    finally:
        first.kill()
        first.communicate()
    assert second.returncode == 2
    assert _final_error(second.stderr).startswith(f"error: run directory {tmp_path / 'run' / 'test'} is in use by pid "
                                                  f"{first.pid} on {socket.gethostname()}")
    assert not (tmp_path / "run" / "test" / "results.json").exists()


@pytest.mark.parametrize("blocker", ["exp_dir under a file", "test/ a file", "results.json a directory"])
def test_an_unwritable_output_is_refused_before_the_evaluation(stage1, signal_straight, tmp_path, blocker):
    _, args = stage1
    exp_dir = tmp_path / "file" / "run" if blocker == "exp_dir under a file" else tmp_path / "run"
    if blocker == "exp_dir under a file":
        (tmp_path / "file").write_text("a file")
        culprit = f"{tmp_path / 'file'} is a file, not a directory"
    elif blocker == "test/ a file":
        exp_dir.mkdir()
        (exp_dir / "test").write_text("a file")
        culprit = f"{exp_dir / 'test'} is a file, not a directory"
    else:
        (exp_dir / "test" / "results.json").mkdir(parents=True)
        culprit = "it is a directory"
    done = subprocess.run([sys.executable, "test.py", *args, "weight", str(signal_straight / "best.pth"), "exp_dir",
                           str(exp_dir)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert _final_error(done.stderr) == (f"error: cannot write {exp_dir / 'test' / 'results.json'} ({culprit}); free "
                                         "disk space or choose a writable exp_dir (test.py writes <exp_dir>/test/)")
    assert "seed 5:" not in done.stderr  # refused before any episode ran


def test_a_stage1_checkpoint_given_to_test_and_predict_says_what_it_is(stage1, tmp_path):
    root, args = stage1
    base = root / "base" / "best.pth"
    expected = (f"error: checkpoint {base} is a stage-1 base learner (PSPNet; the file records stage 'base'): test.py "
                "and predict.py take a stage-2 MIANet checkpoint (train it with train.py, whose base_weight is this file)")
    done = subprocess.run([sys.executable, "test.py", *args, "weight", str(base), "exp_dir", str(tmp_path / "run")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and _final_error(done.stderr) == expected
    data_root = Path(args[args.index("data_root") + 1])
    image = data_root / "JPEGImages" / "val_00000.jpg"
    label = read_label(data_root / "SegmentationClassAug" / "val_00000.png")
    mask = tmp_path / "mask.png"
    write_label(mask, np.where(label == label[(label > 0) & (label < 255)][0], 255, 0))
    done = subprocess.run([sys.executable, "predict.py", "--config", CONFIG, "--weight", str(base), "--support",
                           str(image), str(mask), "--query", str(image), "--out", str(tmp_path / "out.png"), *args[2:]],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and _final_error(done.stderr) == expected
    done = subprocess.run([sys.executable, "predict.py", "--config", CONFIG, "--weight", str(base), "--support",
                           str(image), str(mask), "--query", str(image), "--out", str(tmp_path), *args[2:]],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert _final_error(done.stderr) == f"error: --out {tmp_path}: the mask is written as PNG (lossless); give a .png path"
    (tmp_path / "dir.png").mkdir()
    done = subprocess.run([sys.executable, "predict.py", "--config", CONFIG, "--weight", str(base), "--support",
                           str(image), str(mask), "--query", str(image), "--out", str(tmp_path / "dir.png"), *args[2:]],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert _final_error(done.stderr) == (f"error: cannot write {tmp_path / 'dir.png'} (it is a directory); give --out a "
                                         "writable .png path (free disk space)")
