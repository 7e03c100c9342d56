"""Build PASCAL VOC 2012 + SBD ``SegmentationClassAug`` and the standard train/val image lists.

Inputs: a VOC 2012 tree (``JPEGImages/``, ``SegmentationClass/`` palette PNGs,
``ImageSets/Segmentation/{train,val}.txt``) and the SBD release (``benchmark_RELEASE/dataset/``
with ``cls/*.mat`` (struct ``GTcls.Segmentation``), ``train.txt``, ``val.txt``).

Output, inside the VOC tree: ``SegmentationClassAug/<id>.png`` (class ids 0..20, 255 kept; the VOC
annotation where one exists, else SBD's) and ``ImageSets/SegmentationAug/{train,val}.txt`` with
train = VOC train + SBD train + SBD val - VOC val (10582 images on the full data) and val = VOC val
(1449). Masks already written are skipped, so an interrupted run can be restarted.

    python -m util.prepare_pascal --voc-root data/VOCdevkit/VOC2012 --sbd-root data/benchmark_RELEASE
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import scipy.io
from tqdm import tqdm

from util.errors import UserError, cli_entry
from util.fss_lists import pool_list_path
from util.image_io import check_label_values, read_label, write_label

NUM_CLASSES = 20


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: id list not found; check the --voc-root / --sbd-root folder layout (see README)")
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


def _convert(job: tuple[str, str, str]) -> None:
    source, kind, target = job
    label = read_label(source) if kind == "voc" else read_sbd_label(Path(source))
    check_label_values(label, NUM_CLASSES, source)
    write_label(target, label)


def prepare_pascal(voc_root: str | Path, sbd_root: str | Path, workers: int | None = None) -> dict[str, int]:
    """Write SegmentationClassAug and the train/val lists; returns the number of images per list."""
    voc_root, sbd = Path(voc_root), sbd_dataset_dir(Path(sbd_root))
    for folder in (voc_root / "JPEGImages", voc_root / "SegmentationClass", sbd / "cls"):
        if not folder.is_dir():
            raise UserError(f"{folder}: folder not found; check --voc-root / --sbd-root (see README, Data preparation)")
    voc_train = _read_ids(voc_root / "ImageSets/Segmentation/train.txt")
    voc_val = _read_ids(voc_root / "ImageSets/Segmentation/val.txt")
    sbd_ids = _read_ids(sbd / "train.txt") + _read_ids(sbd / "val.txt")
    val_set = set(voc_val)
    subsets = {"train": sorted(set(voc_train + sbd_ids) - val_set), "val": sorted(val_set)}

    out_dir = voc_root / "SegmentationClassAug"
    jobs = []
    for image_id in sorted(set(subsets["train"]) | val_set):
        target = out_dir / f"{image_id}.png"
        if not (voc_root / "JPEGImages" / f"{image_id}.jpg").is_file():
            raise UserError(f"{voc_root / 'JPEGImages' / (image_id + '.jpg')}: image not found; "
                            "the VOC JPEGImages folder is incomplete, re-extract VOCtrainval_11-May-2012.tar")
        if target.is_file():
            continue
        voc_label = voc_root / "SegmentationClass" / f"{image_id}.png"
        if voc_label.is_file():
            jobs.append((str(voc_label), "voc", str(target)))
        else:
            mat = sbd / "cls" / f"{image_id}.mat"
            if not mat.is_file():
                raise UserError(f"{mat}: no label for image {image_id} in VOC SegmentationClass or SBD cls; "
                                "check the SBD download")
            jobs.append((str(mat), "sbd", str(target)))
    out_dir.mkdir(parents=True, exist_ok=True)
    if jobs:
        with ProcessPoolExecutor(workers or min(os.cpu_count() or 1, 8)) as pool:
            list(tqdm(pool.map(_convert, jobs, chunksize=32), total=len(jobs), desc="SegmentationClassAug"))
    else:
        print(f"SegmentationClassAug: all {len(set(subsets['train']) | val_set)} masks already written", file=sys.stderr)
    for subset, ids in subsets.items():
        path = pool_list_path(voc_root, "pascal", subset)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png\n" for i in ids))
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
          f"python -m util.make_lists --dataset pascal --data-root {args.voc_root}")


if __name__ == "__main__":
    main()
