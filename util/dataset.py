"""Datasets: episodic few-shot (``EpisodeDataset``) and base-class segmentation for stage 1 (``BaseClassDataset``).

Episodes read the per-fold lists written by ``python -m tools.make_lists`` (layout in ``util/data/lists.py``):
``<list_root>/<dataset>[/<coco_split_style>]/fold<k>/{train_min<N>_<novel_in_train>,val_min<N>}.json``
with paths relative to ``data_root``; stage 1 reads the image pools (``base_images: all``) or the
fold's lists (``fold_lists``). A missing list raises a UserError that names the command.

Episodes follow the protocol: the query image's class is drawn uniformly among the subset's classes
it holds (``episode_class``: ``any_size`` = present at any size, the reference; ``counted`` = only
those with at least ``min_class_pixels``), and K distinct supports are drawn uniformly among the
other images in which that class counts (other by image path: the lists hold each image once, see
``util/data/lists.py``, and the query's own path is never a support). Episode ``i`` -- which images,
which class, and every augmentation draw -- is a pure function of ``(seed, i)``: one
``numpy.random.SeedSequence([seed, i])`` feeds everything, so DataLoader workers and order don't matter.
For training, give each epoch its own seed (``dataset.seed = seed + epoch``) to see new episodes.

The datasets read their settings from one typed :class:`DataSpec` (built from a config by ``DataSpec.of``;
they also take a config and build it).
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from util.common.errors import UserError
from util.data.registry import benchmark, base_classes, num_classes, stage1_ignore_index
from util.data.benchmarks.fss1000 import read_binary_mask
from util.data.image_io import check_label_values, exif_note, read_image, read_label
from util.data.lists import (
    FoldList,
    check_dataset_fold,
    episode_subset,
    fold_list_path,
    image_key,
    label_remedy,
    make_lists_command,
    pool_list_path,
    read_fold_list,
    read_pool,
    stage1_subset,
)
from util.data.transform import bbox_mask, binary_label, build_transform

__all__ = ["Episode", "EpisodeDataset", "BaseClassDataset", "collate_episodes", "episode_collate", "read_image",
           "read_label", "load_fold_list", "load_pool"]

cv2.setNumThreads(0)

ANN_TYPES = ("mask", "bbox")
EPISODE_CLASSES = ("any_size", "counted")
BASE_IMAGES = ("all", "fold_lists")


@dataclass(frozen=True)
class Episode:
    """Which files make episode ``i``: the query and K supports as (image, label) paths relative to data_root
    (as in the lists), and the class."""

    query: tuple[str, str]
    supports: list[tuple[str, str]]
    class_id: int


@dataclass(frozen=True)
class DataSpec:
    """Everything the datasets and their transforms read from a config, typed: where the data and lists are, the
    fold, the protocol rules, the episode counts and the transform settings (keys of config/base.yaml)."""

    dataset: str
    data_root: str
    list_root: str
    split: int
    coco_split_style: str
    min_class_pixels: int
    shot: int
    ann_type: str
    episode_class: str
    novel_in_train: str
    base_images: str
    base_val_images: int
    ignore_label: int
    seed: int
    train_episodes: int
    test_episodes: int
    backbone: str
    pixel_mean: tuple[float, ...] | None
    pixel_std: tuple[float, ...] | None
    train_size: int
    val_size: int
    scale_min: float
    scale_max: float
    rotate_min: float
    rotate_max: float
    train_crop: str
    base_train_size: int
    base_val_size: int
    base_scale_min: float
    base_scale_max: float
    test_geometry: str

    @classmethod
    def of(cls, source: "DataSpec | Mapping[str, Any]") -> "DataSpec":
        """``source`` itself if it is a DataSpec, else the spec of a config."""
        if isinstance(source, cls):
            return source
        values = {f.name: source[f.name] for f in fields(cls)}
        for key in ("pixel_mean", "pixel_std"):
            values[key] = tuple(values[key]) if values[key] else None
        return cls(**values)


def _check_data_root(spec: DataSpec) -> None:
    check_dataset_fold(spec.dataset, spec.split, spec.coco_split_style)
    if not Path(spec.data_root).is_dir():
        create = benchmark(spec.dataset).creation_command(spec.data_root)
        raise UserError(f"data_root '{spec.data_root}' does not exist (config key data_root); "
                        f"prepare the dataset there (see README, Data preparation)" + (f" or run: {create}" if create else ""))


_CHECKED: set[tuple[str, str, int, int]] = set()
"""The lists whose files this process found complete: (list, data_root, size, mtime). A training run builds an
episode set every epoch; its list's files are looked for once."""


