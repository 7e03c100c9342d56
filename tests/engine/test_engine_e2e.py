"""End to end on a tiny synth set: stage 1 -> stage 2 -> test through the real entry points."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import test as test_script
import train as train_script
import train_base as train_base_script
from tests.support.engine import Crash, make_tiny_synth
from util.runs.weights import RANDOM_WARNING
from util.runs.checkpoint import load_checkpoint
from util.data.registry import class_names
from util.common.config import load_config
from util.dataset import EpisodeDataset
from util.data.image_io import read_label
from util.engine.metrics import predict_on_label
from util.runs.weights import build_mianet

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "config" / "synth" / "efficientnet_lite0" / "split0.yaml")
TINY = ["train_size", "65", "val_size", "65", "base_train_size", "65", "base_val_size", "65",
        "train_episodes", "8", "val_episodes", "4", "test_episodes", "6",
        "batch_size", "2", "base_batch_size", "2", "pretrained_backbone", "false", "device", "cpu", "workers", "0",
        "test_seeds", "[5, 6]", "checkpoint_interval", "2", "print_freq", "1"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Data, lists and a finished stage 1 (2 iterations) shared by the tests of this module."""
    root = tmp_path_factory.mktemp("e2e")
    data_root, list_root = make_tiny_synth(root)
    args = ["--config", CONFIG, "data_root", str(data_root), "list_root", str(list_root),
            "base_exp_dir", str(root / "base"), *TINY]
    train_base_script.main([*args, "max_iters", "2"])
    return root, args


def test_stage1_stage2_test(tiny_runs):
    root, args = tiny_runs
    base = load_checkpoint(root / "base" / "best.pth")
    assert base["stage"] == "base" and base["iteration"] == 2 and "miou" in base["best"]["metrics"]
    assert (root / "base" / "config.yaml").is_file() and (root / "base" / "train_base.log").is_file()
    # pretrained_backbone false: recorded at every stage and said loudly in every log
    assert base["pretrained_backbone_source"] == "random" and "optimizer" not in base
    assert RANDOM_WARNING in (root / "base" / "train_base.log").read_text()

    run = ["exp_dir", str(root / "meta"), "max_iters", "3"]
    train_script.main([*args, *run])
    assert load_checkpoint(root / "meta" / "last.pth")["iteration"] == 3
    results = test_script.main([*args, *run])
    saved = json.loads((root / "meta" / "test" / "results.json").read_text())
    assert saved == results
    assert [s["seed"] for s in saved["seeds"]] == [5, 6] and all(s["episodes"] == 6 for s in saved["seeds"])
    assert 0.0 <= saved["miou"]["mean"] <= 1.0 and 0.0 <= saved["fbiou"]["mean"] <= 1.0
    assert saved["protocol"]["weight"] == str(root / "meta" / "best.pth")
    assert saved["protocol"]["base_weight"] == str(root / "base" / "best.pth") and saved["protocol"]["trained_shot"] == 1
    assert f"base_weight {root / 'base' / 'best.pth'}" in (root / "meta" / "train_meta.log").read_text()
    assert saved["protocol"]["pretrained_backbone_source"] == "random"
    assert load_checkpoint(root / "meta" / "best.pth")["pretrained_backbone_source"] == "random"
    for log in (root / "meta" / "train_meta.log", root / "meta" / "test" / "test.log"):
        assert RANDOM_WARNING in log.read_text()
    assert (root / "meta" / "test" / "config.yaml").is_file()
    for entry in saved["seeds"]:
        assert_numbers_of_a_reevaluation(load_config(CONFIG, [*args[2:], *run]), root / "meta" / "best.pth", entry)
    assert saved["miou"]["mean"] == pytest.approx(sum(s["miou"] for s in saved["seeds"]) / 2, abs=1e-12)


