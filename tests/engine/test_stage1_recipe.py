"""Stage 1 as BAM trains its base learner: the shipped configs carry BAM's numbers, the two SGD groups and
the early stop act in a real run of the training loop, and train_base.py wires them from the config (the recipe as
train_base.py runs it with the shipped configs: tests/engine/test_recipe.py)."""
from pathlib import Path

import pytest
import torch

import train_base
from model.backbone import build_backbone
from model.pspnet import PSPNet
from tests.support.engine import Crash, TinySegNet, TinySegSet, make_tiny_synth, tiny_config, tiny_job
from tests.support.recipe import BAM_BASE, bam_group_lrs
from util.runs.checkpoint import load_checkpoint
from util.common.config import load_config
from util.common.distributed import DistContext
from util.engine.loop import train

CPU = DistContext(0, 1, torch.device("cpu"))
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "pascal").rglob("split*.yaml")) +
                         sorted((CONFIG_DIR / "coco").rglob("split*.yaml")),
                         ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_stage1_config_is_bams(path):
    cfg = load_config(path)
    bam = BAM_BASE[cfg.dataset]
    assert (cfg.base_train_size, cfg.base_val_size) == (bam["train_h"], bam["val_size"])
    assert (cfg.base_scale_min, cfg.base_scale_max) == (bam["scale_min"], bam["scale_max"])
    assert (cfg.rotate_min, cfg.rotate_max) == (bam["rotate_min"], bam["rotate_max"])
    assert cfg.base_batch_size == bam["batch_size"] * bam["gpus"]  # per process, run in one process
    encoder, ppm, cls = bam_group_lrs(bam["base_lr"], bam["index_split"])
    assert cfg.base_learner_lr == pytest.approx(encoder)
    assert cfg.base_learner_lr * cfg.base_head_lr_mult == pytest.approx(ppm) == pytest.approx(cls)
    assert (cfg.base_epochs, cfg.base_stop_patience) == (bam["epochs"], bam["stop_interval"])
    assert (cfg.power, cfg.momentum, cfg.weight_decay) == (bam["power"], bam["momentum"], bam["weight_decay"])
    assert cfg.base_images == "all"  # BAM's BaseData reads its whole train / val list


def test_resolved_values_of_pascal_and_coco_split0():
    pascal = load_config(CONFIG_DIR / "pascal" / "resnet50" / "split0.yaml")
    coco = load_config(CONFIG_DIR / "coco" / "resnet50" / "split0.yaml")
    keys = ("base_train_size", "base_val_size", "base_scale_min", "base_scale_max", "base_batch_size", "base_learner_lr",
            "base_head_lr_mult", "base_epochs", "base_stop_patience", "base_images")
    assert [pascal[k] for k in keys] == [417, 417, 0.5, 2.0, 12, 0.00025, 10.0, 100, 75, "all"]
    assert [coco[k] for k in keys] == [417, 417, 0.5, 2.0, 12, 0.0025, 1.0, 20, 75, "all"]


def test_pspnet_parameter_groups_split_backbone_and_head():
    model = PSPNet(build_backbone("resnet50"), num_classes=16, ignore_label=255)
    groups = model.parameter_groups(0.1, 10.0)
    assert [g["lr"] for g in groups] == [0.1, pytest.approx(1.0)]
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0] == {id(p) for p in model.backbone.parameters()}
    assert ids[1] == {id(p) for p in [*model.ppm.parameters(), *model.cls.parameters()]}
    assert len(ids[0]) + len(ids[1]) == len(list(model.parameters()))


def two_group_job(cfg, run_dir, head_lr_mult: float, **kwargs):
    """The engine's tiny job, its net split as a backbone (first conv) and a head (last conv)."""
    job = tiny_job(cfg, run_dir, dropout=0.0, **kwargs)
    body = job.model.body
    job.parameters = [{"params": list(body[0].parameters()), "lr": cfg.base_lr},
                      {"params": list(body[3].parameters()), "lr": cfg.base_lr * head_lr_mult}]
    return job


def test_two_lr_groups_act(tmp_path):
    cfg = tiny_config(max_iters=1, weight_decay=0.0)
    torch.manual_seed(cfg.seed)
    start = TinySegNet(0.0).state_dict()  # what tiny_job builds
    after = {}
    for name, mult in (("one", 1.0), ("ten", 10.0)):
        train(cfg, two_group_job(cfg, tmp_path / name, mult), CPU)
        after[name] = load_checkpoint(tmp_path / name / "last.pth")["model"]
    # the same first batch and gradient: the backbone moves alike, the head 10 times as far
    for key in ("body.0.weight", "body.0.bias"):
        assert not torch.equal(after["one"][key], start[key]) and torch.equal(after["one"][key], after["ten"][key])
    for key in ("body.3.weight", "body.3.bias"):
        step_one, step_ten = after["one"][key] - start[key], after["ten"][key] - start[key]
        assert step_one.abs().max() > 0
        assert torch.allclose(step_ten, 10 * step_one, rtol=1e-4, atol=1e-7)
    assert "lr 0.1 / 1, " in (tmp_path / "ten" / "train_meta.log").read_text()


