"""Stage 1's loss: the cross-entropy of the logits upsampled to the labels, computed in chunks of images, is the plain
batched ``F.cross_entropy(F.interpolate(...))`` (the oracle) in value and gradient, and never creates the upsampled
logits of the whole batch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from model.backbone import build_backbone
from model.pspnet import PSPNet, upsampled_cross_entropy

CLASSES, LOW, HIGH = 7, (5, 6), (17, 23)
PER_IMAGE = CLASSES * HIGH[0] * HIGH[1] * 4  # bytes of one image's upsampled float32 logits


def oracle(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """The plain form: every image's logits upsampled at once, the mean over all non-ignored pixels of the batch."""
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
    return F.cross_entropy(upsampled, labels.long(), ignore_index=ignore_index)


def batch(images: int, ignore_index: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float64 logits and labels with scattered ignore pixels; image 1 is all ignore, image 0 has none."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(images, CLASSES, *LOW, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (images, *HIGH), generator=gen)
    scattered = torch.rand(images, *HIGH, generator=gen) < 0.3
    scattered[0] = False
    labels[scattered] = ignore_index
    labels[1] = ignore_index
    return logits, labels


@pytest.mark.parametrize("ignore_index", [255, -1])
@pytest.mark.parametrize("images, chunk_bytes", [(5, PER_IMAGE), (5, 2 * PER_IMAGE + 1), (4, 1), (3, 3 * PER_IMAGE)],
                         ids=["one-image-chunks", "two-image-chunks-ragged", "budget-below-one-image", "one-chunk"])
def test_chunked_loss_and_gradient_equal_the_plain_batched_form(images, chunk_bytes, ignore_index):
    logits, labels = batch(images, ignore_index)
    plain = logits.clone().requires_grad_()
    expected = oracle(plain, labels, ignore_index)
    expected.backward()
    chunked = logits.clone().requires_grad_()
    loss = upsampled_cross_entropy(chunked, labels, ignore_index, chunk_bytes=chunk_bytes)
    loss.backward()
    assert torch.allclose(loss, expected, rtol=1e-12, atol=0)
    assert torch.allclose(chunked.grad, plain.grad, rtol=1e-10, atol=1e-15)
    assert chunked.grad[1].abs().max() == 0 and chunked.grad[0].abs().max() > 0  # the all-ignore image: no gradient


@pytest.mark.parametrize("chunk_bytes", [PER_IMAGE, 3 * PER_IMAGE], ids=["chunked", "one-chunk"])
def test_a_batch_without_a_scored_pixel_adds_nothing(chunk_bytes):
    """The plain form's mean is 0/0 = NaN there, which would stop a run for a batch that only has nothing to learn."""
    logits, labels = batch(3, 255)
    labels[:] = 255
    logits.requires_grad_()
    loss = upsampled_cross_entropy(logits, labels, 255, chunk_bytes=chunk_bytes)
    loss.backward()
    assert loss.item() == 0 and logits.grad.abs().max() == 0
    assert torch.isnan(oracle(logits, labels, 255))


def test_the_mean_is_the_models_own_reduction():
    """``mean`` receives the summed loss and the count of scored pixels (under DDP the global-batch mean)."""
    logits, labels = batch(3, 255)
    seen = {}

    def mean(total, count):
        seen["count"] = int(count)
        return total / count

    for chunk_bytes in (PER_IMAGE, 3 * PER_IMAGE):
        loss = upsampled_cross_entropy(logits, labels, 255, chunk_bytes=chunk_bytes, mean=mean)
        assert seen["count"] == int((labels != 255).sum()) and torch.allclose(loss, oracle(logits, labels, 255))


class LargestOutput(TorchDispatchMode):
    """The most elements any operation's output had while the mode was on (forward and backward alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


@pytest.mark.parametrize("chunked", [True, False])
def test_no_operation_creates_the_whole_batchs_upsampled_logits_and_none_is_kept_for_backward(chunked):
    """With one-image chunks no tensor, in forward or backward, is larger than one image's upsampled logits, and the
    loss keeps none of them for backward (it recomputes them there)."""
    logits, labels = batch(4, 255)
    logits.requires_grad_()
    kept = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        kept.append(tensor.numel())
        return tensor

    with LargestOutput() as seen:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = upsampled_cross_entropy(logits, labels, 255, chunk_bytes=PER_IMAGE if chunked else 4 * PER_IMAGE)
        loss.backward()
    one_image = CLASSES * HIGH[0] * HIGH[1]
    assert seen.largest == (one_image if chunked else 4 * one_image)
    assert (max(kept) < one_image) if chunked else (max(kept) == 4 * one_image)


def test_pspnet_training_loss_is_the_cross_entropy_of_its_upsampled_logits():
    """PSPNet's loss with labels is the oracle's of its own logits at the input size, chunked or not."""
    torch.manual_seed(0)
    net = PSPNet(build_backbone("resnet50"), num_classes=CLASSES, ignore_label=255).eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 33, 33, generator=gen)
    labels = torch.randint(0, CLASSES, (3, 33, 33), generator=gen)
    labels[1, :10] = 255
    with torch.no_grad():
        expected = F.cross_entropy(net(images), labels, ignore_index=255)
    net.loss_chunk_bytes = CLASSES * 33 * 33 * 4
    chunked = net(images, labels)
    assert set(chunked) == {"loss"}
    assert torch.allclose(chunked["loss"], expected, rtol=1e-6, atol=0)
    net.loss_chunk_bytes = 2 ** 40
    assert torch.allclose(net(images, labels)["loss"], expected, rtol=1e-6, atol=0)
