"""Photos and labels meet on the stored pixel grid: a JPEG's EXIF orientation tag is not applied (labels are drawn
on the stored grid, as PASCAL/COCO/FSS-1000 store them), a size mismatch of a tagged image says so; a label that is
not 8-bit names the tool that rebuilds that dataset's labels, or none."""
import cv2
import numpy as np
import pytest
from PIL import Image

import tools.make_lists
from tests.tools.test_data_prepare import voc_sbd  # noqa: F401  (fixture)
from tests.support.data import block_label, data_config, pascal_pool, write_pool
from util.dataset import EpisodeDataset
from util.common.errors import UserError
from util.data.lists import pool_list_path
from util.data.image_io import image_size, read_image, write_label
from tools.make_lists import make_lists
from tools.make_synth import make_synth
from tools.prepare_pascal import prepare_pascal
from util.data.transform import normalization_for

ROTATED = 6  # EXIF orientation 6: viewers turn the stored pixels 90 degrees clockwise
BRIGHT, DARK = 230, 20


def write_tagged_jpeg(path, rgb: np.ndarray, orientation: int = ROTATED) -> None:
    """``rgb`` as the stored pixels of a JPEG carrying an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, exif=exif, quality=95)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_photos_are_read_in_rgb_order(tmp_path, suffix):
    """The normalisation (ImageNet mean and std) and the pretrained backbones take RGB: a red, a green and a blue
    stripe written by Pillow (RGB) come back red, green and blue."""
    rgb = np.zeros((24, 16, 3), np.uint8)
    for channel in range(3):
        rgb[8 * channel:8 * channel + 8, :, channel] = 250
    path = tmp_path / f"stripes.{suffix}"
    Image.fromarray(rgb).save(path, quality=95)
    read = read_image(path).astype(float)
    for channel in range(3):
        stripe = read[8 * channel + 2:8 * channel + 6].mean(axis=(0, 1))
        assert stripe.argmax() == channel and stripe[channel] > 200, (suffix, channel, stripe)


def photo_of(label: np.ndarray, class_id: int) -> np.ndarray:
    """An image bright exactly where ``label`` holds ``class_id`` and dark elsewhere."""
    rgb = np.full((*label.shape, 3), DARK, np.uint8)
    rgb[label == class_id] = BRIGHT
    return rgb


def left_block(height: int, width: int, class_id: int, columns: int) -> np.ndarray:
    """A label whose class fills the left ``columns`` (no border): rotating the picture moves it to the top."""
    label = np.zeros((height, width), np.uint8)
    label[:, :columns] = class_id
    return label


def assert_aligned(rgb: np.ndarray, classes: np.ndarray, class_id: int) -> None:
    assert rgb.shape[:2] == classes.shape
    assert rgb[classes == class_id].mean() > BRIGHT - 15 and rgb[classes != class_id].mean() < DARK + 15


@pytest.fixture
def tagged_pool(tmp_path):
    """A PASCAL pool whose val images v01_0 (64 x 64) and v02_0 (48 x 80) are JPEGs tagged "rotated 90 degrees",
    their labels on the stored pixel grid."""
    root = tmp_path / "voc"
    pascal_pool(root)
    labels = {"v01_0": (left_block(64, 64, 1, 40), 1), "v02_0": (left_block(48, 80, 2, 50), 2)}
    for name, (label, class_id) in labels.items():
        write_label(root / "SegmentationClassAug" / f"{name}.png", label)
        write_tagged_jpeg(root / "JPEGImages" / f"{name}.jpg", photo_of(label, class_id))
    return root, tmp_path / "lists", labels


def test_tagged_photos_are_read_on_the_stored_grid_in_episodes(tagged_pool):
    root, lists, labels = tagged_pool
    make_lists("pascal", root, lists, workers=1)
    cfg = data_config(root, lists, dataset="pascal")
    dataset = EpisodeDataset(cfg, "test", episodes=60)
    mean, std = (np.array(v, np.float32) * 255 for v in normalization_for(cfg))
    seen = set()
    for index in range(len(dataset)):
        episode = dataset.episode(index)
        name = episode.query[0].split("/")[-1][:-4]
        if name not in labels or name in seen:
            continue
        seen.add(name)
        label, class_id = labels[name]
        rgb, classes = dataset.read(*episode.query)
        assert_aligned(rgb, classes, class_id)
        assert np.array_equal(classes, label)
        # the network's input: the query in the test geometry and its label on the same grid
        sample = dataset[index]
        image = sample["query"].permute(1, 2, 0).numpy() * std + mean
        target = sample["query_label"].numpy()
        assert image[target == 1].mean() > BRIGHT - 25 and image[target == 0].mean() < DARK + 25
    assert seen == set(labels)
    assert image_size(root / "JPEGImages" / "v02_0.jpg") == read_image(root / "JPEGImages" / "v02_0.jpg").shape[:2]


def test_a_label_drawn_on_the_turned_picture_is_refused_naming_exif(tagged_pool):
    root, lists, labels = tagged_pool
    image, label = root / "JPEGImages" / "v02_0.jpg", root / "SegmentationClassAug" / "v02_0.png"
    write_label(label, np.ascontiguousarray(np.rot90(labels["v02_0"][0], -1)))  # 80 x 48: the picture as shown
    with pytest.raises(UserError) as info:
        make_lists("pascal", root, lists, workers=1)
    message = str(info.value)
    assert f"image {image} is (48, 80) but label {label} is (80, 48)" in message
    assert "EXIF orientation 6 (rotated 90°)" in message and "stored pixel grid" in message and "\n" not in message

    write_label(label, labels["v02_0"][0])
    make_lists("pascal", root, lists, workers=1)
    write_label(label, np.ascontiguousarray(np.rot90(labels["v02_0"][0], -1)))
    dataset = EpisodeDataset(data_config(root, lists, dataset="pascal"), "test", episodes=60)
    index = next(i for i in range(len(dataset)) if dataset.episode(i).query[0] == "JPEGImages/v02_0.jpg")
    with pytest.raises(UserError, match=r"EXIF orientation 6 \(rotated 90°\): .*stored pixel grid"):
        dataset[index]


def test_an_untagged_size_mismatch_does_not_mention_exif(tmp_path):
    root = tmp_path / "voc"
    pascal_pool(root)
    write_label(root / "SegmentationClassAug" / "v01_0.png", block_label(64, 80, [(1, 4, 4, 48, 48)]))
    with pytest.raises(UserError) as info:
        make_lists("pascal", root, tmp_path / "lists", workers=1)
    assert "same height and width" in str(info.value) and "EXIF" not in str(info.value)


def write_16bit_label(path, value: int = 300) -> None:
    label = np.zeros((64, 64), np.uint16)
    label[10:40, 10:40] = value
    assert cv2.imwrite(str(path), label)


def make_lists_error(dataset: str, root, lists, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        tools.make_lists.main(["--dataset", dataset, "--data-root", str(root), "--list-root", str(lists),
                               "--workers", "1"])
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip()


def test_a_16_bit_label_names_the_tool_of_its_dataset(tmp_path, capsys):
    # PASCAL: prepare_pascal rebuilds SegmentationClassAug
    root = tmp_path / "my voc"
    pascal_pool(root)
    write_16bit_label(root / "SegmentationClassAug" / "t01_0.png")
    message = make_lists_error("pascal", root, tmp_path / "lists", capsys)
    assert "t01_0.png: label must be" in message and "mode I;16" in message
    assert "python -m tools.prepare_pascal" in message and "prepare_coco" not in message and "make_synth" not in message
    # synth: make_synth writes its labels
    root = tmp_path / "my synth"
    make_synth(root, num_train=4, num_val=4, seed=0, workers=1)
    write_16bit_label(root / "SegmentationClassAug" / "train_00001.png")
    message = make_lists_error("synth", root, tmp_path / "lists", capsys)
    assert f"python -m tools.make_synth --root '{root}'" in message and "prepare_" not in message
    # COCO: prepare_coco renders its masks
    root = tmp_path / "coco"
    for subset in ("train", "val"):
        entries = {f"{subset}{k}": block_label(64, 64, [(k + 1, 2, 2, 50, 50)]) for k in range(3)}
        write_pool(root, str(pool_list_path(root, "coco", subset).relative_to(root)), entries)
    write_16bit_label(root / "SegmentationClassAug" / "val1.png")
    message = make_lists_error("coco", root, tmp_path / "lists", capsys)
    assert f"python -m tools.prepare_coco --coco-root {root}" in message and "prepare_pascal" not in message


def test_a_16_bit_voc_label_asks_for_the_voc_download(voc_sbd):  # noqa: F811
    voc, sbd, _ = voc_sbd
    write_16bit_label(voc / "SegmentationClass" / "2007_000002.png")
    with pytest.raises(UserError) as info:
        prepare_pascal(voc, sbd, workers=1)
    assert "2007_000002.png: label must be" in str(info.value) and "VOCtrainval_11-May-2012.tar" in str(info.value)
    assert "tools." not in str(info.value)
