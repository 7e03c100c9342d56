"""Tiny stand-ins for the engine tests: a segmentation set whose items are pure functions of (seed, index), a small net."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from util.runs.checkpoint import run_identity
from util.common.config import Config, load_config
from util.engine.loop import Schedule, TrainJob
from util.common.runtime import epoch_seed


class TinySegSet(Dataset):
    def __init__(self, seed: int, length: int = 8, size: int = 8):
        self.seed, self.length, self.size = seed, length, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        gen = torch.Generator().manual_seed(self.seed * 1000 + index)
        image = torch.randn(3, self.size, self.size, generator=gen)
        label = (image[0] > 0).long()
        label[0, 0] = 255
        return {"image": image, "label": label}


class TinySegNet(nn.Module):
    def __init__(self, dropout: float = 0.2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout), nn.Conv2d(8, 2, 1))

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None):
        logits = self.body(image)
        if label is None:
            return logits
        return {"logits": logits, "loss": F.cross_entropy(logits, label, ignore_index=255)}


class Crash(Exception):
    """Stands for a killed process."""


def tiny_config(**overrides) -> Config:
    values = {"epochs": 3, "batch_size": 2, "base_lr": 0.1, "max_iters": 0, "checkpoint_interval": 2,
              "print_freq": 1, "workers": 0, "device": "cpu", "val_interval": 1, "seed": 7}
    values.update(overrides)
    return load_config(None, values)


def tiny_job(cfg: Config, run_dir: Path, *, crash_at: int = 0, nan_at: int = 0, signal_at: int = 0,
             signum: int = signal.SIGINT, dropout: float = 0.2, length: int = 8) -> TrainJob:
    """A TrainJob on the stand-ins; ``crash_at``/``nan_at``/``signal_at``: the step call (1-based) that raises /
    returns NaN / sends ``signum`` to this process (a real signal, as Ctrl-C or ``kill`` would)."""
    torch.manual_seed(cfg.seed)
    model = TinySegNet(dropout)
    calls = {"n": 0}
    probe = TinySegSet(seed=999, length=4)
    probe_batch = {k: torch.stack([probe[i][k] for i in range(4)]) for k in ("image", "label")}

    def step(net, batch):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Crash(f"killed at step call {crash_at}")
        if calls["n"] == signal_at:
            os.kill(os.getpid(), signum)
        out = net(batch["image"], batch["label"])
        if calls["n"] == nan_at:
            out["loss"] = out["loss"] * float("nan")
        return out

    def validate(net) -> dict[str, float]:
        net.eval()
        with torch.no_grad():
            loss = net(probe_batch["image"], probe_batch["label"])["loss"]
        return {"miou": float(-loss)}

    return TrainJob(
        stage="meta", model=model, parameters=list(model.parameters()),
        make_train_set=lambda epoch: TinySegSet(epoch_seed(cfg.seed, epoch), length=length),
        step=step, run_dir=run_dir, schedule=Schedule(cfg.epochs, cfg.batch_size, cfg.base_lr, cfg.max_iters),
        identity=run_identity(cfg, "meta"), validate=validate,
    )


def make_tiny_synth(root: Path, num_train: int = 60, num_val: int = 40) -> tuple[Path, Path]:
    """A small synth dataset and its lists under ``root``; returns (data_root, list_root)."""
    from tools.make_lists import make_lists
    from tools.make_synth import make_synth

    data_root, list_root = root / "synth", root / "lists"
    make_synth(data_root, num_train=num_train, num_val=num_val, seed=0, workers=1)
    make_lists("synth", data_root, list_root, workers=1)
    return data_root, list_root


def wait_for_log(path: Path, text: str, process: subprocess.Popen, timeout: float = 600.0) -> None:
    """Wait until ``path`` holds ``text``; fail if ``process`` ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not (path.is_file() and text in path.read_text()):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"no '{text}' in {path} after {timeout} s"
        time.sleep(0.05)
