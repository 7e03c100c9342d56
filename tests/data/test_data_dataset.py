"""EpisodeDataset / BaseClassDataset: protocol rules, determinism, worker independence, ori labels, errors."""
import shutil
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.support.data import data_config, pascal_pool
from util.dataset import BaseClassDataset, EpisodeDataset, collate_episodes, episode_collate, read_label
from util.common.errors import UserError
from util.data.image_io import write_label
from tools.make_lists import make_lists
from tools.make_synth import make_synth


@pytest.fixture(scope="module")
def pascal(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    lists = tmp_path_factory.mktemp("lists")
    pascal_pool(root)
    make_lists("pascal", root, lists, workers=1)
    return root, lists


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    lists = tmp_path_factory.mktemp("synth_lists")
    make_synth(root, num_train=150, num_val=60, seed=1, workers=1)
    make_lists("synth", root, lists, workers=1)
    return root, lists


def list_classes(dataset):
    return {str(dataset.root / image): set(classes) for image, _, classes in dataset.items}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_episode_is_a_pure_function_of_seed_and_index(synth):
    cfg = data_config(*synth)
    first, second = EpisodeDataset(cfg, "train", seed=7), EpisodeDataset(cfg, "train", seed=7)
    for index in (5, 0, 3):
        assert first.episode(index) == second.episode(index)
        assert_same(first[index], second[index])
    other = EpisodeDataset(cfg, "train", seed=8)
    assert any(other.episode(i) != first.episode(i) for i in range(5))
    # the query order is the seed's own permutation, not only the classes and supports drawn for it
    assert [other.episode(i).query for i in range(10)] != [first.episode(i).query for i in range(10)]


def test_dataloader_worker_count_does_not_matter(synth):
    cfg = data_config(*synth)
    dataset = EpisodeDataset(cfg, "val", episodes=6, seed=3)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=episode_collate(255))
        batches[workers] = list(loader)
    for a, b in zip(batches[0], batches[2]):
        assert_same(a, b)


def test_episode_sampling_rules(pascal):
    cfg = data_config(*pascal, dataset="pascal", shot=2)
    dataset = EpisodeDataset(cfg, "val", episodes=60, seed=0)
    eligible = list_classes(dataset)
    queries = set()
    for index in range(len(dataset)):
        episode = dataset.episode(index)
        query = str(dataset.root / episode.query[0])
        supports = [str(dataset.root / image) for image, _ in episode.supports]
        queries.add(query)
        assert episode.class_id in eligible[query] and episode.class_id in range(1, 6)
        assert len(set(supports)) == 2 and query not in supports
        assert all(episode.class_id in eligible[s] for s in supports)
    assert len(queries) == 15  # every val image of the novel classes is a query within one pass


def test_sample_shapes_and_binary_labels(synth):
    # the foreground-anchored crop always keeps part of the target; the reference's uniform crop may not
    # when the target cannot fit (tests/data/test_protocol_rules.py)
    cfg = data_config(*synth, shot=2, train_crop="foreground_anchor")
    sample = EpisodeDataset(cfg, "train", seed=0)[0]
    assert sample["query"].shape == (3, 48, 48) and sample["query"].dtype == torch.float32
    assert sample["supports"].shape == (2, 3, 48, 48) and sample["support_masks"].shape == (2, 48, 48)
    assert sample["query_label"].dtype == torch.int64 and sample["class_id"].dtype == torch.int64
    assert set(sample["query_label"].unique().tolist()) <= {0, 1, 255}
    assert set(sample["support_masks"].unique().tolist()) <= {0, 1, 255}
    assert (sample["query_label"] == 1).any() and "query_label_ori" not in sample


