"""make_synth: layout, determinism across workers, idempotence, labels, class names, clutter."""
import numpy as np
import pytest

from tools.make_synth import main
from util.data.benchmarks.synth import SYNTH_CLASSES
from util.common.errors import UserError
from util.data.image_io import read_image, read_label
from tools.make_synth import image_id, make_synth, render


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synth(root, num_train=10, num_val=4, seed=5, workers=1)
    return root


def test_layout_lists_and_class_names(synth_root):
    assert (synth_root / "class_names.txt").read_text().splitlines() == list(SYNTH_CLASSES)
    lines = (synth_root / "ImageSets/SegmentationAug/train.txt").read_text().splitlines()
    assert len(lines) == 10 and lines[0] == "JPEGImages/train_00000.jpg SegmentationClassAug/train_00000.png"
    assert len((synth_root / "ImageSets/SegmentationAug/val.txt").read_text().splitlines()) == 4
    assert len(list((synth_root / "JPEGImages").glob("*.jpg"))) == 14


def test_images_and_labels(synth_root):
    for index in range(10):
        image = read_image(synth_root / "JPEGImages" / f"{image_id('train', index)}.jpg")
        label = read_label(synth_root / "SegmentationClassAug" / f"{image_id('train', index)}.png")
        assert image.shape[:2] == label.shape and all(160 <= s <= 240 for s in label.shape)
        classes = set(np.unique(label).tolist()) - {0, 255}
        assert 1 <= len(classes) <= 3 and classes <= set(range(1, 21))
        assert (label == 255).any()  # VOC-like object borders


def test_worker_count_does_not_change_output(synth_root, tmp_path):
    make_synth(tmp_path, num_train=10, num_val=4, seed=5, workers=2)
    for path in (synth_root / "JPEGImages").iterdir():
        assert (tmp_path / "JPEGImages" / path.name).read_bytes() == path.read_bytes()
        label = f"SegmentationClassAug/{path.stem}.png"
        assert (tmp_path / label).read_bytes() == (synth_root / label).read_bytes()


def test_second_call_does_nothing_and_other_arguments_are_refused(synth_root, capsys):
    stamp = (synth_root / "JPEGImages" / "train_00000.jpg").stat().st_mtime_ns
    assert make_synth(synth_root, num_train=10, num_val=4, seed=5) is False
    assert (synth_root / "JPEGImages" / "train_00000.jpg").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit):
        main(["--root", str(synth_root), "--num-train", "11", "--num-val", "4", "--seed", "5"])
    assert "made with other arguments" in capsys.readouterr().err
    with pytest.raises(UserError):
        make_synth(synth_root, num_train=10, num_val=4, seed=6)


def test_incomplete_output_is_completed(tmp_path):
    make_synth(tmp_path, num_train=3, num_val=2, seed=0, workers=1)
    (tmp_path / "JPEGImages" / "val_00001.jpg").unlink()
    assert make_synth(tmp_path, num_train=3, num_val=2, seed=0, workers=1) is True
    assert (tmp_path / "JPEGImages" / "val_00001.jpg").is_file()


def test_class_colour_varies_so_a_fixed_threshold_fails():
    means = []
    for index in range(120):
        image, label = render(0, "train", index)
        for class_id in set(np.unique(label).tolist()) - {0, 255}:
            if SYNTH_CLASSES[class_id - 1].startswith("red"):
                means.append(image[label == class_id].mean(axis=0))
    assert len(means) >= 5
    assert np.std(np.array(means), axis=0).max() > 8.0
