"""make_lists: fold splits, the 2048-pixel rule, the three training-pool rules, present classes, reproducibility,
old-format lists, bad input."""
import json

import numpy as np
import pytest

from tests.support.data import block_label, pascal_pool, write_pool, write_rgb
from tools.make_lists import main
from util.common.errors import UserError
from util.data.lists import SUBSETS, fold_list_path, read_fold_list
from util.data.image_io import read_label, write_label
from tools.make_lists import make_lists


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
    subsets = {"train_drop_any": base, "train_drop_counted": base, "train_keep_as_background": base, "val": novel,
               "base_val": base}
    assert set(subsets) == set(SUBSETS)
    for subset, classes in subsets.items():
        data = load(fold_list_path(lists, "pascal", fold, subset, 2048))
        assert data["classes"] == classes and data["fold"] == fold and data["format"] == 2
        assert all(set(counted) <= set(present) <= set(classes) and counted for _, _, counted, present in data["items"])
    val = load(fold_list_path(lists, "pascal", fold, "val", 2048))
    assert len(val["items"]) == 15  # 3 val images per novel class
    assert {c for _, _, cs, _ in val["items"] for c in cs} == set(novel)


def items_of(lists, subset, min_class_pixels=2048):
    """``{image: [counted, present]}`` of a fold-0 list."""
    return {item[0]: item[2:] for item in load(fold_list_path(lists, "pascal", 0, subset, min_class_pixels))["items"]}


def test_min_pixel_rule_and_the_three_training_pools(pascal_lists):
    _, lists = pascal_lists
    drop_any, drop_counted, keep = (items_of(lists, f"train_{rule}")
                                    for rule in ("drop_any", "drop_counted", "keep_as_background"))
    # 2048 px of novel class 1: counted, so the image is dropped unless novel pixels are kept as background
    assert "JPEGImages/rule_novel2048.jpg" not in drop_any and "JPEGImages/rule_novel2048.jpg" not in drop_counted
    assert keep["JPEGImages/rule_novel2048.jpg"] == [[6], [6]]
    # 2047 px of novel class 2: not counted; dropped only by the reference rule (any novel pixel)
    assert "JPEGImages/rule_novel2047.jpg" not in drop_any
    assert drop_counted["JPEGImages/rule_novel2047.jpg"] == keep["JPEGImages/rule_novel2047.jpg"] == [[7], [7]]
    # t05_1 holds class 5 (novel) and a 6x38 strip of class 6 (228 px): nothing counted
    assert "JPEGImages/t05_1.jpg" not in keep
    for items in (drop_any, drop_counted, keep):
        assert list(items) == sorted(items)


def test_training_image_with_a_10_pixel_novel_object(pascal_lists):
    """The reference (BAM's filter_intersection) drops it; drop_counted keeps it (novel pixels as background)."""
    root, lists = pascal_lists
    assert "JPEGImages/rule_novel10.jpg" not in items_of(lists, "train_drop_any")
    assert items_of(lists, "train_drop_counted")["JPEGImages/rule_novel10.jpg"] == [[8], [8]]
    assert items_of(lists, "train_keep_as_background")["JPEGImages/rule_novel10.jpg"] == [[8], [8]]
    # of the drop_counted list, exactly the images with a novel pixel (1..5) are gone from the reference list
    drop_any, drop_counted = items_of(lists, "train_drop_any"), items_of(lists, "train_drop_counted")
    labels = {image: label for image, label, _, _ in load(fold_list_path(lists, "pascal", 0, "train_drop_counted",
                                                                         2048))["items"]}
    with_novel = {image for image, label in labels.items()
                  if np.isin(read_label(root / label), [1, 2, 3, 4, 5]).any()}
    assert len(with_novel) >= 4 and set(drop_counted) - set(drop_any) == with_novel


def test_items_record_present_classes_at_any_size(pascal_lists):
    _, lists = pascal_lists
    # t06_1 holds class 6 (50x50 block) and a strip of class 7 of 228 px (6x38 inside its 255 border)
    assert items_of(lists, "train_drop_any")["JPEGImages/t06_1.jpg"] == [[6], [6, 7]]
    assert items_of(lists, "train_drop_any")["JPEGImages/t06_0.jpg"] == [[6], [6]]
    # in fold 0's val list, v01_0 holds novel class 1 only; base classes are not recorded there
    assert items_of(lists, "val")["JPEGImages/v01_0.jpg"] == [[1], [1]]


def test_old_format_list_asks_to_regenerate(pascal_lists, tmp_path):
    _, lists = pascal_lists
    old = tmp_path / "val_min2048.json"
    data = load(fold_list_path(lists, "pascal", 0, "val", 2048))
    del data["format"]
    data["items"] = [item[:3] for item in data["items"]]
    old.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"val_min2048.json: list format 1, this code reads format 2 .*regenerate "
                                        r"the lists with: python -m tools.make_lists --dataset pascal"):
        read_fold_list(old, "python -m tools.make_lists --dataset pascal --data-root x --list-root y")


def test_lists_reproducible_byte_for_byte(pascal_lists, tmp_path):
    root, lists = pascal_lists
    make_lists("pascal", root, tmp_path, workers=2)
    for fold in range(4):
        for subset in SUBSETS:
            ours = fold_list_path(tmp_path, "pascal", fold, subset, 2048)
            assert ours.read_bytes() == fold_list_path(lists, "pascal", fold, subset, 2048).read_bytes()


def test_min_class_pixels_option_names_the_files(pascal_lists, tmp_path):
    root, _ = pascal_lists
    make_lists("pascal", root, tmp_path, min_class_pixels=200, workers=1)
    data = load(fold_list_path(tmp_path, "pascal", 0, "train_keep_as_background", 200))
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
    train = load(fold_list_path(tmp_path / "lists", "coco", fold, "train_drop_any", 2048, style))
    assert val["classes"] == novel and val["split_style"] == style
    assert sorted(c for _, _, cs, _ in val["items"] for c in cs) == novel
    assert sorted(c for _, _, cs, _ in train["items"] for c in cs) == [c for c in range(1, 81) if c not in novel]
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
