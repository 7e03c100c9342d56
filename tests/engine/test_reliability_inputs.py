"""Bad user input gives one actionable line: a UserError naming the file or key and what to do.

Each test feeds one kind of bad input (in the real on-disk formats, built in tmp_path) and checks
the message; the subprocess tests check what a user sees from an entry point: exit code 2, a single
``error: ...`` line on stderr and no traceback.
"""
import errno
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.data import block_label, data_config, pascal_pool, write_pool, write_rgb
from util.runs.checkpoint import load_checkpoint, save_atomic
from util.common.config import load_config
from util.dataset import BaseClassDataset, EpisodeDataset
from util.data.embeddings import load_class_embeddings
from util.common.errors import UserError
from util.data.image_io import JPEG_END, JPEG_START, VOC_PALETTE, is_truncated_jpeg, read_image, read_label, write_label
from tools.make_lists import make_lists

REPO = Path(__file__).resolve().parents[2]
TRAIN_LIST = "ImageSets/SegmentationAug/train.txt"
VAL_LIST = "ImageSets/SegmentationAug/val.txt"


def user_error(call, *args, **kwargs) -> str:
    """The message of the UserError ``call(*args, **kwargs)`` raises; it must be one non-empty line."""
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert message.strip() and "\n" not in message
    return message


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """Start ``python <args>`` in ``cwd`` like a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def error_line(proc: subprocess.Popen) -> str:
    """Wait for ``proc``; it must exit 2 with exactly one ``error: ...`` line on stderr and no traceback."""
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def run_cli(args: list[str], cwd: Path) -> str:
    return error_line(start_cli(args, cwd))


def final_error_line(proc: subprocess.Popen) -> str:
    """For a run that logs progress first: exit 2, no traceback, stderr ending with its only ``error: ...`` line."""
    _, stderr = proc.communicate(timeout=180)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in stderr, stderr
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr
    return errors[0]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """A tiny PASCAL-format tree with its lists (shared, read-only)."""
    root, lists = tmp_path_factory.mktemp("voc"), tmp_path_factory.mktemp("lists")
    pascal_pool(root)
    make_lists("pascal", root, lists, workers=1)
    return root, lists


@pytest.fixture
def voc_copy(voc, tmp_path):
    """A private copy of the data (lists shared) for tests that break files."""
    root, lists = voc
    shutil.copytree(root, tmp_path / "voc")
    return tmp_path / "voc", lists


def small_pool(root: Path, **labels: np.ndarray) -> None:
    """Pools of 64x64 images: 'a' (class 3) plus ``labels``, the same for train and val."""
    entries = {"a": block_label(64, 64, [(3, 0, 0, 60, 60)]), **labels}
    write_pool(root, TRAIN_LIST, entries)
    write_pool(root, VAL_LIST, entries)


def episode_with_query(dataset: EpisodeDataset, name: str) -> int:
    return next(i for i in range(len(dataset)) if dataset.episode(i).query[0].endswith(name))


def base_item(dataset: BaseClassDataset, name: str) -> int:
    return next(i for i, (image, _, _) in enumerate(dataset.items) if image.endswith(name))


# ---------------------------------------------------------------- 1-3: paths


def test_missing_data_root(tmp_path):
    missing = tmp_path / "nowhere"
    message = user_error(make_lists, "pascal", missing, tmp_path / "lists")
    assert f"data root '{missing}' does not exist" in message and "pass --data-root" in message
    message = user_error(EpisodeDataset, data_config(missing, tmp_path / "lists"), "train")
    assert f"data_root '{missing}' does not exist (config key data_root)" in message
    assert f"python -m tools.make_synth --root {missing}" in message


def test_missing_list_files(voc, tmp_path):
    message = user_error(make_lists, "pascal", tmp_path, tmp_path / "lists")
    assert f"{tmp_path / TRAIN_LIST}: image list not found" in message and "python -m tools.prepare_pascal" in message
    root, _ = voc
    empty = tmp_path / "no_lists"
    message = user_error(EpisodeDataset, data_config(root, empty, dataset="pascal"), "val")
    assert f"{empty}/pascal/fold0/val_min2048.json: list not found" in message
    assert f"generate it with: python -m tools.make_lists --dataset pascal --data-root {root} --list-root {empty}" in message


def test_list_line_pointing_at_a_missing_file(voc_copy, tmp_path):
    small_pool(tmp_path, b=block_label(64, 64, [(4, 0, 0, 60, 60)]))
    (tmp_path / "SegmentationClassAug" / "b.png").unlink()
    message = user_error(make_lists, "pascal", tmp_path, tmp_path / "lists", workers=1)
    assert f"{tmp_path / TRAIN_LIST}:2: label {tmp_path}/SegmentationClassAug/b.png not found" in message
    assert "fix data_root or regenerate the image list" in message

    root, lists = voc_copy
    (root / "JPEGImages" / "v02_1.jpg").unlink()
    message = user_error(EpisodeDataset, data_config(root, lists, dataset="pascal"), "val")
    assert f"val_min2048.json: item 5: image {root}/JPEGImages/v02_1.jpg not found" in message
    assert "regenerate the lists with: python -m tools.make_lists --dataset pascal" in message


# ---------------------------------------------------------------- 4-6, 13: file contents


def test_corrupt_jpeg(voc_copy, tmp_path):
    garbage = np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes()
    small_pool(tmp_path)
    (tmp_path / "JPEGImages" / "a.jpg").write_bytes(garbage)
    message = user_error(make_lists, "pascal", tmp_path, tmp_path / "lists", workers=1)
    assert message == (f"{tmp_path}/JPEGImages/a.jpg: cannot decode the image (corrupt or not an image); "
                       "replace or re-download it")

    root, lists = voc_copy
    (root / "JPEGImages" / "t06_0.jpg").write_bytes(garbage)
    dataset = BaseClassDataset(data_config(root, lists, dataset="pascal"), "train")
    message = user_error(dataset.__getitem__, base_item(dataset, "t06_0.jpg"))
    assert message.startswith(f"{root}/JPEGImages/t06_0.jpg: cannot decode the image") and "re-download it" in message
    (tmp_path / "empty.jpg").write_bytes(b"")  # a zero-byte file (a failed copy) is one line too, not OpenCV's assertion
    assert user_error(read_image, tmp_path / "empty.jpg") == (f"{tmp_path}/empty.jpg: cannot decode the image (corrupt "
                                                               "or not an image); replace or re-download it")


def test_truncated_jpeg(voc_copy):
    root, lists = voc_copy
    image = root / "JPEGImages" / "t06_0.jpg"
    data = image.read_bytes()
    dataset = BaseClassDataset(data_config(root, lists, dataset="pascal"), "train")
    image.write_bytes(data + b"\x00" * 16)  # padding after the end marker is fine
    dataset[base_item(dataset, "t06_0.jpg")]
    image.write_bytes(data[: len(data) // 2])
    message = user_error(dataset.__getitem__, base_item(dataset, "t06_0.jpg"))
    assert message == f"{image}: the JPEG is truncated (no end-of-image marker); replace or re-download it"


def test_jpeg_with_exif_thumbnail_is_not_taken_for_truncated():
    thumbnail = JPEG_START + b"\x00" * 100 + JPEG_END
    whole = JPEG_START + b"\xff\xe1" + thumbnail + b"\x11" * 5000 + JPEG_END
    assert not is_truncated_jpeg(whole)
    assert is_truncated_jpeg(whole[:3000])
    assert not is_truncated_jpeg(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)  # only JPEGs are checked


def test_truncated_png_label(voc_copy, tmp_path):
    small_pool(tmp_path)
    label = tmp_path / "SegmentationClassAug" / "a.png"
    label.write_bytes(label.read_bytes()[:-40])
    message = user_error(make_lists, "pascal", tmp_path, tmp_path / "lists", workers=1)
    assert message == f"{label}: cannot decode the label (image file is truncated); replace or regenerate it"

    root, lists = voc_copy
    label = root / "SegmentationClassAug" / "v03_0.png"
    label.write_bytes(label.read_bytes()[:30])  # cut inside the header
    dataset = EpisodeDataset(data_config(root, lists, dataset="pascal"), "val", episodes=15)
    message = user_error(dataset.__getitem__, episode_with_query(dataset, "v03_0.jpg"))
    assert message.startswith(f"{label}: cannot decode the label") and "replace or regenerate it" in message


def test_image_label_size_mismatch(voc_copy, tmp_path):
    small_pool(tmp_path)
    write_rgb(tmp_path / "JPEGImages" / "a.jpg", np.zeros((48, 64, 3), np.uint8))
    message = user_error(make_lists, "pascal", tmp_path, tmp_path / "lists", workers=1)
    assert (f"{tmp_path / TRAIN_LIST}:1: image {tmp_path}/JPEGImages/a.jpg is (48, 64) but label "
            f"{tmp_path}/SegmentationClassAug/a.png is (64, 64)") in message
    assert "must have the same height and width" in message

    root, lists = voc_copy
    write_label(root / "SegmentationClassAug" / "t07_0.png", block_label(64, 80, [(7, 2, 2, 50, 50)]))
    dataset = BaseClassDataset(data_config(root, lists, dataset="pascal"), "train")
    message = user_error(dataset.__getitem__, base_item(dataset, "t07_0.jpg"))
    assert (f"{root}/JPEGImages/t07_0.jpg is (64, 64) but its label {root}/SegmentationClassAug/t07_0.png "
            "is (64, 80)") in message and "must have the same height and width" in message


def test_out_of_range_class_id_is_caught_when_listing_and_when_loading(voc_copy, tmp_path):
    """Value 77 in a 20-class dataset: make_lists refuses the pool; a label edited after listing fails on load."""
    small_pool(tmp_path, b=block_label(64, 64, [(77, 0, 0, 60, 60)]))
    message = user_error(make_lists, "pascal", tmp_path, tmp_path / "lists", workers=1)
    assert message == (f"{tmp_path}/SegmentationClassAug/b.png: label value 77 is not a class id (expected 0..20 "
                       "or 255); check that the file is a class-id map for this dataset")

    root, lists = voc_copy
    path = root / "SegmentationClassAug" / "v04_2.png"
    label = read_label(path)
    assert (label == 255).any()  # the ignore value itself is fine
    label[30, 30] = 77
    write_label(path, label)
    dataset = EpisodeDataset(data_config(root, lists, dataset="pascal"), "val", episodes=15)
    message = user_error(dataset.__getitem__, episode_with_query(dataset, "v04_2.jpg"))
    assert message.startswith(f"{path}: label value 77 is not a class id (expected 0..20 or 255)")


# ---------------------------------------------------------------- 7, 10, 11: dataset settings


def test_class_with_too_few_images_is_skipped_then_an_empty_fold_is_an_error(tmp_path):
    # val pool of fold 0 (novel 1..5): class 1 in 2 images, class 2 in 3 images, classes 3-5 absent
    val = {f"c1_{k}": block_label(64, 64, [(1, 2, 2, 50, 50)]) for k in range(2)}
    val.update({f"c2_{k}": block_label(64, 64, [(2, 2, 2, 50, 50)]) for k in range(3)})
    write_pool(tmp_path, VAL_LIST, val)
    write_pool(tmp_path, TRAIN_LIST, {"t": block_label(64, 64, [(6, 2, 2, 50, 50)])})
    lists = tmp_path / "lists"
    make_lists("pascal", tmp_path, lists, workers=1)
    list_file = lists / "pascal" / "fold0" / "val_min2048.json"

    with pytest.warns(UserWarning) as caught:
        dataset = EpisodeDataset(data_config(tmp_path, lists, dataset="pascal", shot=2), "val", episodes=6)
    assert dataset.classes == [2] and {dataset.episode(i).class_id for i in range(6)} == {2}
    skipped = [str(w.message) for w in caught]
    assert skipped == [f"{list_file}: 4 of 5 classes have fewer than shot + 1 = 3 eligible images and are left out of "
                       "the episodes; class (eligible images): 1 (2), 3 (0), 4 (0), 5 (0)"]  # one line for the list

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        message = user_error(EpisodeDataset, data_config(tmp_path, lists, dataset="pascal", shot=3), "val")
    assert message == (f"{list_file}: no class has at least shot + 1 = 4 eligible images; "
                       "use a smaller shot or more data")


@pytest.mark.parametrize("split", [4, -1])
@pytest.mark.parametrize("make", [EpisodeDataset, BaseClassDataset])
def test_fold_out_of_range(voc, split, make):
    assert user_error(data_config, *voc, dataset="pascal", split=split) == (
        f"override: key 'split' must be in 0..3, got {split}")
    cfg = data_config(*voc, dataset="pascal")
    cfg.split = split  # a config made in code, past the loader: the datasets check it too
    message = user_error(make, cfg, "train")
    assert message == f"fold (config key 'split') must be 0..3, got {split}"


@pytest.mark.parametrize("shot", [0, -3])
def test_shot_below_one(voc, shot):
    assert user_error(data_config, *voc, dataset="pascal", shot=shot) == f"override: key 'shot' must be >= 1, got {shot}"
    cfg = data_config(*voc, dataset="pascal")
    cfg.shot = shot
    message = user_error(EpisodeDataset, cfg, "val")
    assert message == f"config key 'shot' must be an integer >= 1, got {shot}"


def test_shot_larger_than_the_data_allows(voc):
    _, lists = voc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        message = user_error(EpisodeDataset, data_config(*voc, dataset="pascal", shot=40), "train")
    assert message == (f"{lists}/pascal/fold0/train_min2048_drop_any.json: no class has at least shot + 1 = 41 eligible "
                       "images; use a smaller shot or more data")


# ---------------------------------------------------------------- 8-9: config


def test_unknown_config_key_names_the_source_and_suggests(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("dataset: pascal\nshots: 5\n")
    assert user_error(load_config, config) == f"{config}: unknown key 'shots'; did you mean 'shot'?"
    assert user_error(load_config, None, ["base_lrr", "0.1"]) == "override: unknown key 'base_lrr'; did you mean 'base_lr'?"
    assert user_error(load_config, None, ["colour", "red"]) == (
        "override: unknown key 'colour'; see config/base.yaml for the keys that exist")


def test_wrong_type_in_a_config_value(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("base_lr: fast\n")
    assert user_error(load_config, config) == f"{config}: key 'base_lr' must be a float like 0.05, got str 'fast'"
    assert user_error(load_config, None, ["shot", "5.5"]) == "override: key 'shot' must be an int like 1, got float 5.5"
    assert user_error(load_config, None, ["test_seeds", "[1, x]"]) == (
        "override: key 'test_seeds[1]' must be an int like 321, got str 'x'")


# ---------------------------------------------------------------- 12: embeddings


def test_embedding_table_with_the_wrong_row_count(tmp_path):
    table = tmp_path / "coco_table.npy"
    np.save(table, np.ones((81, 50), np.float32))
    message = user_error(load_class_embeddings, table, "pascal")
    assert message == (f"{table}: 81 rows, but dataset 'pascal' needs 21 (background + 20 classes); point config key "
                       "'embedding_file' at this dataset's table or build it with: "
                       "python -m tools.embed_classes --dataset pascal")


# ---------------------------------------------------------------- 14: checkpoints


def test_checkpoint_under_a_regular_file(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the run directory should be")
    for target in (blocker / "last.pth", blocker / "split0" / "last.pth"):
        message = user_error(save_atomic, {"model": {}}, target)
        assert message == f"cannot write checkpoint {target} ({blocker} is a file, not a directory); choose a writable exp_dir"
    assert blocker.read_text() == "a file where the run directory should be"


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_atomic({"model": {"w": torch.ones(4)}, "iteration": 1}, tmp_path / "last.pth")
    before = path.read_bytes()

    def partial_then_full(obj, handle):
        handle.write(b"PK\x03\x04 partial checkpoint bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", partial_then_full)
    message = user_error(save_atomic, {"model": {"w": torch.zeros(4)}, "iteration": 2}, path)
    assert message == (f"cannot write checkpoint {path} (No space left on device) (the previous checkpoint is intact); "
                       "free disk space or choose another exp_dir")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pth"]


class FillsUp:
    """A binary file that takes ``room`` more bytes, then fails like a full disk."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.handle.write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


