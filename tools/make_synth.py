"""Generate ``synth``: a small few-shot segmentation dataset in the PASCAL layout, no download needed.

Each image holds 1-3 objects of different classes (``util.data.benchmarks.synth.SYNTH_CLASSES``: colour + shape)
on a textured background with clutter (blobs and lines in non-class colours), with overlaps and
colour jitter, so the support -- not a fixed colour threshold -- decides what to segment.

Output under ``--root``::

    JPEGImages/<id>.jpg                 RGB images, 160-240 px a side
    SegmentationClassAug/<id>.png       class ids 0..20, 255 on object borders (like VOC)
    ImageSets/SegmentationAug/{train,val}.txt   "JPEGImages/<id>.jpg SegmentationClassAug/<id>.png" lines
    class_names.txt                     line i = name of class id i + 1
    synth_meta.json                     the arguments; written last, marks the output complete

Image ``j`` of a subset depends only on ``(seed, subset, j)``, so output is identical for any
number of worker processes. A second call with the same arguments on complete output does nothing.

Command line:

    python -m tools.make_synth --root data/synth [--num-train 2400 --num-val 600 --seed 0 --workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from util.common.errors import UserError, cli_entry
from util.data.benchmarks.synth import SYNTH_CLASSES, SYNTH_COLOURS
from util.data.image_io import IGNORE_ID

FORMAT_VERSION = 1
SUBSETS = ("train", "val")
IMAGE_SIDE = (160, 240)
OBJECT_AREA = (3400.0, 7500.0)          # pixels before borders and occlusion; most objects keep >= 2048
MAX_AREA_FRACTION = 0.18
BORDER_WIDTH = 3                        # ignore band on object borders, like VOC
STAR_INNER_RATIO = 0.45
JPEG_QUALITY = 92
POOL_LIST = "ImageSets/SegmentationAug/{subset}.txt"
META_FILE = "synth_meta.json"

CLASS_RGB = dict(zip(SYNTH_COLOURS, ((205, 40, 40), (40, 165, 60), (45, 75, 205), (225, 205, 45), (135, 55, 170))))
CLUTTER_RGB = ((130, 130, 130), (120, 80, 40), (60, 190, 200), (235, 140, 190), (240, 140, 30),
               (235, 235, 235), (30, 30, 30), (150, 170, 110))
COLOUR_JITTER = 22.0


def image_id(subset: str, index: int) -> str:
    return f"{subset}_{index:05d}"


def _shape_polygon(shape: str, area: float, centre: np.ndarray, angle: float) -> np.ndarray | None:
    """Vertices of ``shape`` with the given area, or None for a circle."""
    if shape == "circle":
        return None
    if shape == "square":
        radius = np.sqrt(area) / np.sqrt(2.0)
        angles = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, radius)
    elif shape == "triangle":
        side = np.sqrt(4.0 * area / np.sqrt(3.0))
        angles = angle + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, side / np.sqrt(3.0))
    elif shape == "star":
        outer = np.sqrt(area / (5.0 * STAR_INNER_RATIO * np.sin(np.pi / 5)))
        angles = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, outer, outer * STAR_INNER_RATIO)
    else:
        raise ValueError(f"unknown shape {shape}")
    points = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return np.round(points * 16).astype(np.int32)


def _draw_shape(canvas: np.ndarray, shape: str, area: float, centre: np.ndarray, angle: float, value) -> None:
    """Fill a shape on ``canvas`` (an image with anti-aliasing, or a label map without)."""
    antialias = cv2.LINE_AA if canvas.ndim == 3 else cv2.LINE_8
    polygon = _shape_polygon(shape, area, centre, angle)
    if polygon is None:
        radius = np.sqrt(area / np.pi)
        cv2.circle(canvas, tuple(int(v) for v in np.round(centre * 16)), int(round(radius * 16)), value, -1, antialias, 4)
    else:
        cv2.fillPoly(canvas, [polygon], value, antialias, 4)


def _jitter(rgb, rng: np.random.Generator) -> tuple[float, float, float]:
    colour = np.asarray(rgb, dtype=np.float64) * rng.uniform(0.75, 1.15) + rng.normal(0.0, COLOUR_JITTER, 3)
    return tuple(float(v) for v in np.clip(colour, 0, 255))


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A muted colour gradient with low-frequency texture."""
    corners = rng.uniform(60, 200, size=(2, 2, 3)) * rng.uniform(0.5, 1.0, size=(1, 1, 3))
    image = cv2.resize(corners, (width, height), interpolation=cv2.INTER_LINEAR)
    texture = rng.normal(0.0, 18.0, size=(int(rng.integers(4, 16)), int(rng.integers(4, 16)), 3))
    image += cv2.resize(texture, (width, height), interpolation=cv2.INTER_CUBIC)
    return image