def test_val_labels_and_original_size_label(synth):
    cfg = data_config(*synth)
    dataset = EpisodeDataset(cfg, "val", episodes=4, seed=0)
    for index in range(4):
        episode, sample = dataset.episode(index), dataset[index]
        original = read_label(dataset.root / episode.query[1])
        expected = np.where(original == 255, 255, (original == episode.class_id).astype(np.int64))
        assert np.array_equal(sample["query_label_ori"].numpy(), expected)
        height, width = original.shape
        scale = 56 / max(height, width)
        new_h, new_w = round(height * scale), round(width * scale)
        label = sample["query_label"]
        assert (label[new_h:] == 255).all() and (label[:, new_w:] == 255).all()
        assert (label[:new_h, :new_w] == 1).any()
    batch = collate_episodes([dataset[0], dataset[1]], 255)
    ori = [dataset[i]["query_label_ori"] for i in (0, 1)]
    height, width = max(o.shape[0] for o in ori), max(o.shape[1] for o in ori)
    assert batch["query_label_ori"].shape == (2, height, width)
    h0, w0 = ori[0].shape
    assert torch.equal(batch["query_label_ori"][0, :h0, :w0], ori[0])
    assert (batch["query_label_ori"][0, h0:] == 255).all() and (batch["query_label_ori"][0, :, w0:] == 255).all()
    assert isinstance(batch["query_path"], list) and isinstance(batch["support_paths"][0], list)


def test_bbox_support_annotation_is_a_filled_box(synth):
    cfg = data_config(*synth, ann_type="bbox", val_size=200)
    dataset = EpisodeDataset(cfg, "val", episodes=5, seed=0)
    for index in range(5):
        mask = dataset[index]["support_masks"][0].numpy()
        ys, xs = np.nonzero(mask == 1)
        box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert (box == 1).all()


def test_base_class_dataset_remaps_labels(pascal):
    # base_images fold_lists: the fold's training list (here drop_counted), val images with a counted base class
    cfg = data_config(*pascal, dataset="pascal", split=0, base_images="fold_lists", novel_in_train="drop_counted",
                      base_train_size=80)
    dataset = BaseClassDataset(cfg, "train", seed=0)
    names = [image for image, _, _ in dataset.items]
    assert "JPEGImages/rule_novel2048.jpg" not in names
    sample = dataset[names.index("JPEGImages/rule_novel2047.jpg")]
    assert sample["image"].shape == (3, 80, 80)
    # class 7 is the 2nd base class of fold 0 -> 2; novel class 2 -> background
    assert set(sample["label"].unique().tolist()) <= {0, 2, 255} and (sample["label"] == 2).any()
    val = BaseClassDataset(data_config(*pascal, dataset="pascal", split=1, base_images="fold_lists"), "val")
    labels = torch.cat([val[i]["label"].flatten() for i in range(len(val))]).unique().tolist()
    assert set(labels) == set(range(16)) | {255}


def test_base_class_dataset_all_images_as_bam(pascal):
    """base_images all (the default): every image of the pools, novel classes as background, stage-1 sizes."""
    root, _ = pascal
    cfg = data_config(*pascal, dataset="pascal", split=0, base_train_size=40, base_val_size=36)
    train, val = BaseClassDataset(cfg, "train", seed=0), BaseClassDataset(cfg, "val")
    pool = [line.split()[0] for line in (root / "ImageSets/SegmentationAug/train.txt").read_text().splitlines()]
    assert [image for image, _, _ in train.items] == pool and len(val) == 60
    sample = train[pool.index("JPEGImages/rule_novel2048.jpg")]
    # class 6 (first base class of fold 0) -> 1, the 2048 px of novel class 1 -> background
    assert sample["image"].shape == (3, 40, 40) and set(sample["label"].unique().tolist()) <= {0, 1, 255}
    only_novel = val[[image for image, _, _ in val.items].index("JPEGImages/v01_0.jpg")]["label"]
    assert only_novel.shape == (36, 36) and set(only_novel.unique().tolist()) == {0, 255}


