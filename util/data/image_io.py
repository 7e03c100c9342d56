"""Reading and writing images, class-id label maps and object masks, with one-line errors for bad files.

Every reader keeps a file's **stored pixel grid**: a JPEG's EXIF orientation tag is not applied (OpenCV reads with
``IMREAD_IGNORE_ORIENTATION``, Pillow without ``exif_transpose``), because PASCAL, COCO and FSS-1000 annotations are
drawn on the stored pixels, as are the labels the preparation tools write. A photo whose label was drawn on the
picture as a viewer shows it (turned by the tag) then differs in size, and the message says so
(:func:`exif_note`); a square one cannot be told apart, so annotate on the stored pixels.

Object masks (:func:`read_object_mask`) follow the datasets' rule: a class-id label's object is the pixels of one
class (:func:`util.data.transform.binary_label`, as in episodes), a black/white mask's object its white (or 1) pixels
(:func:`binary_object`, as FSS-1000 masks).
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import imgviz
import numpy as np
from PIL import Image, UnidentifiedImageError

from util.common.atomic import write_bytes_atomic
from util.common.errors import UserError

PIL_FORMATS = ("PNG", "JPEG", "JPEG2000", "BMP", "GIF", "TIFF", "WEBP", "PPM")
"""The formats Pillow may open here: raster formats it decodes itself. Pillow would hand an EPS file (whatever its
name) to the Ghostscript program, which runs the PostScript in it."""
VOC_PALETTE = imgviz.label_colormap()  # [256, 3]: colour k of a VOC palette PNG is class id k (255: the border)
WHITE = (255, 255, 255)
IGNORE_ID = 255
"""The ignore value of the label files (VOC borders, COCO crowds, synth borders) that the tools write; code that
reads labels takes config key ``ignore_label`` (default 255, this value) instead."""
SHOWN_COLOURS = 3

EXIF_ORIENTATION = 0x0112
ORIENTATIONS = {2: "mirrored", 3: "rotated 180°", 4: "upside down, mirrored", 5: "rotated 90°, mirrored",
                6: "rotated 90°", 7: "rotated 270°, mirrored", 8: "rotated 270°"}
"""How a viewer turns the stored pixels for each EXIF orientation value (1: as stored)."""
SAVE_AS_8_BIT = "save it as an 8-bit single-channel or palette PNG"
MASK_FORMATS = ("auto", "binary", "class-ids")
BINARY_OBJECT_GREY = 128  # a black/white mask's object: grey level >= 128 (HSNet's FSS-1000 rule), or 1 in a 0/1 mask
THIN_LINE_KERNEL = 7
"""In ``auto``, a 0/255 mask whose 255 pixels are more than a 6 x 6 blob yet vanish under an erosion with this disc
(lines up to 6 px wide, like VOC's ignore borders) is refused: it may be a class-id label holding only its border."""

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
JPEG_TAIL = 1024  # the end-of-image marker must lie this close to the end (an EXIF thumbnail has its own, early)


def is_truncated_jpeg(data: bytes) -> bool:
    """True for JPEG bytes without an end-of-image marker near their end, e.g. a download cut short.

    OpenCV decodes such a file without an error and fills the missing rows with grey.
    """
    return data.startswith(JPEG_START) and JPEG_END not in data[-JPEG_TAIL:]


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 RGB ``[H, W, 3]`` on its stored pixel grid (EXIF orientation not applied); UserError
    if it is missing, truncated or cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image not found; check data_root and the list file, or regenerate the lists")
    data = path.read_bytes()
    if is_truncated_jpeg(data):
        raise UserError(f"{path}: the JPEG is truncated (no end-of-image marker); replace or re-download it")
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None  # OpenCV asserts on b""
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


def _decode_label(path: Path, remedy: str | None) -> tuple[np.ndarray, str]:
    """The uint8 values of a label or mask file and how it codes them: ``palette`` (a palette PNG: its indices),
    ``colours`` (an RGB file with a VOC palette colour other than black and white) or ``grey``."""
    if not path.is_file():
        raise UserError(f"{path}: label not found; check data_root and the list file, or regenerate the lists")
    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            mode = img.mode
            if mode in ("RGB", "RGBA"):
                rgb = np.array(img.convert("RGB"))
                black_white = np.isin(_packed(rgb), _packed(np.array([(0, 0, 0), WHITE]))).all()
                return label_from_colours(rgb, path), "grey" if black_white else "colours"
            values = np.array(img.convert("L") if mode in ("1", "LA") else img)
    except UnidentifiedImageError:
        raise UserError(f"{path}: cannot decode the label (corrupt or not an image); replace or regenerate it") from None
    except (OSError, SyntaxError) as err:
        raise UserError(f"{path}: cannot decode the label ({err}); replace or regenerate it") from None
    if values.ndim != 2 or values.dtype.kind not in "ui" or (values.size and (values.min() < 0 or values.max() > 255)):
        extent = f" with values up to {int(values.max())}" if values.ndim == 2 and values.dtype.kind in "ui" else ""
        raise UserError(
            f"{path}: label must be a class-id PNG (8-bit single channel or palette, values 0..255, or RGB colours), "
            f"got mode {mode}{extent}; {remedy or SAVE_AS_8_BIT}"
        )
    return values.astype(np.uint8), "palette" if mode == "P" else "grey"


def read_label(path: str | Path, remedy: str | None = None) -> np.ndarray:
    """Read a class-id label map as uint8 ``[H, W]`` (stored pixel grid).

    Single-channel PNGs give their values, palette PNGs their indices (the class ids), 16-bit PNGs their
    values if all are below 256; RGB(A) files go through :func:`label_from_colours`. ``remedy`` ends the message
    for a file that is not 8-bit (what rebuilds the dataset's labels); without it the message asks for an 8-bit PNG.
    """
    return _decode_label(Path(path), remedy)[0]


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image's stored pixel grid from its header only; UserError if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image not found; check data_root and the list file, or regenerate the lists")
    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise UserError(f"{path}: cannot decode the image (corrupt or not an image); replace or re-download it") from None
    return height, width


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation value of an image file (1, as stored, when it has none or cannot be read)."""
    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            value = img.getexif().get(EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, SyntaxError):
        return 1
    return value if value in ORIENTATIONS else 1


def exif_note(image_path: str | Path, kind: str = "label") -> str:
    """The end of a size-mismatch message for ``image_path``: empty, or what its EXIF orientation tag means here."""
    orientation = exif_orientation(image_path)
    if orientation == 1:
        return ""
    return (f"; the image carries EXIF orientation {orientation} ({ORIENTATIONS[orientation]}): {kind}s are read on "
            f"the stored pixel grid, as images are, so draw the {kind} on the stored pixels (or save the image turned "
            "as it is shown, without the tag)")


def binary_object(grey: np.ndarray, ignore_label: int | None = None) -> np.ndarray:
    """The black/white mask rule, as uint8 (1 object, 0 not): in a mask of 0 and 1 (and ``ignore_label``, kept as
    ignore) the 1s, otherwise grey level >= 128."""
    values = set(np.unique(grey).tolist())
    if 1 in values and values <= {0, 1, ignore_label}:
        return grey.astype(np.uint8)
    return (grey >= BINARY_OBJECT_GREY).astype(np.uint8)


def read_grey(path: str | Path) -> np.ndarray:
    """A mask file's grey levels (Pillow's ``L`` conversion) as uint8 ``[H, W]``; UserError if it cannot be decoded."""
    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            return np.array(img.convert("L"))
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise UserError(f"{path}: cannot decode the mask ({err}); replace it") from None


def _shown(values: np.ndarray, most: int = 8) -> str:
    present = np.unique(values).tolist()
    return ", ".join(map(str, present[:most])) + (f" and {len(present) - most} more" if len(present) > most else "")


def _like_a_border(mask: np.ndarray) -> bool:
    """True if the pixels of ``mask`` are more than a small blob yet vanish under the thin-line erosion."""
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (THIN_LINE_KERNEL, THIN_LINE_KERNEL))
    return int(mask.sum()) > (THIN_LINE_KERNEL - 1) ** 2 and not cv2.erode(mask.astype(np.uint8), disc).any()


def read_object_mask(path: str | Path, mask_format: str = "auto", class_id: int = 0, class_name: str = "",
                     ignore_label: int = IGNORE_ID, num_classes: int = 255) -> np.ndarray:
    """A support mask file as uint8 ``[H, W]``: 1 object, 0 not, ``ignore_label`` ignored; UserError if it marks no
    object pixel.

    ``binary``: a black/white mask (:func:`binary_object`: 0/255, grey >= 128 = object; or 0/1 with
    ``ignore_label`` as ignore). ``class-ids``: a class-id label (0 background, ``ignore_label`` ignore) whose
    object is class ``class_id`` (:func:`util.data.transform.binary_label`, as in episodes), or without a class (0) its
    one class (several are refused). ``auto``: palette PNGs and RGB files in VOC palette colours are class-id labels;
    other files holding only 0 and 1 (and ``ignore_label``), or only 0 and 255, are black/white, except a 0/255
    one whose 255 pixels form only thin lines (the ignore border of a class-id label without the class), which is
    refused; anything else is a class-id label with values ``0..num_classes`` or ``ignore_label``.
    """
    from util.data.transform import (
        binary_label,  # here: util.data.transform imports torch, which the list tools do without
    )

    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    path = Path(path)
    if mask_format == "binary":
        mask = binary_object(read_grey(path), ignore_label)
        if not (mask == 1).any():
            raise UserError(f"{path}: the black/white mask marks no object pixel (no 1 and no grey level >= "
                            f"{BINARY_OBJECT_GREY}); see --help for the mask formats")
        return mask
    values, coding = _decode_label(path, None)
    present = set(np.unique(values).tolist())
    if mask_format == "auto" and coding == "grey":
        if present <= {0}:
            raise UserError(f"{path}: the mask marks no object pixel (all 0); see --help for the mask formats")
        if present <= {0, 255} and _like_a_border(values == 255):
            raise UserError(f"{path}: holds only 0 and 255 and its 255 pixels form thin lines only (at most "
                            f"{THIN_LINE_KERNEL - 1} px wide), like the ignore border of a class-id label without "
                            "the class: not read as an object; give --mask-format binary if the lines are the object")
        if present <= {0, 255} or (1 in present and present <= {0, 1, ignore_label}):
            return binary_object(values, ignore_label)
    bad = sorted(v for v in present if v > num_classes and v != ignore_label)
    if bad:
        raise UserError(f"{path}: holds values {_shown(values)}, not class ids of this dataset (0..{num_classes}, "
                        f"{ignore_label} ignore) nor only black and white; give --mask-format binary to read grey "
                        f"level >= {BINARY_OBJECT_GREY} as the object")
    classes = sorted(present - {0, ignore_label})
    if not class_id:
        if len(classes) > 1:
            raise UserError(f"{path}: a class-id mask holding classes {', '.join(map(str, classes))}; give "
                            "--class-name to choose one, or keep only one class in the mask")
        class_id = classes[0] if classes else 0
    if not class_id or class_id not in present:
        named = f"class {class_id}" + (f" ({class_name})" if class_name else "") if class_id else "any class"
        raise UserError(f"{path}: no pixel of {named}, so the mask marks no object pixel: it holds {_shown(values)} "
                        f"(0 background, {ignore_label} ignore); use a mask of the class, or see --help for the "
                        "mask formats")
    return binary_label(values, class_id, ignore_label)


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
