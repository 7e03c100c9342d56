"""A new benchmark is its own module: one registered here, from this file alone (synth's images and classes in two
folds of ten, under another name), runs stage 1, stage 2 and the test through the entry points with no other file
of the repository changed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import test as test_script
import train as train_script
import train_base as train_base_script
from tests.support.engine import make_tiny_synth
from tools.make_lists import make_lists
from util.data import registry
from util.data.benchmarks.base import FixedClasses
from util.data.benchmarks.synth import SYNTH_CLASSES
from util.runs.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


class Toy(FixedClasses):
    """Two folds of ten classes: fold 1's novel classes are 11..20."""


TOY = Toy("toy", title="toy benchmark", folds=2, names=SYNTH_CLASSES)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "toy", TOY)
    return TOY


def test_a_benchmark_registered_from_a_test_runs_both_stages_and_the_test(toy, tmp_path):
    data_root, _ = make_tiny_synth(tmp_path / "data")
    list_root = tmp_path / "lists"
    written = make_lists("toy", data_root, list_root, workers=1)
    assert {path.parent.name for path in written} == {"fold0", "fold1"}
    assert all(path.is_relative_to(list_root / "toy") for path in written)
    args = ["dataset", "toy", "split", "1", "backbone", "efficientnet_lite0", "data_root", str(data_root),
            "list_root", str(list_root), "embedding_file", str(REPO / "embeddings" / "synth_glove50.npy"),
            "base_exp_dir", str(tmp_path / "base"), "exp_dir", str(tmp_path / "meta"), "base_images", "fold_lists",
            "novel_in_train", "drop_counted", "episode_class", "counted",
            "train_size", "65", "val_size", "65", "base_train_size", "65", "base_val_size", "65", "scale_min", "0.7",
            "scale_max", "0.9", "base_scale_min", "0.7", "base_scale_max", "0.9", "train_episodes", "8",
            "val_episodes", "4", "test_episodes", "6", "test_seeds", "[5]", "batch_size", "2", "base_batch_size", "2",
            "max_iters", "2", "pretrained_backbone", "false", "device", "cpu", "workers", "0"]
    train_base_script.main(args)
    stage1 = load_checkpoint(tmp_path / "base" / "best.pth")
    assert stage1["identity"]["dataset"] == "toy"
    assert stage1["identity"]["train_classes"] == list(SYNTH_CLASSES[:10])  # fold 1 trains on classes 1..10
    train_script.main(args)
    assert load_checkpoint(tmp_path / "meta" / "last.pth")["finished"]
    results = test_script.main(args)
    assert results["protocol"]["dataset"] == "toy"
    assert results["protocol"]["novel_classes"] == list(SYNTH_CLASSES[10:])
    assert set(results["seeds"][0]["class_iou"]) <= set(SYNTH_CLASSES[10:])
    saved = json.loads((tmp_path / "meta" / "test" / "results.json").read_text())
    assert saved["protocol"]["baseline"] == "every-object" and saved["miou"] == results["miou"]
