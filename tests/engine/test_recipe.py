"""The optimisation recipe as actually run, per stage and dataset (PASCAL and COCO configs, ResNet-50 and VGG16-BN):
the real entry points (train_base.py, train.py) with the shipped configs, on tiny data in the datasets' real layouts,
checked against the references' recipe (tests/support/recipe.py): each parameter's SGD group (lr, momentum, weight
decay), the poly rate at every iteration run (capped by max_iters, uncapped, resumed), the batch, the training mode,
the augmentation, the loss as the weighted sum of its parts, which parameters get gradients (through which loss), new
data every epoch, and the number best.pth is chosen by. Only data, sizes and run bookkeeping are overridden; every
recipe key is the config's."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import train
import train_base
from tests.support.data import recipe_pools
from tests.support.engine import tiny_config, tiny_job
from tests.support.recipe import MIANET, Recipe, Recording, Validation, bam_base_recipe, poly_lr, record_run
from util.runs.weights import SOURCE_KEY
from util.runs.checkpoint import load_checkpoint, run_identity, save_atomic
from util.data.registry import base_classes, novel_classes
from util.common.config import Config, load_config
from util.dataset import BaseClassDataset, EpisodeDataset
from util.common.distributed import DistContext
from util.engine.loop import train as train_loop
from tools.make_lists import make_lists
from util.engine.metrics import predict_on_label
from util.runs.weights import build_pspnet

# the tiny validation pool holds two novel classes: episodes leave the others out (and say so)
pytestmark = pytest.mark.filterwarnings("ignore:.*classes have fewer than shot \\+ 1:UserWarning")

REPO = Path(__file__).resolve().parents[2]
ITERS_PER_EPOCH = 2   # stage 1: 24 training images / batch 12; stage 2: train_episodes = 2 x batch
CAP = 3               # max_iters of the capped run: epoch 1 is cut after one of its two iterations
OTHER_AUX_WEIGHT = 0.4  # the loss-path run's aux_weight: a weight other than 1 shows whether it is applied


@dataclass(frozen=True)
class Case:
    """One stage of one shipped config (fold 0)."""

    stage: str      # base (stage 1, train_base.py) | meta (stage 2, train.py)
    dataset: str
    backbone: str

    @property
    def id(self) -> str:
        return f"{self.stage}-{self.dataset}-{self.backbone}"

    @property
    def config(self) -> Path:
        return REPO / "config" / self.dataset / self.backbone / "split0.yaml"

    @property
    def recipe(self) -> Recipe:
        return bam_base_recipe(self.dataset) if self.stage == "base" else MIANET[self.dataset]

    @property
    def entry(self):
        return train_base if self.stage == "base" else train


CASES = [Case(stage, dataset, backbone) for stage in ("base", "meta") for dataset in ("pascal", "coco")
         for backbone in ("resnet50", "vgg16_bn")]
META_CASES = [case for case in CASES if case.stage == "meta"]


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@torch.no_grad()
def bam_base_miou(net, cfg: Config) -> float:
    """BAM's stage-1 validation number, transcribed (its train_base.py ``validate``): per class, intersection / (union
    + 1e-10) of the counts summed over the validation images; the mean over the base classes 1..n-1, background
    excluded."""
    images = BaseClassDataset(cfg, "val")
    n = len(base_classes(cfg.dataset, cfg.split, cfg.coco_split_style)) + 1
    inter, union, labelled = np.zeros(n), np.zeros(n), np.zeros(n)
    for index in range(len(images)):
        item = images[index]
        label = item["label"].numpy()
        pred = predict_on_label(net(item["image"][None])[0], label.shape).numpy()
        valid = label != images.ignore_index
        for c in range(n):
            inter[c] += np.sum((pred == c) & (label == c) & valid)
            union[c] += np.sum(((pred == c) | (label == c)) & valid)
            labelled[c] += np.sum((label == c) & valid)
    assert labelled[1:].all(), "every base class must occur in the validation labels (as in PASCAL's and COCO's)"
    return float(np.mean(inter[1:] / (union[1:] + 1e-10)))


def validation_episodes(cfg: Config) -> EpisodeDataset:
    return EpisodeDataset(cfg, "val", episodes=cfg.val_episodes, seed=cfg.seed)


@torch.no_grad()
def novel_class_miou(net, cfg: Config) -> float:
    """The mIoU of the validation episodes (fss-protocol.md, "Scores"): per novel class, the foreground intersections
    and unions summed over its episodes, scored against the original-size label; the mean over the classes."""
    assert cfg.ori_resize
    episodes = validation_episodes(cfg)
    inter, union = defaultdict(int), defaultdict(int)
    for index in range(len(episodes)):
        item = episodes[index]
        label = item["query_label_ori"]
        logits = net.predict(item["query"][None], item["supports"], item["support_masks"], item["class_id"][None])
        pred = predict_on_label(logits[0], tuple(label.shape), ori_size=tuple(label.shape))
        valid = label != cfg.ignore_label
        class_id = int(item["class_id"])
        inter[class_id] += int(((pred == 1) & (label == 1) & valid).sum())
        union[class_id] += int((((pred == 1) | (label == 1)) & valid).sum())
    return float(np.mean([inter[c] / union[c] for c in union]))


class Runs:
    """The tiny data trees (one per dataset), the stage-1 checkpoints stage 2 starts from, and the argument lists."""

    def __init__(self, root: Path):
        self.root, self.trees, self.base_learners, self.done = root, {}, {}, {}

    def data(self, dataset: str) -> tuple[Path, Path]:
        if dataset not in self.trees:
            data_root, list_root = self.root / dataset / "data", self.root / dataset / "lists"
            recipe_pools(data_root, dataset)
            make_lists(dataset, data_root, list_root, workers=1)
            self.trees[dataset] = data_root, list_root
        return self.trees[dataset]

    def overrides(self, case: Case, run_dir: Path, **extra) -> dict:
        """Data, sizes and run bookkeeping; every recipe key stays the config's."""
        data_root, list_root = self.data(case.dataset)
        values = {"device": "cpu", "workers": 0, "pretrained_backbone": False, "print_freq": 1,
                  "checkpoint_interval": 1, "data_root": data_root, "list_root": list_root}
        if case.stage == "base":
            values |= {"base_train_size": 33, "base_val_size": 33, "base_exp_dir": run_dir}
        else:
            size = 97 if case.backbone == "vgg16_bn" else 65  # the triplet loss needs a 2 x 2 local-feature grid
            values |= {"train_size": size, "val_size": size, "val_episodes": 4,
                       "train_episodes": ITERS_PER_EPOCH * case.recipe.batch_size, "exp_dir": run_dir,
                       "base_weight": self.base_learner(case)}
        return values | extra

    def base_learner(self, case: Case) -> Path:
        """A stage-1 checkpoint of ``case``'s config (random weights) for stage 2 to start from."""
        if case.id not in self.base_learners:
            path = self.root / "base_learners" / f"{case.id}.pth"
            data_root, list_root = self.data(case.dataset)
            cfg = load_config(case.config, {"data_root": str(data_root), "list_root": str(list_root),
                                            "pretrained_backbone": False})
            torch.manual_seed(0)
            model, source = build_pspnet(cfg)
            save_atomic({"model": model.state_dict(), "stage": "base", "identity": run_identity(cfg, "base"),
                         SOURCE_KEY: source}, path)
            self.base_learners[case.id] = path
        return self.base_learners[case.id]

    def argv(self, case: Case, run_dir: Path, **extra) -> list[str]:
        values = self.overrides(case, run_dir, **extra)
        return ["--config", str(case.config), *(_text(x) for item in values.items() for x in item)]

    def record(self, case: Case, run_dir: Path, crash_at: int = 0, minimise: tuple[str, ...] = (),
               **extra) -> Recording:
        oracle = bam_base_miou if case.stage == "base" else novel_class_miou
        return record_run(case.entry, self.argv(case, run_dir, **extra), oracle, crash_at=crash_at, minimise=minimise)

    def once(self, kind: str, case: Case, make) -> object:
        key = (kind, case.id)
        if key not in self.done:
            self.done[key] = make(self.root / kind / case.id)
        return self.done[key]

    def capped(self, case: Case) -> Resumed:
        """max_iters 3 (iterations 0, 1 in epoch 0, 2 in epoch 1): killed in iteration 1, resumed to the end."""
        return self.once("capped", case, lambda run_dir: Resumed(
            self.record(case, run_dir, crash_at=2, max_iters=CAP),
            self.record(case, run_dir, max_iters=CAP, resume="auto"), run_dir))

    def uncapped(self, case: Case) -> Resumed:
        """The whole schedule (max_iters 0): killed in iteration 1, resumed and killed again in iteration 2."""
        return self.once("uncapped", case, lambda run_dir: Resumed(
            self.record(case, run_dir, crash_at=2), self.record(case, run_dir, crash_at=2, resume="auto"), run_dir))

    def loss_paths(self, case: Case) -> Recording:
        """Stage 2 with aux_weight 0.4, two iterations: the first minimises loss_main alone, the second loss_triplet."""
        return self.once("loss_paths", case, lambda run_dir: self.record(
            case, run_dir, minimise=("loss_main", "loss_triplet"), max_iters=2, aux_weight=OTHER_AUX_WEIGHT))


