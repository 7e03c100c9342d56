"""What protects a user's run directory: the overwrite rule, finished stages, the lock, stop signals, the NaN message."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.support.engine import tiny_config, tiny_job
from util.runs.checkpoint import load_checkpoint, run_record, save_atomic
from util.common.distributed import DistContext
from util.engine.loop import TrainingDiverged, train
from util.common.errors import UserError
from util.runs.guard import LOCK_FILE, RunInterrupted, RunLock

CPU = DistContext(0, 1, torch.device("cpu"))
REPO = Path(__file__).resolve().parents[2]


def files(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in ("best.pth", "last.pth") if (run_dir / name).is_file()}


def finished_run(run_dir: Path, **overrides):
    cfg = tiny_config(epochs=1, **overrides)
    return train(cfg, tiny_job(cfg, run_dir), CPU)


# ---------------------------------------------------------------- overwrite rule and finished stages


def test_a_finished_run_is_marked_and_a_fresh_run_into_its_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    finished_run(run)
    assert run_record(run / "last.pth")["finished"] and run_record(run / "best.pth")["finished"]
    before = files(run)
    cfg = tiny_config(epochs=2)
    with pytest.raises(UserError) as info:
        train(cfg, tiny_job(cfg, run), CPU)
    assert str(info.value) == (f"{run / 'best.pth'} holds another stage 2 run (finished, best mIoU "
                               f"{run_record(run / 'best.pth')['best']['miou']:.4f}), which this run would replace; "
                               "keep it with resume auto, replace it with overwrite true or choose another exp_dir")
    assert files(run) == before and not (run / "run.lock").exists()

    replaced = tiny_config(epochs=2, overwrite=True)
    assert train(replaced, tiny_job(replaced, run), CPU).iteration == 8
    assert load_checkpoint(run / "last.pth")["iteration"] == 8


def test_resume_auto_on_a_finished_stage_is_a_no_op_whatever_else_changed(tmp_path, capsys):
    run = tmp_path / "run"
    first = finished_run(run)
    before = files(run)
    config_before = (run / "config.yaml").read_text()
    capsys.readouterr()
    other = tiny_config(epochs=1, resume="auto", batch_size=4)  # other iterations per epoch: refused before this rule
    again = train(other, tiny_job(other, run), CPU)
    assert again.iteration == first.iteration == 4 and again.best == first.best
    assert capsys.readouterr().err.strip() == (f"stage 2 done ({run / 'best.pth'}), skipping; to train it again: "
                                               "resume null overwrite true, or another exp_dir")
    assert files(run) == before and (run / "config.yaml").read_text() == config_before


def test_best_pth_of_an_earlier_iteration_is_marked_finished_and_counts_alone(tmp_path):
    """Validation peaks at the first epoch: best.pth is older than the end, and still says the run finished (a user
    may delete last.pth to save space)."""
    run = tmp_path / "run"
    cfg = tiny_config()
    job = tiny_job(cfg, run)
    job.validate = lambda net: {"miou": 0.5}
    train(cfg, job, CPU)
    best = run_record(run / "best.pth")
    assert best["best"]["iteration"] == 4 and best["finished"]
    (run / "last.pth").unlink()
    before = files(run)
    auto = tiny_config(resume="auto")
    assert train(auto, tiny_job(auto, run), CPU).iteration == 4  # the finished run's best, nothing trained
    assert files(run) == before


def test_an_imported_checkpoint_counts_as_finished_and_is_never_replaced_unasked(tmp_path):
    run = tmp_path / "run"
    save_atomic({"model": {}, "stage": "imported", "source": "/ref/best.pth"}, run / "best.pth")
    before = files(run)
    auto = tiny_config(resume="auto")
    assert train(auto, tiny_job(auto, run), CPU).iteration == 0
    fresh = tiny_config()
    with pytest.raises(UserError, match=r"best\.pth holds an imported checkpoint \(from /ref/best\.pth\), which this "
                                        r"run would replace; keep it with resume auto, replace it with overwrite true"):
        train(fresh, tiny_job(fresh, run), CPU)
    assert files(run) == before


def test_resume_auto_never_replaces_a_best_checkpoint_of_another_run(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config()  # stopped at iteration 6: best.pth of an unfinished run; its last.pth is then deleted
    with pytest.raises(RunInterrupted):
        train(cfg, tiny_job(cfg, run, signal_at=6), CPU)
    (run / "last.pth").unlink()
    before = files(run)
    auto = tiny_config(resume="auto")
    with pytest.raises(UserError, match=r"best\.pth holds another stage 2 run \(at iteration \d+.*\), which this run "
                                        r"would replace; replace it with overwrite true or choose another exp_dir$"):
        train(auto, tiny_job(auto, run), CPU)
    assert files(run) == before


def test_resuming_a_run_keeps_writing_its_own_files(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config()
    with pytest.raises(RunInterrupted):
        train(cfg, tiny_job(cfg, run, signal_at=6), CPU)
    run_id = run_record(run / "last.pth")["run_id"]
    assert run_record(run / "best.pth")["run_id"] == run_id and not run_record(run / "last.pth")["finished"]
    resumed = tiny_config(resume="auto")
    assert train(resumed, tiny_job(resumed, run), CPU).iteration == 12
    assert {run_record(run / n)["run_id"] for n in ("best.pth", "last.pth")} == {run_id}


# ---------------------------------------------------------------- SIGINT / SIGTERM


def _validations(run_dir: Path) -> list[int]:
    """The iterations after which the run's log shows a validation."""
    lines = (run_dir / "train_meta.log").read_text().splitlines()
    return [int(line.split("validation after iteration ")[1].split(":")[0]) for line in lines if "validation after" in line]


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("signum, signal_at", [(signal.SIGINT, 3), (signal.SIGTERM, 6), (signal.SIGINT, 8)])
def test_a_real_signal_saves_the_current_iteration_and_resume_ends_bitwise_equal(tmp_path, signum, signal_at):
    """The step sends the signal to this very process; 3 and 6 are mid-epoch, 8 ends epoch 2 (validation first)."""
    cfg = tiny_config(checkpoint_interval=100)
    straight = train(cfg, tiny_job(cfg, tmp_path / "straight"), CPU)
    handler = signal.getsignal(signum)
    with pytest.raises(RunInterrupted) as info:
        train(cfg, tiny_job(cfg, tmp_path / "stopped", signal_at=signal_at, signum=signum), CPU)
    assert signal.getsignal(signum) is handler  # the default behaviour is back
    assert info.value.exit_code == 128 + signum
    assert str(info.value) == (f"stopped by {signal.Signals(signum).name} at iteration {signal_at}/12; "
                               f"{tmp_path / 'stopped' / 'last.pth'} holds that state: run the same command with "
                               "resume auto to continue (train.sh does)")
    assert load_checkpoint(tmp_path / "stopped" / "last.pth")["iteration"] == signal_at

    resumed_cfg = tiny_config(checkpoint_interval=100, resume="auto")
    resumed = train(resumed_cfg, tiny_job(resumed_cfg, tmp_path / "stopped"), CPU)
    assert resumed.iteration == straight.iteration == 12 and resumed.last_metrics == straight.last_metrics
    assert _validations(tmp_path / "stopped") == _validations(tmp_path / "straight") == [4, 8, 12]  # none skipped
    for name in ("last.pth", "best.pth"):
        a, b = load_checkpoint(tmp_path / "straight" / name), load_checkpoint(tmp_path / "stopped" / name)
        assert _states_equal(a["model"], b["model"]) and a["best"] == b["best"] and a["iteration"] == b["iteration"]


