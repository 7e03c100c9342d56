"""FSS-1000 on a fixture in the published layout (the 1,000 published class folders): prepare (split, lists), the
class-word table and the committed class vectors against the real GloVe vocabulary, the checks that run before
anything is written, the run identity by class names, episodes, stage-1 targets, and train.sh / test.sh end to end."""
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

import train_base
from tests.support.data import data_config
from tests.support.fss import make_fss_tree, make_folder_stubs
from tools import runguard
from tools.prepare_fss import main as prepare_fss
from util.runs.checkpoint import check_base_learner, run_identity, save_atomic
from util.runs.folders import base_run_dir
from util.data.registry import base_classes, class_names, novel_classes, val_classes
from util.common.config import load_config
from util.dataset import BaseClassDataset, EpisodeDataset
from tools.embed_classes import build_embeddings, glove50_vectors, word_rule
from util.data.embeddings import default_embedding_file, load_class_embeddings
from util.common.errors import UserError
from util.data.benchmarks.fss1000 import (CLASS_WORDS_FILE, PUBLISHED_SPLIT_DIR, own_words, published_names, published_split,
                          read_class_words, read_name_list, split_source)

REPO = Path(__file__).resolve().parents[2]
HSNET_SPLITS = REPO.parent / "shared" / "reference" / "fss1000-hsnet-splits"  # as published: test.txt has CRLF ends
FSS0 = str(REPO / "config" / "fss" / "efficientnet_lite0" / "split0.yaml")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("fss")
    tree = make_fss_tree(root / "data")
    prepare_fss(["--data-root", str(root / "data"), "--list-root", str(root / "lists"), "--workers", "1"])
    return root, tree


def _list(root: Path, name: str) -> dict:
    return json.loads((root / "lists" / "fss" / "fold0" / f"{name}.json").read_text())