@dataclass
class Resumed:
    """A run killed at its second step call and resumed (``resume auto``) to its end or to another kill."""

    first: Recording
    resumed: Recording
    run_dir: Path

    @property
    def steps(self):
        return self.first.steps + self.resumed.steps

    @property
    def inputs(self):
        return self.first.inputs + self.resumed.inputs

    @property
    def losses(self):
        return self.first.losses + self.resumed.losses

    @property
    def validations(self) -> list[Validation]:
        """Every validation, ``iteration`` counted from the start of the run."""
        done = len(self.first.steps)
        return self.first.validations + [replace(v, iteration=v.iteration + done) for v in self.resumed.validations]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """The runs of this module, each made once when a test first needs it."""
    return Runs(tmp_path_factory.mktemp("recipe"))


FAST_CASE = ("pascal", "vgg16_bn")
"""The fast suite checks each stage with PASCAL's VGG16-BN config (the cheapest); the other configs, in minutes of
ResNet-50 and COCO runs, are ``slow``."""


def _params(cases: list[Case]) -> list:
    return [pytest.param(case, id=case.id, marks=() if (case.dataset, case.backbone) == FAST_CASE else pytest.mark.slow)
            for case in cases]


every_case = pytest.mark.parametrize("case", _params(CASES))
stage2_cases = pytest.mark.parametrize("case", _params(META_CASES))