def _check_files(root: Path, pairs, where: str, hint: str) -> None:
    """UserError naming ``where`` and the item number for the first image or label missing under ``root``; a list
    found complete once (and not changed since) is not checked again in this process."""
    try:
        stat = os.stat(where)
        key = (where, str(root), stat.st_size, stat.st_mtime_ns)
    except OSError:
        key = None
    if key in _CHECKED:
        return
    for number, (image, label, *_) in enumerate(pairs, start=1):
        for relative, kind in ((image, "image"), (label, "label")):
            if not (root / relative).is_file():
                raise UserError(f"{where}: item {number}: {kind} {root / relative} not found; fix data_root or {hint}")
    if key is not None:
        _CHECKED.add(key)


def load_fold_list(source: DataSpec | Mapping[str, Any], subset: str) -> FoldList:
    """The per-fold list ``subset`` of a spec or config (dataset, split, style, min_class_pixels), checking data_root."""
    spec = DataSpec.of(source)
    _check_data_root(spec)
    path = fold_list_path(spec.list_root, spec.dataset, spec.split, subset, spec.min_class_pixels, spec.coco_split_style)
    command = make_lists_command(spec.dataset, spec.data_root, spec.list_root, spec.min_class_pixels)
    fold_list = read_fold_list(path, command)
    _check_files(Path(spec.data_root), fold_list.items, str(path), f"regenerate the lists with: {command}")
    return fold_list


def load_pool(source: DataSpec | Mapping[str, Any], subset: str) -> list[tuple[str, str]]:
    """Every ``(image, label)`` pair of the image pool ``subset`` (train/val) of a spec's or config's data root."""
    spec = DataSpec.of(source)
    _check_data_root(spec)
    pairs = read_pool(spec.data_root, spec.dataset, subset)
    where = str(pool_list_path(spec.data_root, spec.dataset, subset))
    _check_files(Path(spec.data_root), pairs, where, "regenerate the image list")
    return pairs


