"""predict.py reads support masks by the datasets' rule (util.data.image_io.read_object_mask): with --class-name a class-id
mask's object is that class's pixels; black/white masks stay black/white; what could be a class-id label with only
its ignore border is never turned into an object; photos are read on their stored pixel grid (EXIF not applied)."""
from __future__ import annotations

from pathlib import Path

import cv2
import imgviz
import numpy as np
import pytest
from PIL import Image

import predict
from tests.support.predict import SYNTH_CONFIG, RecordingNet, install_recording_net
from util.data.registry import class_names
from util.data.transform import ResizePad

SIZE = 97
SMALL = ["val_size", str(SIZE), "pretrained_backbone", "false", "device", "cpu"]
NAMES = class_names("synth")


@pytest.fixture
def standin(monkeypatch, tmp_path) -> Path:
    return install_recording_net(monkeypatch, tmp_path)


def write_png(path: Path, values: np.ndarray, palette: bool = False) -> Path:
    image = Image.fromarray(values.astype(np.uint8), "L")
    if palette:
        image = image.convert("P")
        image.putpalette(imgviz.label_colormap().astype(np.uint8).ravel().tolist())
    image.save(path)
    return path


def write_tagged_jpeg(path: Path, rgb: np.ndarray, orientation: int = 6) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    return path