def user_error(argv: list[str], capsys) -> str:
    """The one line prepare_fss prints for a UserError (and exits with 2)."""
    with pytest.raises(SystemExit) as stop:
        prepare_fss(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err.removeprefix("error: ").rstrip("\n")


def test_the_committed_split_is_hsnets_and_is_the_default(prepared):
    root, tree = prepared
    published = published_split()
    for part, file in (("train", "trn.txt"), ("val", "val.txt"), ("test", "test.txt")):
        assert read_name_list(PUBLISHED_SPLIT_DIR / f"{part}.txt") == read_name_list(HSNET_SPLITS / file)
        assert b"\r" not in (PUBLISHED_SPLIT_DIR / f"{part}.txt").read_bytes()
    names = class_names("fss", root / "lists")
    splits = {s: read_name_list(root / "lists" / "fss" / "splits" / f"{s}.txt") for s in ("train", "val", "test")}
    assert splits == {part: sorted(published[part]) for part in splits} and split_source(root / "lists") == "published"
    assert [len(splits[s]) for s in ("train", "val", "test")] == [520, 240, 240]
    assert names == published_names() == tuple(splits["train"] + splits["val"] + splits["test"])
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


def test_every_name_resolves_to_glove_words_through_its_own_words_or_a_reviewed_row():
    table = read_class_words()
    names = published_names()
    vocabulary = set(glove50_vectors({w for n in names for w in own_words(n)} | {w for ws in table.values() for w in ws}))
    own_unknown = {n for n in names if not set(own_words(n)) <= vocabulary}
    assert own_unknown <= set(table) and len(own_unknown) == 70  # e.g. pubg_lvl3helmet, shih-tzu, cumquat
    assert set(table) <= set(names)  # no row for a name FSS-1000 does not have
    assert all(set(words) <= vocabulary for words in table.values())
    rule = word_rule("fss")
    assert [rule.words_of(n) for n in ("tredmill", "pubg_lvl3helmet", "shih-tzu", "thor's_hammer", "bus")] == [
        ("treadmill",), ("level", "three", "helmet"), ("shih", "tzu", "dog"), ("thor", "hammer"), ("bus",)]


def test_the_committed_vectors_are_the_recipe_over_the_published_names():
    committed = load_class_embeddings(None, "fss", published_names()).numpy()
    assert default_embedding_file("fss") == REPO / "embeddings" / "fss_glove50.npy" and committed.shape == (1001, 50)
    info = json.loads((REPO / "embeddings" / "fss_glove50.json").read_text())
    assert [row["name"] for row in info["rows"]] == ["background", *published_names()]
    rebuilt, rows = build_embeddings(published_names(), "glove50", rule=word_rule("fss"))
    assert [row["words"] for row in info["rows"]] == [list(row.words) for row in rows]
    np.testing.assert_allclose(rebuilt, committed, rtol=0, atol=1e-7)
    # the recipe written out for a few rows: the mean of the words' GloVe vectors, L2-normalised
    glove = glove50_vectors({"background", "level", "three", "helmet", "treadmill", "bus"})
    for name, words in (("pubg_lvl3helmet", ("level", "three", "helmet")), ("tredmill", ("treadmill",)),
                        ("bus", ("bus",)), (None, ("background",))):
        mean = np.mean([glove[w].astype(np.float64) for w in words], axis=0)
        row = 0 if name is None else published_names().index(name) + 1
        np.testing.assert_allclose(committed[row], mean / np.linalg.norm(mean), rtol=0, atol=1e-6)


def test_a_table_row_is_needed_for_a_name_with_unknown_words_and_all_are_reported_before_writing(tmp_path, capsys):
    published = published_split()
    strangers = ["qzxw_tank", "wooden_box2", "flyingfish"]  # no trust in digit stripping or two-word splits
    make_folder_stubs(tmp_path / "data", published["train"][3:] + published["val"] + published["test"] + strangers)
    argv = ["--data-root", str(tmp_path / "data"), "--list-root", str(tmp_path / "lists"), "--split", "seeded"]
    message = user_error(argv, capsys)
    assert message == (f"glove50: no vector for the words of 3 class name(s): flyingfish (flyingfish); qzxw_tank (qzxw); "
                       f"wooden_box2 (box2); add a row 'class name<TAB>known words' for each to {CLASS_WORDS_FILE}")
    assert not (tmp_path / "lists").exists()
    table = tmp_path / "words.tsv"
    table.write_text(CLASS_WORDS_FILE.read_text() + "qzxw_tank\tunknown tank\nwooden_box2\twooden box\n")
    assert user_error(argv + ["--class-words", str(table)], capsys).startswith(
        "glove50: no vector for the words of 1 class name(s): flyingfish (flyingfish); add a row")
    assert not (tmp_path / "lists").exists()


def test_missing_and_extra_folders_are_reported_together_before_writing(tmp_path, capsys):
    names = [n for part in published_split().values() for n in part]
    make_folder_stubs(tmp_path / "data", [n for n in names if n not in ("bus", "zebra", "acorn")] + ["my_class"])
    argv = ["--data-root", str(tmp_path / "data"), "--list-root", str(tmp_path / "lists")]
    assert user_error(argv, capsys) == (
        f"{tmp_path / 'data'}: 3 published classes have no folder (acorn, bus, zebra); 1 folders are not published "
        "classes (my_class); pass the folder holding the unpacked FSS-1000, or --split seeded for a copy whose class "
        "folders have other names")
    assert user_error(argv + ["--split", "seeded"], capsys) == (
        f"{tmp_path / 'data'}: 998 class folders with .jpg images, FSS-1000 has 1000; 1 of the 240 published test "
        "classes have no folder (bus); --split seeded needs all 1,000 class folders, the published test classes "
        "among them")
    assert not (tmp_path / "lists").exists()


def test_hsnet_split_files_are_checked_and_the_published_ones_are_the_default(prepared, tmp_path, capsys):
    root, tree = prepared
    data = ["--data-root", str(root / "data"), "--workers", "1"]
    prepare_fss([*data, "--list-root", str(tmp_path / "hsnet"), "--splits", str(HSNET_SPLITS)])
    assert split_source(tmp_path / "hsnet") == "published" and not (tmp_path / "hsnet" / "fss" / "fss_glove50.npy").exists()
    for name in ("train_min1_drop_any", "val_min1", "test_min1", "base_train_min1", "base_val_min1"):
        assert ((tmp_path / "hsnet" / "fss" / "fold0" / f"{name}.json").read_bytes()
                == (root / "lists" / "fss" / "fold0" / f"{name}.json").read_bytes())
    splits = tmp_path / "splits"
    splits.mkdir()
    train, val = list(tree["train"]), list(tree["val"])
    train[0], val[0] = val[0], train[0]
    (splits / "trn.txt").write_text("\n".join(train) + "\n")
    (splits / "val.txt").write_text("\n".join(val) + "\n")
    (splits / "test.txt").write_bytes((HSNET_SPLITS / "test.txt").read_bytes())
    prepare_fss([*data, "--list-root", str(tmp_path / "files"), "--splits", str(splits)])
    assert split_source(tmp_path / "files") == "files" and class_names("fss", tmp_path / "files")[520:760] == tuple(sorted(val))
    vectors = tmp_path / "files" / "fss" / "fss_glove50.npy"
    load_class_embeddings(vectors, "fss", class_names("fss", tmp_path / "files"))
    with pytest.raises(UserError, match=r"fss_glove50.npy: its rows are for another class order \(class \d+ is "):
        load_class_embeddings(None, "fss", class_names("fss", tmp_path / "files"))
    (splits / "test.txt").write_text("\n".join(tree["test"][:-1] + [train[1]]) + "\n")
    message = user_error([*data, "--list-root", str(tmp_path / "wrong"), "--splits", str(splits)], capsys)
    assert message == (f"--splits {splits}: 1 names listed twice ({train[1]}); each class is in exactly one list")
    (splits / "test.txt").write_text("\n".join(tree["test"][:-1]) + "\n")
    message = user_error([*data, "--list-root", str(tmp_path / "wrong"), "--splits", str(splits)], capsys)
    assert message == f"--splits {splits}: test.txt has 239 names, expected 240"
    assert not (tmp_path / "wrong").exists()


def test_a_seeded_split_gets_vectors_in_its_class_order_made_by_the_same_recipe(prepared, tmp_path):
    root, tree = prepared
    prepare_fss(["--data-root", str(root / "data"), "--list-root", str(tmp_path), "--split", "seeded", "--workers", "1"])
    names = class_names("fss", tmp_path)
    assert split_source(tmp_path) == "seeded" and set(names[760:]) == set(tree["test"])
    assert set(names[:520]) != set(tree["train"]) and set(names[:760]) == set(tree["train"]) | set(tree["val"])
    seeded = load_class_embeddings(tmp_path / "fss" / "fss_glove50.npy", "fss", names)
    committed = load_class_embeddings(None, "fss")
    order = [0] + [published_names().index(name) + 1 for name in names]
    torch.testing.assert_close(seeded, committed[order], rtol=0, atol=1e-7)
    cfg = data_config(root / "data", tmp_path, dataset="fss")
    with pytest.raises(UserError, match="lists/fss/fss_glove50.npy under your list_root"):
        load_class_embeddings(cfg.embedding_file, "fss", class_names("fss", cfg.list_root))


def test_a_stage1_of_another_class_split_is_refused_naming_the_classes(prepared, tmp_path, capsys, monkeypatch):
    root, _ = prepared
    monkeypatch.chdir(tmp_path)
    lists = tmp_path / "lists"
    argv = ["--data-root", str(root / "data"), "--list-root", str(lists), "--workers", "1"]
    prepare_fss(argv)
    capsys.readouterr()
    overrides = ["data_root", str(root / "data"), "list_root", str(lists), "pretrained_backbone", "false",
                 "device", "cpu", "resume", "auto", "workers", "0"]
    cfg = load_config(FSS0, overrides)
    identity = run_identity(cfg, "base")
    assert identity["class_split"] == "published" and identity["train_classes"] == sorted(published_split()["train"])
    best = base_run_dir(cfg) / "best.pth"  # a finished stage 1 of the published split (no training needed)
    save_atomic({"model": {}, "stage": "base", "finished": True, "run_id": "r", "config": dict(cfg),
                 "identity": identity}, best)
    runguard.main(["--stage1-done", "--config", FSS0, *overrides])
    assert capsys.readouterr().out.strip() == str(best)

    prepare_fss([*argv, "--split", "seeded"])
    capsys.readouterr()
    runguard.main(["--stage1-done", "--config", FSS0, *overrides])
    assert capsys.readouterr().out == ""  # not done: train.sh runs stage 1, which refuses
    seeded = load_config(FSS0, overrides)
    trained, wanted = set(identity["train_classes"]), run_identity(seeded, "base")["train_classes"]
    only_theirs = [n for n in identity["train_classes"] if n not in set(wanted)]
    only_ours = [n for n in wanted if n not in trained]
    assert len(only_theirs) == len(only_ours) > 3
    with pytest.raises(SystemExit):
        train_base.main(["--config", FSS0, *overrides])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {best} holds another stage 1 run (finished) trained with class_split 'published' (this config: "
        f"class_split 'seeded'), train_classes: {len(only_theirs)} not among this config's "
        f"({', '.join(only_theirs[:3])} and {len(only_theirs) - 3} more), {len(only_ours)} of this config's missing "
        f"({', '.join(only_ours[:3])} and {len(only_ours) - 3} more); choose another base_exp_dir, or replace it "
        "with overwrite true")
    names = class_names("fss", lists)
    leaked = [names[c - 1] for c in val_classes("fss", 0) if names[c - 1] in trained]
    with pytest.raises(UserError) as refused:
        check_base_learner(best, seeded)
    assert str(refused.value) == (
        f"base learner {best} was trained on {len(leaked)} of this run's novel and validation classes "
        f"({', '.join(leaked[:6])}, ...): it is the base learner of fss fold 0 (published split), this run is fss "
        "fold 0 (seeded split); set base_weight to that fold's base learner, or train it (train_base.py, same config)")


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