def intersection_and_union(truth: np.ndarray, guess: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.array([(truth & guess & valid).sum(), ((truth | guess) & valid).sum()], np.int64)


def assert_numbers_of_a_reevaluation(cfg, weight: Path, entry: dict) -> None:
    """One seed's numbers in results.json against the saved weights run again here, one episode at a time, with
    intersections and unions counted in numpy (foreground per class; background and foreground for FB-IoU),
    and the every-object baseline counted from the label files."""
    model = build_mianet(cfg)
    model.load_state_dict(load_checkpoint(weight)["model"])
    model.eval()
    episodes = EpisodeDataset(cfg, "val", episodes=cfg.test_episodes, seed=entry["seed"])
    names = class_names(cfg.dataset)
    per_class = {"model": {}, "baseline": {}}
    fb = {"model": np.zeros((2, 2), np.int64), "baseline": np.zeros((2, 2), np.int64)}
    for index in range(len(episodes)):
        sample = episodes[index]
        label = sample["query_label_ori"].numpy()
        with torch.no_grad():
            logits = model(sample["query"][None], sample["supports"][None], sample["support_masks"][None],
                           sample["class_id"][None])
        semantic = read_label(Path(cfg.data_root) / episodes.episode(index).query[1])
        guesses = {"model": predict_on_label(logits[0], label.shape, ori_size=label.shape).numpy() == 1,
                   "baseline": (semantic != 0) & (semantic != 255)}
        valid, name = label != 255, names[int(sample["class_id"]) - 1]
        for kind, guess in guesses.items():
            fb[kind][0] += intersection_and_union(label == 0, ~guess, valid)
            fb[kind][1] += intersection_and_union(label == 1, guess, valid)
            per_class[kind][name] = per_class[kind].get(name, 0) + intersection_and_union(label == 1, guess, valid)
    for kind, numbers in (("model", entry), ("baseline", entry["baseline"])):
        class_iou = {name: (i / u if u else 0.0) for name, (i, u) in per_class[kind].items()}
        assert numbers["episodes"] == len(episodes)
        assert numbers["class_iou"] == pytest.approx(class_iou, abs=1e-12)
        assert numbers["miou"] == pytest.approx(np.mean(list(class_iou.values())), abs=1e-12)
        assert (fb[kind][:, 1] > 0).all()
        assert numbers["fbiou"] == pytest.approx(np.mean(fb[kind][:, 0] / fb[kind][:, 1]), abs=1e-12)


def test_resume_after_crash_gives_the_same_weights_and_test_numbers(tiny_runs, monkeypatch):
    root, args = tiny_runs
    straight = ["exp_dir", str(root / "straight"), "max_iters", "5"]
    train_script.main([*args, *straight])

    build_job = train_script.build_job

    def crashing_build_job(cfg, ctx):
        job = build_job(cfg, ctx)
        step, calls = job.step, {"n": 0}

        def step_then_crash(net, batch):
            calls["n"] += 1
            if calls["n"] == 4:
                raise Crash("killed")
            return step(net, batch)

        job.step = step_then_crash
        return job

    resumed = ["exp_dir", str(root / "resumed"), "max_iters", "5"]
    monkeypatch.setattr(train_script, "build_job", crashing_build_job)
    with pytest.raises(Crash):
        train_script.main([*args, *resumed])
    monkeypatch.undo()
    assert load_checkpoint(root / "resumed" / "last.pth")["iteration"] == 2
    train_script.main([*args, *resumed, "resume", "auto"])

    a, b = load_checkpoint(root / "straight" / "last.pth"), load_checkpoint(root / "resumed" / "last.pth")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    first, second = test_script.main([*args, *straight]), test_script.main([*args, *resumed])
    assert first["seeds"] == second["seeds"]


def test_entry_points_report_user_errors_in_one_line(tiny_runs):
    _, args = tiny_runs
    done = subprocess.run([sys.executable, "test.py", *args, "shots", "5"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: override: unknown key 'shots'; did you mean 'shot'?"]
    done = subprocess.run([sys.executable, "test.py", *args, "weight", "/nonexistent/best.pth"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "checkpoint /nonexistent/best.pth not found" in done.stderr
