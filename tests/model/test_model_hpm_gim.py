"""HPM priors against the oracle's HW x HW reference chain, the IFM against the oracle's fusion, the triplet loss and
the masked-average prototype by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from model.gim import triplet_loss
from model.hpm import cosine_prior, hierarchical_priors, pyramid_bins
from model.ifm import InformationFusion
from model.mianet import masked_average
from tests.support.reference_forward import cosine_prior as oracle_prior, hpm_priors, ifm as oracle_fusion


def direct_hierarchy(query: torch.Tensor, supports: torch.Tensor, masks: torch.Tensor,
                     bins: list[int]) -> list[torch.Tensor]:
    """The oracle's reference HPM, one sample at a time: [B,1,b,b] per bin."""
    per_sample = [hpm_priors(query[b:b + 1], [supports[b, k:k + 1] for k in range(supports.shape[1])],
                             [masks[b, k][None, None].float() for k in range(masks.shape[1])], bins)
                  for b in range(query.shape[0])]
    return [torch.cat([sample[level] for sample in per_sample]) for level in range(len(bins))]


def relu_features(*shape: int, seed: int) -> torch.Tensor:
    return torch.relu(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))


def box_masks(batch: int, shots: int, size: int) -> torch.Tensor:
    """Rectangles of 1 on 0; shot 1 of sample 1 (if any) is empty."""
    masks = torch.zeros(batch, shots, size, size)
    for b in range(batch):
        for k in range(shots):
            top, left = 5 + 7 * b + 3 * k, 9 + 11 * k
            masks[b, k, top:top + size // 3, left:left + size // 2] = 1
    if batch > 1 and shots > 1:
        masks[1, 1] = 0
    return masks


def test_pyramid_bins_halve_with_ceiling():
    assert pyramid_bins(60) == [60, 30, 15, 8]
    assert pyramid_bins(81) == [81, 41, 21, 11]
    assert pyramid_bins(25) == [25, 13, 7, 4]


def test_cosine_prior_matches_full_similarity_matrix_with_masked_out_support():
    query = relu_features(2, 32, 9, 9, seed=0)
    support = relu_features(2, 32, 11, 11, seed=1)
    support[:, :, :, 6:] = 0  # masked-out support positions
    support[1, :, :4] = 0
    prior = cosine_prior(query, support)
    expected = torch.stack([oracle_prior(query[b], support[b]) for b in range(2)])[:, None]
    assert prior.shape == (2, 1, 9, 9)
    assert (prior - expected).abs().max() < 1e-4
    assert prior.flatten(1).amin(dim=1).abs().max() < 1e-6
    assert (prior.flatten(1).amax(dim=1) - 1).abs().max() < 1e-5


@pytest.mark.parametrize("layer4, shots", [(12, 1), (12, 2), (6, 2)])  # 6: VGG-like, layer4 below bins[0]
def test_hierarchical_priors_match_the_reference_chain(layer4, shots):
    bins = pyramid_bins(12)
    query = relu_features(2, 24, layer4, layer4, seed=2)
    supports = relu_features(2, shots, 24, layer4, layer4, seed=3)
    masks = F.interpolate(box_masks(2, shots, 89), size=(layer4, layer4), mode="bilinear",
                                            align_corners=True)  # HPM gets the layer3-size masks
    priors = hierarchical_priors(query, supports, masks, bins)
    expected = direct_hierarchy(query, supports, masks, bins)
    assert [tuple(p.shape) for p in priors] == [(2, 1, b, b) for b in bins]
    for got, want in zip(priors, expected):
        assert (got - want).abs().max() < 1e-4


def test_k_shot_first_prior_is_the_mean_of_the_per_shot_priors():
    bins = pyramid_bins(10)
    query = relu_features(1, 16, 10, 10, seed=4)
    supports = relu_features(1, 3, 16, 10, 10, seed=5)
    masks = box_masks(1, 3, 73)
    together = hierarchical_priors(query, supports, masks, bins)[0]
    single = [hierarchical_priors(query, supports[:, k:k + 1], masks[:, k:k + 1], bins)[0] for k in range(3)]
    assert torch.allclose(together, torch.stack(single).mean(dim=0), atol=1e-6)
    assert not torch.allclose(single[0], single[1], atol=1e-3)


def test_triplet_loss_hand_computed_on_2d_features():
    anchors = torch.tensor([[0.0, 3.0], [1.0, 0.0], [2.0, 0.0], [5.0, 0.0]])
    features = torch.tensor([
        [[0.0, 5.0], [2.0, 0.0], [-4.0, 0.0], [0.0, -1.0]],   # 2 positives, 2 negatives (one labelled 255)
        [[-1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 3.0]],    # no positive: excluded
        [[1.0, 1.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]],     # 1 positive, 3 negatives
        [[-1.0, 0.0], [-2.0, 0.0], [-3.0, 0.0], [1.0, 0.0]],  # no negative: excluded
    ])
    masks = torch.tensor([[1, 1, 0, 255], [0, 0, 255, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    # sample 0: a=(0,1); d+ = max(0, |(0,1)-(1,0)|) = sqrt 2; negative mean (-0.5,-0.5), not re-normalised
    first = 0.5 + math.sqrt(2) - math.sqrt(0.5 ** 2 + 1.5 ** 2)
    # sample 2: a=(1,0); d+ = |(1,0)-(1,1)/sqrt 2| = sqrt(2 - sqrt 2); negative mean (1,0) -> d- = 0
    second = 0.5 + math.sqrt(2 - math.sqrt(2))
    loss = triplet_loss(anchors, features, masks)
    assert loss.item() == pytest.approx((first + second) / 2, abs=1e-6)
    no_margin = triplet_loss(anchors, features, masks, margin=0.0)  # sample 0 clamps to 0
    assert no_margin.item() == pytest.approx(math.sqrt(2 - math.sqrt(2)) / 2, abs=1e-6)


def test_triplet_loss_is_zero_when_no_sample_is_valid():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    features = torch.tensor([[[1.0, 2.0], [3.0, 1.0]], [[-1.0, 0.0], [0.0, -2.0]]])
    masks = torch.tensor([[0, 255], [1, 1]])
    loss = triplet_loss(anchors, features, masks)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(anchors.grad, torch.zeros(2, 2))


def test_masked_average_by_hand():
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]]])
    masks = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    expected = torch.tensor([[4.0, 40.0]]) / (2 + 5e-4)
    assert torch.allclose(masked_average(features, masks), expected, rtol=0, atol=1e-6)
    assert torch.equal(masked_average(features, torch.zeros_like(masks)), torch.zeros(1, 2))