def trained_lr(case: Case, name: str) -> float | None:
    """The rate the recipe trains parameter ``name`` at (None: not trained)."""
    if name.startswith("backbone."):
        return case.recipe.backbone_lr
    return case.recipe.head_lr


@every_case
def test_each_parameter_is_in_the_sgd_group_of_its_rate_momentum_and_weight_decay(runs, case):
    run, recipe = runs.capped(case), case.recipe
    group_of = {}
    for group in run.steps[0].groups:
        assert (group["momentum"], group["weight_decay"], group["dampening"], group["nesterov"]) == (
            recipe.momentum, recipe.weight_decay, 0, False)
        for name in group["names"]:
            assert name not in group_of, f"{name} is in two parameter groups"
            group_of[name] = group["initial_lr"]
    expected = {name: trained_lr(case, name) for name in run.first.parameters}
    assert group_of == pytest.approx({name: lr for name, lr in expected.items() if lr is not None}, rel=1e-12)
    assert run.first.settings["stop_patience"] == recipe.stop_patience


@every_case
def test_every_step_takes_one_global_batch_in_training_mode(runs, case):
    run = runs.capped(case)
    assert [len(batch) for batch in run.inputs] == [case.recipe.batch_size] * CAP
    frozen_bn = case.stage == "meta" and run.first.cfg.freeze_backbone_bn
    for modes in run.first.modes + run.resumed.modes:  # the resumed run's steps follow a validation (eval mode)
        for name, training in modes.items():
            in_backbone = name == "backbone" or name.startswith("backbone.")
            assert training == (not (frozen_bn and in_backbone)), name


