"""Reading and writing images and class-id label maps, with one-line errors for bad files."""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import imgviz
import numpy as np
from PIL import Image, UnidentifiedImageError

from util.atomic import write_bytes_atomic
from util.errors import UserError


PIL_FORMATS = ("PNG", "JPEG", "JPEG2000", "BMP", "GIF", "TIFF", "WEBP", "PPM")
"""The formats Pillow may open here: raster formats it decodes itself. Pillow would hand an EPS file (whatever its
name) to the Ghostscript program, which runs the PostScript in it."""
VOC_PALETTE = imgviz.label_colormap()  # [256, 3]: colour k of a VOC palette PNG is class id k (255: the border)
WHITE = (255, 255, 255)
IGNORE_ID = 255
"""The ignore value of the label files (VOC borders, COCO crowds, synth borders) that the tools write; code that
reads labels takes config key ``ignore_label`` (default 255, this value) instead."""
SHOWN_COLOURS = 3

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
JPEG_TAIL = 1024  # the end-of-image marker must lie this close to the end (an EXIF thumbnail has its own, early)


def is_truncated_jpeg(data: bytes) -> bool:
    """True for JPEG bytes without an end-of-image marker near their end, e.g. a download cut short.

    OpenCV decodes such a file without an error and fills the missing rows with grey.
    """
    return data.startswith(JPEG_START) and JPEG_END not in data[-JPEG_TAIL:]


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 RGB ``[H, W, 3]``; UserError if it is missing, truncated or cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image not found; check data_root and the list file, or regenerate the lists")
    data = path.read_bytes()
    if is_truncated_jpeg(data):
        raise UserError(f"{path}: the JPEG is truncated (no end-of-image marker); replace or re-download it")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None  # OpenCV asserts on b""
    if image is None:
        raise UserError(f"{path}: cannot decode the image (corrupt or not an image); replace or re-download it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _packed(rgb: np.ndarray) -> np.ndarray:
    """RGB triples as one integer each (R << 16 | G << 8 | B)."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def label_from_colours(rgb: np.ndarray, path: str | Path) -> np.ndarray:
    """An RGB label or mask ``[H, W, 3]`` as uint8 ids, the rule for every colour-coded annotation.

    Black is 0, white is 255 (ignore in a label; the object in a black/white mask), and a colour of the
    VOC palette is its index (class id; VOC's border colour is index 255, ignore). Any other colour
    (e.g. a JPEG-compressed or hand-painted mask) is a UserError reporting the colours found and the
    fraction of non-black pixels.
    """
    keys = np.concatenate([_packed(VOC_PALETTE), _packed(np.array([WHITE]))])
    ids = np.concatenate([np.arange(len(VOC_PALETTE)), [IGNORE_ID]])
    order = np.argsort(keys)
    keys, ids = keys[order], ids[order]
    pixels = _packed(rgb)
    slot = np.clip(np.searchsorted(keys, pixels), 0, len(keys) - 1)
    known = keys[slot] == pixels
    if known.all():
        return ids[slot].astype(np.uint8)
    colours, counts = np.unique(pixels[~known], return_counts=True)
    shown = ", ".join(f"({c >> 16},{(c >> 8) & 255},{c & 255}) {100 * n / pixels.size:.1f}%"
                      for c, n in sorted(zip(colours.tolist(), counts.tolist()), key=lambda cn: -cn[1])[:SHOWN_COLOURS])
    more = f" and {len(colours) - SHOWN_COLOURS} more" if len(colours) > SHOWN_COLOURS else ""
    raise UserError(
        f"{path}: an RGB annotation may hold only black, white and VOC palette colours, but it holds {shown}{more} "
        f"({100 * float((pixels != 0).mean()):.1f}% of the pixels are not black); save it as a single-channel PNG "
        "(0 background, 255 object or ignore, or class ids)"
    )


def read_label(path: str | Path) -> np.ndarray:
    """Read a class-id label map (or a support mask) as uint8 ``[H, W]``.

    Single-channel PNGs give their values, palette PNGs their indices (the class ids), 16-bit PNGs their
    values if all are below 256; RGB(A) files go through :func:`label_from_colours`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: label not found; check data_root and the list file, or regenerate the lists")
    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            if img.mode in ("RGB", "RGBA"):
                return label_from_colours(np.array(img.convert("RGB")), path)
            if img.mode in ("1", "LA"):
                img = img.convert("L")
            values = np.array(img)
    except UnidentifiedImageError:
        raise UserError(f"{path}: cannot decode the label (corrupt or not an image); replace or regenerate it") from None
    except (OSError, SyntaxError) as err:
        raise UserError(f"{path}: cannot decode the label ({err}); replace or regenerate it") from None
    if values.ndim != 2 or values.dtype.kind not in "ui" or (values.size and (values.min() < 0 or values.max() > 255)):
        raise UserError(
            f"{path}: label must be a class-id PNG (single channel or palette, values 0..255, or RGB colours), "
            f"got mode {img.mode}; convert it with python -m tools.prepare_pascal or python -m tools.prepare_coco"
        )
    return values.astype(np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image from its header only; UserError if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image not found; check data_root and the list file, or regenerate the lists")
    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise UserError(f"{path}: cannot decode the image (corrupt or not an image); replace or re-download it") from None
    return height, width


def check_label_values(label: np.ndarray, num_classes: int, path: str | Path, ignore_label: int) -> None:
    """UserError if ``label`` holds a value outside ``0..num_classes`` other than ``ignore_label``."""
    bad = (label > num_classes) & (label != ignore_label)
    if bad.any():
        value = int(label[bad][0])
        raise UserError(
            f"{path}: label value {value} is not a class id (expected 0..{num_classes} or {ignore_label}); "
            "check that the file is a class-id map for this dataset"
        )


def encode_label_png(label: np.ndarray) -> bytes:
    """A uint8 class-id map as the bytes of a single-channel PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_label(path: str | Path, label: np.ndarray) -> None:
    """Write a uint8 class-id map as a single-channel PNG, atomically (no truncated file on a crash), creating the
    folder. No fsync: the datasets' masks are checked against their recorded hashes when prepared again."""
    write_bytes_atomic(path, encode_label_png(label), durable=False)
