"""Scores against hand-computed IoU / FB-IoU, with ignore pixels and the ori_resize geometry."""
import math

import pytest
import torch

from util.engine.metrics import FewShotIoU, SemanticIoU, intersection_union, predict_on_label

PRED = torch.tensor([[1, 1, 0], [0, 1, 0]])
LABEL = torch.tensor([[1, 0, 0], [255, 1, 1]])
# valid pixels: all but (1, 0). foreground: I = {(0,0), (1,1)} = 2, U = {(0,0), (0,1), (1,1), (1,2)} = 4
# background: I = {(0,2)} = 1, U = {(0,1), (0,2), (1,2)} = 3


def test_intersection_union_by_hand():
    inter, union = intersection_union(PRED, LABEL, 2, 255)
    assert inter.tolist() == [1, 2] and union.tolist() == [3, 4]


def test_ignored_pixels_count_nowhere():
    pred = PRED.clone()
    pred[1, 0] = 1  # the prediction under the ignore pixel must not matter
    assert [t.tolist() for t in intersection_union(pred, LABEL, 2, 255)] == [[1, 2], [3, 4]]


def test_class_iou_sums_counts_over_episodes_then_averages_classes():
    scores = FewShotIoU(num_classes=5, ignore_index=255)
    scores.update(PRED, LABEL, class_id=3)                                      # I 2, U 4
    scores.update(torch.tensor([[1, 0]]), torch.tensor([[1, 0]]), class_id=3)     # I 1, U 1
    scores.update(torch.tensor([[1, 0]]), torch.tensor([[0, 1]]), class_id=5)     # I 0, U 2
    assert scores.class_iou() == {3: pytest.approx(3 / 5), 5: 0.0}               # not the mean of 0.5 and 1.0
    assert scores.miou() == pytest.approx(0.3)
    assert scores.episodes() == 3
    # FB-IoU: background I 1+1+0, U 3+1+2 ; foreground I 2+1+0, U 4+1+2
    assert scores.fbiou() == pytest.approx((2 / 6 + 3 / 7) / 2)


def test_semantic_miou_over_selected_classes():
    scores = SemanticIoU(3, 255)
    scores.update(torch.tensor([0, 1, 2, 2, 1]), torch.tensor([0, 1, 1, 2, 255]))
    # class 0: 1/1, class 1: I 1 U 2, class 2: I 1 U 2
    assert scores.iou().tolist() == [1.0, 0.5, 0.5]
    assert scores.miou([1, 2]) == pytest.approx(0.5)
    assert scores.miou() == pytest.approx(2 / 3)
    assert math.isnan(SemanticIoU(2, 255).miou())


def _two_class_logits(foreground_score: torch.Tensor) -> torch.Tensor:
    """logits [2, h, w] whose argmax is 1 where ``foreground_score`` > 0."""
    return torch.stack([torch.zeros_like(foreground_score), foreground_score])


def test_ori_resize_crops_the_top_left_of_the_square():
    # input square 4x4 holding a 4 (h) x 2 (w) original placed top-left; foreground = top two rows of the image
    score = -torch.ones(4, 4)
    score[:2, :2] = 1
    label = torch.zeros(4, 2, dtype=torch.long)
    label[:2] = 1
    pred = predict_on_label(_two_class_logits(score), (4, 2), ori_size=(4, 2))
    assert pred.shape == (4, 2)
    assert torch.equal(pred, label)
    squashed = predict_on_label(_two_class_logits(score), (4, 2))  # the wrong geometry: squash the square
    assert not torch.equal(squashed, label)


def _align_corners_positions(size_in: int, size_out: int) -> list[float]:
    """Where output pixel j of a 1-D resize from ``size_in`` to ``size_out`` samples the input (align_corners=True)."""
    return [j * (size_in - 1) / (size_out - 1) for j in range(size_out)]


def _linear_at(values: list[float], position: float) -> float:
    left = min(int(position), len(values) - 2)
    weight = position - left
    return (1 - weight) * values[left] + weight * values[left + 1]


# Column scores 1, -1.2, -1.2 resized from 3 to 5 columns: align_corners samples x = 0, .5, 1, 1.5, 2, so the
# second column scores (1 - 1.2) / 2 = -0.1 (background). Nearest (x = 0, 0, 1, 1, 2) and bilinear without
# align_corners (x = 0, 0.4, ...: 0.12) both make it foreground.
COLUMN_SCORES = [1.0, -1.2, -1.2]


def test_ori_resize_upsamples_bilinear_align_corners():
    # 3x3 input, original 5 (h) x 3 (w): logits go to the 5x5 square, then its left 3 columns
    row = [int(_linear_at(COLUMN_SCORES, x) > 0) for x in _align_corners_positions(3, 5)][:3]
    assert row == [1, 0, 0]
    score = torch.tensor(COLUMN_SCORES).expand(3, 3)
    pred = predict_on_label(_two_class_logits(score), (5, 3), ori_size=(5, 3))
    expected = torch.tensor(row).expand(5, 3)
    assert torch.equal(pred, expected)
    scores = FewShotIoU(1, 255)
    scores.update(pred, expected.clone(), 1)
    assert scores.miou() == 1.0 and scores.fbiou() == 1.0


def test_label_grid_resize_is_bilinear_align_corners():
    row = [int(_linear_at(COLUMN_SCORES, x) > 0) for x in _align_corners_positions(3, 5)]
    assert row == [1, 0, 0, 0, 0]
    pred = predict_on_label(_two_class_logits(torch.tensor(COLUMN_SCORES).expand(3, 3)), (4, 5))
    assert torch.equal(pred, torch.tensor(row).expand(4, 5))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        intersection_union(torch.zeros(2, 2), torch.zeros(2, 3), 2, 255)
