"""FSS-1000 on a fixture in the published layout: prepare (split, lists, class words and vectors), episodes, stage-1
targets, and train.sh / test.sh end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.data import data_config
from tests.support.fss import make_fss_tree
from tools.prepare_fss import main as prepare_fss
from util.classes import base_classes, class_names, novel_classes, val_classes
from util.dataset import BaseClassDataset, EpisodeDataset
from util.embed_classes import glove50_vectors
from util.errors import UserError
from util.fss1000 import TEST_SPLIT_FILE, name_words, read_name_list, read_word_fixes
from util.prepare_fss import candidate_words

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("fss")
    tree = make_fss_tree(root / "data")
    prepare_fss(["--data-root", str(root / "data"), "--list-root", str(root / "lists"), "--workers", "1"])
    return root, tree


def _list(root: Path, name: str) -> dict:
    return json.loads((root / "lists" / "fss" / "fold0" / f"{name}.json").read_text())


def test_split_ids_follow_hsnet_and_the_test_classes_are_the_published_ones(prepared):
    root, tree = prepared
    names = class_names("fss", root / "lists")
    splits = {s: read_name_list(root / "lists" / "fss" / "splits" / f"{s}.txt") for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [520, 240, 240]
    assert set(splits["test"]) == set(read_name_list(TEST_SPLIT_FILE)) == set(tree["test"])
    assert list(names) == sorted(splits["train"]) + sorted(splits["val"]) + sorted(splits["test"])
    assert base_classes("fss", 0) == list(range(1, 521)) and val_classes("fss", 0) == list(range(521, 761))
    assert novel_classes("fss", 0) == list(range(761, 1001))
    with pytest.raises(UserError, match=r"must be 0 \(FSS-1000 has one class split\), got 1"):
        novel_classes("fss", 1)


def test_lists_hold_each_split_and_leave_out_broken_pairs(prepared, capsys):
    root, tree = prepared
    names = class_names("fss", root / "lists")
    train = _list(root, "train_min1_keep_as_background")
    for rule in ("drop_any", "drop_counted"):
        assert _list(root, f"train_min1_{rule}")["items"] == train["items"]
    for subset, classes in (("train_min1_keep_as_background", range(1, 521)), ("val_min1", range(521, 761)),
                            ("test_min1", range(761, 1001))):
        items = _list(root, subset)["items"]
        assert {c for *_, counted, _ in items for c in counted} == set(classes)
        assert all(image.split("/")[0] == names[counted[0] - 1] and image[:-4] == label[:-4]
                   for image, label, counted, present in items)
    listed = {image for subset in ("train_min1_keep_as_background", "val_min1", "test_min1")
              for image, *_ in _list(root, subset)["items"]}
    assert len(listed) == 3000 - 2 and not listed & set(tree["broken"])
    # stage 1: each training class's last pair validates, the others train; together they are the training list
    base_train, base_val = _list(root, "base_train_min1")["items"], _list(root, "base_val_min1")["items"]
    assert sorted(base_train + base_val) == train["items"] and len(base_val) == 520
    assert {image.split("/")[1] for image, *_ in base_val} <= {"2.jpg", "3.jpg"}
    assert {tuple(counted) for *_, counted, _ in base_val} == {(c,) for c in range(1, 521)}


def test_class_words_map_every_unknown_word_and_the_vectors_are_their_mean(prepared):
    root, _ = prepared
    rows = [line.split("\t") for line in (root / "lists" / "fss" / "class_words.tsv").read_text().splitlines()[1:]]
    words = {name: tuple(w.split()) for _, name, w, _ in rows}
    assert words["abe's_flyingfish"] == ("abe", "flying", "fish") and words["tredmill"] == ("treadmill",)
    assert words["pencil_sharpener1"] == ("pencil", "sharpener") and words["ferrari911"] == ("ferrari", "911")
    assert words["metal_oiltank"] == ("metal", "oil", "tank") and words["wooden_box2"] == ("wooden", "box")
    assert sum(1 for *_, rule in rows if rule) == 26  # 24 of the 240 published test names + the 2 made-up ones
    matrix = np.load(root / "lists" / "fss" / "fss_glove50.npy")
    names = class_names("fss", root / "lists")
    glove = glove50_vectors({"flying", "fish", "abe", "bus"})
    for name, parts in (("bus", ("bus",)), ("abe's_flyingfish", ("abe", "flying", "fish"))):
        mean = np.mean([glove[w] for w in parts], axis=0)
        np.testing.assert_allclose(matrix[names.index(name) + 1], mean / np.linalg.norm(mean), rtol=1e-5)


def test_name_rules_and_an_unexplained_word_is_refused():
    vocabulary = {"flying", "fish", "ear", "phone", "earphone", "tank", "oil", "ferrari", "911"}
    assert name_words("Flyingfish_tank", vocabulary, {}) == (("flying", "fish", "tank"),
                                                             ["flyingfish -> flying fish (split into two known words)"])
    assert name_words("oil_tank", vocabulary, {})[1] == []
    assert name_words("ferrari911", vocabulary, {})[0] == ("ferrari", "911")
    with pytest.raises(UserError, match=r"class 'qzxw_tank': no vector for 'qzxw'.*fss_word_fixes.tsv"):
        name_words("qzxw_tank", vocabulary, {})
    fixes = read_word_fixes()
    published = read_name_list(TEST_SPLIT_FILE)
    vocabulary = set(glove50_vectors(candidate_words(published, fixes)))
    needed = {name: name_words(name, vocabulary, fixes)[1] for name in published}
    assert sum(1 for rules in needed.values() if rules) == 24
    assert not any("two known words" in rule for rules in needed.values() for rule in rules)  # the table covers them


def test_hsnet_split_files_are_used_as_given_and_checked(prepared, tmp_path, capsys):
    root, tree = prepared
    names = sorted(tree["others"])
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "trn.txt").write_text("\n".join(names[240:]) + "\n")
    (splits / "val.txt").write_text("\n".join(names[:240]) + "\n")
    (splits / "test.txt").write_text("\n".join(tree["test"]) + "\n")
    prepare_fss(["--data-root", str(root / "data"), "--list-root", str(tmp_path / "lists"), "--splits", str(splits),
                 "--workers", "1"])
    assert read_name_list(tmp_path / "lists" / "fss" / "splits" / "val.txt") == names[:240]
    (splits / "test.txt").write_text("\n".join(tree["test"][:-1] + [names[0]]) + "\n")
    with pytest.raises(SystemExit) as stop:
        prepare_fss(["--data-root", str(root / "data"), "--list-root", str(tmp_path / "lists2"), "--splits",
                     str(splits), "--workers", "1"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: {splits / 'test.txt'} is not the published test split ({TEST_SPLIT_FILE})\n"
    assert not (tmp_path / "lists2").exists()


def test_episodes_and_stage1_targets_come_from_the_masks(prepared):
    root, _ = prepared
    cfg = data_config(root / "data", root / "lists", dataset="fss", min_class_pixels=1, base_images="fold_lists",
                      base_train_size=48, base_val_size=48, scale_min=1.0, scale_max=1.0, rotate_min=0.0, rotate_max=0.0)
    names = class_names("fss", root / "lists")
    for mode, classes in (("val", range(521, 761)), ("test", range(761, 1001))):
        episodes = EpisodeDataset(cfg, mode, episodes=6, seed=3)
        for i in range(6):
            spec = episodes.episode(i)
            assert spec.class_id in classes
            assert {p.split("/")[0] for p, _ in [spec.query, *spec.supports]} == {names[spec.class_id - 1]}
            sample = episodes[i]
            mask = np.array(Image.open(root / "data" / spec.query[1])) >= 128
            assert torch.equal(sample["query_label_ori"], torch.from_numpy(mask.astype(np.int64)))
            assert set(sample["support_masks"].unique().tolist()) <= {0, 1, 255}
    stage1 = BaseClassDataset(cfg, "train", seed=0)
    assert stage1.ignore_index == -1  # 520 base classes: target 255 is a class, not "ignore"
    seen = set()
    for index in range(len(stage1)):
        target = stage1[index]["label"]
        counted = stage1.items[index][2]
        assert set(target.unique().tolist()) <= {0, -1, counted[0]}
        seen.add(counted[0])
    assert 255 in seen and max(seen) == 520


@pytest.mark.slow
def test_train_sh_and_test_sh_run_fss_end_to_end(prepared, tmp_path):
    root, _ = prepared
    overrides = ["data_root", str(root / "data"), "list_root", str(root / "lists"),
                 "embedding_file", str(root / "lists" / "fss" / "fss_glove50.npy"),
                 "train_size", "65", "val_size", "65", "base_train_size", "65", "base_val_size", "65",
                 "base_val_images", "8", "train_episodes", "4", "val_episodes", "4", "test_episodes", "6",
                 "batch_size", "2", "base_batch_size", "2", "pretrained_backbone", "false", "device", "cpu",
                 "workers", "0", "test_seeds", "[5]", "max_iters", "2", "base_epochs", "1", "epochs", "1",
                 "base_exp_dir", str(tmp_path / "base"), "exp_dir", str(tmp_path / "meta")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    train = subprocess.run(["bash", "train.sh", "fss", "all", "efficientnet_lite0", "1", *overrides], cwd=REPO, env=env,
                           capture_output=True, text=True)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (tmp_path / "base" / "best.pth").is_file() and (tmp_path / "meta" / "best.pth").is_file()
    test = subprocess.run(["bash", "test.sh", "fss", "0", "efficientnet_lite0", "1", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert test.returncode == 0, test.stderr[-3000:]
    results = json.loads((tmp_path / "meta" / "test" / "results.json").read_text())
    names = class_names("fss", root / "lists")
    assert results["protocol"]["novel_classes"] == list(names[760:]) and results["protocol"]["baseline"] == "whole-image"
    assert results["seeds"][0]["episodes"] == 6 and set(results["seeds"][0]["class_iou"]) <= set(names[760:])
    assert "whole-image mIoU" in test.stdout + test.stderr