def test_information_fusion_matches_the_reference_fusion():
    """Random weights (16 channels, float64, eval mode: no dropout), bins 20, 10, 5, 3: logits and the four auxiliary
    outputs against the oracle's literal fusion (real concatenations, the previous level's map upsampled to the query
    size, then resized to the next bin: 10 -> 20 -> 5 is not 10 -> 5, where 12 px bins would hide the difference)."""
    torch.manual_seed(0)
    fusion = InformationFusion(channels=16).double().eval()
    query = relu_features(2, 16, 20, 20, seed=6).double()
    prototype = torch.randn(2, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    priors = [torch.rand(2, 1, b, b, generator=torch.Generator().manual_seed(b), dtype=torch.float64)
              for b in pyramid_bins(20)]
    with torch.no_grad():
        logits, aux = fusion(query, prototype, priors)
        expected, expected_aux = oracle_fusion(fusion.state_dict(), query, prototype, priors)
    assert logits.shape == (2, 2, 20, 20) and float(expected.abs().max()) > 1e-3
    assert (logits - expected).abs().max() < 1e-10
    assert [tuple(a.shape) for a in aux] == [(2, 2, b, b) for b in (20, 10, 5, 3)]
    for got, want in zip(aux, expected_aux):
        assert (got - want).abs().max() < 1e-10
