"""Segment your own image: the objects of one class in a query, shown by one or more annotated support images.

Usage: ``python predict.py --config C [--weight W] --support img.jpg mask.png [--support ...] --query q.jpg
[--class-name dog] --out out.png [key value ...]``

- The number of ``--support`` pairs is the shot K (any K, whatever shot the model was trained with).
- Support masks are read by the datasets' rule (``util.data.image_io.read_object_mask``), chosen by ``--mask-format``.
  ``class-ids``: a class-id label (0 = background, 255 = ignore as in VOC borders); with ``--class-name`` the
  object is exactly that class's pixels, as in episodes; without it the mask must hold one class. ``binary``: a
  black/white mask (0/255, grey level >= 128 = object; or 0/1, 1 = object, 255 = ignore). ``auto`` (default):
  palette PNGs and RGB masks in VOC palette colours are class-id labels; other masks holding only 0 and 255, or
  0 and 1 (and 255), are black/white, except a 0/255 mask whose 255 pixels form only thin lines (the ignore
  border of a VOC label without the class), which is refused; anything else is a class-id label. RGB colours
  follow ``util.data.image_io.label_from_colours`` (black = 0, white = 255, a VOC palette colour = its class id; any
  other colour is refused). A mask with no object pixel is refused, saying what it holds. The mask must have
  its image's height and width; photos are read on their stored pixel grid (an EXIF orientation tag is not
  applied, so draw masks on the stored pixels; ``--out`` has the query's stored size). With ``ann_type bbox``
  each mask is replaced by its filled bounding box, as in testing.
- Images of any size go through the test geometry (config key ``test_geometry``; ``aligned``: longer side resized
  to ``val_size``, placed top-left, padded); the prediction is mapped back to the query's original size exactly as
  ``ori_resize`` scoring does.
- ``--class-name`` must be one of the config dataset's class names (case, spaces and underscores do not
  matter; a wrong name gets the closest ones suggested); GIM then uses that class's word vector. Without
  it the class id is 0 and GIM uses a zero word vector, so the general prototype comes from the support's
  instance prototype alone.
- Writes ``--out`` (a single-channel PNG, 0 = background, 255 = object, the query's size) and
  ``<out stem>_overlay.png`` next to it (the prediction tinted on the query, under a title: class, shot and
  the share of the image predicted as foreground).
- ``--weight`` defaults to the config key ``weight``, else ``<run dir>/best.pth`` of the config's ``shot``
  (as test.py; ``shot 5`` picks the 5-shot run).
"""
from __future__ import annotations

import argparse
import difflib
import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from util.common.atomic import check_writable, write_output
from util.common.config import load_config
from util.common.errors import UserError, cli_entry
from util.data.registry import class_names, num_classes
from util.data.image_io import (
    MASK_FORMATS,
    encode_label_png,
    exif_note,
    read_image,
    read_object_mask,
)
from util.data.transform import PairedTransform, bbox_mask, build_transform
from util.engine.metrics import check_finite_logits, predict_on_label
from util.common.runtime import autocast, check_amp, resolve_device
from util.reports.figures import PRED_COLOUR, add_title, overlay_mask, png_bytes
from util.runs.folders import stage2_weight
from util.runs.weights import load_stage2_model

NO_CLASS = 0
MASK_FOREGROUND = 255
SUGGESTIONS = 3
OUT_WRITABLE = "give --out a writable .png path (free disk space)"
NO_RANDOMNESS = np.random.default_rng(0)  # the test geometry draws nothing; the transforms take a generator


def read_support_mask(path: str | Path, ignore_label: int, class_id: int = NO_CLASS, class_name: str = "",
                      mask_format: str = "auto", dataset_classes: int = 255) -> np.ndarray:
    """A support mask file as uint8 {0, 1, ``ignore_label``} (object 1) by the datasets' rule
    (:func:`util.data.image_io.read_object_mask`; the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: support mask not found; give --support IMAGE MASK with existing files")
    return read_object_mask(path, mask_format, class_id, class_name, ignore_label, dataset_classes)


def _name_key(name: str) -> str:
    """A class name compared without case, spaces, underscores or hyphens (``Potted plant`` = ``pottedplant``)."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def class_id_for(name: str | None, dataset: str, list_root: str = "lists") -> int:
    """The dataset class id of ``name``, or 0 without a name; an unknown name is a UserError naming the closest ones."""
    if name is None:
        return NO_CLASS
    names = class_names(dataset, list_root)
    keys = [_name_key(n) for n in names]
    wanted = _name_key(name)
    if wanted in keys:
        return keys.index(wanted) + 1
    close = difflib.get_close_matches(wanted, keys, n=SUGGESTIONS)
    hint = (f"did you mean {' or '.join(repr(names[keys.index(k)]) for k in close)}?" if close
            else f"the {dataset} classes are: {', '.join(names)}")
    raise UserError(f"--class-name '{name}' is not a {dataset} class; {hint} "
                    "(or leave --class-name out to segment from the supports alone)")


