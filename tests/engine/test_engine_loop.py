"""The training loop: resume after an interruption ends bitwise equal, NaN stops cleanly, poly LR, outputs."""
import math

import pytest
import torch
import yaml

from tests.support.engine import Crash, tiny_config, tiny_job
from util.runs.checkpoint import BEST_KEYS, TRAINING_STATE_KEYS, load_checkpoint
from util.common.distributed import DistContext
from util.engine.loop import TrainingDiverged, train
from util.common.errors import UserError
from util.common.runtime import AMP_DTYPES, autocast

CPU = DistContext(0, 1, torch.device("cpu"))


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("crash_at, max_iters", [(4, 0), (6, 0), (8, 11)])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, crash_at, max_iters):
    cfg = tiny_config(max_iters=max_iters)
    straight = train(cfg, tiny_job(cfg, tmp_path / "straight"), CPU)

    with pytest.raises(Crash):
        train(cfg, tiny_job(cfg, tmp_path / "resumed", crash_at=crash_at), CPU)
    interrupted_at = load_checkpoint(tmp_path / "resumed" / "last.pth")["iteration"]
    assert 0 < interrupted_at < straight.iteration
    resumed_cfg = tiny_config(max_iters=max_iters, resume="auto")
    resumed = train(resumed_cfg, tiny_job(resumed_cfg, tmp_path / "resumed"), CPU)

    assert resumed.iteration == straight.iteration == (max_iters or 12)
    for name in ("last.pth", "best.pth"):
        a, b = load_checkpoint(tmp_path / "straight" / name), load_checkpoint(tmp_path / "resumed" / name)
        assert _states_equal(a["model"], b["model"]), name
        assert a["best"] == b["best"] and a["iteration"] == b["iteration"]
    assert resumed.last_metrics == straight.last_metrics


def test_auto_resume_without_checkpoint_starts_fresh_and_finished_run_is_a_no_op(tmp_path):
    cfg = tiny_config(resume="auto", epochs=1)
    first = train(cfg, tiny_job(cfg, tmp_path / "run"), CPU)
    again = train(cfg, tiny_job(cfg, tmp_path / "run"), CPU)
    assert first.iteration == again.iteration == 4
    assert "starting fresh" in (tmp_path / "run" / "train_meta.log").read_text()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config()
    with pytest.raises(TrainingDiverged, match=r"loss became nan at iteration 3 .*last\.pth\) is intact"):
        train(cfg, tiny_job(cfg, tmp_path / "run", nan_at=3), CPU)
    state = load_checkpoint(tmp_path / "run" / "last.pth")
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_poly_learning_rate_per_iteration_and_run_outputs(tmp_path):
    cfg = tiny_config(epochs=2, power=0.9)
    job = tiny_job(cfg, tmp_path / "run")
    train(cfg, job, CPU)
    state = load_checkpoint(tmp_path / "run" / "last.pth")
    assert state["scheduler"]["last_epoch"] == 8
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert set(state) >= {"model", "optimizer", "scheduler", "epoch", "iteration", "rng", "config", "data_order"}
    assert state["epoch"] == 2 and state["config"]["base_lr"] == 0.1
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved == dict(cfg)
    log = (tmp_path / "run" / "train_meta.log").read_text()
    lrs = [float(line.split(" lr ")[1].split()[0]) for line in log.splitlines() if line.split(" ", 2)[2].startswith("iter ")]
    expected = [0.1 * (1 - i / 8) ** 0.9 for i in range(8)]
    assert lrs == pytest.approx(expected, rel=1e-3)  # the log prints 4 significant digits
    assert list((tmp_path / "run" / "tb").iterdir())


