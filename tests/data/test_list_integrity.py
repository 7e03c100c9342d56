"""Lists say exactly which images there are: a doubled line is removed with one warning naming the file (so a query
is never its own support), an absolute path is refused naming the file and line, and every command printed in a
hint survives being pasted into a shell (paths quoted)."""
import json
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import tools.make_lists
import util.dataset
from tests.tools.test_data_prepare import coco_tree  # noqa: F401  (fixture)
from tests.support.data import data_config, pascal_pool
from util.dataset import BaseClassDataset, EpisodeDataset
from util.common.errors import UserError
from util.data.lists import FoldList, fold_list_path, make_lists_command, pool_list_path
from tools.make_lists import make_lists
from tools.make_synth import make_synth
from tools.prepare_coco import prepare_coco

REPO = Path(__file__).resolve().parents[2]
EPISODES = 300
pytestmark = pytest.mark.filterwarnings("ignore:.*eligible images")


def double_lines(path: Path) -> int:
    """Write every line of ``path`` twice in a row; returns the number of lines before."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line + line for line in lines))
    return len(lines)


def double_items(path: Path) -> int:
    """Repeat every item of a per-fold JSON list; returns the number of items before."""
    data = json.loads(path.read_text())
    count = len(data["items"])
    data["items"] = [item for item in data["items"] for _ in range(2)]
    path.write_text(json.dumps(data))
    return count


def caught_warnings(build):
    """``(result of build(), messages of the warnings it emitted)``, every warning shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = build()
    return result, [str(w.message) for w in caught]


def self_supports(dataset: EpisodeDataset) -> list[int]:
    """Episodes whose query image is among its supports."""
    found = []
    for index in range(len(dataset)):
        episode = dataset.episode(index)
        if os.path.normpath(episode.query[0]) in {os.path.normpath(image) for image, _ in episode.supports}:
            found.append(index)
    return found


@pytest.fixture
def doubled_pool(tmp_path):
    root, lists = tmp_path / "voc", tmp_path / "lists"
    pascal_pool(root)
    counts = {subset: double_lines(pool_list_path(root, "pascal", subset)) for subset in ("train", "val")}
    return root, lists, counts


def test_make_lists_removes_doubled_pool_lines_with_one_warning_per_file(doubled_pool, capsys):
    root, lists, counts = doubled_pool
    tools.make_lists.main(["--dataset", "pascal", "--data-root", str(root), "--list-root", str(lists), "--workers", "1"])
    err = capsys.readouterr().err
    for subset, count in counts.items():
        pool = pool_list_path(root, "pascal", subset)
        told = [line for line in err.splitlines() if str(pool) in line]
        assert len(told) == 1, err
        assert told[0].startswith("warning: ") and f"{count} duplicate lines" in told[0]
    for subset in ("train_drop_any", "val"):
        images = [item[0] for item in json.loads(fold_list_path(lists, "pascal", 0, subset, 2048).read_text())["items"]]
        assert images and len(images) == len(set(images))
    for mode in ("train", "test"):
        dataset = EpisodeDataset(data_config(root, lists, dataset="pascal", shot=1), mode, episodes=EPISODES)
        assert self_supports(dataset) == []
    stage1, messages = caught_warnings(
        lambda: BaseClassDataset(data_config(root, lists, dataset="pascal", base_images="all"), "train"))
    assert len(stage1) == counts["train"]
    assert [m for m in messages if "duplicate" in m] == [f"{pool_list_path(root, 'pascal', 'train')}: {counts['train']} "
                                                         "duplicate lines removed, each image is used once (first: "
                                                         "line 2 repeats line 1, JPEGImages/rule_novel10.jpg)"]


@pytest.mark.parametrize("mode", ["train", "test"])
def test_episodes_from_a_list_with_doubled_items_never_use_the_query_as_support(tmp_path, mode):
    root, lists = tmp_path / "voc", tmp_path / "lists"
    pascal_pool(root)
    make_lists("pascal", root, lists, workers=1)
    path = fold_list_path(lists, "pascal", 0, "train_drop_any" if mode == "train" else "val", 2048)
    cfg = data_config(root, lists, dataset="pascal", shot=1)
    clean, _ = caught_warnings(lambda: EpisodeDataset(cfg, mode, episodes=EPISODES))
    count = double_items(path)
    dataset, messages = caught_warnings(lambda: EpisodeDataset(cfg, mode, episodes=EPISODES))
    told = [m for m in messages if str(path) in m and "duplicate" in m]
    assert len(told) == 1 and f"{count} duplicate items" in told[0], messages
    assert self_supports(dataset) == []
    assert [dataset.episode(i) for i in range(EPISODES)] == [clean.episode(i) for i in range(EPISODES)]