def test_stage1_targets_novel_classes_are_background_not_ignored(pascal):
    """BAM's base learner (fss-protocol.md): base class c -> its rank among the fold's base classes + 1, novel classes
    -> 0, 255 kept; validated at the stored 64 px, each target's pixel count is that of its classes on disk."""
    root, _ = pascal
    val = BaseClassDataset(data_config(*pascal, dataset="pascal", split=0, base_val_size=64), "val")
    names = [image for image, _, _ in val.items]
    for name, targets in (("v01_0", {0: (0, 1), 255: (255,)}), ("v06_0", {0: (0,), 1: (6,), 255: (255,)})):
        stored = read_label(str(root / "SegmentationClassAug" / f"{name}.png"))
        label = val[names.index(f"JPEGImages/{name}.jpg")]["label"].numpy()
        assert set(np.unique(label)) == set(targets)
        for target, classes in targets.items():
            assert (label == target).sum() == np.isin(stored, classes).sum(), (name, target)


def test_base_val_images_caps_stage1_validation_with_a_fixed_subset(pascal):
    full = BaseClassDataset(data_config(*pascal, dataset="pascal", split=0), "val")
    capped = BaseClassDataset(data_config(*pascal, dataset="pascal", split=0, base_val_images=7), "val")
    again = BaseClassDataset(data_config(*pascal, dataset="pascal", split=0, base_val_images=7), "val")
    other_seed = BaseClassDataset(data_config(*pascal, dataset="pascal", split=0, base_val_images=7, seed=5), "val")
    assert len(full) == 60 and len(capped) == 7 and capped.items == again.items != other_seed.items
    positions = [full.items.index(item) for item in capped.items]
    assert positions == sorted(positions) and positions != list(range(7))  # a drawn subset, in list order
    assert len(BaseClassDataset(data_config(*pascal, dataset="pascal", split=0, base_val_images=60), "val")) == 60
    train = BaseClassDataset(data_config(*pascal, dataset="pascal", split=0, base_val_images=7), "train", seed=0)
    assert len(train) > 7  # training is never capped


@pytest.mark.parametrize("rule, kept", [("drop_any", set()), ("drop_counted", {"rule_novel2047", "rule_novel10"}),
                                        ("keep_as_background", {"rule_novel2048", "rule_novel2047", "rule_novel10"})])
def test_novel_in_train_picks_the_training_list(pascal, rule, kept):
    cfg = data_config(*pascal, dataset="pascal", novel_in_train=rule)
    names = {image for image, _, _ in EpisodeDataset(cfg, "train").items}
    rule_cases = {name.removeprefix("JPEGImages/").removesuffix(".jpg") for name in names if "rule_" in name}
    assert rule_cases == kept


def test_default_lengths(pascal):
    cfg = data_config(*pascal, dataset="pascal", test_episodes=11)
    train = EpisodeDataset(cfg, "train")
    assert len(train) == len(train.items) and len(EpisodeDataset(cfg, "val")) == 11
    cfg = data_config(*pascal, dataset="pascal", train_episodes=9)
    assert len(EpisodeDataset(cfg, "train")) == 9


@pytest.mark.parametrize("overrides,message", [
    ({"shot": 0}, "'shot' must be an integer >= 1"),
    ({"dataset": "voc"}, "unknown dataset 'voc'"),
    ({"split": 4}, r"fold \(config key 'split'\) must be 0..3"),
    ({"ann_type": "scribble"}, "'ann_type' must be one of"),
    ({"novel_in_train": "drop"}, r"'novel_in_train' must be one of \['drop_any', 'drop_counted', 'keep_as_background'\]"),
    ({"episode_class": "big"}, r"'episode_class' must be one of \['any_size', 'counted'\]"),
    ({"train_crop": "centre"}, r"'train_crop' must be one of \['uniform_retry', 'foreground_anchor'\]"),
])
def test_config_errors(pascal, overrides, message):
    cfg = data_config(*pascal, dataset="pascal")
    cfg.update(overrides)  # set after loading: the dataset's own checks (load_config refuses shot 0 and split 4 first)
    with pytest.raises(UserError, match=message):
        EpisodeDataset(cfg, "train")


def test_base_images_error(pascal):
    cfg = data_config(*pascal, dataset="pascal", base_images="some")
    with pytest.raises(UserError, match=r"'base_images' must be one of \['all', 'fold_lists'\]"):
        BaseClassDataset(cfg, "train")


