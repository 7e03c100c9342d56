"""Reading and writing images and class-id label maps, with one-line errors for bad files."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from util.errors import UserError


PIL_FORMATS = ("PNG", "JPEG", "JPEG2000", "BMP", "GIF", "TIFF", "WEBP", "PPM")
"""The formats Pillow may open here: raster formats it decodes itself. Pillow would hand an EPS file (whatever its
name) to the Ghostscript program, which runs the PostScript in it."""

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
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"{path}: cannot decode the image (corrupt or not an image); replace or re-download it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: str | Path) -> np.ndarray:
    """Read a class-id label map as uint8 ``[H, W]`` (palette PNGs give their indices, i.e. class ids)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: label not found; check data_root and the list file, or regenerate the lists")
    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            if img.mode not in ("L", "P"):
                raise UserError(
                    f"{path}: label must be a single-channel class-id PNG (mode L or P), got mode {img.mode}; "
                    "convert it with util/prepare_pascal.py or util/prepare_coco.py"
                )
            return np.array(img, dtype=np.uint8)
    except UnidentifiedImageError:
        raise UserError(f"{path}: cannot decode the label (corrupt or not an image); replace or regenerate it") from None
    except (OSError, SyntaxError) as err:
        raise UserError(f"{path}: cannot decode the label ({err}); replace or regenerate it") from None


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


def check_label_values(label: np.ndarray, num_classes: int, path: str | Path, ignore_label: int = 255) -> None:
    """UserError if ``label`` holds a value outside ``0..num_classes`` other than ``ignore_label``."""
    bad = (label > num_classes) & (label != ignore_label)
    if bad.any():
        value = int(label[bad][0])
        raise UserError(
            f"{path}: label value {value} is not a class id (expected 0..{num_classes} or {ignore_label}); "
            "check that the file is a class-id map for this dataset"
        )


def write_label(path: str | Path, label: np.ndarray) -> None:
    """Write a uint8 class-id map as a single-channel PNG (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8)).save(path)