def _clutter(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, count: int) -> None:
    """Draw blobs and lines in non-class colours; where ``label`` is given they occlude objects."""
    height, width = image.shape[:2]
    for _ in range(count):
        colour = _jitter(CLUTTER_RGB[int(rng.integers(len(CLUTTER_RGB)))], rng)
        if rng.random() < 0.5:
            centre = (int(rng.integers(width)), int(rng.integers(height)))
            axes = (int(rng.integers(4, width // 5)), int(rng.integers(4, height // 5)))
            args = (centre, axes, float(rng.uniform(0, 180)), 0, 360)
            cv2.ellipse(image, *args, colour, -1, cv2.LINE_AA)
            if label is not None:
                cv2.ellipse(label, *args, 0, -1, cv2.LINE_8)
        else:
            start = (int(rng.integers(width)), int(rng.integers(height)))
            end = (int(rng.integers(width)), int(rng.integers(height)))
            thickness = int(rng.integers(2, 7))
            cv2.line(image, start, end, colour, thickness, cv2.LINE_AA)
            if label is not None:
                cv2.line(label, start, end, 0, thickness, cv2.LINE_8)


def render(seed: int, subset: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``subset``: (uint8 RGB image, uint8 label with 255 borders)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SUBSETS.index(subset), index]))
    height, width = (int(v) for v in rng.integers(IMAGE_SIDE[0], IMAGE_SIDE[1] + 1, size=2))
    image = _background(height, width, rng)
    label = np.zeros((height, width), dtype=np.uint8)
    _clutter(image, None, rng, int(rng.integers(3, 8)))

    num_objects = int(rng.integers(1, 4))
    class_ids = rng.choice(len(SYNTH_CLASSES), size=num_objects, replace=False) + 1
    max_area = min(OBJECT_AREA[1], MAX_AREA_FRACTION * height * width)
    for class_id in class_ids:
        colour_name, shape = SYNTH_CLASSES[class_id - 1].split(" ")
        area = rng.uniform(OBJECT_AREA[0], max(OBJECT_AREA[0], max_area))
        reach = np.sqrt(area) * 0.7
        centre = np.array([rng.uniform(reach, width - reach), rng.uniform(reach, height - reach)])
        angle = rng.uniform(0, 2 * np.pi)
        _draw_shape(image, shape, area, centre, angle, _jitter(CLASS_RGB[colour_name], rng))
        _draw_shape(label, shape, area, centre, angle, int(class_id))
    _clutter(image, label, rng, int(rng.integers(0, 3)))

    shade = np.linspace(rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), width)[None, :, None]
    image = image * shade + rng.normal(0.0, 6.0, size=image.shape)
    border = cv2.morphologyEx(label, cv2.MORPH_GRADIENT, np.ones((BORDER_WIDTH, BORDER_WIDTH), np.uint8)) > 0
    label[border] = IGNORE_ID
    return np.clip(image, 0, 255).astype(np.uint8), label


def _write(job: tuple[str, int, int, str]) -> None:
    root, seed, index, subset = job
    name = image_id(subset, index)
    image, label = render(seed, subset, index)
    cv2.imwrite(os.path.join(root, "JPEGImages", name + ".jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    cv2.imwrite(os.path.join(root, "SegmentationClassAug", name + ".png"), label)


def _meta(num_train: int, num_val: int, seed: int) -> dict:
    return {"format_version": FORMAT_VERSION, "num_train": num_train, "num_val": num_val, "seed": seed,
            "classes": list(SYNTH_CLASSES)}


def is_complete(root: Path, num_train: int, num_val: int, seed: int) -> bool:
    """True if ``root`` already holds the output of exactly these arguments."""
    meta_path = root / META_FILE
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return False
    if meta != _meta(num_train, num_val, seed):
        raise UserError(
            f"{meta_path}: {root} already holds a synth dataset made with other arguments ({meta['num_train']} train, "
            f"{meta['num_val']} val, seed {meta['seed']}); delete {root} or choose another --root"
        )
    counts = {n: len(list((root / n).iterdir())) for n in ("JPEGImages", "SegmentationClassAug")}
    return all(count == num_train + num_val for count in counts.values())


def make_synth(root: str | Path, num_train: int = 2400, num_val: int = 600, seed: int = 0,
               workers: int | None = None) -> bool:
    """Write the dataset under ``root``; returns False (and does nothing) if it is already complete."""
    root = Path(root)
    if num_train < 1 or num_val < 1 or seed < 0:
        raise UserError("make_synth: --num-train and --num-val must be >= 1 and --seed >= 0")
    if is_complete(root, num_train, num_val, seed):
        return False
    (root / META_FILE).unlink(missing_ok=True)
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/SegmentationAug"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    sizes = {"train": num_train, "val": num_val}
    jobs = [(str(root), seed, index, subset) for subset in SUBSETS for index in range(sizes[subset])]
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers == 1:
        for job in jobs:
            _write(job)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write, jobs, chunksize=64))
    for subset in SUBSETS:
        lines = [f"JPEGImages/{image_id(subset, i)}.jpg SegmentationClassAug/{image_id(subset, i)}.png"
                 for i in range(sizes[subset])]
        (root / POOL_LIST.format(subset=subset)).write_text("\n".join(lines) + "\n")
    (root / "class_names.txt").write_text("\n".join(SYNTH_CLASSES) + "\n")
    (root / META_FILE).write_text(json.dumps(_meta(num_train, num_val, seed), indent=1) + "\n")
    return True


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data/synth", help="output folder (default data/synth)")
    parser.add_argument("--num-train", type=int, default=2400)
    parser.add_argument("--num-val", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores, at most 8)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    made = make_synth(args.root, args.num_train, args.num_val, args.seed, args.workers)
    if made:
        print(f"synth: wrote {args.num_train} train + {args.num_val} val images to {args.root} "
              f"in {time.perf_counter() - start:.1f} s")
    else:
        print(f"synth: {args.root} is already complete; nothing to do")


if __name__ == "__main__":
    main()
