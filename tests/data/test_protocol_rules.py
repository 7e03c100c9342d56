"""The reference's episode rules next to the other values of their switches: which class an episode draws, and
the training crop."""
import warnings

import numpy as np
import pytest

from tests.support.data import data_config, write_pool
from util.dataset import EpisodeDataset
from tools.make_lists import make_lists
from util.data.transform import UNIFORM_RETRIES, RandomCrop

VAL_LIST = "ImageSets/SegmentationAug/val.txt"
TRAIN_LIST = "ImageSets/SegmentationAug/train.txt"


def square(class_id: int) -> np.ndarray:
    label = np.zeros((64, 64), np.uint8)
    label[4:54, 4:54] = class_id  # 2500 px: counts
    return label


@pytest.fixture(scope="module")
def tiny_second_class(tmp_path_factory):
    """Fold-0 val pool: query 'q' holds class 1 (2500 px), 10 px of class 2 and 6 px of class 3.
    Class 1 counts in q and 3 more images, class 2 in 3 other images, class 3 in 1 other image."""
    root = tmp_path_factory.mktemp("draw")
    query = square(1)
    query[60:62, 55:60] = 2
    query[58:60, 0:3] = 3
    val = {"q": query, "c3_0": square(3)}
    val.update({f"c1_{k}": square(1) for k in range(3)})
    val.update({f"c2_{k}": square(2) for k in range(3)})
    write_pool(root, VAL_LIST, val)
    write_pool(root, TRAIN_LIST, {"t": square(6)})
    make_lists("pascal", root, root / "lists", workers=1)
    return root, root / "lists"


def draws_on_query(data, episode_class: str, shot: int, seeds=range(40)):
    """``(class, supports)`` of every episode whose query is 'q', over ``seeds``."""
    cfg = data_config(*data, dataset="pascal", shot=shot, episode_class=episode_class)
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # class 3 has too few images
        for seed in seeds:
            dataset = EpisodeDataset(cfg, "val", episodes=7, seed=seed)
            for index in range(len(dataset)):
                episode = dataset.episode(index)
                if episode.query[0] == "JPEGImages/q.jpg":
                    found.append((episode.class_id, [image for image, _ in episode.supports], dataset, index))
    return found


@pytest.mark.parametrize("shot", [1, 2])
def test_reference_draw_reaches_a_tiny_class_of_the_query(tiny_second_class, shot):
    found = draws_on_query(tiny_second_class, "any_size", shot)
    classes = [class_id for class_id, *_ in found]
    assert len(found) == 40 and set(classes) == {1, 2}  # class 3: 1 image in its pool < shot + 1, never drawn
    assert 10 <= classes.count(2) <= 30
    for class_id, supports, dataset, index in found:
        assert len(set(supports)) == shot and "JPEGImages/q.jpg" not in supports
        assert all(image.startswith(f"JPEGImages/c{class_id}_") for image in supports)  # the class's pool
        if class_id == 2:
            label = dataset[index]["query_label_ori"].numpy()
            assert (label == 1).sum() == 10


@pytest.mark.parametrize("shot", [1, 2])
def test_counted_draw_never_picks_an_uncounted_class(tiny_second_class, shot):
    assert {class_id for class_id, *_ in draws_on_query(tiny_second_class, "counted", shot)} == {1}


def test_a_class_too_small_for_the_shot_is_left_out_with_a_warning(tiny_second_class):
    cfg = data_config(*tiny_second_class, dataset="pascal", shot=1, episode_class="any_size")
    with pytest.warns(UserWarning, match=r"class \(eligible images\): 3 \(1\), 4 \(0\), 5 \(0\)$"):
        dataset = EpisodeDataset(cfg, "val", episodes=7, seed=0)
    assert 3 not in dataset.classes and all(3 not in classes for _, _, classes in dataset.items)