# ---------------------------------------------------------------- NaN under amp


def test_nan_under_amp_names_amp_not_the_learning_rate(tmp_path):
    cfg = tiny_config(amp="bf16")
    with pytest.raises(TrainingDiverged) as info:
        train(cfg, tiny_job(cfg, tmp_path / "run", nan_at=3), CPU)
    assert str(info.value).endswith(f"the last good checkpoint ({tmp_path / 'run' / 'last.pth'}) is intact: "
                                    "set amp off (the run used amp bf16), then resume")
    assert "learning rate" not in str(info.value)


# ---------------------------------------------------------------- the run-directory lock, with real processes

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from util.runs.guard import RunLock
    lock = RunLock(Path(sys.argv[1]))
    lock.acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def _holder(run_dir: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_live_lock_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        with pytest.raises(UserError) as info:
            RunLock(run).acquire()
        assert str(info.value).startswith(f"run directory {run} is in use by pid {holder.pid} on {socket.gethostname()} "
                                          "(started ")
        assert str(info.value).endswith(f"; wait for that run to end, choose another exp_dir, or, if it is no longer "
                                        f"running, delete {run / LOCK_FILE}")
        cfg = tiny_config()
        with pytest.raises(UserError, match="is in use by pid"):
            train(cfg, tiny_job(cfg, run), CPU)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert f"pid {holder.pid} host" in (run / LOCK_FILE).read_text()  # kill -9 left its lock behind
    cfg = tiny_config(epochs=1)
    train(cfg, tiny_job(cfg, run), CPU)
    log = (run / "train_meta.log").read_text()
    assert (f"took over {run / LOCK_FILE}, left by pid {holder.pid} on {socket.gethostname()}, which is no longer "
            "running") in log
    assert not (run / LOCK_FILE).exists()  # released at the end


def test_a_lock_written_on_another_host_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text("pid 4242 host gpu-node-7 started 2026-01-01T10:00:00\n")
    with pytest.raises(UserError, match=r"in use by pid 4242 on gpu-node-7 \(started 2026-01-01T10:00:00\)"):
        RunLock(run, "base_exp_dir").acquire()
    with RunLock(tmp_path / "other") as lock:
        assert lock.taken_over is None
        assert (tmp_path / "other" / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} host {socket.gethostname()}")


def test_a_run_directory_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the run directory should be")
    cfg = tiny_config()
    with pytest.raises(UserError) as info:
        train(cfg, tiny_job(cfg, blocker / "run"), CPU)
    assert str(info.value) == f"cannot use run directory {blocker / 'run'} (Not a directory); choose a writable exp_dir"
    assert blocker.read_text() == "a file where the run directory should be"