def scene(tmp_path: Path, height: int = 60, width: int = 80) -> Path:
    rgb = np.full((height, width, 3), 40, np.uint8)
    rgb[: height // 2] = 220
    path = tmp_path / f"scene_{height}x{width}.png"
    cv2.imwrite(str(path), rgb)
    return path


def run(standin: Path, tmp_path: Path, image: Path, mask: Path, *extra: str, query: Path | None = None) -> dict:
    out = tmp_path / "out" / "mask.png"
    out.parent.mkdir(exist_ok=True)
    return predict.main(["--config", SYNTH_CONFIG, "--weight", str(standin), "--support", str(image), str(mask),
                         "--query", str(query or image), "--out", str(out), *extra, *SMALL])


def refused(standin: Path, tmp_path: Path, image: Path, mask: Path, *extra: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run(standin, tmp_path, image, mask, *extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def network_mask(expected: np.ndarray) -> np.ndarray:
    """``expected`` ({0, 1, 255} at the image's size) as the network receives it (test geometry)."""
    image = np.zeros((*expected.shape, 3), np.float32)
    return ResizePad(SIZE, (0, 0, 0), 255)(image, expected.astype(np.uint8), None)[1]


def given_mask() -> np.ndarray:
    return RecordingNet.calls[-1][2][0, 0].numpy()


def two_class_label(height: int = 60, width: int = 80) -> np.ndarray:
    """Class 3 (with a VOC-style 255 border) on the left, class 7 on the right."""
    label = np.zeros((height, width), np.uint8)
    label[10:50, 5:35] = 255
    label[13:47, 8:32] = 3
    label[10:50, 45:75] = 7
    return label


@pytest.mark.parametrize("palette", [False, True])
def test_with_a_class_name_a_class_id_mask_marks_exactly_that_class(standin, tmp_path, palette):
    image, label = scene(tmp_path), two_class_label()
    mask = write_png(tmp_path / "label.png", label, palette)
    run(standin, tmp_path, image, mask, "--class-name", NAMES[3 - 1])
    expected = np.where(label == 255, 255, label == 3).astype(np.uint8)
    assert np.array_equal(given_mask(), network_mask(expected))
    run(standin, tmp_path, image, mask, "--class-name", NAMES[7 - 1])
    assert np.array_equal(given_mask(), network_mask(np.where(label == 255, 255, label == 7)))


def test_a_class_id_mask_without_the_class_is_refused_saying_what_it_holds(standin, tmp_path, capsys):
    image, label = scene(tmp_path), two_class_label()
    mask = write_png(tmp_path / "label.png", label)
    err = refused(standin, tmp_path, image, mask, "--class-name", NAMES[5 - 1], capsys=capsys)
    assert f"{mask}: no pixel of class 5 ({NAMES[4]})" in err and "it holds 0, 3, 7, 255" in err
    # a VOC label whose class is absent: background and the ignore border only
    border_only = np.where(label == 255, 255, 0).astype(np.uint8)
    palette_mask = write_png(tmp_path / "border_palette.png", border_only, palette=True)
    for extra in ([], ["--class-name", NAMES[3 - 1]]):
        err = refused(standin, tmp_path, image, palette_mask, *extra, capsys=capsys)
        assert f"{palette_mask}: " in err and "it holds 0, 255" in err
    plain_mask = write_png(tmp_path / "border_plain.png", border_only)
    err = refused(standin, tmp_path, image, plain_mask, "--mask-format", "class-ids", "--class-name", NAMES[2],
                  capsys=capsys)
    assert "no pixel of class 3" in err and "it holds 0, 255" in err


def test_several_classes_without_a_class_name_are_refused(standin, tmp_path, capsys):
    image, mask = scene(tmp_path), write_png(tmp_path / "label.png", two_class_label())
    err = refused(standin, tmp_path, image, mask, capsys=capsys)
    assert "classes 3, 7" in err and "--class-name" in err
    one_class = np.where(two_class_label() == 7, 0, two_class_label())
    run(standin, tmp_path, image, write_png(tmp_path / "one.png", one_class))
    assert np.array_equal(given_mask(), network_mask(np.where(one_class == 255, 255, one_class == 3)))


def test_a_thin_255_border_is_not_an_object_unless_forced(standin, tmp_path, capsys):
    image, label = scene(tmp_path), two_class_label()
    border = write_png(tmp_path / "border.png", np.where(label == 255, 255, 0))
    err = refused(standin, tmp_path, image, border, capsys=capsys)
    assert f"{border}: " in err and "thin lines" in err and "--mask-format binary" in err
    run(standin, tmp_path, image, border, "--mask-format", "binary")
    assert np.array_equal(given_mask(), network_mask((label == 255).astype(np.uint8)))


@pytest.mark.parametrize("values", [(0, 255), (0, 1)])
def test_black_white_masks_stay_black_white(standin, tmp_path, values):
    image = scene(tmp_path)
    blob = np.zeros((60, 80), np.uint8)
    blob[5:40, 10:60] = 1
    for extra in ([], ["--class-name", NAMES[0]], ["--mask-format", "binary"]):
        run(standin, tmp_path, image, write_png(tmp_path / "mask.png", blob * values[1]), *extra)
        assert np.array_equal(given_mask(), network_mask(blob))


def test_a_grey_mask_needs_the_binary_format(standin, tmp_path, capsys):
    image = scene(tmp_path)
    grey = np.tile(np.linspace(0, 255, 80).astype(np.uint8), (60, 1))  # an anti-aliased edge across the mask
    mask = write_png(tmp_path / "grey.png", grey)
    err = refused(standin, tmp_path, image, mask, capsys=capsys)
    assert "--mask-format binary" in err and "not class ids of this dataset (0..20, 255 ignore)" in err
    run(standin, tmp_path, image, mask, "--mask-format", "binary")
    assert np.array_equal(given_mask(), network_mask((grey >= 128).astype(np.uint8)))


def test_a_16_bit_mask_names_no_dataset_tool(standin, tmp_path, capsys):
    values = np.zeros((60, 80), np.uint16)
    values[10:30, 10:30] = 1000
    mask = tmp_path / "deep.png"
    cv2.imwrite(str(mask), values)
    err = refused(standin, tmp_path, scene(tmp_path), mask, capsys=capsys)
    assert "mode I;16" in err and "tools." not in err and "8-bit" in err


def test_help_documents_the_mask_rule(capsys):
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--mask-format {auto,binary,class-ids}" in text
    assert "class-id" in text and "--class-name" in text and "thin" in text and "EXIF" in text


# ---------------------------------------------------------------- EXIF orientation

def left_half_photo(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An image bright in its left 40 % (stored pixels) and that region as a 0/255 mask."""
    mask = np.zeros((height, width), np.uint8)
    mask[:, : width * 2 // 5] = 255
    rgb = np.full((height, width, 3), 20, np.uint8)
    rgb[mask == 255] = 230
    return rgb, mask


@pytest.mark.parametrize("height,width", [(64, 64), (48, 80)])
def test_tagged_support_photos_meet_their_masks_on_the_stored_grid(standin, tmp_path, height, width):
    rgb, mask = left_half_photo(height, width)
    image = write_tagged_jpeg(tmp_path / "support.jpg", rgb)
    run(standin, tmp_path, image, write_png(tmp_path / "mask.png", mask), query=scene(tmp_path))
    _, supports, masks, _ = RecordingNet.calls[-1]
    brightness, given = supports[0, 0].mean(0).numpy(), masks[0, 0].numpy()
    assert np.array_equal(given, network_mask(mask // 255))
    assert brightness[given == 1].mean() > brightness[given == 0].mean() + 1.2


def test_a_support_mask_of_the_turned_picture_is_refused_naming_exif(standin, tmp_path, capsys):
    rgb, mask = left_half_photo(48, 80)
    image = write_tagged_jpeg(tmp_path / "support.jpg", rgb)
    turned = write_png(tmp_path / "turned.png", np.ascontiguousarray(np.rot90(mask, -1)))
    err = refused(standin, tmp_path, image, turned, capsys=capsys)
    assert "is (80, 48) but its image" in err and "is (48, 80)" in err
    assert "EXIF orientation 6 (rotated 90°)" in err and "stored pixel grid" in err


def test_a_tagged_query_is_segmented_on_its_stored_grid(standin, tmp_path):
    rgb, mask = left_half_photo(48, 80)
    query = write_tagged_jpeg(tmp_path / "query.jpg", rgb)
    result = run(standin, tmp_path, scene(tmp_path), write_png(tmp_path / "mask.png", np.full((60, 80), 255)),
                 query=query)
    with Image.open(result["mask"]) as written:
        prediction = np.array(written)
    assert prediction.shape == (48, 80)
    assert (prediction == mask).mean() > 0.97
