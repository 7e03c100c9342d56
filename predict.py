"""Segment your own image: the objects of one class in a query, shown by one or more annotated support images.

Usage: ``python predict.py --config C [--weight W] --support img.jpg mask.png [--support ...] --query q.jpg
[--class-name dog] --out out.png [key value ...]``

- The number of ``--support`` pairs is the shot K (any K, whatever shot the model was trained with).
- Support masks: a black/white mask (only values 0 and 255: 255 = object), or a class-id / palette PNG
  (0 = background, 255 = ignore as in VOC borders, any other value = object). RGB masks are read by the
  datasets' rule (``util.image_io.label_from_colours``): black = 0, white = 255, a VOC palette colour =
  its class id, so a black/white RGB mask is a black/white mask and an RGB VOC label is a class-id mask;
  any other colour is refused, naming the colours found. The mask must have its image's height and width.
  With ``ann_type bbox`` each mask is replaced by its filled bounding box, as in testing.
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
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from model.mianet import MIANet
from util.checkpoint import (MODEL_CONFIG_KEYS, check_checkpoint_config, check_model_identity, load_checkpoint,
                              load_model_state, stage2_weight)
from util.classes import class_names
from util.config import Config, load_config
from util.errors import UserError, cli_entry
from util.image_io import read_image, read_label, write_label
from util.metrics import check_finite_logits, predict_on_label
from util.model_io import build_mianet
from util.runtime import autocast, check_amp, resolve_device
from util.transform import PairedTransform, bbox_mask, build_transform
from util.visualize import PRED_COLOUR, add_title, overlay_mask

NO_CLASS = 0
MASK_FOREGROUND = 255
SUGGESTIONS = 3
NO_RANDOMNESS = np.random.default_rng(0)  # the test geometry draws nothing; the transforms take a generator


def read_support_mask(path: str | Path, ignore_label: int) -> np.ndarray:
    """A support mask file as uint8 {0, 1, ``ignore_label``} (object 1); rules in the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: support mask not found; give --support IMAGE MASK with existing files")
    values = read_label(path)
    if set(np.unique(values).tolist()) <= {0, MASK_FOREGROUND}:
        return (values == MASK_FOREGROUND).astype(np.uint8)
    mask = (values != 0).astype(np.uint8)
    mask[values == ignore_label] = ignore_label
    return mask


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
                                     epilog="keys and defaults: config/base.yaml; details: README, 'Pictures and your own images'")
    parser.add_argument("--config", default=None, help="YAML config of the trained model")
    parser.add_argument("--weight", default=None, help="stage-2 checkpoint (default: config key weight, else <run dir>/best.pth)")
    parser.add_argument("--support", nargs=2, action="append", required=True, metavar=("IMAGE", "MASK"),
                        help="a support image and its mask (PNG of the image's size: 0/255, or class ids / palette "
                             "with 0 = background and 255 = ignore, or RGB in black/white or VOC palette colours); "
                             "repeat for K shots")
    parser.add_argument("--query", required=True, help="image to segment")
    parser.add_argument("--class-name", default=None,
                        help="the object's class among the config dataset's classes (optional; without it the "
                             "supports alone define the class)")
    parser.add_argument("--out", required=True, help="mask PNG to write (0/255); the overlay goes next to it")
    parser.add_argument("overrides", nargs="*", help="key value pairs overriding the config")
    return parser.parse_args(argv)


def read_supports(pairs: Sequence[Sequence[str]], transform: PairedTransform, ann_type: str,
                  ignore_label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``--support IMAGE MASK`` pairs as network input: images ``[K, 3, S, S]`` and masks ``[K, S, S]``."""
    supports, masks = [], []
    for image_path, mask_path in pairs:
        rgb, mask = read_image(_existing(image_path, "--support")), read_support_mask(mask_path, ignore_label)
        if rgb.shape[:2] != mask.shape:
            raise UserError(f"support mask {mask_path} is {mask.shape} but its image {image_path} is {rgb.shape[:2]}; "
                            "they must have the same height and width")
        if not (mask == 1).any():
            raise UserError(f"support mask {mask_path} marks no object pixel; see --help for the mask format")
        if ann_type == "bbox":
            mask = bbox_mask(mask, ignore_label)
        support, support_mask = transform(rgb, mask, NO_RANDOMNESS)
        supports.append(support)
        masks.append(support_mask)
    return torch.stack(supports), torch.stack(masks)


def load_model(cfg: Config, weight: Path, device: torch.device) -> MIANet:
    """The stage-2 model of ``weight`` (checked against ``cfg``: architecture keys and identity) on ``device``, in
    eval mode."""
    state = load_checkpoint(weight)
    check_checkpoint_config(state, cfg, weight, MODEL_CONFIG_KEYS)
    check_model_identity(state, cfg, weight)
    model = build_mianet(cfg)
    load_model_state(model, state["model"], weight)
    return model.to(device).eval()


@cli_entry
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the mask is written as PNG (lossless); give a .png path")
    cfg = load_config(args.config, args.overrides)
    device = resolve_device(cfg.device)
    check_amp(cfg.amp, device)
    weight = Path(args.weight) if args.weight else stage2_weight(cfg)  # a fold never trained: said before any image
    class_id = class_id_for(args.class_name, cfg.dataset, cfg.list_root)
    transform = build_transform(cfg, train=False)
    supports, masks = read_supports(args.support, transform, cfg.ann_type, cfg.ignore_label)
    query_rgb = read_image(_existing(args.query, "--query"))
    height, width = query_rgb.shape[:2]
    query, _ = transform(query_rgb, np.zeros((height, width), np.uint8), NO_RANDOMNESS)

    model = load_model(cfg, weight, device)
    with torch.inference_mode(), autocast(device, cfg.amp):
        logits = model(query[None].to(device), supports[None].to(device), masks[None].to(device),
                       torch.tensor([class_id], device=device))
    check_finite_logits(logits, cfg.amp, [args.query])
    pred = predict_on_label(logits[0], (height, width), ori_size=(height, width)).cpu().numpy().astype(np.uint8)

    write_label(out, pred * MASK_FOREGROUND)
    foreground = float(pred.mean())
    shown_class = class_names(cfg.dataset, cfg.list_root)[class_id - 1] if class_id else "no class name"
    title = f"{shown_class}, {len(supports)}-shot: {100 * foreground:.1f}% foreground"
    overlay_path = out.with_name(f"{out.stem}_overlay.png")
    overlay = add_title(overlay_mask(query_rgb, pred, PRED_COLOUR), title)
    if not cv2.imwrite(str(overlay_path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)):
        raise UserError(f"cannot write {overlay_path}; check the folder is writable")
    print(f"query {args.query} ({height}x{width}), {title}; wrote {out} (0/255) and {overlay_path}")
    return {"mask": out, "overlay": overlay_path, "class_id": class_id, "foreground": foreground, "title": title}


if __name__ == "__main__":
    main()