def load_pair(image_path: str, label_path: str, dataset: str, ignore_label: int,
              remedy: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and its label on their stored pixel grids, checking sizes and class ids (FSS-1000: its mask,
    1 = the image's class); ``remedy`` ends the message for a label that is not 8-bit (:func:`util.data.lists.label_remedy`)."""
    binary_mask = benchmark(dataset).binary_masks
    rgb = read_image(image_path)
    classes = read_binary_mask(label_path) if binary_mask else read_label(label_path, remedy)
    if rgb.shape[:2] != classes.shape:
        raise UserError(f"{image_path} is {rgb.shape[:2]} but its label {label_path} is {classes.shape}; "
                        f"image and label must have the same height and width{exif_note(image_path)}")
    check_label_values(classes, num_classes(dataset), label_path, ignore_label)
    return rgb, classes


def _seed(seed: int | None, spec: DataSpec) -> int:
    value = spec.seed if seed is None else seed
    if value < 0:
        raise UserError(f"seed must be >= 0, got {value} (config key 'seed')")
    return int(value)


class EpisodeDataset(Dataset):
    """Few-shot episodes of the fold: base classes from the train list (``train``), novel classes from the val list
    (``val``, ``test``; FSS-1000 validates on its validation classes and tests on its test list)."""

    def __init__(self, source: DataSpec | Mapping[str, Any], mode: str, episodes: int | None = None,
                 seed: int | None = None):
        spec = DataSpec.of(source)
        if mode not in ("train", "val", "test"):
            raise ValueError(f"mode must be 'train', 'val' or 'test', got {mode!r}")
        if not isinstance(spec.shot, int) or spec.shot < 1:
            raise UserError(f"config key 'shot' must be an integer >= 1, got {spec.shot!r}")
        if spec.ann_type not in ANN_TYPES:
            raise UserError(f"config key 'ann_type' must be one of {list(ANN_TYPES)}, got {spec.ann_type!r}")
        self.spec, self.mode, self.shot = spec, mode, spec.shot
        self.seed = _seed(seed, spec)
        self.root = Path(spec.data_root)
        if spec.episode_class not in EPISODE_CLASSES:
            raise UserError(f"config key 'episode_class' must be one of {list(EPISODE_CLASSES)}, got {spec.episode_class!r}")
        fold_list = load_fold_list(spec, episode_subset(spec.dataset, mode, spec.novel_in_train))
        self.binary_masks = benchmark(spec.dataset).binary_masks

        # a class's support pool: the images in which it counts, each image (by path) once
        image_ids: dict[str, int] = {}
        ids = [image_ids.setdefault(image_key(image), len(image_ids)) for image, *_ in fold_list.items]
        by_class: dict[int, dict[int, int]] = {c: {} for c in fold_list.classes}
        for index, (_, _, counted, _) in enumerate(fold_list.items):
            for c in counted:
                by_class[c].setdefault(ids[index], index)
        # with at least K + 1 images in its pool, a class has K supports besides any query
        kept = {c for c, images in by_class.items() if len(images) >= self.shot + 1}
        left_out = sorted(set(by_class) - kept)
        if left_out:
            counts = ", ".join(f"{c} ({len(by_class[c])})" for c in left_out)
            warnings.warn(f"{fold_list.path}: {len(left_out)} of {len(by_class)} classes have fewer than shot + 1 = "
                          f"{self.shot + 1} eligible images and are left out of the episodes; class (eligible images): "
                          f"{counts}", stacklevel=2)
        if not kept:
            raise UserError(f"{fold_list.path}: no class has at least shot + 1 = {self.shot + 1} eligible images; "
                            "use a smaller shot or more data")
        any_size = spec.episode_class == "any_size"
        old_to_new: dict[int, int] = {}
        items = []
        for index, (image, label, counted, present) in enumerate(fold_list.items):
            drawable = tuple(c for c in (present if any_size else counted) if c in kept)
            if drawable:
                old_to_new[index] = len(items)
                items.append((image, label, drawable))
        # (image, label, classes the episode's class is drawn from)
        self.items: list[tuple[str, str, tuple[int, ...]]] = items
        self.image_ids = [ids[index] for index in old_to_new]  # items with one id name one image
        self.label_remedy = label_remedy(spec.dataset, spec.data_root)
        self.class_images = {c: [old_to_new[i] for i in by_class[c].values()] for c in sorted(kept)}
        self.classes = sorted(kept)
        if episodes is None:
            episodes = (spec.train_episodes or len(items)) if mode == "train" else spec.test_episodes
        self.episodes = int(episodes)
        self.transform = build_transform(spec, train=mode == "train", stage="meta")
        self._order_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.episodes

    def _query_order(self) -> np.ndarray:
        """A seed-dependent permutation of the query pool; episode i uses entry ``i % n``."""
        if self._order_cache is None or self._order_cache[0] != self.seed:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed]))
            self._order_cache = (self.seed, rng.permutation(len(self.items)))
        return self._order_cache[1]

    def _sequences(self, index: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
        return tuple(np.random.SeedSequence([self.seed, index]).spawn(2))

    def episode(self, index: int) -> Episode:
        """The files and class of episode ``index`` (pure function of ``(seed, index)``)."""
        if not 0 <= index < self.episodes:
            raise IndexError(f"episode {index} out of range 0..{self.episodes - 1}")
        rng = np.random.default_rng(self._sequences(index)[0])
        query = int(self._query_order()[index % len(self.items)])
        image, label, classes = self.items[query]
        class_id = int(classes[int(rng.integers(len(classes)))])
        candidates = [i for i in self.class_images[class_id] if self.image_ids[i] != self.image_ids[query]]
        chosen = rng.choice(len(candidates), size=self.shot, replace=False)
        supports = [tuple(self.items[candidates[int(c)]][:2]) for c in chosen]
        return Episode(query=(image, label), supports=supports, class_id=class_id)

    def read(self, image: str, label: str) -> tuple[np.ndarray, np.ndarray]:
        """An image and its class-id label, by their paths relative to data_root (checked as :func:`load_pair`)."""
        return load_pair(str(self.root / image), str(self.root / label), self.spec.dataset, self.spec.ignore_label,
                         self.label_remedy)

    def view(self, rgb: np.ndarray, classes: np.ndarray, class_id: int, rng: np.random.Generator,
             support: bool) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The network input and its label for ``class_id`` (a support's mask is its bounding box with
        ``ann_type: bbox``), transformed with ``rng``; and the binary label before the transform."""
        binary = binary_label(classes, 1 if self.binary_masks else class_id, self.spec.ignore_label)
        mask = bbox_mask(binary, self.spec.ignore_label) if support and self.spec.ann_type == "bbox" else binary
        tensor, label = self.transform(rgb, mask, rng)
        return tensor, label, binary

    def baseline_prediction(self, classes: np.ndarray) -> np.ndarray:
        """What the baseline next to every result predicts for a query label ``classes`` (at its original size): every
        labelled object (``every-object``), or the whole image where a mask holds its image's one object
        (``whole-image``); uint8 0/1."""
        if self.binary_masks:
            return np.ones_like(classes, dtype=np.uint8)
        return ((classes != 0) & (classes != self.spec.ignore_label)).astype(np.uint8)

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode = self.episode(index)
        rngs = [np.random.default_rng(s) for s in self._sequences(index)[1].spawn(self.shot + 1)]
        rgb, classes = self.read(*episode.query)
        query, query_label, query_binary = self.view(rgb, classes, episode.class_id, rngs[0], support=False)
        supports, masks = [], []
        for pair, rng in zip(episode.supports, rngs[1:]):
            support, support_mask, _ = self.view(*self.read(*pair), episode.class_id, rng, support=True)
            supports.append(support)
            masks.append(support_mask)
        sample = {
            "query": query,
            "query_label": query_label,
            "supports": torch.stack(supports),
            "support_masks": torch.stack(masks),
            "class_id": torch.tensor(episode.class_id, dtype=torch.int64),
            "query_path": str(self.root / episode.query[0]),
            "support_paths": [str(self.root / image) for image, _ in episode.supports],
        }
        if self.mode != "train":
            sample["query_label_ori"] = torch.from_numpy(query_binary.astype(np.int64))
            sample["query_baseline_ori"] = torch.from_numpy(self.baseline_prediction(classes).astype(np.int64))
        return sample


ORIGINAL_SIZE = {"query_label_ori": "ignore", "query_baseline_ori": 0}
"""The per-episode maps at the query's original size, padded to the batch's largest by collation: the label with the
ignore value, the baseline's prediction with 0 (padded pixels are ignored in the label anyway)."""


def collate_episodes(batch: list[dict[str, Any]], ignore_label: int) -> dict[str, Any]:
    """Stack episodes; the original-size maps (:data:`ORIGINAL_SIZE`) are padded top-left to the batch's largest size."""
    rest = [{k: v for k, v in sample.items() if k not in (*ORIGINAL_SIZE, "query_path", "support_paths")}
            for sample in batch]
    out = default_collate(rest)
    out["query_path"] = [sample["query_path"] for sample in batch]
    out["support_paths"] = [sample["support_paths"] for sample in batch]
    for key, fill in ORIGINAL_SIZE.items():
        if key not in batch[0]:
            continue
        maps = [sample[key] for sample in batch]
        height, width = max(t.shape[0] for t in maps), max(t.shape[1] for t in maps)
        padded = torch.full((len(maps), height, width), ignore_label if fill == "ignore" else fill, dtype=torch.int64)
        for i, values in enumerate(maps):
            padded[i, :values.shape[0], :values.shape[1]] = values
        out[key] = padded
    return out


def episode_collate(ignore_label: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """:func:`collate_episodes` for a DataLoader (picklable for worker processes)."""
    return functools.partial(collate_episodes, ignore_label=ignore_label)


class BaseClassDataset(Dataset):
    """Stage 1: semantic segmentation over the fold's base classes (base class c -> its rank + 1, others -> 0).

    ``base_images: all`` (BAM's base learner): every image of the train / val pool, novel classes as
    background. ``fold_lists``: training on the fold's stage-2 training list (``novel_in_train``),
    validation on the val images with a counted base class. ``base_val_images`` N > 0 caps validation at N
    of those images: a subset drawn from ``seed`` (the same every epoch), kept in list order.
    """

    def __init__(self, source: DataSpec | Mapping[str, Any], mode: str, seed: int | None = None):
        spec = DataSpec.of(source)
        if mode not in ("train", "val"):
            raise ValueError(f"mode must be 'train' or 'val', got {mode!r}")
        if spec.base_images not in BASE_IMAGES:
            raise UserError(f"config key 'base_images' must be one of {list(BASE_IMAGES)}, got {spec.base_images!r}")
        self.spec, self.mode, self.seed = spec, mode, _seed(seed, spec)
        self.root = Path(spec.data_root)
        self.binary_masks = benchmark(spec.dataset).binary_masks
        self.label_remedy = label_remedy(spec.dataset, spec.data_root)
        if spec.base_images == "all" and benchmark(spec.dataset).pool_list is None:
            raise UserError(f"{spec.dataset} has no image pools for base_images 'all'; use base_images fold_lists "
                            f"(config key base_images; config/{spec.dataset} sets it)")
        if spec.base_images == "all":
            self.items = [(image, label, ()) for image, label in load_pool(spec, mode)]
        else:
            fold_list = load_fold_list(spec, stage1_subset(spec.dataset, mode, spec.novel_in_train))
            if not fold_list.items:
                raise UserError(f"{fold_list.path}: the list has no images; check the data and regenerate the lists")
            self.items = [(image, label, counted) for image, label, counted, _ in fold_list.items]
        if mode == "val" and 0 < spec.base_val_images < len(self.items):
            chosen = np.random.default_rng(np.random.SeedSequence([self.seed])).choice(
                len(self.items), size=spec.base_val_images, replace=False)
            self.items = [self.items[i] for i in sorted(chosen.tolist())]
        base = base_classes(spec.dataset, spec.split, spec.coco_split_style)
        self.target_of = {c: rank + 1 for rank, c in enumerate(base)}
        self.ignore_index = stage1_ignore_index(spec.dataset, spec.split, spec.coco_split_style, spec.ignore_label)
        if not self.binary_masks:
            lookup = np.zeros(256, dtype=np.uint8)
            lookup[base] = np.arange(1, len(base) + 1)
            lookup[spec.ignore_label] = spec.ignore_label
            self.lookup = lookup
        self.transform = build_transform(spec, train=mode == "train", stage="base")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label, counted = self.items[index]
        rgb, classes = load_pair(str(self.root / image), str(self.root / label), self.spec.dataset, self.spec.ignore_label,
                                 self.label_remedy)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        if not self.binary_masks:
            tensor, target = self.transform(rgb, self.lookup[classes], rng)
            return {"image": tensor, "label": target}
        # one class per image: its mask goes through the transform, then 1 -> the class's target value
        tensor, mask = self.transform(rgb, classes, rng)
        target = torch.where(mask == 1, self.target_of[counted[0]], 0)
        return {"image": tensor, "label": torch.where(mask == self.spec.ignore_label, self.ignore_index, target)}