@pytest.mark.parametrize("room", [0, 300, 5000])
def test_disk_filling_up_inside_torch_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, room):
    """torch's own zip writer meets the full disk (it may wrap the OSError in a RuntimeError)."""
    path = save_atomic({"model": {"w": torch.ones(4)}, "iteration": 1}, tmp_path / "last.pth")
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, handle: real_save(obj, FillsUp(handle, room)))
    message = user_error(save_atomic, {"model": {"w": torch.zeros(20000)}, "iteration": 2}, path)
    assert message.startswith(f"cannot write checkpoint {path} (No space left on device) (the previous checkpoint is intact)")
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


# ---------------------------------------------------------------- entry points, as a user runs them


def test_cli_make_lists_missing_data_root(tmp_path):
    line = run_cli(["-m", "tools.make_lists", "--dataset", "synth", "--data-root", str(tmp_path / "nowhere")], tmp_path)
    assert line == (f"error: data root '{tmp_path / 'nowhere'}' does not exist; pass --data-root (config key "
                    "data_root) pointing at the prepared dataset")
    assert list(tmp_path.iterdir()) == []


def test_cli_make_lists_truncated_label_in_a_worker_process(tmp_path):
    small_pool(tmp_path, **{f"b{k}": block_label(64, 64, [(4, 0, 0, 60, 60)]) for k in range(5)})
    label = tmp_path / "SegmentationClassAug" / "b3.png"
    label.write_bytes(label.read_bytes()[:-40])
    line = run_cli(["-m", "tools.make_lists", "--dataset", "pascal", "--data-root", str(tmp_path),
                    "--list-root", str(tmp_path / "lists"), "--workers", "2"], tmp_path)
    assert line == f"error: {label}: cannot decode the label (image file is truncated); replace or regenerate it"


