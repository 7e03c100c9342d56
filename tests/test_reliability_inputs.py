"""Bad user input gives one actionable line: a UserError naming the file or key and what to do.

Each test feeds one kind of bad input (in the real on-disk formats, built in tmp_path) and checks
the message; the subprocess tests check what a user sees from an entry point: exit code 2, a single
``error: ...`` line on stderr and no traceback.
"""
import errno
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures_data import block_label, data_config, pascal_pool, write_pool, write_rgb
from util.checkpoint import load_checkpoint, save_atomic
from util.config import load_config
from util.dataset import BaseClassDataset, EpisodeDataset
from util.embeddings import load_class_embeddings
from util.errors import UserError
from util.image_io import JPEG_END, JPEG_START, is_truncated_jpeg, read_label, write_label
from util.make_lists import make_lists

REPO = Path(__file__).resolve().parent.parent
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
    assert f"python -m util.make_synth --root {missing}" in message


def test_missing_list_files(voc, tmp_path):
    message = user_error(make_lists, "pascal", tmp_path, tmp_path / "lists")
    assert f"{tmp_path / TRAIN_LIST}: image list not found" in message and "python -m util.prepare_pascal" in message
    root, _ = voc
    empty = tmp_path / "no_lists"
    message = user_error(EpisodeDataset, data_config(root, empty, dataset="pascal"), "val")
    assert f"{empty}/pascal/fold0/val_min2048.json: list not found" in message
    assert f"generate it with: python -m util.make_lists --dataset pascal --data-root {root} --list-root {empty}" in message


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
    assert "regenerate the lists with: python -m util.make_lists --dataset pascal" in message


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
    assert (f"{list_file}: class 1 has 2 eligible image(s), fewer than shot + 1 = 3; it is left out of the episodes"
            in skipped)
    assert len(skipped) == 4  # classes 1, 3, 4, 5

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        message = user_error(EpisodeDataset, data_config(tmp_path, lists, dataset="pascal", shot=3), "val")
    assert message == (f"{list_file}: no class has at least shot + 1 = 4 eligible images; "
                       "use a smaller shot or more data")


@pytest.mark.parametrize("split", [4, -1])
@pytest.mark.parametrize("make", [EpisodeDataset, BaseClassDataset])
def test_fold_out_of_range(voc, split, make):
    message = user_error(make, data_config(*voc, dataset="pascal", split=split), "train")
    assert message == f"fold (config key 'split') must be 0..3, got {split}"


@pytest.mark.parametrize("shot", [0, -3])
def test_shot_below_one(voc, shot):
    message = user_error(EpisodeDataset, data_config(*voc, dataset="pascal", shot=shot), "val")
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
                       "python -m util.embed_classes --dataset pascal")


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
    line = run_cli(["-m", "util.make_lists", "--dataset", "synth", "--data-root", str(tmp_path / "nowhere")], tmp_path)
    assert line == (f"error: data root '{tmp_path / 'nowhere'}' does not exist; pass --data-root (config key "
                    "data_root) pointing at the prepared dataset")
    assert list(tmp_path.iterdir()) == []


def test_cli_make_lists_truncated_label_in_a_worker_process(tmp_path):
    small_pool(tmp_path, **{f"b{k}": block_label(64, 64, [(4, 0, 0, 60, 60)]) for k in range(5)})
    label = tmp_path / "SegmentationClassAug" / "b3.png"
    label.write_bytes(label.read_bytes()[:-40])
    line = run_cli(["-m", "util.make_lists", "--dataset", "pascal", "--data-root", str(tmp_path),
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
        "there (see README, Data preparation) or run: python -m util.make_synth --root /nonexistent/synth")
    assert list(cwd.iterdir()) == []  # no half-made run directory


def test_cli_train_base_unknown_key(train_base_runs):
    cwd, proc = train_base_runs["unknown_key"]
    assert error_line(proc) == "error: override: unknown key 'shots'; did you mean 'shot'?"
    assert list(cwd.iterdir()) == []