def test_poly_schedule_scales_both_groups(tmp_path):
    cfg = tiny_config(epochs=2)  # 8 iterations; the crash leaves last.pth of the end of epoch 1 (iteration 4)
    with pytest.raises(Crash):
        train(cfg, two_group_job(cfg, tmp_path / "run", 10.0, crash_at=6), CPU)
    state = load_checkpoint(tmp_path / "run" / "last.pth")
    assert state["iteration"] == 4
    factor = (1 - 4 / 8) ** 0.9
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [pytest.approx(0.1 * factor),
                                                                      pytest.approx(1.0 * factor)]


def bam_epochs_trained(mious: list[float], stop_interval: int, epochs: int) -> int:
    """BAM's train_base.py epoch loop, transcribed: how many epochs run before its early stop."""
    best_miou, keep_epoch, trained = 0.0, 0, 0
    for epoch in range(epochs):
        if keep_epoch == stop_interval:
            break
        keep_epoch += 1
        trained += 1
        miou = mious[epoch]
        if miou > best_miou:
            best_miou, keep_epoch = miou, 0
    return trained


def scripted_job(cfg, run_dir, mious: list[float], patience: int):
    """The tiny job whose validation after epoch e reports ``mious[e - 1]``."""
    job = tiny_job(cfg, run_dir)
    iters_per_epoch = len(TinySegSet(0)) // cfg.batch_size
    steps = []
    step = job.step

    def counted_step(net, batch):
        steps.append(1)
        return step(net, batch)

    def validate(net):
        return {"miou": mious[len(steps) // iters_per_epoch - 1]}

    job.step, job.validate, job.stop_patience = counted_step, validate, patience
    return job


@pytest.mark.parametrize("mious, patience", [
    ([0.5, 0.4, 0.3, 0.2, 0.1, 0.05], 2),      # best after epoch 1: 2 more epochs, then stop
    ([0.1, 0.2, 0.1, 0.3, 0.2, 0.1], 2),       # improvements reset the count
    ([0.5, 0.4, 0.3, 0.2, 0.1, 0.05], 1),
    ([0.5, 0.4, 0.3, 0.2, 0.1, 0.05], 6),      # never reached within the schedule
])
def test_early_stop_matches_bams_loop(tmp_path, mious, patience):
    cfg = tiny_config(epochs=6)
    result = train(cfg, scripted_job(cfg, tmp_path / "run", mious, patience), CPU)
    expected = bam_epochs_trained(mious, patience, 6)
    assert result.iteration == expected * 4  # 4 iterations per epoch
    log = (tmp_path / "run" / "train_meta.log").read_text()
    assert ("early stop before epoch" in log) == (expected < 6)
    # the poly schedule still spans the 6 epochs: the last step's lr is that of iteration expected * 4 of 24
    lr = load_checkpoint(tmp_path / "run" / "last.pth")["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(0.1 * (1 - expected * 4 / 24) ** 0.9, abs=1e-12)


def test_stopped_run_stays_stopped_on_resume(tmp_path):
    mious = [0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    cfg = tiny_config(epochs=6)
    first = train(cfg, scripted_job(cfg, tmp_path / "run", mious, 2), CPU)
    again_cfg = tiny_config(epochs=6, resume="auto")
    again = train(again_cfg, scripted_job(again_cfg, tmp_path / "run", mious, 2), CPU)
    assert first.iteration == again.iteration == 12


def test_train_base_wires_groups_and_patience_from_the_config(tmp_path):
    data_root, list_root = make_tiny_synth(tmp_path, num_train=12, num_val=8)
    cfg = load_config(CONFIG_DIR / "synth" / "efficientnet_lite0" / "split0.yaml", {
        "data_root": str(data_root), "list_root": str(list_root), "pretrained_backbone": False,
        "base_learner_lr": 0.002, "base_head_lr_mult": 10.0, "base_stop_patience": 7, "base_images": "all",
        "base_exp_dir": str(tmp_path / "base")})
    job = train_base.build_job(cfg, CPU)
    assert [group["lr"] for group in job.parameters] == [0.002, pytest.approx(0.02)]
    assert job.stop_patience == 7 and job.schedule.lr == 0.002
    assert len(job.make_train_set(0)) == 12  # base_images all: the whole train pool