@pytest.fixture(scope="module")
def train_base_runs(tmp_path_factory):
    """``train_base.py`` with a missing data_root and with an unknown key, started together (each takes seconds
    importing torch); maps the case to (working directory, process)."""
    config = str(REPO / "config" / "synth" / "efficientnet_lite0" / "split0.yaml")
    cases = {"data_root": ["data_root", "/nonexistent/synth"], "unknown_key": ["shots", "5"]}
    runs = {}
    for case, overrides in cases.items():
        cwd = tmp_path_factory.mktemp(case)
        runs[case] = cwd, start_cli([str(REPO / "train_base.py"), "--config", config, *overrides], cwd)
    yield runs
    for _, proc in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_train_base_missing_data_root(train_base_runs):
    cwd, proc = train_base_runs["data_root"]
    assert error_line(proc) == (
        "error: data_root '/nonexistent/synth' does not exist (config key data_root); prepare the dataset "
        "there (see README, Data preparation) or run: python -m tools.make_synth --root /nonexistent/synth")
    assert list(cwd.iterdir()) == []  # no half-made run directory


def test_cli_train_base_unknown_key(train_base_runs):
    cwd, proc = train_base_runs["unknown_key"]
    assert error_line(proc) == "error: override: unknown key 'shots'; did you mean 'shot'?"
    assert list(cwd.iterdir()) == []