def reference_crop(image, label, size, randint, ignore_label=255, padding=(0.0, 0.0, 0.0)):
    """BAM's transform.Crop (crop_type 'rand'), transcribed; ``randint(a, b)`` draws from [a, b] like random.randint."""
    h, w = label.shape
    pad_h = max(size - h, 0)
    pad_w = max(size - w, 0)
    pad_h_half = int(pad_h / 2)
    pad_w_half = int(pad_w / 2)
    if pad_h > 0 or pad_w > 0:
        image = np.pad(image, ((pad_h_half, pad_h - pad_h_half), (pad_w_half, pad_w - pad_w_half), (0, 0)),
                       constant_values=padding[0])
        label = np.pad(label, ((pad_h_half, pad_h - pad_h_half), (pad_w_half, pad_w - pad_w_half)),
                       constant_values=ignore_label)
    h, w = label.shape
    raw_label = label
    raw_image = image
    h_off = randint(0, h - size)
    w_off = randint(0, w - size)
    image = image[h_off:h_off + size, w_off:w_off + size]
    label = label[h_off:h_off + size, w_off:w_off + size]
    raw_pos_num = np.sum(raw_label == 1)
    pos_num = np.sum(label == 1)
    crop_cnt = 0
    while pos_num < 0.85 * raw_pos_num and crop_cnt <= 30:
        image = raw_image
        label = raw_label
        h_off = randint(0, h - size)
        w_off = randint(0, w - size)
        image = image[h_off:h_off + size, w_off:w_off + size]
        label = label[h_off:h_off + size, w_off:w_off + size]
        raw_pos_num = np.sum(raw_label == 1)
        pos_num = np.sum(label == 1)
        crop_cnt += 1
    return image, label


def random_layout(rng: np.random.Generator) -> np.ndarray:
    """A label of random size with random rectangles of 1 (the target), 2 and 255."""
    height, width = int(rng.integers(30, 160)), int(rng.integers(30, 160))
    label = np.zeros((height, width), np.uint8)
    for value in rng.permutation([1, 2, 255, 1]):
        top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
        label[top:top + int(rng.integers(1, height)), left:left + int(rng.integers(1, width))] = value
    return label


def test_uniform_retry_crop_equals_the_reference_transcription():
    layouts = np.random.default_rng(0)
    for case in range(300):
        label = random_layout(layouts)
        image = np.dstack([label.astype(np.float32)] * 3)
        size = int(layouts.integers(16, 120))
        seed = int(layouts.integers(1 << 30))
        reference_rng = np.random.default_rng(seed)
        expected = reference_crop(image, label, size, lambda a, b: int(reference_rng.integers(a, b + 1)))
        ours = RandomCrop(size, (0.0, 0.0, 0.0), 255, "uniform_retry")(image, label, np.random.default_rng(seed))
        assert np.array_equal(ours[1], expected[1]) and np.array_equal(ours[0], expected[0]), case
    assert UNIFORM_RETRIES == 31  # the transcribed loop runs while crop_cnt <= 30


def kept_fractions(rule: str, label: np.ndarray, size: int, seeds=range(200)) -> np.ndarray:
    crop = RandomCrop(size, (0.0, 0.0, 0.0), 255, rule)
    image = np.zeros((*label.shape, 3), np.float32)
    total = (label == 1).sum()
    return np.array([(crop(image, label, np.random.default_rng(s))[1] == 1).sum() / total for s in seeds])


def test_uniform_retry_keeps_85_percent_of_a_target_that_fits():
    label = np.zeros((300, 300), np.uint8)  # an episode's label: target 1, ignore 255, the rest 0
    label[180:240, 180:240] = 1       # 60x60 target, 200 crop: 48% of the uniform places keep >= 85% of it
    label[0:4] = 255
    reference = kept_fractions("uniform_retry", label, 200)
    assert reference.min() >= 0.85
    every_place = np.array([(label[t:t + 200, l:l + 200] == 1).sum() / 3600 for t in range(101) for l in range(101)])
    assert (every_place < 0.85).mean() > 0.4  # so the retries are what keep the target
    anchored = kept_fractions("foreground_anchor", label, 200)
    assert anchored.min() >= 0.5 and (anchored < 0.85).any()


def test_uniform_retry_keeps_the_last_try_when_85_percent_is_impossible():
    label = np.zeros((150, 150), np.uint8)
    label[20:120, 25:125] = 1         # 100x100 target, 64 crop: at most 41% can be kept
    image = np.dstack([label.astype(np.float32)] * 3)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        draws = [int(rng.integers(0, 150 - 64 + 1)) for _ in range(2 * (UNIFORM_RETRIES + 1))]
        top, left = draws[-2], draws[-1]
        _, out = RandomCrop(64, (0.0, 0.0, 0.0), 255, "uniform_retry")(image, label, np.random.default_rng(seed))
        assert out.shape == (64, 64) and np.array_equal(out, label[top:top + 64, left:left + 64])