def test_the_sampler_compares_images_by_path(tmp_path):
    """Two entries naming one image by different spellings are still one image: never query and support."""
    root, lists = tmp_path / "voc", tmp_path / "lists"
    pascal_pool(root)
    make_lists("pascal", root, lists, workers=1)
    path = fold_list_path(lists, "pascal", 0, "val", 2048)
    data = json.loads(path.read_text())
    data["items"] += [[f"./{image}", label, counted, present] for image, label, counted, present in data["items"]]
    path.write_text(json.dumps(data))
    dataset, _ = caught_warnings(
        lambda: EpisodeDataset(data_config(root, lists, dataset="pascal", shot=2), "test", episodes=EPISODES))
    assert self_supports(dataset) == []


def test_the_sampler_itself_never_picks_the_query_image(tmp_path, monkeypatch):
    """Even from a list reader that kept repeats, a support is never the query's image, and the K supports are K
    images."""
    root, lists = tmp_path / "voc", tmp_path / "lists"
    pascal_pool(root)
    make_lists("pascal", root, lists, workers=1)
    read = util.dataset.read_fold_list

    def read_with_repeats(path, rerun_hint):
        fold_list = read(path, rerun_hint)
        return FoldList(fold_list.path, fold_list.classes, tuple(i for item in fold_list.items for i in (item, item)))

    monkeypatch.setattr(util.dataset, "read_fold_list", read_with_repeats)
    dataset = EpisodeDataset(data_config(root, lists, dataset="pascal", shot=2), "test", episodes=EPISODES)
    assert len(dataset.items) == 30
    assert self_supports(dataset) == []
    assert all(len({image for image, _ in dataset.episode(i).supports}) == 2 for i in range(EPISODES))


def test_an_image_listed_twice_with_different_labels_is_refused(tmp_path):
    root = tmp_path / "voc"
    pascal_pool(root)
    pool = pool_list_path(root, "pascal", "val")
    pool.write_text(pool.read_text() + "JPEGImages/v01_0.jpg SegmentationClassAug/v02_0.png\n")
    with pytest.raises(UserError, match=r"val.txt:61: JPEGImages/v01_0.jpg is listed on line 1 with another label"):
        make_lists("pascal", root, tmp_path / "lists", workers=1)


def test_prepare_coco_refuses_an_image_listed_twice(coco_tree):  # noqa: F811
    root, *_ = coco_tree
    path = root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["images"].append(dict(data["images"][1], id=3))
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="instances_val2014.json: 1 images are listed more than once "
                                        r"\(e.g. COCO_val2014_000000000002.jpg\)"):
        prepare_coco(root, workers=1)


def test_absolute_paths_in_pool_lists_are_refused_naming_file_and_line(tmp_path, capsys):
    root = tmp_path / "voc"
    pascal_pool(root)
    pool = pool_list_path(root, "pascal", "train")
    lines = pool.read_text().splitlines(keepends=True)
    lines[2] = "/" + lines[2]
    pool.write_text("".join(lines))
    with pytest.raises(SystemExit) as exit_info:
        tools.make_lists.main(["--dataset", "pascal", "--data-root", str(root), "--list-root", str(tmp_path / "l"),
                               "--workers", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {pool}:3: ") and "absolute path" in err and "relative to the data root" in err
    with pytest.raises(UserError, match=f"{pool}:3: .*absolute path"):
        BaseClassDataset(data_config(root, tmp_path / "l", dataset="pascal", base_images="all"), "train")


def test_absolute_paths_in_fold_lists_are_refused(tmp_path):
    root, lists = tmp_path / "voc", tmp_path / "lists"
    pascal_pool(root)
    make_lists("pascal", root, lists, workers=1)
    path = fold_list_path(lists, "pascal", 0, "val", 2048)
    data = json.loads(path.read_text())
    data["items"][4][0] = str(root / data["items"][4][0])
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"{path}: item 5: .*absolute path"):
        EpisodeDataset(data_config(root, lists, dataset="pascal"), "test")


def run_pasted(command: str) -> subprocess.CompletedProcess:
    """``command`` run by a shell from the repository root, as a user pastes it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", "-c", command.replace("python ", f"{shlex.quote(sys.executable)} ", 1)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_printed_commands_survive_a_path_with_spaces(tmp_path):
    root, lists = tmp_path / "my data" / "synth", tmp_path / "my lists"
    root.mkdir(parents=True)
    # the data root exists but has no image list: the hint names make_synth with that root
    with pytest.raises(UserError) as info:
        BaseClassDataset(data_config(root, lists, base_images="all"), "train")
    command = str(info.value).split("create it with ", 1)[1]
    assert shlex.split(command)[-2:] == ["--root", str(root)]
    make_synth(root, num_train=12, num_val=30, seed=0, workers=1)
    # the lists are missing: the hint is the make_lists command, which must run as printed
    with pytest.raises(UserError) as info:
        EpisodeDataset(data_config(root, lists, min_class_pixels=64), "test")
    command = str(info.value).split("generate it with: ", 1)[1]
    assert command == make_lists_command("synth", root, lists, 64)
    result = run_pasted(command)
    assert result.returncode == 0, result.stderr
    assert len(EpisodeDataset(data_config(root, lists, min_class_pixels=64), "test", episodes=3)) == 3