# ---------------------------------------------------------------- out-of-range keys, empty configs: refused first

SYNTH = str(REPO / "config" / "synth" / "efficientnet_lite0" / "split0.yaml")
PREDICT_ARGS = ["--support", "s.jpg", "m.png", "--query", "q.jpg", "--out", "out.png"]
REFUSED = {  # case: (entry point and arguments, the one line it must print)
    "train batch_size 0": (["train.py", "--config", SYNTH, "batch_size", "0"],
                           "override: key 'batch_size' must be >= 1, got 0"),
    "train_base workers -1": (["train_base.py", "--config", SYNTH, "workers", "-1"],
                              "override: key 'workers' must be >= 0, got -1"),
    "test test_episodes 0": (["test.py", "--config", SYNTH, "test_episodes", "0"],
                             "override: key 'test_episodes' must be >= 1, got 0"),
    "test test_seeds []": (["test.py", "--config", SYNTH, "test_seeds", "[]"],
                           "override: key 'test_seeds' must list at least 1 value(s), got []"),
    "test shot 0": (["test.py", "--config", SYNTH, "shot", "0"], "override: key 'shot' must be >= 1, got 0"),
    "test shot -1": (["test.py", "--config", SYNTH, "shot", "-1"], "override: key 'shot' must be >= 1, got -1"),
    "predict val_size 0": (["predict.py", "--config", SYNTH, *PREDICT_ARGS, "val_size", "0"],
                           "override: key 'val_size' must be >= 1, got 0"),
    "test empty config": (["test.py", "--config", "empty.yaml"],
                          "{cwd}/empty.yaml: the config file is empty; give its settings (at least '_base_: <parent>.yaml'), "
                          "or leave --config out to use the defaults of config/base.yaml"),
    "train seed 2^64": (["train.py", "--config", SYNTH, "seed", str(2 ** 64)],
                        f"override: key 'seed' must be in 0..{2 ** 63 - 1}, got {2 ** 64}"),
    "train scale_min above scale_max": (
        ["train.py", "--config", SYNTH, "scale_min", "1.2"],
        f"override and {REPO / 'config' / 'synth' / 'defaults.yaml'}: key 'scale_min' (1.2) must not exceed "
        "'scale_max' (0.9); a range is written low to high"),
    "train train_size 7": (["train.py", "--config", SYNTH, "train_size", "7", "device", "cpu"],
                           "config key 'train_size' is 7, below the 17 px that MIANet with efficientnet_lite0 needs to "
                           "train (its triplet loss's local features); use train_size 17 or more"),
    "train vgg train_size 17": (["train.py", "--config", SYNTH, "backbone", "vgg16_bn", "train_size", "17", "device",
                                 "cpu"],
                                "config key 'train_size' is 17, below the 33 px that MIANet with vgg16_bn needs to train "
                                "(its triplet loss's local features); use train_size 33 or more"),
    "train_base one image per process": (
        ["train_base.py", "--config", SYNTH, "base_batch_size", "1", "device", "cpu"],
        "config key 'base_batch_size' (1) gives each of the 1 process(es) 1 image(s); stage 1 needs at least 2 per "
        "process (the pyramid pooling's 1 x 1 BatchNorm normalises over a process's images)"),
}