@every_case
def test_poly_rate_of_a_capped_run_resumed_is_the_uninterrupted_one(runs, case):
    run = runs.capped(case)
    assert (len(run.first.steps), len(run.resumed.steps)) == (1, CAP - 1)
    for iteration, step in enumerate(run.steps):
        for group in step.groups:
            base_lr = trained_lr(case, group["names"][0])
            assert group["lr"] == pytest.approx(poly_lr(base_lr, iteration, CAP, case.recipe.power), rel=1e-9), iteration
    last = load_checkpoint(run.run_dir / "last.pth")
    assert (last["iteration"], last["finished"]) == (CAP, True)


@every_case
def test_poly_rate_spans_every_epoch_of_an_uncapped_run_resumed(runs, case):
    run = runs.uncapped(case)
    total = case.recipe.epochs * ITERS_PER_EPOCH
    assert (len(run.first.steps), len(run.resumed.steps)) == (1, 1)
    for iteration, step in enumerate(run.steps):
        for group in step.groups:
            base_lr = trained_lr(case, group["names"][0])
            assert group["lr"] == pytest.approx(poly_lr(base_lr, iteration, total, case.recipe.power), rel=1e-9)


@every_case
def test_every_epoch_draws_new_data(runs, case):
    """Epoch 0 sees its 2 x batch samples once each; epoch 1 (a new dataset seed) none of them again."""
    run = runs.capped(case)
    epoch0 = [sample for batch in run.inputs[:ITERS_PER_EPOCH] for sample in batch]
    epoch1 = [sample for batch in run.inputs[ITERS_PER_EPOCH:] for sample in batch]
    assert len(epoch0) == ITERS_PER_EPOCH * case.recipe.batch_size and epoch1
    for i, sample in enumerate(epoch0):
        assert not any(torch.equal(sample, other) for other in epoch0[i + 1:])
    for sample in epoch1:
        assert not any(torch.equal(sample, other) for other in epoch0)


@every_case
def test_gradients_reach_every_trained_parameter_and_never_the_backbone(runs, case):
    run = runs.capped(case)
    for step in run.steps:
        assert step.grads == {name: trained_lr(case, name) is not None for name in run.first.parameters}
    if case.stage == "meta":  # the frozen backbone: weights and BatchNorm statistics as the base learner left them
        start = load_checkpoint(runs.base_learner(case))["model"]
        end = load_checkpoint(run.run_dir / "last.pth")["model"]
        backbone = [key for key in end if key.startswith("backbone.")]
        assert backbone and all(torch.equal(end[key], start[key]) for key in backbone)


@stage2_cases
def test_loss_is_the_weighted_sum_of_its_parts(runs, case):
    run, recipe = runs.capped(case), case.recipe
    assert (run.first.settings["aux_weight"], run.first.settings["triplet_margin"]) == (
        recipe.aux_weight, recipe.triplet_margin)
    for losses in run.losses:
        assert losses["loss"] == pytest.approx(
            losses["loss_main"] + recipe.aux_weight * losses["loss_aux"] + losses["loss_triplet"], rel=1e-6)
    assert any(losses["loss_triplet"] > 0 for losses in run.losses), "the tiny data must exercise the triplet loss"
    for losses in runs.loss_paths(case).losses:
        assert losses["loss"] == pytest.approx(
            losses["loss_main"] + OTHER_AUX_WEIGHT * losses["loss_aux"] + losses["loss_triplet"], rel=1e-6)


