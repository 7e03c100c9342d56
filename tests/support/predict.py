"""A stand-in for predict.py's network: foreground where the normalised query is bright, with every call recorded,
so the tests of predict.py check its geometry and inputs without a trained MIANet."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import predict
from util.common.config import load_config
from util.runs.checkpoint import save_atomic

SYNTH_CONFIG = "config/synth/efficientnet_lite0/split0.yaml"


class RecordingNet(nn.Module):
    """Foreground where the (normalised) query is bright; ``calls`` holds the network inputs of every call."""

    calls: list = []

    @classmethod
    def loaded(cls, cfg, weight, device):
        """Stands for util.runs.weights.load_stage2_model: the model and the checkpoint's other entries."""
        return cls().eval(), {}

    def predict(self, query, supports, support_masks, class_ids, chunk=None):
        """MIANet.predict's interface: one episode, supports [K,3,H,W] and masks [K,H,W]."""
        return self(query, supports[None], support_masks[None], class_ids)

    def forward(self, query, supports, support_masks, class_ids):
        RecordingNet.calls.append((query, supports, support_masks, class_ids))
        score = query.mean(1, keepdim=True)
        return torch.cat([-score, score], 1)


def install_recording_net(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Make predict.py load :class:`RecordingNet` (calls cleared); the path of a checkpoint holding the synth
    config, for ``--weight``."""
    RecordingNet.calls = []
    monkeypatch.setattr(predict, "load_stage2_model", RecordingNet.loaded)
    weight = tmp_path / "standin.pth"
    save_atomic({"model": {}, "config": dict(load_config(SYNTH_CONFIG, {}))}, weight)
    return weight
