"""make_lists: fold splits, the 2048-pixel rule, base-only training images, reproducibility, bad input."""
import json

import numpy as np
import pytest

from tests.fixtures_data import block_label, pascal_pool, write_pool, write_rgb
from util.errors import UserError
from util.fss_lists import fold_list_path
from util.image_io import write_label
from util.make_lists import main, make_lists


def load(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def pascal_lists(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    lists = tmp_path_factory.mktemp("lists")
    pascal_pool(root)
    make_lists("pascal", root, lists, workers=1)
    return root, lists


@pytest.mark.parametrize("fold", range(4))
def test_pascal_fold_classes_and_items(pascal_lists, fold):
    _, lists = pascal_lists
    novel = list(range(5 * fold + 1, 5 * fold + 6))
    base = [c for c in range(1, 21) if c not in novel]
    for subset, classes in (("train", base), ("train_keepnovel", base), ("val", novel), ("base_val", base)):
        data = load(fold_list_path(lists, "pascal", fold, subset, 2048))
        assert data["classes"] == classes and data["fold"] == fold
        assert all(set(c) <= set(classes) and c for _, _, c in data["items"])
    val = load(fold_list_path(lists, "pascal", fold, "val", 2048))
    assert len(val["items"]) == 15  # 3 val images per novel class
    assert {c for _, _, cs in val["items"] for c in cs} == set(novel)


def test_min_pixel_rule_and_base_only_training(pascal_lists):
    _, lists = pascal_lists
    train = {item[0]: item[2] for item in load(fold_list_path(lists, "pascal", 0, "train", 2048))["items"]}
    keep = {item[0]: item[2] for item in load(fold_list_path(lists, "pascal", 0, "train_keepnovel", 2048))["items"]}
    # 2048 px of novel class 1: counted, so the image is dropped (kept in the keepnovel variant)
    assert "JPEGImages/rule_novel2048.jpg" not in train
    assert keep["JPEGImages/rule_novel2048.jpg"] == [6]
    # 2047 px of novel class 2: not counted, the image stays
    assert train["JPEGImages/rule_novel2047.jpg"] == [7]
    # t05_1 holds class 5 (novel) and a 6x38 strip of class 6 (228 px): nothing eligible
    assert "JPEGImages/t05_1.jpg" not in keep
    assert list(train) == sorted(train)


def test_lists_reproducible_byte_for_byte(pascal_lists, tmp_path):
    root, lists = pascal_lists
    make_lists("pascal", root, tmp_path, workers=2)
    for fold in range(4):
        for subset in ("train", "train_keepnovel", "val", "base_val"):
            ours = fold_list_path(tmp_path, "pascal", fold, subset, 2048)
            assert ours.read_bytes() == fold_list_path(lists, "pascal", fold, subset, 2048).read_bytes()


def test_min_class_pixels_option_names_the_files(pascal_lists, tmp_path):
    root, _ = pascal_lists
    make_lists("pascal", root, tmp_path, min_class_pixels=200, workers=1)
    data = load(fold_list_path(tmp_path, "pascal", 0, "train_keepnovel", 200))
    items = {item[0]: item[2] for item in data["items"]}
    assert data["min_class_pixels"] == 200 and items["JPEGImages/t05_1.jpg"] == [6]


@pytest.mark.parametrize("style,fold,novel", [
    ("fwb", 0, list(range(1, 81, 4))), ("fwb", 3, list(range(4, 81, 4))),
    ("panet", 1, list(range(21, 41))), ("panet", 3, list(range(61, 81))),
])
def test_coco_both_split_styles(tmp_path, style, fold, novel):
    entries = {f"img{c:02d}": block_label(48, 48, [(c, 0, 0, 48, 48)]) for c in range(1, 81)}
    for subset, folder in (("train", "train2014"), ("val", "val2014")):
        lines = []
        for name, label in entries.items():
            write_rgb(tmp_path / folder / f"{name}.jpg", np.zeros((48, 48, 3), np.uint8))
            write_label(tmp_path / "masks" / folder / f"{name}.png", label)
            lines.append(f"{folder}/{name}.jpg masks/{folder}/{name}.png\n")
        (tmp_path / "masks" / f"{subset}.txt").write_text("".join(lines))
    make_lists("coco", tmp_path, tmp_path / "lists", workers=1)
    val = load(fold_list_path(tmp_path / "lists", "coco", fold, "val", 2048, style))
    train = load(fold_list_path(tmp_path / "lists", "coco", fold, "train", 2048, style))
    assert val["classes"] == novel and val["split_style"] == style
    assert sorted(c for _, _, cs in val["items"] for c in cs) == novel
    assert sorted(c for _, _, cs in train["items"] for c in cs) == [c for c in range(1, 81) if c not in novel]
    assert (tmp_path / "lists" / "coco" / style / f"fold{fold}").is_dir()


def small_pool(root, **labels):
    entries = {"a": block_label(64, 64, [(3, 0, 0, 60, 60)])}
    entries.update(labels)
    write_pool(root, "ImageSets/SegmentationAug/train.txt", entries)
    write_pool(root, "ImageSets/SegmentationAug/val.txt", entries)


def test_error_missing_data_root(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make_lists("pascal", tmp_path / "nope", tmp_path / "lists")


def test_error_missing_pool_list(tmp_path):
    with pytest.raises(UserError, match=r"ImageSets/SegmentationAug/train.txt: image list not found.*prepare_pascal"):
        make_lists("pascal", tmp_path, tmp_path / "lists")


def test_error_list_line_with_missing_label(tmp_path):
    small_pool(tmp_path)
    (tmp_path / "SegmentationClassAug" / "a.png").unlink()
    with pytest.raises(UserError, match=r"train.txt:1: label .*a.png not found"):
        make_lists("pascal", tmp_path, tmp_path / "lists", workers=1)


def test_error_size_mismatch(tmp_path):
    small_pool(tmp_path)
    write_label(tmp_path / "SegmentationClassAug" / "a.png", np.zeros((32, 64), np.uint8))
    with pytest.raises(UserError, match="same height and width"):
        make_lists("pascal", tmp_path, tmp_path / "lists", workers=2)


def test_error_out_of_range_class_id(tmp_path):
    small_pool(tmp_path, b=block_label(64, 64, [(21, 0, 0, 60, 60)]))
    with pytest.raises(UserError, match=r"b.png: label value 21 is not a class id"):
        make_lists("pascal", tmp_path, tmp_path / "lists", workers=1)


def test_error_corrupt_label(tmp_path):
    small_pool(tmp_path)
    (tmp_path / "SegmentationClassAug" / "a.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot decode the label"):
        make_lists("pascal", tmp_path, tmp_path / "lists", workers=1)


def test_cli_unknown_dataset_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "voc", "--data-root", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown dataset 'voc'")
