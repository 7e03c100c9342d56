"""Build PASCAL VOC 2012 + SBD ``SegmentationClassAug`` and the standard train/val image lists.

Inputs: a VOC 2012 tree (``JPEGImages/``, ``SegmentationClass/`` palette PNGs,
``ImageSets/Segmentation/{train,val}.txt``) and the SBD release (``benchmark_RELEASE/dataset/``
with ``cls/*.mat`` (struct ``GTcls.Segmentation``), ``train.txt``, ``val.txt``).

Output, inside the VOC tree: ``SegmentationClassAug/<id>.png`` (class ids 0..20, 255 kept; the VOC
annotation where one exists, else SBD's) and ``ImageSets/SegmentationAug/{train,val}.txt`` with
train = VOC train + SBD train + SBD val - VOC val (10582 images on the full data) and val = VOC val
(1449). Re-running redoes only what is not current: ``SegmentationClassAug.manifest.json`` records, per
mask, the hash of the label file it was converted from and the hash of the PNG written, so a changed
VOC/SBD label, a missing, truncated or altered mask is converted again and nothing else is rewritten
(util/data/mask_manifest.py); masks are written atomically.

Command line:

    python -m tools.prepare_pascal --voc-root data/VOCdevkit/VOC2012 --sbd-root data/benchmark_RELEASE
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import scipy.io

from util.common.atomic import write_text_if_changed
from util.common.errors import UserError, cli_entry
from util.data.image_io import (
    IGNORE_ID,
    check_label_values,
    encode_label_png,
    read_label,
)
from util.data.lists import make_lists_command, pool_list_path
from util.data.mask_manifest import MaskManifest, make_masks, sha256_file

NUM_CLASSES = 20
PRODUCER = "prepare_pascal 1"  # the conversion rule's version: change it when _convert changes, so masks are redone
VOC_LABEL_REMEDY = "VOC's SegmentationClass labels are 8-bit palette PNGs: re-extract VOCtrainval_11-May-2012.tar"


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: id list not found; check the --voc-root / --sbd-root folder layout (see docs/data.md, 'PASCAL-5i')")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file of image ids; re-download VOC / SBD") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def sbd_dataset_dir(sbd_root: Path) -> Path:
    """``benchmark_RELEASE/dataset`` given either it or its parent."""
    return sbd_root / "dataset" if (sbd_root / "dataset").is_dir() else sbd_root


def read_sbd_label(path: Path) -> np.ndarray:
    """Class ids from an SBD ``cls/<id>.mat`` file (``GTcls.Segmentation``)."""
    try:
        data = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
        return np.asarray(data["GTcls"].Segmentation, dtype=np.uint8)
    except Exception:  # scipy raises many types for a file that is not MATLAB v5 (MatReadError, IndexError, ...)
        raise UserError(f"{path}: not an SBD cls .mat file with GTcls.Segmentation; re-download SBD") from None


def _convert(job: tuple[str, str]) -> bytes:
    source, kind = job
    label = read_label(source, VOC_LABEL_REMEDY) if kind == "voc" else read_sbd_label(Path(source))
    check_label_values(label, NUM_CLASSES, source, IGNORE_ID)
    return encode_label_png(label)


def prepare_pascal(voc_root: str | Path, sbd_root: str | Path, workers: int | None = None) -> dict[str, int]:
    """Write SegmentationClassAug and the train/val lists; returns the number of images per list."""
    voc_root, sbd = Path(voc_root), sbd_dataset_dir(Path(sbd_root))
    for folder in (voc_root / "JPEGImages", voc_root / "SegmentationClass", sbd / "cls"):
        if not folder.is_dir():
            raise UserError(f"{folder}: folder not found; check --voc-root / --sbd-root (see docs/data.md, 'PASCAL-5i')")
    voc_train = _read_ids(voc_root / "ImageSets/Segmentation/train.txt")
    voc_val = _read_ids(voc_root / "ImageSets/Segmentation/val.txt")
    sbd_ids = _read_ids(sbd / "train.txt") + _read_ids(sbd / "val.txt")
    val_set = set(voc_val)
    subsets = {"train": sorted(set(voc_train + sbd_ids) - val_set), "val": sorted(val_set)}

    wanted = []
    for image_id in sorted(set(subsets["train"]) | val_set):
        if not (voc_root / "JPEGImages" / f"{image_id}.jpg").is_file():
            raise UserError(f"{voc_root / 'JPEGImages' / (image_id + '.jpg')}: image not found; "
                            "the VOC JPEGImages folder is incomplete, re-extract VOCtrainval_11-May-2012.tar")
        voc_label = voc_root / "SegmentationClass" / f"{image_id}.png"
        if voc_label.is_file():
            source, kind = voc_label, "voc"
        else:
            source, kind = sbd / "cls" / f"{image_id}.mat", "sbd"
            if not source.is_file():
                raise UserError(f"{source}: no label for image {image_id} in VOC SegmentationClass or SBD cls; "
                                "check the SBD download")
        wanted.append((f"{image_id}.png", f"{kind} {sha256_file(source)}", (str(source), kind)))
    manifest = MaskManifest(voc_root / "SegmentationClassAug", PRODUCER, {})
    written, current = make_masks(manifest, wanted, _convert, workers or min(os.cpu_count() or 1, 8),
                                  "SegmentationClassAug")
    print(f"SegmentationClassAug: {written} written, {current} already current ({manifest.path.name})")
    for subset, ids in subsets.items():
        write_text_if_changed(pool_list_path(voc_root, "pascal", subset),
                              "".join(f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png\n" for i in ids))
    return {subset: len(ids) for subset, ids in subsets.items()}


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voc-root", required=True, help="VOCdevkit/VOC2012")
    parser.add_argument("--sbd-root", required=True, help="benchmark_RELEASE (or benchmark_RELEASE/dataset)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    counts = prepare_pascal(args.voc_root, args.sbd_root, args.workers)
    print(f"prepare_pascal: train {counts['train']} images, val {counts['val']} images; next: "
          f"{make_lists_command('pascal', args.voc_root)}")


if __name__ == "__main__":
    main()