@pytest.fixture(scope="module")
def refused_runs(tmp_path_factory):
    """Every REFUSED case run as a user would, each in its own empty working directory (three at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    def run(case: str):
        cwd = tmp_path_factory.mktemp("refused")
        if "empty config" in case:
            (cwd / "empty.yaml").write_text("")
        before = sorted(p.name for p in cwd.iterdir())
        proc = start_cli([str(REPO / REFUSED[case][0][0]), *REFUSED[case][0][1:]], cwd)
        return case, (cwd, before, proc, error_line(proc))

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, REFUSED))


@pytest.mark.parametrize("case", list(REFUSED))
def test_cli_refuses_before_creating_anything(refused_runs, case):
    cwd, before, _, line = refused_runs[case]
    assert line == f"error: {REFUSED[case][1].format(cwd=cwd)}"
    assert sorted(p.name for p in cwd.iterdir()) == before  # no exp/, initmodel/, 0shot/ or log folder


# ---------------------------------------------------------------- a data error inside a DataLoader worker


class _BadItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        raise UserError(f"/data/item_{index}.jpg: cannot decode the image (corrupt or not an image); replace it")


def test_a_user_error_raised_in_a_dataloader_worker_keeps_its_own_line():
    loader = torch.utils.data.DataLoader(_BadItems(), batch_size=1, num_workers=2)
    message = user_error(lambda: next(iter(loader)))
    assert message == "/data/item_0.jpg: cannot decode the image (corrupt or not an image); replace it"


def test_cli_train_base_data_error_in_a_worker_process(tmp_path):
    from tests.support.engine import make_tiny_synth

    data_root, list_root = make_tiny_synth(tmp_path, num_train=12, num_val=8)
    for image in (data_root / "JPEGImages").glob("train_*.jpg"):
        image.write_bytes(image.read_bytes()[:300])
    line = final_error_line(start_cli([
        str(REPO / "train_base.py"), "--config", SYNTH, "data_root", str(data_root), "list_root", str(list_root),
        "base_exp_dir", str(tmp_path / "base"), "workers", "2", "train_size", "65", "base_batch_size", "2",
        "pretrained_backbone", "false", "device", "cpu", "max_iters", "1"], tmp_path))
    assert re.fullmatch(rf"error: {re.escape(str(data_root))}/JPEGImages/train_\d+\.jpg: the JPEG is truncated "
                        r"\(no end-of-image marker\); replace or re-download it", line), line
    assert not (tmp_path / "base" / "last.pth").exists()


# ---------------------------------------------------------------- RGB annotations: one rule for predict.py and the datasets


def test_rgb_labels_in_voc_colours_read_as_the_class_ids(voc_copy, tmp_path):
    root, lists = voc_copy
    original = {path.name: read_label(path) for path in (root / "SegmentationClassAug").glob("*.png")}
    for name, label in original.items():
        Image.fromarray(VOC_PALETTE[label]).save(root / "SegmentationClassAug" / name)  # RGB, VOC colours, 255 = border
    assert all(np.array_equal(read_label(root / "SegmentationClassAug" / n), label) for n, label in original.items())
    rgb_lists = tmp_path / "rgb_lists"
    make_lists("pascal", root, rgb_lists, workers=1)
    for listed in (lists / "pascal").rglob("*.json"):
        assert (rgb_lists / listed.relative_to(lists)).read_text() == listed.read_text()
    episodes = EpisodeDataset(data_config(root, rgb_lists, dataset="pascal"), "val", episodes=3)
    reference = EpisodeDataset(data_config(*voc_copy, dataset="pascal"), "val", episodes=3)
    for i in range(3):
        assert torch.equal(episodes[i]["query_label"], reference[i]["query_label"])


def test_rgb_black_white_is_0_and_255_and_other_colours_are_refused_with_what_was_found(tmp_path):
    from util.data.image_io import label_from_colours

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1:3, 1:4] = (255, 255, 255)
    assert np.array_equal(label_from_colours(rgb, "m.png"), (rgb[..., 0] > 0).astype(np.uint8) * 255)
    rgb[0, :] = (255, 0, 0)            # 5 of 20 pixels: not a VOC colour
    rgb[3, :2] = (0, 0, 7)             # 2 of 20
    message = user_error(label_from_colours, rgb, "m.png")
    assert message == ("m.png: an RGB annotation may hold only black, white and VOC palette colours, but it holds "
                       "(255,0,0) 25.0%, (0,0,7) 10.0% (65.0% of the pixels are not black); save it as a single-channel "
                       "PNG (0 background, 255 object or ignore, or class ids)")


def test_cli_predict_refuses_an_rgb_mask_it_cannot_read_and_writes_nothing(tmp_path):
    """The mask of the report: object R=255, border G=128, background B=7 (read as 100% object before)."""
    mask = np.zeros((40, 60, 3), np.uint8)
    mask[...] = (0, 0, 7)
    mask[10:30, 20:40] = (0, 128, 0)
    mask[12:28, 22:38] = (255, 0, 0)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    write_rgb(tmp_path / "support.jpg", np.full((40, 60, 3), 128, np.uint8))
    write_rgb(tmp_path / "query.jpg", np.full((40, 60, 3), 128, np.uint8))
    line = run_cli([str(REPO / "predict.py"), "--config", SYNTH, "--weight", "model.pth", "--support", "support.jpg",
                    "mask.png", "--query", "query.jpg", "--out", "out.png", "device", "cpu"], tmp_path)
    assert line == ("error: mask.png: an RGB annotation may hold only black, white and VOC palette colours, but it "
                    "holds (0,0,7) 83.3%, (255,0,0) 10.7% (100.0% of the pixels are not black); save it as a "
                    "single-channel PNG (0 background, 255 object or ignore, or class ids)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "query.jpg", "support.jpg"]


# ---------------------------------------------------------------- checkpoint permissions


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_checkpoints_get_the_permissions_the_umask_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = save_atomic({"model": {"w": torch.ones(2)}}, tmp_path / "run" / "last.pth")
        save_atomic({"model": {"w": torch.zeros(2)}}, path)  # replacing keeps the same rule
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode
