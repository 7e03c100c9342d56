"""The optimisation recipe of both stages as the references train (tables written from /work/shared/reference and
BAM's base-learner configs), and a recorder of what a real run of an entry point (train_base.py, train.py) gives the
optimiser, the scheduler and the losses at every step, which parameters get gradients, the batches every epoch sees
and what every validation reports."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Sequence

import pytest
import torch
from torch import nn

from tests.support.engine import Crash
from util.common.config import Config
from util.engine.loop import TrainJob

# BAM's base-learner configs, transcribed (chunbolang/BAM config/pascal/pascal_split0_{resnet50,vgg}_base.yaml and
# config/coco/coco_split0_{resnet50,vgg}_base.yaml; "gpus" from its train_base.sh, --nproc_per_node=4)
BAM_BASE = {
    "pascal": {"train_h": 417, "val_size": 417, "scale_min": 0.5, "scale_max": 2.0, "rotate_min": -10, "rotate_max": 10,
               "batch_size": 3, "gpus": 4, "base_lr": 2.5e-4, "epochs": 100, "stop_interval": 75, "index_split": 0,
               "power": 0.9, "momentum": 0.9, "weight_decay": 0.0001},
    "coco": {"train_h": 417, "val_size": 417, "scale_min": 0.5, "scale_max": 2.0, "rotate_min": -10, "rotate_max": 10,
             "batch_size": 3, "gpus": 4, "base_lr": 2.5e-4, "epochs": 20, "stop_interval": 75, "index_split": -1,
             "power": 0.9, "momentum": 0.9, "weight_decay": 0.0001},
}


def bam_group_lrs(base_lr: float, index_split: int) -> list[float]:
    """BAM's poly_learning_rate group rule at iteration 0: groups (encoder, ppm, cls); index <= index_split keeps
    the base rate, the others get 10x."""
    return [base_lr if index <= index_split else base_lr * 10 for index in range(3)]


@dataclass(frozen=True)
class Recipe:
    """How one stage trains on one dataset: SGD (no dampening, no Nesterov) on every trained parameter, the poly
    schedule stepped per iteration over ``epochs`` x iterations per epoch, the global batch, the augmentation
    (scale range, rotation range in degrees, square crop), the losses' weights."""

    head_lr: float                # every trained parameter outside the backbone
    backbone_lr: float | None     # None: the backbone is frozen (no gradient, in no parameter group)
    batch_size: int
    epochs: int
    momentum: float
    weight_decay: float
    power: float
    crop: int
    scale: tuple[float, float]
    rotate: tuple[float, float]
    aux_weight: float | None = None      # stage 2: loss = main + aux_weight x aux + triplet
    triplet_margin: float | None = None
    stop_patience: int = 0               # stage 1: epochs without a better validation before the run stops


def bam_base_recipe(dataset: str) -> Recipe:
    """Stage 1 (fss-protocol.md, "Stage 1"; BAM's base learner): PASCAL backbone 2.5e-4 and head 10x; COCO every
    group at 10 x 2.5e-4."""
    bam = BAM_BASE[dataset]
    encoder, ppm, cls = bam_group_lrs(bam["base_lr"], bam["index_split"])
    assert ppm == cls
    return Recipe(head_lr=ppm, backbone_lr=encoder, batch_size=bam["batch_size"] * bam["gpus"], epochs=bam["epochs"],
                  momentum=bam["momentum"], weight_decay=bam["weight_decay"], power=bam["power"], crop=bam["train_h"],
                  scale=(bam["scale_min"], bam["scale_max"]), rotate=(bam["rotate_min"], bam["rotate_max"]),
                  stop_patience=bam["stop_interval"])


# Stage 2 (mianet-reference-behaviour.md, "Training"): SGD momentum 0.9, wd 1e-4, poly 0.9 per iteration, every
# group at 10 x the configured 0.005, loss = CE + 1.0 x aux + triplet (margin 0.5), rotate +-10; PASCAL 473 crops,
# scale 0.9-1.1, batch 4, 200 epochs; COCO 641 crops, scale 0.8-1.25, 50 epochs. The reference ships no COCO
# config: its batch 8 is the BAM family's COCO setting, which config/coco/defaults.yaml states as this project's choice.
MIANET = {
    "pascal": Recipe(head_lr=0.005 * 10, backbone_lr=None, batch_size=4, epochs=200, momentum=0.9, weight_decay=1e-4,
                     power=0.9, crop=473, scale=(0.9, 1.1), rotate=(-10, 10), aux_weight=1.0, triplet_margin=0.5),
    "coco": Recipe(head_lr=0.005 * 10, backbone_lr=None, batch_size=8, epochs=50, momentum=0.9, weight_decay=1e-4,
                   power=0.9, crop=641, scale=(0.8, 1.25), rotate=(-10, 10), aux_weight=1.0, triplet_margin=0.5),
}


def poly_lr(base_lr: float, iteration: int, total: int, power: float) -> float:
    """The poly rate of 0-based ``iteration`` of a run of ``total`` iterations."""
    return base_lr * (1 - iteration / total) ** power


@dataclass
class Step:
    """One optimiser step: each parameter group's hyper-parameters and parameter names, and, for every parameter of
    the model, whether it carries a non-zero gradient."""

    groups: list[dict[str, Any]]
    grads: dict[str, bool]


@dataclass
class Validation:
    """One validation: after how many of the recording's optimiser steps, what the job reported, the oracle's number
    for the same weights, and (stage 2) the episodes the job evaluated."""

    iteration: int
    metrics: dict[str, float]
    oracle: float
    episodes: list | None


@dataclass
class Recording:
    """What one run of an entry point did (see :func:`record_run`)."""

    cfg: Config | None = None
    parameters: list[str] = field(default_factory=list)             # the model's parameter names
    settings: dict[str, Any] = field(default_factory=dict)          # the job's and the model's recipe settings
    steps: list[Step] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)        # each step's network input batch
    modes: list[dict[str, bool]] = field(default_factory=list)      # each step: module name -> training flag
    losses: list[dict[str, float]] = field(default_factory=list)    # each step: the losses the job's step returned
    validations: list[Validation] = field(default_factory=list)


def _step_record(optimizer: torch.optim.Optimizer, model: nn.Module) -> Step:
    names = {id(p): name for name, p in model.named_parameters()}
    groups = [{"names": [names.get(id(p), "not a parameter of the model") for p in group["params"]],
               **{key: group[key] for key in ("lr", "initial_lr", "momentum", "weight_decay", "dampening", "nesterov")}}
              for group in optimizer.param_groups]
    grads = {name: p.grad is not None and bool(p.grad.ne(0).any()) for name, p in model.named_parameters()}
    return Step(groups, grads)


def record_run(entry: ModuleType, argv: Sequence[str], oracle: Callable[[nn.Module, Config], float], *,
               crash_at: int = 0, minimise: Sequence[str] = ()) -> Recording:
    """Run ``entry.main(argv)`` (train_base or train) and record it: every optimiser step (a subclass of
    ``torch.optim.SGD`` stands in for it), every step's batch, module modes and losses, every validation with
    ``oracle(model, cfg)`` computed on the same weights. ``crash_at``: the step call (1-based) that raises
    :class:`Crash` instead, as a killed process would (the run is then resumed by calling again with ``resume
    auto``). ``minimise``: per step call, the loss the optimiser minimises instead of ``loss`` (e.g. ``loss_main``),
    to follow one loss's gradients."""
    recording = Recording()
    build_job = entry.build_job
    evaluated: list[list] = []  # stage 2: the episodes of the evaluation running

    models: list[nn.Module] = []  # the model of the run, while it runs

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            recording.steps.append(_step_record(self, models[0]))
            return super().step(closure)

    def recording_build_job(cfg: Config, ctx) -> TrainJob:
        job = build_job(cfg, ctx)
        models.append(job.model)
        recording.cfg, recording.parameters = cfg, [name for name, _ in job.model.named_parameters()]
        recording.settings = {"stop_patience": job.stop_patience, **{key: getattr(job.model, key) for key in
                                                                      ("aux_weight", "triplet_margin") if hasattr(job.model, key)}}
        step, validate = job.step, job.validate
        calls = []

        def recording_step(net, batch):
            calls.append(1)
            if len(calls) == crash_at:
                raise Crash(f"killed at step call {crash_at}")
            recording.inputs.append(batch["image" if "image" in batch else "query"].detach().clone())
            recording.modes.append({name: module.training for name, module in net.named_modules()})
            outputs = step(net, batch)
            recording.losses.append({k: float(v) for k, v in outputs.items() if k.startswith("loss")})
            if len(calls) <= len(minimise):
                outputs = {**outputs, "loss": outputs[minimise[len(calls) - 1]]}
            return outputs

        def recording_validate(net) -> dict[str, float]:
            evaluated.clear()
            metrics = validate(net)
            recording.validations.append(Validation(len(recording.steps), metrics, oracle(net, cfg),
                                                    list(evaluated[0]) if evaluated else None))
            return metrics

        job.step, job.validate = recording_step, recording_validate
        return job

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim, "SGD", RecordingSGD)
        patch.setattr(entry, "build_job", recording_build_job)
        if hasattr(entry, "evaluate_episodes"):
            evaluate_episodes = entry.evaluate_episodes

            def recording_evaluate(net, episodes, *args, **kwargs):
                evaluated.append([episodes.episode(i) for i in range(len(episodes))])
                return evaluate_episodes(net, episodes, *args, **kwargs)

            patch.setattr(entry, "evaluate_episodes", recording_evaluate)
        try:
            entry.main(list(argv))
        except Crash:
            if not crash_at:
                raise
        else:
            assert not crash_at, f"the run ended before step call {crash_at}"
    return recording