def test_missing_data_root_and_list(pascal, tmp_path):
    root, _ = pascal
    with pytest.raises(UserError, match="data_root .* does not exist.*make_synth --root"):
        EpisodeDataset(data_config(tmp_path / "none", tmp_path), "train")
    with pytest.raises(UserError, match=r"list not found; generate it with: python -m tools.make_lists --dataset pascal"):
        EpisodeDataset(data_config(root, tmp_path / "empty", dataset="pascal"), "val")


@pytest.fixture
def pascal_copy(pascal, tmp_path):
    root, lists = pascal
    shutil.copytree(root, tmp_path / "voc")
    return tmp_path / "voc", lists


def test_list_item_with_missing_image(pascal_copy):
    root, lists = pascal_copy
    (root / "JPEGImages" / "v01_0.jpg").unlink()
    with pytest.raises(UserError, match=r"val_min2048.json: item 1: image .*v01_0.jpg not found"):
        EpisodeDataset(data_config(root, lists, dataset="pascal"), "val")


def query_of(dataset, name):
    return next(i for i in range(len(dataset)) if dataset.episode(i).query[0].endswith(name))


def test_corrupt_image(pascal_copy):
    root, lists = pascal_copy
    (root / "JPEGImages" / "v01_0.jpg").write_bytes(b"\xff\xd8 truncated")
    dataset = EpisodeDataset(data_config(root, lists, dataset="pascal"), "val", episodes=15)
    with pytest.raises(UserError, match="v01_0.jpg: the JPEG is truncated"):
        dataset[query_of(dataset, "v01_0.jpg")]


def test_image_label_size_mismatch(pascal_copy):
    root, lists = pascal_copy
    write_label(root / "SegmentationClassAug" / "v01_0.png", np.ones((32, 64), np.uint8))
    dataset = EpisodeDataset(data_config(root, lists, dataset="pascal"), "val", episodes=15)
    with pytest.raises(UserError, match="same height and width"):
        dataset[query_of(dataset, "v01_0.jpg")]


def test_out_of_range_label_value(pascal_copy):
    root, lists = pascal_copy
    label = read_label(root / "SegmentationClassAug" / "v01_0.png")
    label[0, 0] = 40
    write_label(root / "SegmentationClassAug" / "v01_0.png", label)
    dataset = EpisodeDataset(data_config(root, lists, dataset="pascal"), "val", episodes=15)
    with pytest.raises(UserError, match="label value 40 is not a class id"):
        dataset[query_of(dataset, "v01_0.jpg")]


def test_classes_with_too_few_images_are_skipped_then_empty_fold_errors(pascal):
    cfg = data_config(*pascal, dataset="pascal", shot=3)  # every val class has exactly 3 images
    with pytest.warns(UserWarning, match="fewer than shot \\+ 1 = 4"):
        with pytest.raises(UserError, match="no class has at least shot \\+ 1 = 4 eligible images"):
            EpisodeDataset(cfg, "val")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EpisodeDataset(data_config(*pascal, dataset="pascal", shot=2), "val")


def test_a_lists_files_are_looked_for_once_per_process_until_the_list_changes(tmp_path):
    """A training run builds an episode set every epoch: its list's files are checked the first time only; a list
    written again is checked again."""
    import os

    root, lists = tmp_path / "synth", tmp_path / "lists"
    make_synth(root, num_train=30, num_val=12, seed=2, workers=1)
    make_lists("synth", root, lists, workers=1)
    cfg = data_config(root, lists)
    train = EpisodeDataset(cfg, "train")
    gone = root / train.items[0][0]
    gone.rename(tmp_path / "moved.jpg")
    EpisodeDataset(cfg, "train")  # the list was found complete before and has not changed: not looked at again
    list_file = next((lists / "synth" / "fold0").glob("train_*drop_any.json"))
    stat = list_file.stat()
    os.utime(list_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    with pytest.raises(UserError, match=f"{gone.name} not found"):
        EpisodeDataset(cfg, "train")