def test_best_pth_keeps_what_inference_needs_and_only_last_pth_the_training_state(tmp_path):
    cfg = tiny_config(epochs=1)
    job = tiny_job(cfg, tmp_path / "run")
    job.record = {"pretrained_backbone_source": "random", "class_vectors": {"rows": 21, "dim": 50, "sha256": "0" * 64}}
    job.notices = ["WARNING: a notice for the log"]
    train(cfg, job, CPU)
    best, last = load_checkpoint(tmp_path / "run" / "best.pth"), load_checkpoint(tmp_path / "run" / "last.pth")
    assert set(best) == set(BEST_KEYS) and not set(best) & set(TRAINING_STATE_KEYS)
    assert set(last) == set(BEST_KEYS) | set(TRAINING_STATE_KEYS) | {"validated"}
    assert best["pretrained_backbone_source"] == last["pretrained_backbone_source"] == "random"
    assert best["finished"] and best["config"] == dict(cfg) and best["run_id"] == last["run_id"]
    assert (tmp_path / "run" / "train_meta.log").read_text().count("WARNING: a notice for the log") == 2  # start, end

    again = tiny_config(epochs=2, resume=str(tmp_path / "run" / "best.pth"))
    with pytest.raises(UserError, match=r"best\.pth holds no training state to resume from .* resume from the last\.pth"):
        train(again, tiny_job(again, tmp_path / "other"), CPU)


def test_resume_with_another_batch_size_is_refused(tmp_path):
    cfg = tiny_config()
    with pytest.raises(Crash):
        train(cfg, tiny_job(cfg, tmp_path / "run", crash_at=4), CPU)
    before = {name: (tmp_path / "run" / name).read_bytes() for name in ("last.pth", "config.yaml")}
    other = tiny_config(resume="auto", batch_size=4)
    with pytest.raises(UserError, match=r"last\.pth is a run trained with batch_size 2 \(now 4\), which it cannot "
                                        r"continue under"):
        train(other, tiny_job(other, tmp_path / "run"), CPU)
    assert {name: (tmp_path / "run" / name).read_bytes() for name in before} == before  # decided before writing


def test_batch_larger_than_data_is_a_user_error(tmp_path):
    cfg = tiny_config(batch_size=16)
    with pytest.raises(Exception, match="cannot fill one batch of 16"):
        train(cfg, tiny_job(cfg, tmp_path / "run"), CPU)


@pytest.mark.parametrize("amp, device", [
    ("bf16", "cpu"),
    ("fp16", "cpu"),
    pytest.param("fp16", "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs CUDA")),
])
def test_amp_modes_train_to_finite_weights(tmp_path, amp, device):
    cfg = tiny_config(amp=amp, epochs=1, device=device)
    result = train(cfg, tiny_job(cfg, tmp_path / amp), DistContext(0, 1, torch.device(device)))
    state = load_checkpoint(tmp_path / amp / "last.pth")
    assert result.iteration == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert math.isfinite(result.best["miou"])


def _autocast_supported_on_cpu(amp: str) -> bool:
    """Whether ``amp`` runs a convolution in its low precision on this CPU."""
    try:
        with autocast(torch.device("cpu"), amp):
            out = torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1))
    except (UserError, RuntimeError):
        return False
    return out.dtype == AMP_DTYPES[amp]


@pytest.mark.parametrize("amp, dtype", [("off", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_training_forward_runs_in_the_amp_precision(tmp_path, amp, dtype):
    """A forward hook on the first convolution sees the dtype of its output during the training steps."""
    if amp != "off" and not _autocast_supported_on_cpu(amp):
        pytest.skip(f"amp {amp} is not available on this CPU")
    cfg = tiny_config(amp=amp, epochs=1)
    job = tiny_job(cfg, tmp_path / amp)
    seen: list[tuple[bool, torch.dtype]] = []
    job.model.body[0].register_forward_hook(lambda module, args, out: seen.append((module.training, out.dtype)))
    train(cfg, job, CPU)
    in_training = [d for training, d in seen if training]
    assert len(in_training) == 4 and set(in_training) == {dtype}


def test_one_loader_and_its_workers_serve_every_epoch(tmp_path, monkeypatch):
    """The training loader is made once per run with persistent workers ((epoch, index) keys reach the workers), and
    trains exactly as the main process alone does."""
    import util.engine.loop as loop

    made = []

    class Counted(loop.DataLoader):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(loop, "DataLoader", Counted)
    cfg = tiny_config(epochs=3, workers=2)
    train(cfg, tiny_job(cfg, tmp_path / "workers"), CPU)
    assert len(made) == 1 and made[0]["persistent_workers"] is True and made[0]["num_workers"] == 2
    alone = tiny_config(epochs=3, workers=0)
    train(alone, tiny_job(alone, tmp_path / "alone"), CPU)
    a, b = load_checkpoint(tmp_path / "workers" / "last.pth"), load_checkpoint(tmp_path / "alone" / "last.pth")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
