"""Tiny on-disk datasets in the real formats for the data tests (VOC+SBD, COCO json, pools, synth)."""
from __future__ import annotations

from pathlib import Path

import cv2
import imgviz
import numpy as np
from PIL import Image

from util.data.registry import base_classes, novel_classes
from util.common.config import load_config
from util.data.image_io import write_label


def voc_palette() -> list[int]:
    """The VOC colour map (256 entries) as a flat PIL palette."""
    return imgviz.label_colormap().astype(np.uint8).ravel().tolist()


def write_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def write_palette_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label, np.uint8).tobytes())
    img.putpalette(voc_palette())
    img.save(path)


def block_label(height: int, width: int, blocks: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """A label with rectangles ``(class_id, top, left, h, w)`` and a 255 border around each."""
    label = np.zeros((height, width), dtype=np.uint8)
    for class_id, top, left, h, w in blocks:
        label[top:top + h, left:left + w] = 255
        label[top + 1:top + h - 1, left + 1:left + w - 1] = class_id
    return label


def write_pool(root: Path, pool_list: str, entries: dict[str, np.ndarray], seed: int = 0,
               image: str = "JPEGImages/{name}.jpg", label: str = "SegmentationClassAug/{name}.png") -> None:
    """Images (random RGB) and labels for ``{name: label}`` plus the pool list; ``image`` and ``label`` place a name's
    files (default: PASCAL naming)."""
    rng = np.random.default_rng(seed)
    lines = []
    for name, values in sorted(entries.items()):
        image_path, label_path = image.format(name=name), label.format(name=name)
        write_rgb(root / image_path, rng.integers(0, 256, size=(*values.shape, 3), dtype=np.uint8))
        write_label(root / label_path, values)
        lines.append(f"{image_path} {label_path}\n")
    path = root / pool_list
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))


def pascal_pool(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """A 64x64 PASCAL pool: every class in 3 train and 3 val images, plus rule cases (returned)."""
    train, val = {}, {}
    for c in range(1, 21):
        other = c % 20 + 1
        for k in range(3):
            train[f"t{c:02d}_{k}"] = block_label(64, 64, [(c, 2, 2, 50, 50)] + ([(other, 54, 2, 8, 40)] if k else []))
            val[f"v{c:02d}_{k}"] = block_label(64, 64, [(c, 4, 4, 48, 48)])
    # rule cases (fold 0, novel 1..5): class 6 with a 2048-px novel class 1 -> dropped unless keep_as_background;
    # class 7 with a 2047-px novel class 2 -> the novel class does not count: kept unless drop_any;
    # class 8 with a 10-px novel class 3 -> dropped under drop_any only.
    big = np.zeros((80, 80), np.uint8)
    big[:, :40] = 6
    big[:51, 40:80] = 1
    big[51, 40:48] = 1     # 51*40 + 8 = 2048 pixels of class 1
    train["rule_novel2048"] = big
    small = np.zeros((80, 80), np.uint8)
    small[:, :40] = 7
    small[:51, 40:80] = 2
    small[51, 40:47] = 2   # 2047 pixels of class 2
    train["rule_novel2047"] = small
    tiny = np.zeros((80, 80), np.uint8)
    tiny[:, :40] = 8
    tiny[70:72, 60:65] = 3  # 10 pixels of class 3
    train["rule_novel10"] = tiny
    write_pool(root, "ImageSets/SegmentationAug/train.txt", train, seed=1)
    write_pool(root, "ImageSets/SegmentationAug/val.txt", val, seed=2)
    return {"train": train, "val": val}


def recipe_pools(root: Path, dataset: str) -> None:
    """64 x 64 image pools of ``dataset`` (pascal or coco) in its prepared layout (VOC's; prepare_coco's) for fold 0
    (COCO fwb): 24 training images (20 with one counted base class, two per class; 4 also holding a few pixels of a
    novel class) and a validation pool with every base class (16 per image, in a grid), two novel classes in two
    counted images each and the first base class in two counted images."""
    base, novel = base_classes(dataset, 0, "fwb"), novel_classes(dataset, 0, "fwb")

    def counted(class_id: int) -> np.ndarray:
        return block_label(64, 64, [(class_id, 7, 7, 50, 50)])  # 48 x 48 = 2304 pixels inside the 255 border

    train = {f"t{k:02d}": counted(base[k // 2]) for k in range(20)}
    train |= {f"n{k}": block_label(64, 64, [(base[10 + k], 7, 7, 50, 50), (novel[k], 57, 7, 6, 40)]) for k in range(4)}
    cells = [(top, left) for top in range(0, 64, 16) for left in range(0, 64, 16)]
    grid_classes = [base[i % len(base)] for i in range(-(-len(base) // len(cells)) * len(cells))]
    val = {f"g{k}": block_label(64, 64, [(c, top, left, 16, 16) for c, (top, left) in
                                         zip(grid_classes[k * len(cells):], cells)])
           for k in range(len(grid_classes) // len(cells))}
    val |= {f"v{c:02d}_{k}": counted(c) for c in novel[:2] for k in range(2)}
    val |= {f"b{k}": counted(base[0]) for k in range(2)}
    for subset, entries, seed in (("train", train, 1), ("val", val, 2)):
        if dataset == "pascal":
            write_pool(root, f"ImageSets/SegmentationAug/{subset}.txt", entries, seed=seed)
        else:
            numbered = {f"{number:012d}": entries[name] for number, name in enumerate(sorted(entries), start=1)}
            write_pool(root, f"masks/{subset}.txt", numbered, seed=seed, image=f"{subset}2014/COCO_{subset}2014_{{name}}.jpg",
                       label=f"masks/{subset}2014/COCO_{subset}2014_{{name}}.png")


def data_config(data_root: Path, list_root: Path, dataset: str = "synth", **overrides):
    """A config pointing at a test tree, with tiny sizes."""
    values = {"dataset": dataset, "data_root": str(data_root), "list_root": str(list_root),
              "train_size": 48, "val_size": 56, "split": 0}
    values.update(overrides)
    return load_config(None, values)