@stage2_cases
def test_gim_learns_through_the_main_loss_and_through_the_triplet_loss(runs, case):
    """The general prototype feeds the fusion (main loss) and anchors the triplet loss: GIG's parameters get gradients
    from each alone; LFG's only from the triplet loss, the fusion's only from the segmentation losses."""
    run = runs.loss_paths(case)
    main_only, triplet_only = run.steps
    assert run.losses[1]["loss_triplet"] > 0

    def reached(step, prefix: str) -> set[bool]:
        return {grad for name, grad in step.grads.items() if name.startswith(prefix)}

    assert reached(main_only, "gig.") == reached(main_only, "down_features.") == {True}
    assert reached(main_only, "lfg.") == reached(main_only, "backbone.") == {False}
    assert True in reached(main_only, "ifm.")
    assert reached(triplet_only, "gig.") == reached(triplet_only, "lfg.") == reached(triplet_only, "down_features.") \
        == {True}
    assert reached(triplet_only, "ifm.") == reached(triplet_only, "backbone.") == {False}


@pytest.mark.parametrize("case", [case for case in CASES if case.backbone == "resnet50"], ids=lambda case: case.id)
def test_training_augmentation_is_the_references(runs, case):
    """The data the job trains on is scaled, rotated and cropped as the reference does, at the config's sizes."""
    values = runs.overrides(case, runs.root / "augmentation" / case.id)
    for key in ("base_train_size", "base_val_size", "train_size", "val_size"):
        values.pop(key, None)
    cfg = load_config(case.config, {key: str(value) if isinstance(value, Path) else value for key, value in values.items()})
    train_set = case.entry.build_job(cfg, DistContext(0, 1, torch.device("cpu"))).make_train_set(0)
    steps = {type(step).__name__: step for step in train_set.transform.steps}
    recipe = case.recipe
    assert (steps["RandomScale"].low, steps["RandomScale"].high) == recipe.scale
    assert (steps["RandomRotate"].low, steps["RandomRotate"].high) == recipe.rotate
    assert steps["RandomCrop"].size == recipe.crop
    assert train_set[0]["image" if case.stage == "base" else "query"].shape == (3, recipe.crop, recipe.crop)


@every_case
def test_best_pth_is_chosen_by_the_references_validation_number(runs, case):
    """Stage 1: BAM's base-class mIoU without background; stage 2: the novel-class mIoU of the validation episodes."""
    run = runs.capped(case)
    validations = run.validations
    assert [v.iteration for v in validations] == [ITERS_PER_EPOCH, CAP]
    for validation in validations:
        assert validation.metrics["miou"] == pytest.approx(validation.oracle, abs=1e-12)
        if case.stage == "meta":
            cfg = run.first.cfg
            assert validation.episodes == [validation_episodes(cfg).episode(i) for i in range(cfg.val_episodes)]
            assert {e.class_id for e in validation.episodes} <= set(novel_classes(case.dataset, 0, "fwb"))
    best = max(validations, key=lambda v: v.metrics["miou"])
    record = load_checkpoint(run.run_dir / "best.pth")["best"]
    assert (record["miou"], record["iteration"]) == (best.metrics["miou"], best.iteration)


def test_best_pth_holds_the_best_validation_not_the_last(tmp_path):
    cfg = tiny_config(epochs=3)  # 4 iterations per epoch
    job = tiny_job(cfg, tmp_path / "run")
    scripted = iter([0.2, 0.5, 0.3])
    job.validate = lambda net: {"miou": next(scripted)}
    result = train_loop(cfg, job, DistContext(0, 1, torch.device("cpu")))
    best = load_checkpoint(tmp_path / "run" / "best.pth")
    assert result.best["miou"] == best["best"]["miou"] == 0.5
    assert best["best"]["iteration"] == best["iteration"] == 8
