"""Stage 2 in two gloo processes, as on a GPU node but on the CPU: the global batch keeps the schedule and the
gradients of one process; SIGTERM to torchrun (twice, as SLURM and torchrun deliver it) saves once and the run resumes
bitwise; a process killed makes the other exit with a message instead of hanging. Real ``torchrun`` and ``train.sh``
processes; what stays unproven without a GPU (nccl, SyncBatchNorm, fp16 kernels) is run by ``python -m bench.gpu_check``.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import train as train_script
import train_base as train_base_script
from tests.engine.test_engine_ddp import in_two_processes
from tests.support.engine import make_tiny_synth, wait_for_log
from util.runs.checkpoint import load_checkpoint
from util.common.config import load_config
from util.common.distributed import DistContext
from util.common.runtime import seed_everything
from util.engine.loop import train

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "config" / "synth" / "efficientnet_lite0" / "split0.yaml")
TINY = ["train_size", "65", "val_size", "65", "base_train_size", "65", "base_val_size", "65", "train_episodes", "8",
        "val_episodes", "4", "test_episodes", "6", "batch_size", "2", "base_batch_size", "2",
        "pretrained_backbone", "false", "device", "cpu", "workers", "0", "print_freq", "1",
        "epochs", "2", "checkpoint_interval", "100"]  # 4 iterations per epoch of the global batch of 2


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    data_root, list_root = make_tiny_synth(root)
    args = ["--config", CONFIG, "data_root", str(data_root), "list_root", str(list_root), "base_exp_dir",
            str(root / "base"), *TINY]
    train_base_script.main([*args, "max_iters", "2"])
    return root, args


def torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def straight(stage1):
    """An uninterrupted two-process stage 2 (8 iterations)."""
    root, args = stage1
    run = [*args, "exp_dir", str(root / "straight")]
    done = subprocess.run(torchrun(run), cwd=REPO, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return root / "straight"


def _no_dropout_run(root: Path, args: list[str], name: str, ctx: DistContext) -> dict:
    """Stage 2 through train.py's build_job with every dropout off (so that one and two processes draw alike)."""
    cfg = load_config(CONFIG, [*args[2:], "exp_dir", str(root / name), "max_iters", "4"])
    seed_everything(cfg.seed, ctx.rank)  # as train.py does: rank 0's initial weights are those of one process
    job = train_script.build_job(cfg, ctx)
    for module in job.model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
    learning_rates = []
    original_step = torch.optim.SGD.step

    def recording_step(optimiser, *args, **kwargs):
        learning_rates.append(optimiser.param_groups[0]["lr"])
        return original_step(optimiser, *args, **kwargs)

    torch.optim.SGD.step = recording_step
    try:
        result = train(cfg, job, ctx)
    finally:
        torch.optim.SGD.step = original_step
    return {"iteration": result.iteration, "lrs": learning_rates}


def test_two_processes_follow_the_one_process_recipe_with_the_global_batch(stage1, tmp_path):
    """Same iterations, same learning rate at every iteration, and (dropout off, backbone BN frozen) the same weights
    within float tolerance: the loss is the mean over the global batch, whatever share of ignored pixels each process
    holds (the per-process mean differs)."""
    _, args = stage1
    one = _no_dropout_run(tmp_path, args, "one", DistContext(0, 1, torch.device("cpu")))
    two = in_two_processes(tmp_path, "two", functools.partial(_no_dropout_run, tmp_path, args, "two"))
    assert [rank["result"]["iteration"] for rank in two] == [one["iteration"]] * 2 == [4, 4]
    assert two[0]["result"]["lrs"] == two[1]["result"]["lrs"] == one["lrs"]
    alone, together = load_checkpoint(tmp_path / "one" / "last.pth"), load_checkpoint(tmp_path / "two" / "last.pth")
    trained = [k for k in alone["model"] if not k.startswith("backbone.")]
    for key in trained:
        torch.testing.assert_close(together["model"][key], alone["model"][key], rtol=1e-4, atol=1e-6, msg=key)
    assert together["data_order"]["world_size"] == 2 and together["data_order"]["batch_size"] == 2
    header = (tmp_path / "two" / "config.yaml").read_text().splitlines()[0]
    assert header == "# 2 process(es) x 1 = global batch 2 (config key batch_size)"


def test_sigterm_twice_to_torchrun_saves_once_and_the_run_resumes_bitwise(stage1, straight):
    root, args = stage1
    run_dir = root / "preempted"
    run = [*args, "exp_dir", str(run_dir)]
    process = subprocess.Popen(torchrun(run), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    wait_for_log(run_dir / "train_meta.log", "iter 2/8", process)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0
    log = (run_dir / "train_meta.log").read_text()
    assert log.count("SIGTERM: saved") == 1, stderr
    stopped_at = load_checkpoint(run_dir / "last.pth")["iteration"]
    assert 2 <= stopped_at < 8 and f"SIGTERM: saved {run_dir / 'last.pth'} at iteration {stopped_at}" in log
    done = subprocess.run(torchrun([*run, "resume", "auto"]), cwd=REPO, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(run_dir / "last.pth")
    assert a["iteration"] == b["iteration"] == 8 and a["best"] == b["best"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert len(b["rng"]) == 2 and not torch.equal(b["rng"][0]["torch"], b["rng"][1]["torch"])  # per-rank states


def test_a_killed_process_makes_the_run_end_with_a_message_not_a_hang(stage1, tmp_path):
    root, args = stage1
    run_dir = tmp_path / "killed"
    env = {**ENV, "NPROC": "2", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    script = subprocess.Popen(["bash", "train.sh", "synth", "0", "efficientnet_lite0", "1", *args[2:], "exp_dir",
                               str(run_dir)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    wait_for_log(run_dir / "train_meta.log", "iter 2/8", script)
    config = Path(CONFIG).relative_to(REPO)  # as train.sh passes it
    ranks = subprocess.run(["pgrep", "-f", f"train.py --config {config} .*exp_dir {run_dir}"], capture_output=True,
                           text=True).stdout.split()

    def is_launcher(pid: str) -> bool:  # torchrun itself (its arguments name train.py too)
        head = Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:3]
        return any(part.endswith("torchrun") or part == "torch.distributed.run" for part in head)

    workers = [pid for pid in ranks if not is_launcher(pid)]
    assert len(workers) == 2, ranks
    os.kill(int(workers[1]), signal.SIGKILL)
    _, stderr = script.communicate(timeout=300)
    assert script.returncode != 0
    assert stderr.rstrip().splitlines()[-1] == (
        "error: a process of this train.py run failed (torchrun exit 1; its own error is above): fix that, then run "
        "the same command again: a training run continues from its last.pth (resume auto)")
    leftover = subprocess.run(["pgrep", "-f", f"exp_dir {run_dir}"], capture_output=True, text=True).stdout.split()
    assert leftover == []