def _existing(path: str, flag: str) -> str:
    """``path`` if it is a file, else a UserError naming the option it was given to."""
    if not Path(path).is_file():
        raise UserError(f"{flag} {path}: file not found; check the path")
    return path


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="keys and defaults: config/base.yaml; details: README, 'Pictures and your own images', and docs/training.md, 'predict.py'")
    parser.add_argument("--config", default=None, help="YAML config of the trained model")
    parser.add_argument("--weight", default=None, help="stage-2 checkpoint (default: config key weight, else <run dir>/best.pth)")
    parser.add_argument("--support", nargs=2, action="append", required=True, metavar=("IMAGE", "MASK"),
                        help="a support image and its mask (PNG of the image's stored size: EXIF orientation is not "
                             "applied; format: --mask-format); repeat for K shots")
    parser.add_argument("--mask-format", choices=MASK_FORMATS, default="auto",
                        help="class-ids: 0 = background, 255 = ignore, the object = the --class-name class's pixels "
                             "(without --class-name: the mask's one class); binary: black/white, grey >= 128 (or 1 "
                             "in a 0/1 mask) = object; auto (default): palette or VOC-coloured masks are class ids, "
                             "masks of only 0/255 or 0/1 are black/white unless their 255 pixels are thin lines only "
                             "(a VOC label's ignore border: refused), others class ids. A mask with no object pixel "
                             "is refused")
    parser.add_argument("--query", required=True, help="image to segment")
    parser.add_argument("--class-name", default=None,
                        help="the object's class among the config dataset's classes (optional; without it the "
                             "supports alone define the class)")
    parser.add_argument("--out", required=True, help="mask PNG to write (0/255); the overlay goes next to it")
    parser.add_argument("overrides", nargs="*", help="key value pairs overriding the config")
    return parser.parse_args(argv)


def read_supports(pairs: Sequence[Sequence[str]], transform: PairedTransform, ann_type: str, ignore_label: int,
                  read_mask: Callable[[str], np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``--support IMAGE MASK`` pairs as network input: images ``[K, 3, S, S]`` and masks ``[K, S, S]``, each
    mask file read by ``read_mask`` (:func:`read_support_mask` with the command line's class and format)."""
    supports, masks = [], []
    for image_path, mask_path in pairs:
        rgb, mask = read_image(_existing(image_path, "--support")), read_mask(mask_path)
        if rgb.shape[:2] != mask.shape:
            raise UserError(f"support mask {mask_path} is {mask.shape} but its image {image_path} is {rgb.shape[:2]}; "
                            f"they must have the same height and width{exif_note(image_path, 'mask')}")
        if ann_type == "bbox":
            mask = bbox_mask(mask, ignore_label)
        support, support_mask = transform(rgb, mask, NO_RANDOMNESS)
        supports.append(support)
        masks.append(support_mask)
    return torch.stack(supports), torch.stack(masks)


@cli_entry
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the mask is written as PNG (lossless); give a .png path")
    cfg = load_config(args.config, args.overrides)
    for path in (out, overlay_path(out)):
        check_writable(path, OUT_WRITABLE)
    device = resolve_device(cfg.device)
    check_amp(cfg.amp, device)
    weight = Path(args.weight) if args.weight else stage2_weight(cfg)  # a fold never trained: said before any image
    class_id = class_id_for(args.class_name, cfg.dataset, cfg.list_root)
    transform = build_transform(cfg, train=False)
    read_mask = functools.partial(read_support_mask, ignore_label=cfg.ignore_label, class_id=class_id,
                                  class_name=args.class_name or "", mask_format=args.mask_format,
                                  dataset_classes=num_classes(cfg.dataset))
    supports, masks = read_supports(args.support, transform, cfg.ann_type, cfg.ignore_label, read_mask)
    query_rgb = read_image(_existing(args.query, "--query"))
    height, width = query_rgb.shape[:2]
    query, _ = transform(query_rgb, np.zeros((height, width), np.uint8), NO_RANDOMNESS)

    model, _ = load_stage2_model(cfg, weight, device)
    with torch.inference_mode(), autocast(device, cfg.amp):
        logits = model.predict(query[None].to(device), supports.to(device), masks.to(device),
                               torch.tensor([class_id], device=device), cfg.encode_batch)
    check_finite_logits(logits, cfg.amp, [args.query])
    pred = predict_on_label(logits[0], (height, width), ori_size=(height, width)).cpu().numpy().astype(np.uint8)

    write_output(out, encode_label_png(pred * MASK_FOREGROUND), OUT_WRITABLE)
    foreground = float(pred.mean())
    shown_class = class_names(cfg.dataset, cfg.list_root)[class_id - 1] if class_id else "no class name"
    title = f"{shown_class}, {len(supports)}-shot: {100 * foreground:.1f}% foreground"
    overlay = add_title(overlay_mask(query_rgb, pred, PRED_COLOUR), title)
    write_output(overlay_path(out), png_bytes(overlay), OUT_WRITABLE)
    print(f"query {args.query} ({height}x{width}), {title}; wrote {out} (0/255) and {overlay_path(out)}")
    return {"mask": out, "overlay": overlay_path(out), "class_id": class_id, "foreground": foreground, "title": title}


def overlay_path(out: Path) -> Path:
    """Where the overlay of the mask ``out`` goes: ``<out stem>_overlay.png`` beside it."""
    return out.with_name(f"{out.stem}_overlay.png")


if __name__ == "__main__":
    main()
